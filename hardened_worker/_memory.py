"""Memory-ceiling recycling: the policy (pure) and two tiny ``/proc`` readers.

The rule, as the README states it:

* **Soft limit** (``HARDENED_MEMORY_LIMIT``), lowered per worker by a random fraction of up to
  ``HARDENED_MEMORY_JITTER`` so workers that grow alike do not all pass it together. A worker at
  or above its soft limit drains and is replaced, but **one at a time**: while another worker is
  recycling for memory it waits its turn.
* **Minimum lifetime** (``HARDENED_MEMORY_MIN_LIFETIME``) protects only a worker whose
  *baseline* (its first reading, at its first check after it became ready) is already at or above
  its soft limit: such a worker does not recycle before this age (for either limit), so an app
  whose baseline is above the limit cannot loop through restarts, and it logs one warning that the
  limit is below the app's baseline. A worker that reaches its soft limit by *growing* recycles at
  any age (still one at a time): a fast leak reaches the limit well inside any minimum lifetime.
* **Hard limit** (``HARDENED_MEMORY_HARD_LIMIT``, default soft + 25%): at or above it a worker
  that grew there recycles at once, however many others are recycling, because the hard limit
  is the peak bound the operator sizes the container by. "At" counts what the drain will still
  add (:func:`drain_growth`), so the peak, not the reading, stays under it.
* **Never without a replacement**: when no ready replacement can come (say the master is shutting
  down or new workers fail to boot), nothing recycles, not even past the hard limit; the worker
  logs instead, since taking capacity to zero is worse than running big.

"Memory" is ``HARDENED_MEMORY_MEASURE``: ``uss`` (private pages: what the worker would give back
by exiting), ``pss`` or ``rss``. RSS counts copy-on-write pages still shared with the master
(``preload_app``), which is why RSS-based killers recycle the wrong workers.

How it is read (:class:`MemoryWatch`): the RSS (statm, 2 us) is read at *every* check, every
``check_requests`` requests or ``check_interval``, so a fast leak is seen within one step. The
precise measure (smaps_rollup, which walks the page tables: about 13 us per resident MiB) is the
only read that is rate-limited, to ``READ_SHARE`` of the worker's time. Between precise reads
the measure is estimated as ``rss - shared``, where ``shared = rss - precise`` at the last
precise read. Pages shared with the master only ever become private (copy-on-write), never the
other way, so ``USS >= rss - shared``: an estimate at or over a limit proves the measure is over
it, and the worker can recycle at once without a precise read. So:

* ``rss < soft``: the measure is below it too (``USS <= PSS <= RSS``); no precise read.
* estimate ``>= soft`` (or ``>= hard``): decide on the estimate, no precise read.
* ``rss >= soft`` but estimate ``< soft`` (shared pages, e.g. ``preload_app``): a precise read
  if the rate limit allows it, else the estimate.

Before the first precise read ``shared`` is unknown (taken as 0 the estimate would be the RSS,
which proves nothing about USS), so the first check at or over ``soft`` reads precisely; the rate
limit starts with that read. With ``rss`` (or without smaps_rollup) there is no precise read:
``shared`` is 0 and the estimate is the RSS itself.
Two limits of the proof, both small in practice: pages newly mapped *and* shared after the
last precise read (a library loaded late that the master also maps) raise the estimate by their
size; and PSS charges each shared page ``1/sharers``, so with ``pss`` the estimate may run a
little high while more processes come to share the same pages (a sibling forked). statm's
counters may also lag the page tables by a few pages per thread.

Nothing here imports gunicorn or uvicorn; every time is a parameter, so the policy is tested
without sleeping.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from hardened_worker.config import ConfigError

MEASURES = ("uss", "pss", "rss")
HARD_LIMIT_FACTOR = 1.25  # default hard limit = soft limit + 25%
READ_SHARE = 0.02  # most of a worker's time precise (smaps_rollup) reads may take

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryReader:
    """Reads this process's memory from ``/proc/self`` at a few microseconds a call.

    Create it in the worker, after fork: ``/proc/self`` is resolved when the file is opened, so a
    reader opened in the master would report the master's figures forever. The files stay open
    and are read with ``os.pread`` from offset 0 (about 2 us for statm against 17 us for
    open/read/close).

    Without ``/proc/self/statm`` (not Linux, or ``/proc`` hidden) ``rss`` is the peak resident size
    from ``getrusage``, which never goes down (a worker recycles early rather than never), and a
    warning says so once per worker. When ``/proc/self/smaps_rollup`` is missing (kernel before
    4.14) ``uss``/``pss`` fall back to RSS, an over-estimate, so a worker recycles early rather
    than late; ``exact`` is then False so the caller can log that once.
    """

    def __init__(self, measure: str) -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {'|'.join(MEASURES)}, not {measure!r}")
        self.measure = measure
        # os.open fds are non-inheritable (PEP 446): an exec'd child does not keep them.
        self._statm = _open_or_warn(
            "/proc/self/statm",
            "memory is measured as the peak RSS (getrusage), which never goes down",
        )
        self._smaps: int | None = None
        self.exact = True
        if measure != "rss":
            try:
                self._smaps = os.open("/proc/self/smaps_rollup", os.O_RDONLY)
            except OSError:
                self.exact = False

    def rss(self) -> int:
        """Resident bytes (statm's second field), shared pages included."""
        if self._statm < 0:
            return _peak_rss()
        return int(os.pread(self._statm, 256, 0).split()[1]) * _PAGE_SIZE

    def read(self, threshold: int) -> int:
        """The configured measure in bytes, exact only when it matters.

        USS <= PSS <= RSS, so an RSS below ``threshold`` proves the measure is below it too and
        is returned as is (2 us); only at or above it is smaps_rollup walked (about 1 ms, it
        walks the page tables). Pass the lowest limit the caller compares against.
        statm's counters may lag the page tables by a few pages per thread; a worker that is
        that close to its limit is caught at the next check.
        """
        rss = self.rss()
        if rss < threshold:
            return rss
        precise = self.precise()
        return rss if precise is None else precise

    def precise(self) -> int | None:
        """The configured measure from smaps_rollup, in bytes (it walks the page tables).

        None when there is no such read: measure ``rss``, or smaps_rollup missing or in an
        unexpected format (then ``exact`` turns False and the caller uses the RSS).
        """
        if self._smaps is None:
            return None
        try:
            fields = _parse_rollup(_pread_all(self._smaps))
            if self.measure == "pss":
                return fields["Pss"]
            return fields["Private_Clean"] + fields["Private_Dirty"]
        except (OSError, KeyError, ValueError):
            # A kernel with an unexpected format: stay safe (over-estimate) and say so once.
            self._close_smaps()
            self.exact = False
            return None

    def shared_dirty(self) -> int:
        """Written pages still shared with another process (``Shared_Dirty`` of smaps_rollup): for
        a forked worker, the master's heap it has not copied yet. 0 when unknown."""
        if self._smaps is None:
            return 0
        try:
            return _parse_rollup(_pread_all(self._smaps)).get("Shared_Dirty", 0)
        except OSError:
            return 0

    def close(self) -> None:
        if self._statm >= 0:
            os.close(self._statm)
            self._statm = -1
        self._close_smaps()

    def _close_smaps(self) -> None:
        if self._smaps is not None:
            os.close(self._smaps)
            self._smaps = None

    def __enter__(self) -> MemoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_or_warn(path: str, instead: str) -> int:
    """``path`` opened read-only, or -1 after a warning saying what happens ``instead``."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        logging.getLogger("gunicorn.error").warning(
            "hardened_worker: %s is unreadable (%s): %s", path, exc.strerror, instead
        )
        return -1


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def process_rss(pid: int) -> int | None:
    """Another process's resident bytes (``/proc/PID/statm``), None when unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read(256).split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def _pread_all(fd: int) -> bytes:
    # smaps_rollup is usually under a page but may grow with new fields: read until EOF.
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 4096, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _parse_rollup(data: bytes) -> dict[str, int]:
    """``b'Pss:  488 kB'`` lines -> ``{'Pss': 499712}`` (bytes); the header line is skipped."""
    fields = {}
    for line in data.decode("ascii", "replace").splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * 1024
    return fields


@dataclass(frozen=True)
class MemoryLimits:
    """Byte limits and timing, validated: ``0 < soft <= hard``, ``0 <= jitter < 1``."""

    soft: int
    hard: int
    jitter: float = 0.05
    min_lifetime: float = 30.0

    def __post_init__(self) -> None:
        if self.soft <= 0:
            raise ConfigError(
                f"hardened_worker: HARDENED_MEMORY_LIMIT={format_size(self.soft)} must be more "
                f"than 0; use e.g. 512MiB"
            )
        if self.hard < self.soft:
            raise ConfigError(
                f"hardened_worker: HARDENED_MEMORY_HARD_LIMIT={format_size(self.hard)} is below "
                f"HARDENED_MEMORY_LIMIT={format_size(self.soft)}; set it higher or leave it empty "
                f"for the soft limit plus 25%"
            )
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"hardened_worker: memory jitter {self.jitter!r} is not in [0, 1)")

    @classmethod
    def from_settings(
        cls,
        memory_limit: int,
        memory_hard_limit: int | None = None,
        memory_jitter: float = 0.05,
        memory_min_lifetime: float = 30.0,
    ) -> MemoryLimits:
        """From the parsed ``HARDENED_MEMORY_*`` values (``Settings`` attribute names)."""
        hard = (
            memory_hard_limit
            if memory_hard_limit is not None
            else int(memory_limit * HARD_LIMIT_FACTOR)
        )
        return cls(memory_limit, hard, memory_jitter, memory_min_lifetime)


