"""Load spread across workers: wrk on the test app's ``/pid`` route (each answer names the worker
that served it), counted per pid by wrk's own Lua ``response`` hook, for each worker class with
2 and 4 workers and 8 and 64 keep-alive connections. The figure is max/min of requests per worker
over the pool (1.00: even); tail latency follows the busiest worker. Each worker's requests are
also counted per wrk thread: with the connections even, what is left uneven is the client's (see
:func:`per_pid`). By default wrk and the pool run on separate CPUs (:func:`placement`), as a
pool's clients run on other hosts: sharing cores with the client, the workers' requests follow
the scheduler's draw, not the connections they hold."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from bench import common
from bench.common import Metric, log, rig

NAME = "spread"
HELP = "requests per worker (max/min over the pool), 2 and 4 workers, 8 and 64 connections"
TITLE = "Load spread across workers"
SETUP = (
    "wrk on `/pid`, {runs} runs of {duration_s} s a case, fresh connections each (median, range in "
    "brackets); requests per worker counted by wrk's Lua `response` hook; {cpus}"
)
# The default cases (others land in the headline under the same key pattern), graded on min/max, not
# the max/min each case also records: a worker that served nothing makes max/min unbounded (None in
# JSON, which would read as "not applicable"), min/max simply 0.
METRICS = tuple(
    Metric(
        f"min_over_max_w{w}_c{c}",
        f"least/busiest worker -w {w} -c {c}",
        "ratio",
        "higher",
        noise=0.05,
    )
    for w in (2, 4)
    for c in (8, 64)
)

COUNT_LUA = """\
local threads = {}
counts = {}
setup = function(thread) table.insert(threads, thread) end
response = function(status, headers, body)
  counts[body] = (counts[body] or 0) + 1
end
done = function(summary, latency, requests)
  for index, thread in ipairs(threads) do
    for pid, n in pairs(thread:get("counts")) do
      io.write(string.format("served-by %d %s %d\\n", index, pid, n))
    end
  end
end
"""


def count_lua(delay_ms: int = 0) -> str:
    """wrk's script: :data:`COUNT_LUA`, and with ``delay_ms`` each connection waiting that long
    after every answer (wrk's ``delay`` hook), so the workers are mostly idle and how often a
    connection asks is the client's doing alone."""
    return COUNT_LUA + (f"delay = function() return {delay_ms} end\n" if delay_ms else "")


_SERVED = re.compile(r"^served-by (\d+) (\d+) (\d+)$", re.MULTILINE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=int, default=6, help="whole seconds of wrk per run (default 6)"
    )
    p.add_argument(
        "--runs",
        type=int,
        default=3,
        help="wrk runs per case, each with fresh connections (default 3): the figure is "
        "their median, the band their range",
    )
    p.add_argument("--workers", default="2,4", help="pool sizes, comma-separated (default 2,4)")
    p.add_argument(
        "--connections", default="8,64", help="wrk connections, comma-separated (default 8,64)"
    )
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for every master (repeatable)",
    )
    p.add_argument(
        "--delay-ms",
        type=int,
        default=0,
        help="each connection waits this long after every answer (default 0: saturated)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wrk on half the CPUs, every gunicorn process on the other half (default on; "
        "--no-pin lets them share every CPU)",
    )


