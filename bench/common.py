"""What every scenario shares: worker classes, masters, background wrk, helpers, JSON output.

The processes themselves come from the test rig (``tests/rig.py``): ``rig.Master`` starts each
gunicorn master in its own process group and ``Master.stop()`` kills it and any stray worker by
pid, so every scenario wraps its masters in :func:`master` and nothing outlives a run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import rig  # noqa: E402  (tests/rig.py, the real-process test rig)

RESULTS = Path(__file__).resolve().parent / "results"

# Short name -> gunicorn -k value. The baseline every ratio is taken against comes first in output.
WORKERS = {
    "hardened": "hardened_worker.Worker",
    "uvicorn": "uvicorn_worker.UvicornWorker",
    "asgi": "asgi",
}
BASELINE = "uvicorn"
PACKAGES = ("gunicorn", "uvicorn", "uvicorn-worker", "uvloop", "httptools", "hardened-worker")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    """One figure a scenario reports per worker class; the report draws its cells from these."""

    key: str  # a key of result["headline"][<class>] (class = "hardened", "uvicorn", "asgi")
    label: str  # what the cell calls it, e.g. "goodput"
    unit: str  # "req/s", "ms", "s", "count", "MiB", "ratio", "%"
    better: str  # "higher" or "lower"
    noise: float = 0.0  # band within which two classes are the same: relative (0.05 = 5 %) for
    # "req/s"/"ratio"/"%", absolute in `unit` for the others


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the one JSON object."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- numbers ------------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and v == v]
    return statistics.median(finite) if finite else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def rounded(value: Any, digits: int = 3) -> Any:
    """Round floats (recursively) so the JSON stays readable."""
    if isinstance(value, float):
        return round(value, digits) if value == value else None
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def ratios_vs_baseline(per_class: dict[str, dict], keys: Iterable[str]) -> dict[str, dict]:
    """``{cls: {key_ratio: per_class[cls][key] / per_class[uvicorn][key]}}`` for every other class."""
    base = per_class.get(BASELINE)
    if base is None:
        return {}
    out = {}
    for name, values in per_class.items():
        if name == BASELINE:
            continue
        out[name] = {f"{key}_ratio": ratio(values.get(key), base.get(key)) for key in keys}
    return out


def headline(per_class: dict[str, dict], metrics: Iterable[Metric]) -> dict[str, dict]:
    """``{cls: {metric.key: value}}``: the figures the report grades, picked from each class's detail."""
    return {cls: {m.key: figures.get(m.key) for m in metrics} for cls, figures in per_class.items()}


def each_class(
    name: str,
    metrics: Iterable[Metric],
    args: Any,
    run_one: Callable[[str, Any], dict],
    says: Callable[[dict], str],
    config: dict,
) -> dict:
    """A scenario's result from ``run_one(cls, args)`` for every class asked for, one after another
    (logging ``says`` of each): the declared metrics' figures per class under ``headline``, every
    class's whole detail under ``per_class``, and the ``config`` it ran with."""
    per_class = {}
    for cls in args.classes:
        log(f"{name}: {cls}")
        per_class[cls] = result = run_one(cls, args)
        log(f"{name}: {cls}: {says(result)}")
    return {
        "scenario": name,
        "headline": headline(per_class, metrics),
        "per_class": per_class,
        "config": config,
    }


def downsample(points: list, limit: int = 200) -> list:
    """At most about ``limit`` evenly spaced points, the last one always kept."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    picked = [points[int(i * step)] for i in range(limit)]
    if picked[-1] is not points[-1]:
        picked.append(points[-1])
    return picked


# --- machine and output -------------------------------------------------------------------------


def _command_version(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def _git_state() -> dict:
    # Read-only: GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing (writing) the index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    paths = [line[3:] for line in dirty.splitlines()]
    return {
        "commit": commit or None,
        "modified_tracked_files": bool(dirty),
        # What the figures depend on: the package (and its pins), not the bench's own files.
        "modified_package_files": [
            p for p in paths if p.startswith(("hardened_worker/", "pyproject.toml"))
        ],
    }


def machine() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        mem_total = (
            int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
        )
    except (OSError, AttributeError):
        mem_total = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_total_gib": round(mem_total / 1024**3, 1) if mem_total else None,
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "packages": versions,
        "wrk": _command_version(["wrk", "-v"]),
        "nginx": _command_version(["nginx", "-v"]),
        "repo": _git_state(),
    }


def write_result(name: str, result: dict) -> Path:
    """Write ``bench/results/<name>.json`` atomically (the ``.tmp`` sibling is git-ignored)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rounded(result), indent=2) + "\n")
    tmp.replace(path)
    return path


# --- masters ------------------------------------------------------------------------------------


