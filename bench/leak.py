"""A leaking app: every request to ``/leak?kib=256`` keeps 256 KiB. wrk (8 connections) for 20 s
while every worker's RSS (``/proc/<pid>/statm`` of the master's children) is sampled every 0.2 s.
A variant stops early (``capped: true``) as soon as one worker passes the cap (2 GiB), so the
machine never gets near the OOM killer."""

from __future__ import annotations

import argparse
import time

from bench import common
from bench.common import MIB, Metric, log

NAME = "leak"
HELP = "leaking app: peak worker RSS, errors, recycling (memory limit vs --max-requests)"
TITLE = "Memory leak"
SETUP = (
    "`/leak?kib={kib_per_request}` under wrk ({connections} connections) for {duration_s} s; hardened "
    "with `HARDENED_MEMORY_LIMIT`, the peers without a limit (stopped once a worker passes "
    "{cap_mib:,} MiB), then with `--max-requests 200 --max-requests-jitter 50` (hardened's one run "
    "stands in both columns)"
)
METRICS = (
    Metric("peak_worker_rss_mib", "peak RSS", "MiB", "lower", noise=16),
    Metric("errors", "errors", "count", "lower"),
    Metric(
        "peak_worker_rss_mib_max_requests",
        "peak RSS, peers with --max-requests",
        "MiB",
        "lower",
        noise=16,
    ),
    Metric("errors_max_requests", "errors, peers with --max-requests", "count", "lower"),
)
NOTE = (
    "`--max-requests` was given a count that suits this very leak, so it recycles below "
    "hardened_worker's configured ceiling; it is blind to memory (the same count recycles a healthy "
    "worker, or lets a faster leak through). hardened_worker's limit counts USS, so its RSS runs some "
    "tens of MiB above it: the pages a worker shares with the master."
)

# (variant, worker class, environment, extra gunicorn arguments)
VARIANTS = [
    ("hardened-memory-limit", "hardened", {"HARDENED_MEMORY_LIMIT": "{limit}"}, []),
    ("uvicorn", "uvicorn", {}, []),
    (
        "uvicorn-max-requests",
        "uvicorn",
        {},
        ["--max-requests", "200", "--max-requests-jitter", "50"],
    ),
    ("asgi", "asgi", {}, []),
    ("asgi-max-requests", "asgi", {}, ["--max-requests", "200", "--max-requests-jitter", "50"]),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=int, default=20, help="seconds of wrk per variant (default 20)"
    )
    p.add_argument("--kib", type=int, default=256, help="KiB leaked per request (default 256)")
    p.add_argument(
        "--interval", type=float, default=0.2, help="RSS sampling interval (default 0.2 s)"
    )
    p.add_argument(
        "--cap-mib", type=int, default=2048, help="stop a variant once a worker passes this"
    )
    p.add_argument(
        "--limit", default="128MiB", help="HARDENED_MEMORY_LIMIT for the hardened variant"
    )
    common.add_pool_arguments(p, connections=8)
    p.add_argument(
        "--variants", help="comma-separated subset of: " + ", ".join(v[0] for v in VARIANTS)
    )


