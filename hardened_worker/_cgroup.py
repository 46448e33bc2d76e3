"""The service's memory and CPU limits, read from the cgroup filesystem.

Which cgroup: by default this process's own, found from ``/proc/self/cgroup`` (its path in each
hierarchy: v2 ``0::/path``, v1 ``N:memory:/path``) and ``/proc/self/mountinfo`` (where each
hierarchy is mounted, and which of its cgroups the mount shows). On a VM that is the systemd
service's cgroup (``/sys/fs/cgroup/system.slice/myapp.service``, holding its ``MemoryMax=`` and
``CPUQuota=``), not the host's root cgroup; in a container with a cgroup namespace it is the mount
point itself. ``HARDENED_CGROUP_ROOT`` names a directory instead: its v2 files, then the v1
controller directories below it (``memory/``, ``cpu/``), as a container's ``/sys/fs/cgroup`` is laid out.

Nothing here raises on odd content: a missing, unreadable or garbled file means unknown (None).
The first file that exists decides; a garbled v2 file does not fall back to v1. A limit set only
on an ancestor cgroup (a slice) is not seen.
"""

from __future__ import annotations

import functools
import math
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

# No HARDENED_CGROUP_ROOT: this process's own cgroup (see own()).
DEFAULT_ROOT: str | None = None
# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7FFFFFFFFFFFF000 on 64-bit):
# anything this large is no real limit.
_V1_UNLIMITED = 2**62

_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class Location:
    """Where one cgroup's files are: its v2 directory and its v1 controller directories (None,
    or no candidate: that hierarchy is not there, and what it would tell is unknown)."""

    unified: str | None = None  # cgroup v2: memory.max, memory.current, cpu.max
    memory: str | None = None  # cgroup v1 memory controller
    cpu: tuple[str, ...] = ()  # cgroup v1 cpu controller (candidates, first found wins)


# What the readers below take: a directory (HARDENED_CGROUP_ROOT), a Location, or None: own().
Root = str | Location | None


def at(root: str) -> Location:
    """An explicit directory (``HARDENED_CGROUP_ROOT``): v2 files in it, v1 controllers below it."""
    return Location(
        root, os.path.join(root, "memory"), tuple(os.path.join(root, n) for n in _V1_CPU_DIRS)
    )


def find(proc_cgroup: str, mountinfo: str) -> Location:
    """The cgroup that ``proc_cgroup`` (a ``/proc/<pid>/cgroup`` text) names, located through the
    mounts of ``mountinfo`` (a ``/proc/<pid>/mountinfo`` text). Hierarchies it cannot place: None."""
    paths: dict[str, str] = {}  # controller ("" for v2) -> the process's path in that hierarchy
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        if parts[0] == "0" and not parts[1]:
            paths[""] = parts[2]
        else:
            for controller in parts[1].split(","):
                paths.setdefault(controller, parts[2])
    mounts: dict[str, list[tuple[str, str]]] = {}  # controller -> [(cgroup shown, mount point)]
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[5:]:
            continue
        tail = fields[fields.index("-", 5) + 1 :]
        if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        controllers = [""] if tail[0] == "cgroup2" else tail[2].split(",")
        for controller in controllers:
            mounts.setdefault(controller, []).append((_unescape(fields[3]), _unescape(fields[4])))

    def locate(controller: str) -> str | None:
        path = paths.get(controller)
        if not path:
            return None
        for shown, point in mounts.get(controller, []):
            relative = posixpath.relpath(path, shown)
            if relative != ".." and not relative.startswith("../"):
                return posixpath.normpath(posixpath.join(point, relative))
        return None  # not mounted, or this process's cgroup is outside what the mount shows

    cpu = locate("cpu")
    return Location(locate(""), locate("memory"), (cpu,) if cpu else ())


def _unescape(field: str) -> str:
    """mountinfo writes a space in a path as ``\\040`` (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@functools.lru_cache(maxsize=1)
def own() -> Location:
    """This process's own cgroup (a process does not change cgroup: read once, forks inherit it)."""
    return find(
        _read("/proc/self/cgroup", 65536) or "", _read("/proc/self/mountinfo", 1 << 20) or ""
    )


def _locate(root: Root) -> Location:
    if isinstance(root, Location):
        return root
    return at(root) if root else own()


def _read(path: str | None, limit: int = 4096) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:  # paths round-trip
            return f.read(limit).strip()
    except OSError:
        return None


def _join(directory: str | None, name: str) -> str | None:
    return os.path.join(directory, name) if directory else None


def _first(*paths: str | None) -> str | None:
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


def memory_limit(root: Root = DEFAULT_ROOT) -> int | None:
    """The cgroup memory limit in bytes, or None when unlimited or unknown."""
    where = _locate(root)
    return _bytes_value(
        _first(_join(where.unified, "memory.max"), _join(where.memory, "memory.limit_in_bytes"))
    )


def memory_current(root: Root = DEFAULT_ROOT) -> int | None:
    """Bytes the whole cgroup uses now (page cache included), or None when unknown."""
    where = _locate(root)
    return _bytes_value(
        _first(_join(where.unified, "memory.current"), _join(where.memory, "memory.usage_in_bytes"))
    )


def memory_working_set(root: Root = DEFAULT_ROOT) -> int | None:
    """What the cgroup uses that the kernel cannot simply drop: usage minus the inactive file cache
    (the kubelet's "working set"), or None when unknown. Usage alone counts page cache (logs
    written, files read) that reclaim frees before any OOM kill, so a container near its limit
    with a full cache would look out of room when it is not."""
    where = _locate(root)
    current = memory_current(where)
    if current is None:
        return None
    stat = _read(_join(where.unified, "memory.stat"), 65536)
    if stat is None:
        stat = _read(_join(where.memory, "memory.stat"), 65536)
    fields = _keyed(stat)
    # v1 counts its children in total_inactive_file, as usage_in_bytes does; v2's inactive_file.
    inactive = fields.get("total_inactive_file", fields.get("inactive_file", 0))
    return max(0, current - inactive)


def oom_kills(root: Root = DEFAULT_ROOT) -> int | None:
    """Processes of the cgroup the kernel's OOM killer killed so far (v2 ``memory.events``,
    v1 ``memory.oom_control``, both an ``oom_kill N`` line), or None when unknown."""
    where = _locate(root)
    text = _first(_join(where.unified, "memory.events"), _join(where.memory, "memory.oom_control"))
    return _keyed(text).get("oom_kill")


def _keyed(text: str | None) -> dict[str, int]:
    """``'name 123'`` lines -> ``{'name': 123}``; other lines are skipped."""
    fields = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and _is_count(parts[1]):
            fields[parts[0]] = int(parts[1])
    return fields


def cpu_quota(root: Root = DEFAULT_ROOT) -> float | None:
    """CPUs the cgroup may use (``'50000 100000'`` -> 0.5), or None when unlimited or unknown."""
    where = _locate(root)
    text = _read(_join(where.unified, "cpu.max"))
    if text is not None:
        parts = text.split()
        if len(parts) != 2 or parts[0] == "max":
            return None
        return _ratio(parts[0], parts[1])
    for directory in where.cpu:
        quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
        if quota is not None:
            return _ratio(quota, _read(os.path.join(directory, "cpu.cfs_period_us")) or "")
    return None


def _ratio(quota: str, period: str) -> float | None:
    # v1 writes -1 for "no quota"; _is_count() rejects it along with garbage.
    if not (_is_count(quota) and _is_count(period)) or int(quota) == 0 or int(period) == 0:
        return None
    return int(quota) / int(period)


def worker_count(
    root: Root = DEFAULT_ROOT,
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