def worker_soft_limit(limits: MemoryLimits, rng_value: float) -> int:
    """This worker's soft limit: ``soft`` lowered by ``rng_value * jitter`` (rng_value in [0, 1)).

    Always within ``[soft * (1 - jitter), soft]``, hence at most ``hard`` and above 0. Only the
    soft limit is jittered; the hard limit is the operator's peak bound and stays exact.
    """
    rng_value = min(max(rng_value, 0.0), 1.0)
    return max(1, min(limits.soft, int(limits.soft * (1.0 - limits.jitter * rng_value))))


class Decision(enum.Enum):
    OK = "ok"  # below the soft limit
    RECYCLE = "recycle"  # soft limit reached and it is this worker's turn
    RECYCLE_HARD = "recycle_hard"  # hard limit reached: recycle now, any age, any turn
    WAIT_TURN = "wait_turn"  # soft limit reached but another worker is recycling for memory
    TOO_YOUNG = "too_young"  # soft limit reached before the minimum lifetime
    BLOCKED_NO_REPLACEMENT = "blocked"  # a limit reached but no ready replacement can come

    @property
    def recycles(self) -> bool:
        return self in (Decision.RECYCLE, Decision.RECYCLE_HARD)


def decide(
    *,
    used: int,
    soft: int,
    hard: int,
    age: float,
    min_lifetime: float,
    baseline_over: bool,
    others_recycling: int,
    replacement_possible: bool,
    drain_growth: int = 0,
) -> Decision:
    """The rule of the module docstring. A limit counts as passed at ``used >= limit``.

    ``soft`` is this worker's jittered soft limit; ``baseline_over`` says whether the worker's
    first reading was already at or above it (only then does ``min_lifetime`` apply);
    ``others_recycling`` counts the *other* workers now recycling for memory. ``drain_growth``
    is what the worker may still grow by once it drains (:func:`drain_growth`): the hard limit
    is passed when ``used + drain_growth`` reaches it, so the peak stays under it.
    """
    if used < soft and used + drain_growth < hard:
        return Decision.OK
    if baseline_over and age < min_lifetime:
        # Before the hard limit too: a baseline over it would make every replacement recycle at
        # once, a loop no limit can stop.
        return Decision.TOO_YOUNG
    if used + drain_growth >= hard:
        return Decision.RECYCLE_HARD if replacement_possible else Decision.BLOCKED_NO_REPLACEMENT
    if others_recycling > 0:
        return Decision.WAIT_TURN
    if not replacement_possible:
        return Decision.BLOCKED_NO_REPLACEMENT
    return Decision.RECYCLE


