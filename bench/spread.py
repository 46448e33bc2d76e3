"""Load spread across workers: wrk on the test app's ``/pid`` route (each answer names the worker
that served it), counted per pid by wrk's own Lua ``response`` hook, for each worker class with
2 and 4 workers and 8 and 64 keep-alive connections. The figure is max/min of requests per worker
over the pool (1.00: even); tail latency follows the busiest worker."""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
from pathlib import Path

from bench import common
from bench.common import log, rig

NAME = "spread"
HELP = "requests per worker (max/min over the pool), 2 and 4 workers, 8 and 64 connections"

COUNT_LUA = """\
local threads = {}
counts = {}
setup = function(thread) table.insert(threads, thread) end
response = function(status, headers, body)
  counts[body] = (counts[body] or 0) + 1
end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for pid, n in pairs(thread:get("counts")) do
      io.write(string.format("served-by %s %d\\n", pid, n))
    end
  end
end
"""
_SERVED = re.compile(r"^served-by (\d+) (\d+)$", re.MULTILINE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=int, default=6, help="whole seconds of wrk per case (default 6)")
    p.add_argument("--workers", default="2,4", help="pool sizes, comma-separated (default 2,4)")
    p.add_argument("--connections", default="8,64", help="wrk connections, comma-separated (default 8,64)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for every master (repeatable)")


def per_pid(raw: str) -> dict[int, int]:
    served: dict[int, int] = {}
    for pid, count in _SERVED.findall(raw):
        served[int(pid)] = served.get(int(pid), 0) + int(count)
    return served


def run(args: argparse.Namespace) -> dict:
    from bench.overhead import parse_env

    env = parse_env(args.env)
    pools = [int(n) for n in args.workers.split(",")]
    connections = [int(n) for n in args.connections.split(",")]
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-spread-") as tmp:
        script = common.lua_script(Path(tmp), "count.lua", COUNT_LUA)
        for workers in pools:
            with contextlib.ExitStack() as stack:  # classes side by side, cases alternating
                masters = {cls: stack.enter_context(common.master(cls, workers=workers, env=env))
                           for cls in args.classes}
                for conns in connections:
                    for cls, m in masters.items():
                        result = rig.wrk(m.port, "/pid", duration=args.duration, connections=conns,
                                         threads=2, script=script)
                        counts = sorted(per_pid(result.raw).values(), reverse=True)
                        # A worker that served nothing counts as 0 (max/min is then infinite).
                        counts += [0] * max(0, workers - len(counts))
                        spread = counts[0] / counts[-1] if counts and counts[-1] else None
                        cases.append({"class": cls, "workers": workers, "connections": conns,
                                      "per_worker": counts, "max_over_min": spread,
                                      "rps": result.rps, "p99_ms": result.p99_ms})
                        log(f"spread: {cls} -w {workers} -c {conns}: {counts} max/min "
                            f"{spread if spread is None else round(spread, 2)}, p99 {result.p99_ms:.1f} ms")
    return {"scenario": NAME, "cases": cases,
            "config": {"duration_s": args.duration, "path": "/pid", "wrk_threads": 2, "env": env}}
