"""Where a worker's time goes per request: py-spy samples one worker under wrk, each sample is
charged to the innermost frame that belongs to a known layer (ours, uvicorn's, the app), and the
shares times the worker's CPU per request give microseconds per request per layer, for each class
in turn on the same app and load. Needs py-spy (the ``bench`` extra) and root or ptrace rights."""

from __future__ import annotations

import argparse
import collections
import linecache
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common
from bench.common import log, rig

NAME = "profile"
HELP = "py-spy on one worker under wrk: microseconds per request per layer, for each class"

# (label, path fragment) in the order tried: the first fragment a frame's file holds names its
# layer. A sample is charged to its innermost frame that has a layer (C calls count to their
# Python caller; stdlib frames to the layer that called them).
SOCKET_WRITES = "send() system calls (transport.write)"
LAYERS = [
    ("ours: forwarded.py", "hardened_worker/_forwarded.py"),
    ("ours: writes.py (one write per response)", "hardened_worker/_writes.py"),
    ("ours: deadline.py (RequestGuard)", "hardened_worker/_deadline.py"),
    ("ours: memory.py", "hardened_worker/_memory.py"),
    ("ours: recycling.py", "hardened_worker/_recycling.py"),
    ("ours: health.py", "hardened_worker/_health.py"),
    ("ours: metrics.py", "hardened_worker/_metrics.py"),
    ("ours: accesslog.py", "hardened_worker/_accesslog.py"),
    ("ours: drain.py", "hardened_worker/_drain.py"),
    ("ours: server.py / worker.py (tick)", "hardened_worker/"),
    ("uvicorn: proxy_headers.py", "uvicorn/middleware/proxy_headers.py"),
    ("uvicorn: ASGI adapters", "uvicorn/middleware/"),
    ("uvicorn: httptools protocol", "uvicorn/protocols/http/"),
    ("uvicorn: server tick", "uvicorn/"),
    ("the app (testapp.py)", "tests/apps/"),
    ("logging", "/logging/"),
    ("asyncio", "/asyncio/"),
]
OTHER = "event loop and other"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=int, default=10, help="whole seconds sampled per round (default 10)"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds per class, alternating (default 3)"
    )
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second (default 500)")
    p.add_argument("--path", default="/")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for every master (repeatable)",
    )
    p.add_argument(
        "--forwarded",
        action="store_true",
        help="every request carries X-Forwarded-For and X-Forwarded-Proto",
    )
    p.add_argument("--raw-dir", type=Path, help="keep py-spy's raw stacks here (<class>.txt)")


_FRAME = re.compile(r"\((.+):(\d+)\)$")


def layer_of(frame: str) -> str | None:
    where = _FRAME.search(frame)
    if where and "transport.write(" in linecache.getline(where[1], int(where[2])):
        return SOCKET_WRITES  # the send itself (uvloop writes at once): kernel time, either class
    for label, fragment in LAYERS:
        if fragment in frame:
            return label
    return None


def charge(raw: str) -> collections.Counter:
    """py-spy ``--format raw`` (``frame;frame;... count`` lines, outermost first) -> samples per
    layer."""
    counts: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        owner = OTHER
        for frame in reversed(stack.split(";")):
            label = layer_of(frame)
            if label is not None:
                owner = label
                break
        counts[owner] += int(count)
    return counts


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is needed: pip install -e '.[bench]'")
    return found


def profile_class(cls: str, args: argparse.Namespace, env: dict, script: Path | None) -> dict:
    with common.master(cls, workers=1, env=env) as m:
        rig.wrk(
            m.port, args.path, duration=2, connections=args.connections, threads=1, script=script
        )
        (pid,) = m.workers()
        out = Path(m.tmp) / "profile.txt"
        spy = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--full-filenames",
                "--nonblocking",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration + 2),
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            rig.wait_for(lambda: spy.poll() is not None or common.cpu_seconds([pid]) > 0, 5)
            cpu_before = common.cpu_seconds([pid])
            result = rig.wrk(
                m.port,
                args.path,
                duration=args.duration,
                connections=args.connections,
                threads=1,
                script=script,
            )
            cpu = common.cpu_seconds([pid]) - cpu_before
        finally:
            _, err = spy.communicate(timeout=args.duration + 30)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err}")
        counts = charge(out.read_text())
        if args.raw_dir is not None:
            args.raw_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, args.raw_dir / f"{cls}-{len(list(args.raw_dir.glob(cls + '-*')))}.txt")
    log(
        f"profile: {cls}: {cpu / max(result.requests, 1) * 1e6:.1f} us CPU per request, "
        f"{result.rps:.0f} req/s"
    )
    return {"counts": counts, "cpu_s": cpu, "requests": result.requests, "rps": result.rps}


def summarise(runs: list[dict]) -> dict:
    """Rounds of one class pooled: samples summed, CPU per request over all of its requests."""
    counts: collections.Counter = collections.Counter()
    for one in runs:
        counts.update(one["counts"])
    total = sum(counts.values()) or 1
    cpu_us = sum(r["cpu_s"] for r in runs) / max(sum(r["requests"] for r in runs), 1) * 1e6
    return {
        "cpu_us_per_request": cpu_us,
        "cpu_us_per_request_by_round": [r["cpu_s"] / max(r["requests"], 1) * 1e6 for r in runs],
        "samples": total,
        "layers": {
            label: {"share": n / total, "us_per_request": n / total * cpu_us}
            for label, n in counts.most_common()
        },
    }


def run(args: argparse.Namespace) -> dict:
    from bench.overhead import FORWARDED_LUA, parse_env

    env = parse_env(args.env)
    per_class = {}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        script = (
            common.lua_script(Path(tmp), "forwarded.lua", FORWARDED_LUA) if args.forwarded else None
        )
        runs: dict[str, list[dict]] = {cls: [] for cls in args.classes}
        for _ in range(args.rounds):  # classes alternating, as in overhead
            for cls in args.classes:
                runs[cls].append(profile_class(cls, args, env, script))
    for cls, class_runs in runs.items():
        per_class[cls] = summarise(class_runs)
        log(
            f"profile: {cls} over {args.rounds} rounds: "
            f"{per_class[cls]['cpu_us_per_request']:.1f} us CPU per request"
        )
        for label, figures in per_class[cls]["layers"].items():
            log(f"  {figures['us_per_request']:6.2f} us  {figures['share']:6.1%}  {label}")
    return {
        "scenario": NAME,
        "classes": per_class,
        "method": "py-spy raw samples of the one worker (-w 1) under wrk; each sample charged to "
        "its innermost frame in a known layer; share x CPU us per request",
        "config": {
            "duration_s": args.duration,
            "connections": args.connections,
            "rate": args.rate,
            "rounds": args.rounds,
            "path": args.path,
            "env": env,
            "forwarded_headers": args.forwarded,
        },
    }
