"""Reloads behind nginx with upstream keep-alive: HUP every 4 s for 16 s under wrk through nginx,
half the requests POSTs (nginx retries a GET that failed on a cached keep-alive connection, never
a POST, so only non-idempotent load shows lost requests). Counts non-2xx (502s) at the client and
"upstream prematurely closed" / "reset by peer" lines in nginx's error log. A Python client beside
wrk (``bench/timeline.py``, 4 keep-alive connections to nginx, GET and POST alternating) records
each request's outcome and time for the per-0.5 s timeline. nginx is the test rig's
(``rig.Nginx``), running the shipped ``gunicorn_conf_examples/vm/nginx-site.conf``: the bench
measures the configuration the tests prove."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from bench import common, timeline
from bench.common import Metric, rig

NAME = "nginx"
HELP = "HUPs behind nginx keep-alive, mixed GET/POST: 502s and upstream resets"
TITLE = "Reloads behind nginx"
SETUP = (
    "the shipped nginx site config (upstream keep-alive) in front; HUP every {hup_interval_s:g} s for "
    "{duration_s} s under wrk ({connections} connections), GET and POST alternating"
)
METRICS = (
    Metric("non_2xx", "502s", "count", "lower"),
    Metric("upstream_prematurely_closed", '"prematurely closed"', "count", "lower"),
    Metric("reset_by_peer", '"reset by peer"', "count", "lower"),
    Metric("client_errors", "client errors", "count", "lower"),
)

PATTERNS = {
    "upstream_prematurely_closed": "upstream prematurely closed",
    "reset_by_peer": "reset by peer",
    "connection_refused": "Connection refused",
    "no_live_upstreams": "no live upstreams",
    "upstream_timed_out": "upstream timed out",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=int, default=16, help="seconds of wrk (default 16)")
    p.add_argument("--interval", type=float, default=4.0, help="seconds between HUPs (default 4)")
    common.add_pool_arguments(p, connections=32)
    p.add_argument(
        "--client-connections",
        type=int,
        default=4,
        help="connections of the timeline client beside wrk (default 4)",
    )


def run_one(cls: str, args: argparse.Namespace) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp,
        common.master(cls, workers=args.workers) as m,
    ):
        tmp_path = Path(tmp)
        script = common.lua_script(tmp_path, "mixed.lua", common.MIXED_LUA)
        # The rig's nginx: the shipped gunicorn_conf_examples/vm/nginx-site.conf, as the tests run it.
        proxy = rig.Nginx(tmp_path, m.port).start()
        try:
            t0 = time.monotonic()
            with (
                timeline.Running(proxy.port, t0, args.client_connections) as client,
                common.WrkRun(
                    proxy.port,
                    "/",
                    duration=args.duration,
                    connections=args.connections,
                    script=script,
                ) as load,
            ):
                sent = common.signal_at(
                    m, signal.SIGHUP, common.every(args.interval, args.duration), t0
                )
                result = load.result()
            client_run = timeline.summary(client, args.duration)
            time.sleep(0.2)
            errors = proxy.log()
            # Upstream lines only: the rig's nginx logs at info, where wrk's own connections closing
            # at the end show as "reset by peer while reading client request".
            upstream = "\n".join(proxy.upstream_failures())
        finally:
            proxy.stop()
        counts = {name: upstream.count(text) for name, text in PATTERNS.items()}
        return {
            "non_2xx": result.non_2xx,
            **counts,
            "socket_errors": result.socket_errors,
            "rps": result.rps,
            "p99_ms": result.p99_ms,
            "requests": result.requests,
            "hups_sent_at_s": sent,
            "nginx_error_lines": sum(1 for line in errors.splitlines() if "[error]" in line),
            "nginx_error_samples": common.grep(errors, r"\[error\]", limit=5),
            "master_alive_at_end": common.master_alive(m),
            "log": common.log_digest(m.log()),
            "client_errors": client_run["errors"],
            "timeline": client_run,
        }


def run(args: argparse.Namespace) -> dict:
    config = {
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "hup_interval_s": args.interval,
        "load": "wrk Lua request(): GET and POST alternating",
        "nginx": "the shipped gunicorn_conf_examples/vm/nginx-site.conf (rig.Nginx)",
        "timeline_client": {
            "connections": args.client_connections,
            "bucket_s": timeline.BUCKET_S,
            "load": "rig.Client through nginx: keep-alive, GET and POST alternating",
        },
    }
    result = common.each_class(
        NAME,
        METRICS,
        args,
        run_one,
        lambda r: (
            f"{r['non_2xx']} non-2xx, {r['upstream_prematurely_closed']} premature closes, "
            f"{r['reset_by_peer']} resets, {r['socket_errors']} socket errors"
        ),
        config,
    )
    result["ratios"] = common.ratios_vs_baseline(result["per_class"], ("rps", "p99_ms"))
    return result