@contextlib.contextmanager
def master(
    worker: str,
    *,
    workers: int = 2,
    env: dict | None = None,
    args: Iterable[str] = (),
    app: str = "testapp:app",
    start: bool = True,
    timeout: float = 30.0,
) -> Iterator[rig.Master]:
    """A started ``rig.Master`` for a short worker name (or a -k value), always torn down."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        m = rig.Master(
            Path(tmp),
            app=app,
            worker=WORKERS.get(worker, worker),
            workers=workers,
            env=env,
            args=list(args),
        )
        try:
            if start:
                m.start(timeout=timeout)
                wait_started(m, workers, timeout)
            yield m
        finally:
            m.stop()


def add_pool_arguments(p: Any, connections: int | None = None, workers: int = 2) -> None:
    """The options scenarios share: ``--workers`` per master and, for those under wrk, ``--connections``."""
    p.add_argument(
        "--workers",
        type=int,
        default=workers,
        help=f"gunicorn workers per master (default {workers})",
    )
    if connections is not None:
        p.add_argument(
            "--connections",
            type=int,
            default=connections,
            help=f"wrk connections (default {connections})",
        )


def started_pids(m: rig.Master) -> set[int]:
    """Workers whose lifespan startup completed (the test app records it in its events file)."""
    return {int(line.split()[1]) for line in m.events() if line.startswith("startup ")}


def wait_started(m: rig.Master, count: int, timeout: float = 30.0) -> list[int]:
    """Until exactly ``count`` workers are alive and every one finished lifespan startup."""

    def ready() -> list[int] | None:
        pids = m.workers()
        return pids if len(pids) == count and set(pids) <= started_pids(m) else None

    return rig.wait_for(ready, timeout, interval=0.1)


def master_alive(m: rig.Master) -> bool:
    return m.proc is not None and m.proc.poll() is None


def signal_at(
    m: rig.Master,
    sig: int,
    offsets: Iterable[float],
    start: float,
    before_each: Callable[[], None] | None = None,
) -> list[float]:
    """Send ``sig`` to the master at ``start + offset`` (monotonic) for each offset; return the
    offsets actually sent (a dead master gets nothing more)."""
    sent = []
    for offset in offsets:
        delay = start + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if not master_alive(m):
            break
        if before_each is not None:
            before_each()
        m.signal(sig)
        sent.append(round(time.monotonic() - start, 2))
        log(f"  sent {signal.Signals(sig).name} at t={sent[-1]:.1f} s")
    return sent


def every(interval: float, duration: float) -> list[float]:
    """Offsets interval, 2*interval, ... strictly before ``duration``."""
    offsets, t = [], interval
    while t < duration - 1e-9:
        offsets.append(t)
        t += interval
    return offsets


_LOG_LINE = re.compile(r"^\[[^\]]+\] \[(\d+)\] \[(ERROR|CRITICAL|WARNING)\] (.*)$")


def log_digest(text: str, limit: int = 12) -> dict:
    """Counts of the master's WARNING/ERROR/CRITICAL log lines and the first distinct messages."""
    counts = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0}
    samples: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        counts[match.group(2)] += 1
        key = re.sub(r"\d+", "N", match.group(3))
        if key not in seen and len(samples) < limit:
            seen.add(key)
            samples.append(f"{match.group(2)} {match.group(3)}"[:300])
    return {"counts": counts, "first_distinct": samples}


def grep(text: str, pattern: str, limit: int = 10) -> list[str]:
    regex = re.compile(pattern)
    return [line[:300] for line in text.splitlines() if regex.search(line)][:limit]


def rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes have used (``/proc/<pid>/stat``), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _CLOCK_TICKS


# --- wrk ----------------------------------------------------------------------------------------


def wrk_summary(result: rig.WrkResult) -> dict:
    """``rig.parse_wrk``'s figures as JSON (the one wrk parser, shared with the tests)."""
    return {
        "rps": result.rps,
        "p99_ms": result.p99_ms,
        "requests": result.requests,
        "socket_errors": result.socket_errors,
        "non_2xx": result.non_2xx,
        "socket_error_kinds": result.socket_error_kinds,
    }


class WrkRun:
    """wrk in the background, with rig.wrk's command line (``rig.wrk_command``); ``stop()`` ends it early (SIGINT makes
    wrk print its statistics so far) and ``result()`` parses the report with ``rig.parse_wrk``.
    Use it as a context manager: it is killed on the way out whatever happened."""

    def __init__(
        self,
        port: int,
        path: str = "/",
        duration: int = 10,
        connections: int = 32,
        threads: int = 2,
        timeout: str = "10s",
        script: Path | None = None,
    ) -> None:
        duration = max(1, round(duration))  # wrk takes whole seconds only
        cmd = rig.wrk_command(port, path, duration, connections, threads, timeout, script)
        self.duration = duration
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGINT)

    def result(self) -> rig.WrkResult:
        out, err = self.proc.communicate(timeout=self.duration + 60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({self.proc.returncode}): {err}")
        return rig.parse_wrk(out)

    def __enter__(self) -> WrkRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def lua_script(directory: Path, name: str, text: str) -> Path:
    path = Path(directory) / name
    path.write_text(text)
    return path


# Every other request a POST: a proxy may retry a failed GET, never a POST. The tests' own mix.
MIXED_LUA = rig.POST_LUA