def run_variant(name: str, cls: str, env: dict, extra: list, args: argparse.Namespace) -> dict:
    cap = args.cap_mib * MIB
    samples = []  # (t, max worker MiB, sum MiB, workers)
    seen: set[int] = set()
    peak = 0
    capped = False
    with common.master(cls, workers=args.workers, env=env, args=extra) as m:
        initial = m.workers()
        with common.WrkRun(
            m.port, f"/leak?kib={args.kib}", duration=args.duration, connections=args.connections
        ) as load:
            while load.running():
                t = load.elapsed()
                sizes = [s for s in (common.rss_bytes(pid) for pid in m.workers()) if s is not None]
                seen.update(m.workers())
                if sizes:
                    peak = max(peak, max(sizes))
                    samples.append(
                        [
                            round(t, 2),
                            round(max(sizes) / MIB, 1),
                            round(sum(sizes) / MIB, 1),
                            len(sizes),
                        ]
                    )
                if sizes and max(sizes) > cap:
                    capped = True
                    log(
                        f"leak: {name}: a worker passed {args.cap_mib} MiB at t={t:.1f} s; stopping"
                    )
                    load.stop()
                    break
                time.sleep(args.interval)
            result = load.result()
        text = m.log()
        alive = common.master_alive(m)
    return {
        "peak_worker_rss_mib": peak / MIB,
        "capped": capped,
        "socket_errors": result.socket_errors,
        "non_2xx": result.non_2xx,
        "requests": result.requests,
        "rps": result.rps,
        "p99_ms": result.p99_ms,
        # From the log: the 0.2 s samples miss short-lived workers.
        "workers_replaced": max(0, text.count("Booting worker with pid") - args.workers),
        "worker_pids_sampled": len(seen | set(initial)),
        "ran_s": samples[-1][0] if samples else 0,
        "master_alive_at_end": alive,
        "wrk": common.wrk_summary(result),
        "worker_class": common.WORKERS[cls],
        "env": env,
        "args": extra,
        "log": common.log_digest(text),
        "memory_log_lines": common.grep(
            text, r"(?i)memory|recycl|max.requests|Maximum request|OOM|SIGKILL", 10
        ),
        "rss_series": {
            "columns": ["t_s", "max_worker_mib", "sum_workers_mib", "workers"],
            "samples_taken": len(samples),
            "points": common.downsample(samples, 200),
        },
    }


def headline(per_variant: dict) -> dict:
    """Per class: its run without a recycling option and its run with ``--max-requests`` (hardened has
    one run, with its memory limit, which stands for both)."""
    out = {}
    for cls, plain, capped in (
        ("hardened", "hardened-memory-limit", "hardened-memory-limit"),
        ("uvicorn", "uvicorn", "uvicorn-max-requests"),
        ("asgi", "asgi", "asgi-max-requests"),
    ):
        runs = {
            suffix: per_variant[name]
            for suffix, name in (("", plain), ("_max_requests", capped))
            if name in per_variant
        }
        if runs:
            out[cls] = {
                f"{key}{suffix}": value
                for suffix, v in runs.items()
                for key, value in (
                    ("peak_worker_rss_mib", v["peak_worker_rss_mib"]),
                    ("errors", v["socket_errors"] + v["non_2xx"]),
                    ("capped", v["capped"]),
                )
            }
    return out


def run(args: argparse.Namespace) -> dict:
    wanted = {v.strip() for v in args.variants.split(",")} if args.variants else None
    per_variant = {}
    for name, cls, env, extra in VARIANTS:
        if cls not in args.classes or (wanted and name not in wanted):
            continue
        env = {k: v.format(limit=args.limit) for k, v in env.items()}
        log(
            f"leak: {name}: {args.duration} s of /leak?kib={args.kib}, {args.connections} connections"
        )
        per_variant[name] = r = run_variant(name, cls, env, extra, args)
        log(
            f"leak: {name}: peak worker RSS {r['peak_worker_rss_mib']:.0f} MiB, capped {r['capped']}, "
            f"{r['socket_errors']} socket errors, {r['non_2xx']} non-2xx, {r['workers_replaced']} replaced"
        )
    ratios = {}
    if "uvicorn" in per_variant:
        base = per_variant["uvicorn"]
        ratios = {
            name: {
                "peak_rss_ratio": common.ratio(
                    v["peak_worker_rss_mib"], base["peak_worker_rss_mib"]
                ),
                "rps_ratio": common.ratio(v["rps"], base["rps"]),
            }
            for name, v in per_variant.items()
            if name != "uvicorn"
        }
    return {
        "scenario": NAME,
        "ratios_vs_uvicorn": ratios,
        "headline": headline(per_variant),
        "per_variant": per_variant,
        "config": {
            "workers": args.workers,
            "connections": args.connections,
            "duration_s": args.duration,
            "kib_per_request": args.kib,
            "sample_interval_s": args.interval,
            "cap_mib": args.cap_mib,
            "note": "a capped variant ran shorter: compare peak RSS and errors, not requests",
        },
    }
