"""Reloads under load: HUP every few seconds while wrk runs, with an app whose lifespan startup
takes 2 s, against the same master's p99 without HUPs. Counts socket errors and non-2xx exactly
(wrk's own counters) per worker class. Beside wrk, a Python client (``bench/timeline.py``, 4
keep-alive connections, GET and POST alternating) records every request's outcome and time, for
the per-0.5 s timeline of completed requests and errors across the HUPs; it runs in the
no-reload baseline too, so both wrk runs see the same extra load."""

from __future__ import annotations

import argparse
import signal
import time

from bench import common, timeline
from bench.common import Metric, log

NAME = "hup"
HELP = "HUP every 4 s under wrk, app startup 2 s: errors and p99 vs no reloads"
TITLE = "HUP reloads"
SETUP = (
    "HUP every {hup_interval_s:g} s for {duration_s} s under wrk ({connections} connections), app "
    "startup {startup_delay_s:g} s; p99 against the same master's {baseline_duration_s} s without HUPs"
)
METRICS = (
    Metric("socket_errors", "socket errors", "count", "lower"),
    Metric("non_2xx", "non-2xx", "count", "lower"),
    Metric("client_errors", "client errors", "count", "lower"),
    Metric("p99_ratio_reload_vs_no_reload", "p99 / no-reload p99", "ratio", "lower", noise=0.15),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=int, default=20, help="seconds of wrk with HUPs (default 20)")
    p.add_argument("--interval", type=float, default=4.0, help="seconds between HUPs (default 4)")
    p.add_argument(
        "--baseline-duration",
        type=int,
        default=10,
        help="seconds of wrk without HUPs, for the p99 baseline (default 10)",
    )
    p.add_argument(
        "--startup-delay", type=float, default=2.0, help="TESTAPP_STARTUP_DELAY (default 2)"
    )
    common.add_pool_arguments(p, connections=32)
    p.add_argument(
        "--client-connections",
        type=int,
        default=4,
        help="connections of the timeline client beside wrk (default 4)",
    )


def run(args: argparse.Namespace) -> dict:
    env = {"TESTAPP_STARTUP_DELAY": f"{args.startup_delay:g}"}
    per_class: dict = {}
    for cls in args.classes:
        log(f"hup: {cls}")
        with common.master(cls, workers=args.workers, env=env) as m:
            initial = m.workers()
            log(f"hup: {cls} no-reload baseline {args.baseline_duration} s")
            t0 = time.monotonic()
            with (
                timeline.Running(m.port, t0, args.client_connections) as client,
                common.WrkRun(
                    m.port, "/", duration=args.baseline_duration, connections=args.connections
                ) as load,
            ):
                baseline = load.result()
            baseline_client = timeline.summary(client, args.baseline_duration)
            log(f"hup: {cls} {args.duration} s with HUP every {args.interval:g} s")
            t0 = time.monotonic()
            with (
                timeline.Running(m.port, t0, args.client_connections) as client,
                common.WrkRun(
                    m.port, "/", duration=args.duration, connections=args.connections
                ) as load,
            ):
                sent = common.signal_at(
                    m, signal.SIGHUP, common.every(args.interval, args.duration), t0
                )
                loaded = load.result()
            reload_client = timeline.summary(client, args.duration)
            # Let the last reload finish before judging the end state.
            try:
                final = common.wait_started(m, args.workers, timeout=15)
            except TimeoutError:
                final = m.workers()
            text = m.log()
            per_class[cls] = {
                "socket_errors": loaded.socket_errors,
                "non_2xx": loaded.non_2xx,
                "rps": loaded.rps,
                "p99_ms": loaded.p99_ms,
                "p99_ratio_reload_vs_no_reload": common.ratio(loaded.p99_ms, baseline.p99_ms),
                "rps_ratio_reload_vs_no_reload": common.ratio(loaded.rps, baseline.rps),
                "with_hups": common.wrk_summary(loaded),
                "no_reload": common.wrk_summary(baseline),
                "hups_sent_at_s": sent,
                "workers_started": len(common.started_pids(m)),
                "master_alive_at_end": common.master_alive(m),
                "workers_at_end": len(final),
                "initial_workers_left": len(set(initial) & set(final)),
                "log": common.log_digest(text),
                "client_errors": reload_client["errors"],
                "timeline": reload_client,
                "timeline_no_reload": {k: v for k, v in baseline_client.items() if k != "series"},
            }
            log(
                f"hup: {cls}: {loaded.socket_errors} socket errors, {loaded.non_2xx} non-2xx, "
                f"p99 {loaded.p99_ms:.0f} ms (no reload {baseline.p99_ms:.1f} ms); timeline client "
                f"{reload_client['errors']} errors of {reload_client['requests']}"
            )
    return {
        "scenario": NAME,
        "ratios": common.ratios_vs_baseline(per_class, ("rps", "p99_ms", "socket_errors")),
        "headline": common.headline(per_class, METRICS),
        "per_class": per_class,
        "config": {
            "workers": args.workers,
            "connections": args.connections,
            "duration_s": args.duration,
            "hup_interval_s": args.interval,
            "baseline_duration_s": args.baseline_duration,
            "startup_delay_s": args.startup_delay,
            "path": "/",
            "timeline_client": {
                "connections": args.client_connections,
                "bucket_s": timeline.BUCKET_S,
                "load": "rig.Client: keep-alive, GET and POST alternating",
                "t0": "the timeline's t=0 is also the HUPs' (hups_sent_at_s)",
            },
        },
    }
