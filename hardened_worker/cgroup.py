"""The container's memory and CPU limits, read from the cgroup filesystem.

Every function takes the mount point (``HARDENED_CGROUP_ROOT``, ``/sys/fs/cgroup``) and reads the
files directly under it: cgroup v2 first (``memory.max``, ``cpu.max``), then the v1 controller
directories. In a container the cgroup namespace makes that root the container's own cgroup, which
is the case this is for. On a host (no namespace) the root cgroup has no ``memory.max`` or
``cpu.max``, so the answer is "unknown" (None), never a wrong limit.

Nothing here raises on odd content: a missing, unreadable or garbled file means unknown (None).
The first file that exists decides; a garbled v2 file does not fall back to v1.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

DEFAULT_ROOT = "/sys/fs/cgroup"
# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7FFFFFFFFFFFF000 on 64-bit):
# anything this large is no real limit.
_V1_UNLIMITED = 2**62

_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return None


def _first(*paths: str) -> str | None:
    for path in paths:
        text = _read(path)
        if text is not None:
            return text
    return None


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit() alone accepts "²"


def _bytes_value(text: str | None) -> int | None:
    """``'max'`` or v1's huge sentinel -> None; a byte count -> int; anything else -> None."""
    if text is None or not _is_count(text):
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def memory_limit(root: str = DEFAULT_ROOT) -> int | None:
    """The cgroup memory limit in bytes, or None when unlimited or unknown."""
    return _bytes_value(
        _first(os.path.join(root, "memory.max"), os.path.join(root, "memory", "memory.limit_in_bytes"))
    )


def memory_current(root: str = DEFAULT_ROOT) -> int | None:
    """Bytes the whole cgroup uses now (page cache included), or None when unknown."""
    return _bytes_value(
        _first(os.path.join(root, "memory.current"), os.path.join(root, "memory", "memory.usage_in_bytes"))
    )


def cpu_quota(root: str = DEFAULT_ROOT) -> float | None:
    """CPUs the cgroup may use (``'50000 100000'`` -> 0.5), or None when unlimited or unknown."""
    text = _read(os.path.join(root, "cpu.max"))
    if text is not None:
        parts = text.split()
        if len(parts) != 2 or parts[0] == "max":
            return None
        return _ratio(parts[0], parts[1])
    for name in _V1_CPU_DIRS:
        quota = _read(os.path.join(root, name, "cpu.cfs_quota_us"))
        if quota is not None:
            return _ratio(quota, _read(os.path.join(root, name, "cpu.cfs_period_us")) or "")
    return None


def _ratio(quota: str, period: str) -> float | None:
    # v1 writes -1 for "no quota"; _is_count() rejects it along with garbage.
    if not (_is_count(quota) and _is_count(period)) or int(quota) == 0 or int(period) == 0:
        return None
    return int(quota) / int(period)


def worker_count(
    root: str = DEFAULT_ROOT,
    environ: Mapping[str, str] | None = None,
    cpu_count: int | None = None,
) -> int:
    """Workers for the Kubernetes preset.

    1. ``WEB_CONCURRENCY``, when set, wins (a positive whole number, else ValueError).
    2. With a CPU quota: ``ceil(quota)``, at least 1 and at most ``cpu_count``. An async worker
       keeps one CPU busy, so more workers than CPUs only add memory; a fractional CPU still gets
       a worker (0.5 -> 1, 1.5 -> 2). One worker is safe to restart because reloads and memory
       recycling are readiness-gated: the old worker serves until its successor is ready.
    3. No quota: ``cpu_count`` (the caller passes the CPUs this process may run on, e.g.
       ``len(os.sched_getaffinity(0))``); defaults to that, or 1 when unknown.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("WEB_CONCURRENCY")
    if raw is not None:
        text = raw.strip()
        if not _is_count(text) or int(text) < 1:
            raise ValueError(
                f"hardened_worker: WEB_CONCURRENCY={raw!r} is not a positive whole number; "
                f"use e.g. WEB_CONCURRENCY=4"
            )
        return int(text)
    if cpu_count is None:
        cpu_count = _available_cpus()
    quota = cpu_quota(root)
    if quota is None:
        return max(1, cpu_count or 1)
    # The epsilon keeps 2.0000000001 (float noise) at 2.
    workers = max(1, math.ceil(quota - 1e-9))
    return min(workers, cpu_count) if cpu_count else workers


def _available_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()