def drain_growth(per_request: float, connections: int, on_exit: int, cap: int) -> int:
    """Bytes a worker may still add once it starts draining, so that its peak stays under the hard
    limit when the decision counts them in:

    * on each open connection the request in flight ends and one more that the client already
      sent is answered (with Connection: close), each growing the worker by what a request grew
      it lately;
    * ``on_exit``: the pages it still shares with the master (``Shared_Dirty``), which leaving
      copies: the interpreter's finalization writes the reference count of every object the
      master imported. Measured: an idle worker of 82 MiB USS peaked at 89 MiB while exiting,
      its shared dirty pages down from 13 to 6 MiB; under 64 KiB per request, workers decided at
      their 194 MiB hard limit peaked at 200-201 MiB.

    At most ``cap`` (half the way from the soft to the hard limit): one large request, or a
    preloaded app (``--preload``: the whole app shared), must not make a small worker recycle as
    if at its hard limit."""
    requests = max(0.0, per_request) * 2 * max(0, connections)
    return min(max(0, cap), int(requests) + max(0, on_exit))


class MemoryWatch:
    """Per-worker state: when to check, this worker's jittered limit, the baseline, the warning.

    ``due()`` is two compares, cheap enough to call on every request; ``check()`` reads the RSS
    (2 us) every time and decides, as the module docstring says. The precise read walks the page
    tables, about 13 us per resident MiB (7 ms at 512 MiB), so ``check()`` times each one with
    ``clock`` and allows the next only after ``cost / READ_SHARE`` seconds: precise reads take at
    most ``READ_SHARE`` of the worker's time whatever the request rate, while the RSS, and with it
    the estimate that catches a fast leak, is still read every ``check_requests`` requests.
    A ``check_requests`` of 0 turns the request-count trigger off (only the interval counts).
    """

    def __init__(
        self,
        limits: MemoryLimits,
        reader: MemoryReader,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 0.25,
        check_requests: int = 32,
        rng_value: float | None = None,
    ) -> None:
        self.limits = limits
        self.reader = reader
        self._clock = clock
        self.check_interval = check_interval
        self.check_requests = check_requests
        self.soft = worker_soft_limit(limits, random.random() if rng_value is None else rng_value)
        self.started = clock()
        self.baseline_warning_logged = False
        self._baseline: int | None = None  # the first reading
        self._baseline_over = False  # it was at or above the soft limit
        # RSS minus the measure at the last precise read; None until one (then an estimate
        # would prove nothing). With rss, or without smaps_rollup, the RSS is the measure.
        self._shared: int | None = 0 if reader.measure == "rss" or not reader.exact else None
        self._next_precise = self.started  # no precise read before this (READ_SHARE)
        self._next_time = self.started + check_interval
        self._next_requests = check_requests if check_requests > 0 else sys.maxsize
        self.per_request = 0.0  # bytes the RSS grew per request between the last two checks
        self.drain_growth = 0  # drain_growth() at the last check
        self.exit_growth = 0  # pages shared with the master that exiting copies (set at ready)
        self._rss = 0  # read by the last _measure
        self._last: tuple[int, int] | None = None  # (rss, requests) at the last check

    def surely_under(self) -> bool:
        """The RSS alone (statm, 2 us) proves the measure under the soft limit (USS <= PSS <= RSS)
        and, with what the drain may add, under the hard limit. What a check every N requests
        does first, so most requests pay for nothing else."""
        rss = self.reader.rss()
        return rss < self.soft and rss + self.drain_growth < self.limits.hard

    def due(self, now: float, total_requests: int) -> bool:
        return now >= self._next_time or total_requests >= self._next_requests

    def check(
        self,
        now: float,
        total_requests: int,
        pool: Callable[[], tuple[int, bool]],
        connections: int = 0,
    ) -> tuple[Decision, int]:
        """Read memory, schedule the next check, return the decision and the bytes used.

        ``pool()`` returns ``(others_recycling, replacement_possible)`` for :func:`decide`; it reads
        the shared table, so it is called only at or over a limit. ``connections``: open now
        (:func:`drain_growth`).
        """
        self._next_time = now + self.check_interval
        if self.check_requests > 0:
            self._next_requests = total_requests + self.check_requests
        used = self._measure(now)
        self._learn_growth(self._rss, total_requests, connections)
        if self._baseline is None:
            self._baseline = used
            self._baseline_over = used >= self.soft
        over = used >= self.soft or used + self.drain_growth >= self.limits.hard
        others, replaceable = pool() if over else (0, True)
        decision = decide(
            used=used,
            soft=self.soft,
            hard=self.limits.hard,
            age=now - self.started,
            min_lifetime=self.limits.min_lifetime,
            baseline_over=self._baseline_over,
            others_recycling=others,
            replacement_possible=replaceable,
            drain_growth=self.drain_growth,
        )
        return decision, used

    def _learn_growth(self, rss: int, total_requests: int, connections: int) -> None:
        """Growth per request from the RSS (private growth shows in it byte for byte) between
        this check and the last; a check without new requests keeps the last figure."""
        if self._last is not None and total_requests > self._last[1]:
            self.per_request = max(0.0, (rss - self._last[0]) / (total_requests - self._last[1]))
        self._last = (rss, total_requests)
        self.drain_growth = drain_growth(
            self.per_request,
            connections,
            self.exit_growth,
            (self.limits.hard - self.limits.soft) // 2,
        )

    def _measure(self, now: float) -> int:
        """The measure, or a proof of where it stands against ``soft`` (module docstring)."""
        rss = self._rss = self.reader.rss()  # kept for _learn_growth: one read per check
        if rss < self.soft:
            return rss  # USS <= PSS <= RSS: proven under
        if self._shared is not None:
            estimate = max(0, rss - self._shared)
            if estimate >= self.soft or now < self._next_precise:
                return estimate  # proven over, or the best there is until the next precise read
        started = self._clock()
        precise = self.reader.precise()
        self._next_precise = now + (self._clock() - started) / READ_SHARE
        if precise is None:  # no smaps_rollup after all: the RSS, an over-estimate
            self._shared = 0
            return rss
        self._shared = max(0, rss - precise)
        return precise

    def baseline_warning_due(self) -> bool:
        """True exactly once, after the first check of a worker whose baseline (first reading)
        is at or above its soft limit: the limit may be below the app's baseline."""
        if self._baseline_over and not self.baseline_warning_logged:
            self.baseline_warning_logged = True
            return True
        return False


