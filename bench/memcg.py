"""A real memory cgroup (v1, as root): the gunicorn master and its workers inside a 700 MiB limit
with no swap, 3 workers of an app that holds 60 MiB once imported and leaks N KiB per request
(``tests/apps/ballast.py``), under wrk (6 connections) plus a Python client that records every
request's outcome (half of them POSTs) for 30 s. What counts: the OOM killer's kills (the cgroup's
``oom_kill`` counter), failed requests, the peak of the cgroup's usage and of any worker's USS.

hardened_worker runs with the shipped ``gunicorn_conf_examples/memory-constrained/gunicorn.conf.py``;
UvicornWorker plain and with ``--max-requests 1000``.

:class:`MemoryCgroup` and :func:`run` are also what ``tests/test_cgroup_oom.py`` asserts on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from bench import common
from bench.common import MIB, Metric, log, rig
from hardened_worker import _cgroup as cgroup

NAME = "memcg"
HELP = "a real 700 MiB memory cgroup, 3 workers, a leaking 60 MiB app: OOM kills, failed requests"
TITLE = "Memory cgroup (OOM killer)"
SETUP = (
    "cgroup v1 memory limit {limit_mib} MiB, no swap, {workers} workers, app {ballast_mib} MiB "
    "once imported, {kib} KiB leaked per request, wrk {connections} connections + {clients} "
    "recording clients for {duration_s} s; hardened with the shipped memory-constrained "
    "example, the peers plain and with `--max-requests 1000`"
)
METRICS = (
    Metric("oom_kills", "OOM kills", "count", "lower"),
    Metric("failed", "failed requests", "count", "lower"),
    Metric("peak_cgroup_mib", "peak cgroup usage", "MiB", "lower", noise=16),
    Metric("oom_kills_max_requests", "OOM kills, peers with --max-requests", "count", "lower"),
    Metric("failed_max_requests", "failed, peers with --max-requests", "count", "lower"),
)
NOTE = (
    "hardened_worker's one run (its memory limits come from the example's budget) stands in "
    "both columns."
)

DEFAULT_KIB = 64
EXAMPLE = common.ROOT / "gunicorn_conf_examples" / "memory-constrained" / "gunicorn.conf.py"
V1_ROOT = Path("/sys/fs/cgroup/memory")

# (variant, worker class, extra gunicorn arguments)
VARIANTS = [
    ("hardened", "hardened", ["-c", str(EXAMPLE)]),
    ("uvicorn", "uvicorn", []),
    ("uvicorn-max-requests", "uvicorn", ["--max-requests", "1000"]),
]


class CgroupUnavailable(RuntimeError):
    """No memory cgroup could be made here (not root, no v1 memory hierarchy, read-only)."""


class MemoryCgroup:
    """A new cgroup v1 memory cgroup with ``limit`` bytes, below this process's own memory cgroup
    when it has one (so whatever accounts for this process keeps accounting for it), else below
    the hierarchy's root. Removed by :meth:`remove` once every process in it is gone; processes
    still inside are SIGKILLed by pid (they are the ones the test put there)."""

    def __init__(self, limit: int, name: str | None = None) -> None:
        parent = Path(cgroup.own().memory or V1_ROOT)
        if not (parent / "memory.limit_in_bytes").exists():
            parent = V1_ROOT
        if not (parent / "memory.limit_in_bytes").exists():
            raise CgroupUnavailable(
                f"no cgroup v1 memory hierarchy at {V1_ROOT} (cgroup v2 only, "
                f"or not mounted): this test needs a writable memory cgroup"
            )
        self.path = parent / (name or f"hardened-memcg-{os.getpid()}-{time.monotonic_ns()}")
        try:
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            swap = (
                self.path / "memory.memsw.limit_in_bytes"
            )  # no swap (absent without swap accounting)
            if swap.exists():
                swap.write_text(str(limit))
        except OSError as exc:
            self.remove()
            raise CgroupUnavailable(
                f"cannot create the memory cgroup {self.path} ({exc}); run as "
                f"root on a kernel with the v1 memory controller"
            ) from exc
        self.limit = limit
        self.oom_kills_at_start = self.oom_kills()

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` started in the cgroup: a shell writes its own pid to ``cgroup.procs``, then execs
        ``cmd``, so the gunicorn master is inside before it forks any worker."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *cmd]

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def oom_kills(self) -> int:
        kills = cgroup.oom_kills(cgroup.Location(memory=str(self.path)))
        if kills is None:
            raise CgroupUnavailable(
                f"{self.path}/memory.oom_control has no oom_kill counter (kernel before 4.13)"
            )
        return kills

    def usage(self) -> int:
        return cgroup.memory_current(cgroup.Location(memory=str(self.path))) or 0

    def max_usage(self) -> int:
        try:
            return int((self.path / "memory.max_usage_in_bytes").read_text())
        except (OSError, ValueError):
            return 0

    def remove(self) -> None:
        if not self.path.exists():
            return
        for _ in range(50):
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)  # the last processes are still exiting
        raise RuntimeError(f"could not remove {self.path}: processes {self.pids()} remain")

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def uss(pid: int) -> int:
    """Private memory of ``pid`` from ``/proc/PID/smaps_rollup`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {
                line.split(":")[0]: int(line.split()[1]) * 1024
                for line in f
                if line.rstrip().endswith("kB")
            }
        return fields["Private_Clean"] + fields["Private_Dirty"]
    except (OSError, KeyError, ValueError, IndexError):
        return 0


class PeakUss:
    """Samples every worker's USS (the master's children) in a thread; ``peak`` in bytes."""

    def __init__(self, master: rig.Master, interval: float = 0.05) -> None:
        self.master, self.interval, self.peak = master, interval, 0
        self.by_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.master.workers():
                size = uss(pid)
                self.by_pid[pid] = max(self.by_pid.get(pid, 0), size)
                self.peak = max(self.peak, size)
            self._stop.wait(self.interval)

    def largest(self, count: int = 3) -> list[tuple[int, float]]:
        """The ``count`` workers with the highest peaks: (pid, MiB)."""
        return [
            (pid, round(size / MIB, 1))
            for pid, size in sorted(self.by_pid.items(), key=lambda item: -item[1])[:count]
        ]

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.peak


def run_one(
    tmp: Path,
    worker: str,
    extra: list[str],
    *,
    kib: int,
    limit: int,
    workers: int = 3,
    duration: int = 30,
    connections: int = 6,
    clients: int = 2,
    ballast_mib: int = 60,
    env: dict | None = None,
) -> dict:
    """One master in a fresh cgroup of ``limit`` bytes under load; the figures of the module
    docstring. Raises :class:`CgroupUnavailable` when no cgroup can be made."""
    tmp.mkdir(parents=True, exist_ok=True)
    with MemoryCgroup(limit) as cg:
        m = rig.Master(
            tmp,
            app="ballast:app",
            worker=common.WORKERS.get(worker, worker),
            workers=workers,
            args=extra,
            env={
                "BALLAST_MIB": str(ballast_mib),
                "BALLAST_LEAK_KIB": str(kib),
                "HARDENED_DRAIN_DELAY": "0s",
                **(env or {}),
            },
        )
        m.cmd = cg.wrap(m.cmd)
        try:
            m.start(timeout=60)
            m.wait_workers(workers, timeout=60)
            peak = PeakUss(m)
            client = rig.Client(m.port, concurrency=clients, timeout=30).start()
            with common.WrkRun(
                m.port,
                "/",
                duration=duration,
                connections=connections,
                script=common.lua_script(tmp, "post", common.MIXED_LUA),
            ) as load:
                result = load.result()
            outcomes = client.stop()
            peak_uss = peak.stop()
            alive = common.master_alive(m)
            text = m.log()
        finally:
            m.stop()
        kills = cg.oom_kills() - cg.oom_kills_at_start
        peak_usage = cg.max_usage()
    failures = outcomes.failures
    return {
        "oom_kills": kills,
        "failed": result.socket_errors + result.non_2xx + len(failures),
        "wrk_socket_errors": result.socket_errors,
        "wrk_non_2xx": result.non_2xx,
        "client_requests": len(outcomes),
        "client_failures": failures[:20],
        "requests": result.requests + len(outcomes),
        "rps": result.rps,
        "peak_cgroup_mib": peak_usage / MIB,
        "peak_worker_uss_mib": peak_uss / MIB,
        "largest_workers": peak.largest(),
        "master_alive_at_end": alive,
        "workers_started": text.count("Booting worker with pid"),
        "budget": common.grep(text, r"memory budget", 2),
        "recycles_surge": text.count("its successor starts first"),
        "recycles_drain_first": text.count("drains first"),
        "recycles_hard": text.count("(hard)"),
        "oom_lines": common.grep(text, r"SIGKILL|out of memory", 5),
        "memory_log_lines": common.grep(text, r"(?i)recycling|budget|room", 12),
        "log": common.log_digest(text),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=int, default=30, help="seconds of load per variant (default 30)"
    )
    p.add_argument(
        "--kib", type=int, default=DEFAULT_KIB, help="KiB leaked per request (default 64)"
    )
    p.add_argument(
        "--limit-mib", type=int, default=700, help="the cgroup's memory limit (default 700)"
    )
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--connections", type=int, default=6, help="wrk connections (default 6)")
    p.add_argument("--clients", type=int, default=2, help="recording Python clients (default 2)")
    p.add_argument("--ballast-mib", type=int, default=60, help="the app's memory once imported")
    p.add_argument(
        "--variants", help="comma-separated subset of: " + ", ".join(v[0] for v in VARIANTS)
    )


def run(args: argparse.Namespace) -> dict:
    import tempfile

    wanted = {v.strip() for v in args.variants.split(",")} if args.variants else None
    per_variant = {}
    with tempfile.TemporaryDirectory(prefix="bench-memcg-") as tmp:
        for name, cls, extra in VARIANTS:
            if cls not in args.classes or (wanted and name not in wanted):
                continue
            log(
                f"memcg: {name}: {args.duration} s, {args.kib} KiB/request, limit {args.limit_mib} MiB"
            )
            per_variant[name] = r = run_one(
                Path(tmp) / name,
                cls,
                extra,
                kib=args.kib,
                limit=args.limit_mib * MIB,
                workers=args.workers,
                duration=args.duration,
                connections=args.connections,
                clients=args.clients,
                ballast_mib=args.ballast_mib,
            )
            log(
                f"memcg: {name}: {r['oom_kills']} OOM kills, {r['failed']} failed of "
                f"{r['requests']}, peak cgroup {r['peak_cgroup_mib']:.0f} MiB, peak worker USS "
                f"{r['peak_worker_uss_mib']:.0f} MiB"
            )
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    headline = {}
    for cls, plain, capped in (
        ("hardened", "hardened", "hardened"),
        ("uvicorn", "uvicorn", "uvicorn-max-requests"),
    ):
        runs = {
            suffix: per_variant[v]
            for suffix, v in (("", plain), ("_max_requests", capped))
            if v in per_variant
        }
        if runs:
            headline[cls] = {
                f"{key}{suffix}": r[key]
                for suffix, r in runs.items()
                for key in ("oom_kills", "failed", "peak_cgroup_mib", "peak_worker_uss_mib")
            }
    return {
        "scenario": NAME,
        # The default (64 KiB) is the scenario's own row in the report, another leak a variant's.
        **(
            {}
            if args.kib == DEFAULT_KIB
            else {"variant": f"{args.kib} KiB/request", "result_file": f"{NAME}-{args.kib}kib"}
        ),
        "headline": headline,
        "per_variant": per_variant,
        "config": {
            "limit_mib": args.limit_mib,
            "workers": args.workers,
            "ballast_mib": args.ballast_mib,
            "kib": args.kib,
            "connections": args.connections,
            "clients": args.clients,
            "duration_s": args.duration,
        },
    }
