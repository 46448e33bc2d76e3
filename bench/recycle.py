"""One worker recycled while a prober opens a fresh connection every 20 ms (a load balancer, a
Kubernetes readiness probe), the app's startup taking 2 s. For each cause (gunicorn's
``--max-requests``, ``HARDENED_MAX_LIFETIME``, ``HARDENED_MEMORY_LIMIT``): the longest wait and the
p99 of the probes, failed probes, recycles seen. UvicornWorker has only ``--max-requests``; the other
causes are ours alone, so its row says so."""

from __future__ import annotations

import argparse
import time

from bench import common
from bench.common import Metric, log, rig

NAME = "recycle"
HELP = "-w 1 recycles (max-requests, lifetime, memory) under a 20 ms prober: longest wait"

CAUSES = {
    "max-requests": ({}, ["--max-requests", "50"], None),
    "max-lifetime": ({"HARDENED_MAX_LIFETIME": "5s"}, [], None),
    "memory": (
        {"HARDENED_MEMORY_LIMIT": "64MiB", "HARDENED_MEMORY_HARD_LIMIT": "1GiB"},
        [],
        "/leak?kib=8192",
    ),
}
UVICORN_SUPPORTS = {"max-requests"}
TITLE = "Recycling one worker"
SETUP = (
    "`-w 1`, app startup {startup_s:g} s, a fresh connection every {probe_period_ms} ms for "
    "{seconds:g} s per cause; the peers have only `--max-requests`"
)
METRICS = tuple(
    metric
    for cause in CAUSES
    for metric in (
        # One probe's wait swings by tens of ms on a shared machine; a recycle that makes probes wait
        # for the app's startup shows as seconds.
        Metric(f"longest_wait_ms_{cause}", f"longest wait, {cause}", "ms", "lower", noise=50),
        Metric(f"failed_{cause}", f"failed, {cause}", "count", "lower"),
    )
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds", type=float, default=15.0, help="probing time per cause (default 15)"
    )
    p.add_argument("--startup", type=float, default=2.0, help="app startup in seconds (default 2)")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def run_one(cls: str, cause: str, args: argparse.Namespace) -> dict:
    env, extra, leak = CAUSES[cause]
    with common.master(
        cls, workers=1, env={"TESTAPP_STARTUP_DELAY": f"{args.startup:g}", **env}, args=extra
    ) as m:
        prober = rig.Prober(m.port)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            if leak:
                rig.get(m.port, leak)  # about one soft limit every 8 requests
            time.sleep(0.25)
        prober.stop()
        latencies = [latency * 1000 for _, latency in prober.results]
        starts = [e for e in m.events() if e.startswith("import ")]
        return {
            "probes": len(prober.results),
            "failed": len(prober.failures),
            "longest_wait_ms": max(latencies),
            "p99_ms": percentile(latencies, 0.99),
            "workers_started": len(starts),
        }


def run(args: argparse.Namespace) -> dict:
    per_class: dict = {cls: {} for cls in args.classes}
    for cause in CAUSES:
        for cls in args.classes:
            if cls != "hardened" and cause not in UVICORN_SUPPORTS:
                per_class[cls][cause] = {"supported": False}
                continue
            log(f"recycle: {cls}: {cause}, {args.seconds:g} s of probes every 20 ms")
            per_class[cls][cause] = r = run_one(cls, cause, args)
            log(
                f"recycle: {cls}: {cause}: {r['failed']} failed of {r['probes']}, longest "
                f"{r['longest_wait_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {r['workers_started']} "
                "workers started"
            )
    return {
        "scenario": NAME,
        # A cause the class does not have is None: not applicable, and not graded.
        "headline": {
            cls: {
                f"{k}_{cause}": v.get(k)
                for cause, v in causes.items()
                for k in ("longest_wait_ms", "failed")
            }
            for cls, causes in per_class.items()
        },
        "per_class": per_class,
        "config": {
            "workers": 1,
            "startup_s": args.startup,
            "probe_period_ms": 20,
            "seconds": args.seconds,
        },
    }