class EveryRequests:
    """Calls ``callback`` every ``period`` requests: an integer countdown, no syscall, no ASGI
    layer of its own: the always-on request layer (``deadline.RequestGuard``'s ``counted``) runs
    :meth:`count` as each HTTP request ends, so with a memory limit a leak is seen within
    ``period`` requests rather than at the next timer tick, at the cost of one call each.

    A callback that raises is logged and the request goes on, never turned into the app's
    error."""

    __slots__ = ("period", "callback", "countdown")

    def __init__(self, period: int, callback: Callable[[], None]) -> None:
        self.period = max(period, 1)
        self.callback = callback
        self.countdown = self.period

    def count(self) -> None:
        self.countdown -= 1
        if self.countdown <= 0:
            self.countdown = self.period
            try:
                self.callback()
            except Exception:
                logging.getLogger("hardened_worker").exception(
                    "hardened_worker: memory check failed"
                )


CGROUP_PRESSURE = 0.9  # fraction of the container's memory limit at which the largest worker leaves


def cgroup_pressure(
    current: int | None, limit: int | None, threshold: float = CGROUP_PRESSURE
) -> bool:
    """True when the container's memory use is at or past ``threshold`` of its limit.

    Unknown figures (no cgroup limit, unreadable files) are never pressure.
    """
    return bool(current is not None and limit and current >= threshold * limit)