def placement(cpus: set[int]) -> tuple[set[int], set[int]] | None:
    """The client's CPUs and the pool's: the lower half of ``cpus`` for wrk, the rest for the pool,
    None with a single CPU. Measured 2026-12-02 with 4 workers and 8 connections on 2 cores, every
    worker holding 2: sharing both cores with wrk, requests per worker max/min had a median of
    1.09-1.18 by batch, whichever of wrk's threads or the workers the scheduler happened to run
    together; with wrk on one core and the pool on the other, 1.01-1.05, and 1.01-1.03 with 1 or 4
    wrk threads: which thread's connections a worker holds no longer matters (bench/README.md)."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return None
    half = len(ordered) // 2
    return set(ordered[:half]), set(ordered[half:])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (``sched_setaffinity`` moves one thread; a worker has
    its watchdog's too). Threads and children made later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def per_pid(raw: str) -> dict[int, list[int]]:
    """Requests each worker served, per wrk thread (thread 1 first). With the connections even,
    what is left uneven comes from how they pair with the client's threads: a worker whose
    connections all belong to one wrk thread gets their requests together and answers them in
    one loop iteration; a worker holding one of each thread's wakes for each. Measured with 4
    workers and wrk sharing 2 cores, 8 connections: every worker got the same CPU time, and the
    two holding one thread's pair served 20-25% more requests per CPU second than the two holding
    one of each."""
    served: dict[int, list[int]] = {}
    for thread, pid, count in _SERVED.findall(raw):
        counts = served.setdefault(int(pid), [])
        counts += [0] * (int(thread) - len(counts))
        counts[int(thread) - 1] += int(count)
    return served


_SS_PID = re.compile(r"pid=(\d+)")


def connections_per_pid(port: int) -> dict[int, int]:
    """Established connections on the server side of ``port``, by the process holding each
    (``ss -tnp``): whether an uneven count of requests comes from uneven connections."""
    try:
        out = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    held: dict[int, int] = {}
    for line in out.splitlines():
        found = _SS_PID.search(line)
        if found:
            held[int(found.group(1))] = held.get(int(found.group(1)), 0) + 1
    return held


def run(args: argparse.Namespace) -> dict:
    from bench.overhead import parse_env

    env = parse_env(args.env)
    pools = [int(n) for n in args.workers.split(",")]
    connections = [int(n) for n in args.connections.split(",")]
    cases = []
    mine = os.sched_getaffinity(0)
    split = placement(mine) if args.pin else None
    with tempfile.TemporaryDirectory(prefix="bench-spread-") as tmp:
        script = common.lua_script(Path(tmp), "count.lua", count_lua(args.delay_ms))
        for workers in pools:
            with contextlib.ExitStack() as stack:  # classes side by side, cases alternating
                masters = {
                    cls: stack.enter_context(common.master(cls, workers=workers, env=env))
                    for cls in args.classes
                }
                if split is not None:  # wrk, started from this thread, inherits the client's half
                    client, pool = split
                    for m in masters.values():
                        for pid in [m.proc.pid, *m.workers()]:
                            pin(pid, pool)
                    os.sched_setaffinity(0, client)
                    stack.callback(os.sched_setaffinity, 0, mine)
                for conns, run_ in itertools.product(connections, range(args.runs)):
                    for cls, m in masters.items():
                        held: dict[int, int] = {}
                        # Sampled once, a second in (wrk opens every connection at its start).
                        sampler = threading.Timer(
                            1.0, lambda held=held, m=m: held.update(connections_per_pid(m.port))
                        )
                        sampler.start()
                        result = rig.wrk(
                            m.port,
                            "/pid",
                            duration=args.duration,
                            connections=conns,
                            threads=args.wrk_threads,
                            script=script,
                        )
                        sampler.join()
                        by_thread = sorted(
                            per_pid(result.raw).items(), key=lambda item: -sum(item[1])
                        )
                        held_by = [held.get(pid, 0) for pid, _ in by_thread]
                        held_by += [0] * max(0, workers - len(held_by))
                        counts = [sum(threads) for _, threads in by_thread]
                        # A worker that served nothing counts as 0 (max/min is then infinite).
                        counts += [0] * max(0, workers - len(counts))
                        spread = counts[0] / counts[-1] if counts and counts[-1] else None
                        cases.append(
                            {
                                "class": cls,
                                "workers": workers,
                                "connections": conns,
                                "run": run_ + 1,
                                "per_worker": counts,
                                "max_over_min": spread,
                                "connections_per_worker": held_by,
                                "per_worker_by_wrk_thread": [threads for _, threads in by_thread],
                                "rps": result.rps,
                                "p99_ms": result.p99_ms,
                            }
                        )
                        log(
                            f"spread: {cls} -w {workers} -c {conns} run {run_ + 1}: {counts} (connections "
                            f"{held_by}, by wrk thread {[t for _, t in by_thread]}) max/min "
                            f"{spread if spread is None else round(spread, 2)}, p99 {result.p99_ms:.1f} ms"
                        )
    # Which worker gets which of the client's connections is drawn anew each run, and it matters
    # (see per_pid): one run is one draw, so the figure is the median of the runs, the band their range.
    draws: dict[tuple[str, str], list[float]] = {}
    for case in cases:
        counts = case["per_worker"]
        key = (case["class"], f"min_over_max_w{case['workers']}_c{case['connections']}")
        draws.setdefault(key, []).append(counts[-1] / counts[0] if counts and counts[0] else 0.0)
    headline: dict = {}
    for (cls, key), values in draws.items():
        headline.setdefault(cls, {})[key] = common.median(values)
        headline[cls][f"{key}_band"] = [min(values), max(values)]
    return {
        "scenario": NAME,
        "headline": headline,
        "cases": cases,
        "config": {
            "duration_s": args.duration,
            "runs": args.runs,
            "path": "/pid",
            "wrk_threads": args.wrk_threads,
            "delay_ms": args.delay_ms,
            "env": env,
            "cpus": (
                f"wrk on CPU {_listed(split[0])}, the pools on CPU {_listed(split[1])}"
                if split
                else "wrk and the pools sharing every CPU"
            ),
        },
    }


def _listed(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))