def format_size(n: float) -> str:
    """Binary units, as ``ps`` and ``top``: ``512 B``, ``1.5 KiB``, ``131.2 MiB``, ``2.0 GiB``."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4.5 min``, ``26.0 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def recycle_message(
    pid: int,
    used: int,
    limit: int,
    measure: str,
    requests: int,
    uptime: float,
    hard: bool,
    ahead: int = 0,
) -> str:
    """One log line, e.g. ``hardened_worker: worker 1234 recycling: memory uss 131.2 MiB over
    limit 128.0 MiB (soft), 5120 requests served, up 12.3 s``."""
    return f"hardened_worker: worker {pid} recycling: " + recycle_cause(
        used, limit, measure, requests, uptime, hard, ahead
    )


def recycle_cause(
    used: int, limit: int, measure: str, requests: int, uptime: float, hard: bool, ahead: int = 0
) -> str:
    """``memory uss 131.2 MiB over limit 128.0 MiB (soft), 5120 requests served, up 12.3 s``;
    ``ahead``: what its drain may still add (:func:`drain_growth`), named when it counted."""
    grows = f" + {format_size(ahead)} its drain may add" if ahead and used < limit else ""
    return (
        f"memory {measure} {format_size(used)}{grows} over limit {format_size(limit)} "
        f"({'hard' if hard else 'soft'}), {requests} requests served, up {format_duration(uptime)}"
    )


def baseline_message(
    pid: int, used: int, limit: int, measure: str, age: float, min_lifetime: float
) -> str:
    """The one warning of :meth:`MemoryWatch.baseline_warning_due`."""
    return (
        f"hardened_worker: worker {pid} memory {measure} {format_size(used)} is over the limit "
        f"{format_size(limit)} only {format_duration(age)} after start (minimum lifetime "
        f"{format_duration(min_lifetime)}); if that is the app's baseline, raise "
        f"HARDENED_MEMORY_LIMIT"
    )
