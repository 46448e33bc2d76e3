"""Which workers are ready, shared between the master and its workers.

Why shared memory: gunicorn's master knows nothing of readiness, and a worker told to stop on HUP
must know whether its successors are up. The master creates one anonymous ``MAP_SHARED`` mapping in
``Worker.check_config`` (before the first fork), every worker inherits it, and each worker writes
only its own slot; reads copy a slot out (``ctypes``), done on the 100 ms tick or while a worker
waits, never per request. A file-based table in ``--worker-tmp-dir`` would work too but costs
syscalls and leaves files behind when the master is SIGKILLed; the mapping dies with its processes.

The layout is declared once, as ``ctypes`` structures: a header (:class:`_Header`: what the master
and the pool write), :data:`SLOTS` slots (:class:`_Slot`: ``pid, state, start_time, claims, age,
generation, started, changed, reason, memory``), a counters row per slot, and two copies of the
retired row (:class:`_Retired`). ``reason`` (an index into
:data:`hardened_worker._diagnostics.EXIT_REASONS`, plus one) is how the master's ``child_exit`` hook
learns why a worker left; ``memory`` lets the largest worker know it is. ``age`` is gunicorn's spawn
order; ``generation`` counts the master's configuration loads (1 at start, +1 per HUP).

Crash safety (any process may be SIGKILLed at any instant, the OOM killer does not wait):

- *One writer per row.* A worker writes only its own slot and counters row, one aligned 8-byte
  store per field. A dead worker's slot is emptied only by the process that claims it, under the
  lock.
- *Liveness a reused pid cannot fool*: a slot's worker is alive while ``kill(pid, 0)`` finds the pid
  and ``/proc/PID/stat`` field 22 (start time) still equals the ``start_time`` its claimant
  stored. Without ``/proc`` (macOS, a mount namespace hiding it) ``kill(pid, 0)`` alone decides, and
  the master logs one warning saying so.
- *Readers never wait on a writer*: nothing a reader does takes the lock. The retired row exists
  twice; a fold builds the spare copy from the live one plus the departed worker's counts and exit,
  records in it that this slot's claim (``claims``) is folded, then publishes it by one store,
  ``folds + 1`` (``folds % 2`` names the live copy). So every instant is consistent: a slot's row
  counts live while its ``claims`` differs from the live copy's ``folded[slot]``, in the retired
  row once equal, never both, never neither. A fold SIGKILLed before that store leaves the live
  copy untouched (the next claimant folds again, from the start); after it, the claimant has
  nothing left to undo but emptying the slot, which the next claimant repeats. A reader rereads
  ``folds`` after its pass and retries (at most :data:`READ_ATTEMPTS` passes) if a fold landed
  meanwhile; the old design's sequence number, odd while folding, wedged every reader for good
  when a folder died in between. Counts recorded in two steps (``reject``, ``count_accepted``)
  write their mark first: a crash between loses that one count and never doubles it.
- *The lock* (:class:`ProcessLock`, a POSIX record lock through the descriptor every process
  inherits) orders claims, surge turns and loading turns. The kernel releases it when its holder
  dies, it needs no ``/proc`` and survives gunicorn's ``setuid``; see the class for what was
  verified.

``tests/test_table_crash.py`` SIGKILLs a process at every line event of every writer here and then
reads, claims and totals the table from other processes.

Behind the slots, a counters area (observability, see ``COUNTERS``): one row of int64 per slot,
which only that slot's worker writes, with plain stores through a memoryview (no lock, no
syscall): its request counts on its tick (``metrics.Tally``), a shed request or a stall as it
happens; whichever worker answers ``HARDENED_METRICS_PATH`` reads every row lock-free
(:meth:`Table.snapshot`).

The decisions are pure functions of a list of :class:`Peer` so they are tested without processes.
"""

from __future__ import annotations

import ctypes
import enum
import fcntl
import itertools
import logging
import mmap
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

from hardened_worker._diagnostics import EXIT_REASONS
from hardened_worker._lifecycle import Reason


class State(enum.IntEnum):
    FREE = 0
    BOOTING = 1  # importing the app or running lifespan startup
    READY = 2  # lifespan startup done and accepting
    STOPPING = 3  # told to stop; still serving while it waits or delays, then draining
    FAILED = 4  # could not start; about to exit
    WAITING = 5  # rolling reload: forked, waiting for its turn to load the app
    SURGING = 6  # recycling: serving while the master forks its successor (_pool.py)
    RETIRING = 7  # recycling, successor ready: the master stops it first (_pool.py)


@dataclass(frozen=True)
class Peer:
    pid: int
    state: State
    age: int
    generation: int
    started: float
    changed: float
    reason: int = 0  # EXIT_REASONS index + 1, 0 while none is recorded
    memory: int = 0  # bytes, last published (HARDENED_MEMORY_CGROUP ranks workers by it)


# --- pure decisions -------------------------------------------------------------------------


class Gate(enum.Enum):
    RETIRE = "retire"  # no successor is coming, or enough are ready: drain now
    WAIT = "wait"  # successors are still booting: keep serving
    ROLLBACK = "rollback"  # the reload that sent SIGTERM was rejected: keep serving, stop cancelled


@dataclass(frozen=True)
class Reloads:
    """What the master and the newest workers wrote in the table header."""

    generation: int = 1  # the master's current configuration generation (1 + HUPs)
    rejected: int = 0  # newest generation whose workers could not start
    rejected_at: float = 0.0  # time.time() of that rejection
    abandoned: int = 0  # newest generation stopped while booting (shutdown during a reload)


SERVING = (State.READY, State.SURGING, State.STOPPING, State.RETIRING)
LOADED = (State.BOOTING, *SERVING)  # holding the app's memory
RECYCLING = (State.SURGING, State.RETIRING)
# The reasons a surge takes its turn for, as stored in a slot (exit reason index + 1): a worker
# stopped after its surge still holds the app while it drains.
_SURGE_REASONS = frozenset(
    EXIT_REASONS.index(reason.value) + 1
    for reason in (Reason.MAX_REQUESTS, Reason.MAX_LIFETIME, Reason.MEMORY)
)


def recycling(peer: Peer) -> bool:
    """Surging, retiring, or draining after its surge: until it exits, the pool holds one app
    more than its size for it, so no other worker starts a successor meanwhile."""
    return peer.state in RECYCLING or (
        peer.state == State.STOPPING and peer.reason in _SURGE_REASONS
    )


def may_load(peers: Iterable[Peer], workers: int) -> bool:
    """Rolling reload: a new worker loads the app only while fewer than ``workers + 1`` do."""
    return sum(1 for p in peers if p.state in LOADED) < workers + 1


def _rolling_turn(me: Peer, peers: list[Peer], newer: list[Peer], workers: int) -> bool:
    """Rolling reload: the oldest serving old worker leaves once one more successor is ready
    than old workers have already left, so serving capacity stays at ``workers``."""
    serving_old = [p for p in peers if p.generation <= me.generation and p.state == State.READY]
    if any(p.age < me.age for p in serving_old):
        return False
    departed = workers - (len(serving_old) + 1)
    return sum(1 for p in newer if p.state == State.READY) >= departed + 1


def retirement_gate(
    me: Peer, peers: Iterable[Peer], reloads: Reloads, stop_requested: float, rolling: int = 0
) -> Gate:
    """Decide what worker ``me``, sent SIGTERM at ``stop_requested`` (time.time()), does now.

    "Enough" successors: every newer worker has finished booting and at least one of them is
    ready. The old generation then leaves together, as gunicorn intends, but only once the new
    one serves. If the reload that sent SIGTERM was rejected, the stop is cancelled: the master
    stops re-sending SIGTERM once the failed workers are gone, because its worker count is met.
    Which SIGTERM belongs to that reload is a matter of order, not of a time window: the master
    sends it right after forking the new workers, and re-sends it only while one of them is still
    there (it reaps an exited worker before it counts them again); each failed worker refreshes
    ``rejected_at`` as it exits. So a SIGTERM that arrived no later than the last failure's exit,
    or while a failed successor is still alive, is the rejected reload's; a later one (a shutdown,
    TTOU) is a real stop.

    With ``rolling`` (the configured worker count, 0 for off) old workers leave one at a time
    instead, each as one more successor becomes ready (uWSGI's chain reload, Puma's phased
    restart); successors load one at a time too (:func:`may_load`), so at most ``rolling + 1``
    workers hold the app's memory.

    A reload is pending from the moment the master's generation is newer than ours, even before
    the new workers have claimed their slots (they are forked as we are signalled). A worker that
    no successor can replace (TTOU, a plain shutdown, a replacement that already came up, a reload
    abandoned by a shutdown) retires at once.
    """
    # By generation, not age: the old generation's own younger workers are not successors.
    peers = list(peers)
    newer = [p for p in peers if p.generation > me.generation]
    if rolling and newer and _rolling_turn(me, peers, newer, rolling):
        return Gate.RETIRE
    if _rolled_back(me, newer, reloads, stop_requested):
        return Gate.ROLLBACK
    if any(p.state in (State.BOOTING, State.WAITING) for p in newer):
        return Gate.WAIT
    if (
        rolling
        and any(p.state == State.READY for p in newer)
        and not _rolling_turn(me, peers, newer, rolling)
    ):
        return Gate.WAIT  # an older worker of ours leaves first
    if any(p.state == State.READY for p in newer):
        return Gate.RETIRE
    settled = max(reloads.rejected, reloads.abandoned)
    successors_seen = any(p.generation == reloads.generation for p in newer)
    if reloads.generation > me.generation and settled < reloads.generation and not successors_seen:
        return Gate.WAIT
    return Gate.RETIRE


def _rolled_back(me: Peer, newer: list[Peer], reloads: Reloads, stop_requested: float) -> bool:
    """The reload that superseded ``me`` is rejected and nothing of it serves. Workers of the
    rejected generation still booting count like failed ones: once one has failed, the master
    forks the same code again only to fill the pool (paced by the crash-loop pause), and an old
    worker waiting for them would wait until its deadline and leave: an outage."""
    if reloads.rejected <= me.generation or any(p.state == State.READY for p in newer):
        return False
    rejected = (State.FAILED, State.BOOTING, State.WAITING)
    return (
        any(p.generation <= reloads.rejected and p.state in rejected for p in newer)
        or reloads.rejected_at >= stop_requested
    )


def has_older_live(me: int, peers: Iterable[Peer]) -> bool:
    """A failed worker with an older, serving sibling must not halt the master (exit 3)."""
    return any(p.age < me and p.state in SERVING for p in peers)


# --- the shared table -----------------------------------------------------------------------

SLOTS = 512

# The counters area (observability): after the slots, one row of int64 per slot, written only by
# that slot's worker with plain stores through a memoryview (no lock, no syscall; the request
# counts are copied in on the worker's tick, metrics.Tally), read lock-free by whichever worker
# answers the metrics path. Then the pool's "retired" row: what workers that have left counted,
# folded in by the process that reuses (or frees) a dead worker's slot, so a recycled worker's
# requests stay in the totals.
# Histogram buckets (seconds) are Prometheus' default ones, +Inf last.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
C_REQUESTS, C_INFLIGHT, C_DURATION_US, C_STALLS, C_PHASE, C_MEMORY, C_BUCKET0 = range(7)
C_BEAT = C_BUCKET0 + len(BUCKETS) + 1  # monotonic_ms() at the worker's last tick
COUNTERS = 30  # per slot; C_BUCKET0 .. C_BUCKET0 + len(BUCKETS) are the buckets
C_SHED = C_BEAT + 1  # requests HARDENED_MAX_QUEUE_TIME answered 503
# The accept policy (hardened_worker/_spread.py) and the status: gauges, not folded, written on
# every change. C_CONNECTIONS: connections open; C_ACCEPT: 0 not accepting (booting, at
# HARDENED_MAX_INFLIGHT, draining), 1 listening, 2 yielding the accept to a sibling that holds
# fewer, 3 accepting whatever the counts (churn).
C_CONNECTIONS = C_SHED + 1
C_ACCEPT = C_SHED + 2
# Requests by the class of their status, 1xx .. 5xx (metrics.Tally): five counters, folded.
C_STATUS0 = C_ACCEPT + 1
FOLDED = (
    C_REQUESTS,
    C_DURATION_US,
    C_STALLS,
    *range(C_BUCKET0, C_BUCKET0 + len(BUCKETS) + 1),
    C_SHED,
    *range(C_STATUS0, C_STATUS0 + 5),
)
assert C_STATUS0 + 5 <= COUNTERS
# The retired row: in a snapshot R_SEQ is the fold version it was read at (see the module
# docstring); then the newest generation counted as an accepted reload, the reload counts, a ring
# of the last exits (pid, reason, time), exits by reason (EXIT_REASONS index + 1; 0: none
# recorded), then the folded counters.
R_SEQ, R_ACCEPTED_GEN, R_ACCEPTED, R_REJECTED, R_RING_NEXT = range(5)
RING = 8
R_RING = 8
R_EXITS = R_RING + 3 * RING
EXIT_KINDS = 16  # room for EXIT_REASONS + 1
R_TOTALS = R_EXITS + EXIT_KINDS
RETIRED = R_TOTALS + COUNTERS
# A reader retries this many times when a fold lands while it reads, then answers with its last
# read: it never waits for a writer.
READ_ATTEMPTS = 3


class _Header(ctypes.Structure):
    """What the master and the pool as a whole write, one 8-byte field each (single stores)."""

    _fields_ = [
        ("generation", ctypes.c_int64),  # the master's configuration loads (record_spawn)
        ("rejected", ctypes.c_int64),  # newest generation whose workers could not start
        ("rejected_at", ctypes.c_double),  # time.time() of that rejection
        ("abandoned", ctypes.c_int64),  # newest generation stopped while booting
        ("failed_at", ctypes.c_double),  # time.time() of the last failed start
        ("folds", ctypes.c_int64),  # fold version: retired copy folds % 2 is the live one
        ("wanted", ctypes.c_int64),  # the master's num_workers, on every pass (record_wanted)
    ]


class _Slot(ctypes.Structure):
    """One worker's row. ``pid`` comes first and its claimant writes it last, so a reader that
    sees a pid sees the rest of that claim (x86-64 keeps stores in order, the reader copies the
    slot from its start)."""

    _fields_ = [
        ("pid", ctypes.c_int32),  # 0: free
        ("state", ctypes.c_int32),  # State
        ("start_time", ctypes.c_uint64),  # /proc/PID/stat field 22 at claim; 0: unknown
        ("claims", ctypes.c_int64),  # +1 per claim; the retired copy's ``folded`` marks a fold
        ("age", ctypes.c_int64),
        ("generation", ctypes.c_int64),
        ("started", ctypes.c_double),
        ("changed", ctypes.c_double),
        ("reason", ctypes.c_int64),  # EXIT_REASONS index + 1, 0 while none is recorded
        ("memory", ctypes.c_int64),  # bytes, last published
    ]


class _Retired(ctypes.Structure):
    """What departed workers counted (``row``, indexed by ``R_*``), and for each slot the claim
    whose counts it holds (``folded``): a slot's counters are counted live while its ``claims``
    differs from ``folded[slot]``, in ``row`` once they are equal."""

    _fields_ = [("row", ctypes.c_int64 * RETIRED), ("folded", ctypes.c_int64 * SLOTS)]


def _aligned(size: int) -> int:
    return (size + 7) // 8 * 8


def monotonic_ms() -> int:
    """The clock of ``C_BEAT`` (CLOCK_MONOTONIC is the same in every process of the host)."""
    return int(time.monotonic() * 1000)


class Table:
    """Fixed-size table of worker slots in an anonymous shared mapping (see the module docstring)."""

    def __init__(self) -> None:
        slots_at = _aligned(ctypes.sizeof(_Header))
        self._counters_at = slots_at + SLOTS * ctypes.sizeof(_Slot)
        retired_at = self._counters_at + SLOTS * COUNTERS * 8
        self._map = mmap.mmap(-1, retired_at + 2 * ctypes.sizeof(_Retired))
        self._header = _Header.from_buffer(self._map, 0)
        self._slots = (_Slot * SLOTS).from_buffer(self._map, slots_at)
        self._copies = (_Retired * 2).from_buffer(self._map, retired_at)
        self._all = memoryview(self._map).cast("q")
        # Every slot's pid as a strided int32 view: scanned in C (itertools.compress,
        # ``in``), so a scan costs no Python step per empty slot.
        stride = ctypes.sizeof(_Slot) // 4
        words = memoryview(self._map).cast("i")
        self._pids = words[slots_at // 4 + _Slot.pid.offset // 4 :: stride][:SLOTS]
        self._lock = ProcessLock()
        self._slot: int | None = None
        self._private = memoryview(bytearray(COUNTERS * 8)).cast("q")  # no slot: counted nowhere
        self.token = os.urandom(6).hex()  # this pool's, apart from any other's (wake sockets)
        self._mine: tuple = (None, self._private)  # (slot, its row), for counters()
        process_start(os.getpid())  # in the master: says once if /proc cannot tell pids apart

    # --- slots ----------------------------------------------------------------------------------

    def _occupied(self) -> list[int]:
        """Indexes of the slots that hold a pid (live or not), at the moment of the scan."""
        return list(itertools.compress(range(SLOTS), self._pids))

    def _read(self, index: int) -> Peer:
        slot = _Slot.from_buffer_copy(self._slots[index])
        return _peer(slot)

    def _live(self, slot: _Slot) -> bool:
        return bool(slot.pid) and is_running(slot.pid, slot.start_time)

    def _folded(self, index: int) -> bool:
        """Are slot ``index``'s counts in the retired row already (its current claim folded)?"""
        return self._live_copy().folded[index] == self._slots[index].claims

    def _reusable(self, index: int) -> bool:
        """Free, or its worker is gone (a surge it left unfinished needs nothing: the master
        counts surges from live workers only, hardened_worker/_pool.py)."""
        slot = _Slot.from_buffer_copy(self._slots[index])
        return not slot.pid or not self._live(slot)

    def claim(self, age: int, generation: int) -> None:
        """Take a slot for this process (called in the worker after fork)."""
        start = process_start(os.getpid())
        with self._lock:
            for probe in range(SLOTS):
                index = (age + probe) % SLOTS
                if self._reusable(index):
                    self._release(index)
                    self._occupy(index, age, generation, start)
                    return
        # More live workers than slots: readiness degrades to "no gating" for this worker.

    def _release(self, index: int) -> None:
        """Under the lock: fold a departed worker's counts (once), then empty its slot. Each step
        leaves the table consistent, so a crash anywhere here is finished by the next claimant."""
        if not self._folded(index):
            self._fold(index)
        slot = self._slots[index]
        slot.pid = 0  # from here on the slot is free; its exit is on record
        slot.state = State.FREE
        self._row(index)[:] = _ZEROS  # folded: this row counts nowhere until the next claim

    def _occupy(self, index: int, age: int, generation: int, start: int) -> None:
        """Under the lock, on a released slot: the claim, published by the pid written last."""
        slot = self._slots[index]
        slot.claims += 1  # not folded any more: the (zeroed) row counts live from now on
        now = time.time()
        slot.start_time, slot.age, slot.generation = start, age, generation
        slot.started, slot.changed, slot.reason, slot.memory = now, now, 0, 0
        slot.state = State.BOOTING
        slot.pid = os.getpid()
        self._slot = index

    def set_state(self, state: State) -> None:
        if self._slot is not None:
            slot = self._slots[self._slot]
            slot.changed = time.time()
            slot.state = state

    def set_reason(self, reason: int) -> None:
        if self._slot is not None:
            self._slots[self._slot].reason = reason + 1

    def set_memory(self, used: int) -> None:
        if self._slot is not None:
            self._slots[self._slot].memory = used

    def left_since(self, reason: int, since: float) -> bool:
        """Did a worker stop for ``reason`` after ``since`` (time.time())? Gone ones count too."""
        for index in self._occupied():
            peer = self._read(index)
            if (
                peer.reason == reason + 1
                and peer.state in (State.STOPPING, State.FREE)
                and peer.changed >= since
            ):
                return True
        return False

    def reason_of(self, pid: int) -> int | None:
        """The exit reason a (just exited) worker recorded, read in the master. Its pid cannot
        have been reused yet (the master has only just reaped it); of older slots of that pid,
        the latest change wins."""
        found = [
            peer for peer in map(self._read, self._occupied()) if peer.pid == pid and peer.reason
        ]
        return max(found, key=lambda peer: peer.changed).reason - 1 if found else None

    def take_surge_turn(self, reason: int) -> bool:
        """Start recycling (state SURGING) for ``reason`` unless another live worker recycles.

        Atomic across workers (the table lock), so recycles go one at a time across the pool; a
        recycling worker SIGKILLed meanwhile no longer counts (its pid is gone).
        """
        with self._lock:
            if any(recycling(p) for p in self.peers()):
                return False
            self.set_state(State.SURGING)
            self.set_reason(reason)
            return True

    def recycling(self) -> int:
        """How many other live workers are recycling (lock-free read)."""
        return sum(1 for p in self.peers() if recycling(p))

    def state_of(self, pid: int, age: int) -> State:
        """The state worker ``pid`` published, read in the master. A dead worker's slot that
        holds the same (reused) pid is passed over; with no live one (the worker already left),
        the first slot of that pid from ``age`` on, where its claim started looking."""
        found = sorted(
            (index for index in self._occupied() if self._pids[index] == pid),
            key=lambda index: (index - age) % SLOTS,
        )
        slots = [_Slot.from_buffer_copy(self._slots[index]) for index in found]
        chosen = [slot for slot in slots if self._live(slot)] or slots
        return State(chosen[0].state) if chosen else State.FREE

    def try_load(self, workers: int) -> bool:
        """Rolling reload: take a loading turn atomically (see :func:`may_load`)."""
        with self._lock:
            if not may_load(self.peers(), workers):
                return False
            self.set_state(State.BOOTING)
            return True

    def peers(self) -> list[Peer]:
        """Live workers other than this process."""
        me = os.getpid()
        found = []
        for index in self._occupied():
            slot = _Slot.from_buffer_copy(self._slots[index])
            if slot.pid and slot.pid != me and slot.state != State.FREE and self._live(slot):
                found.append(_peer(slot))
        return found

    def me(self) -> Peer | None:
        return None if self._slot is None else self._read(self._slot)

    # --- the header -----------------------------------------------------------------------------

    def reloads(self) -> Reloads:
        h = _Header.from_buffer_copy(self._header)
        return Reloads(h.generation, h.rejected, h.rejected_at, h.abandoned)

    def record_spawn(self, generation: int) -> None:
        """Called by the master (the only writer of this field) before each fork."""
        self._header.generation = generation

    def record_wanted(self, workers: int) -> None:
        """Called by the master (the only writer) on every pass: its ``num_workers``."""
        self._header.wanted = workers

    def wanted(self) -> int:
        """How many workers the master keeps, surges aside (0 until it has said)."""
        return self._header.wanted

    def reject(self, generation: int) -> bool:
        """Record a rejected generation; True for the first caller, so one line says so."""
        with self._lock:
            first = self._header.rejected < generation
            if first:
                # The mark before the count: a crash between them loses the count, never doubles it.
                self._header.rejected = generation
                self._live_copy().row[R_REJECTED] += 1
            self._header.rejected_at = time.time()
        return first

    def abandon(self, generation: int) -> None:
        """A booting worker was told to stop: its generation will not come."""
        with self._lock:
            if self._header.abandoned < generation:
                self._header.abandoned = generation

    def record_failure(self) -> float:
        """Note a failed start; return how long ago the previous one was (inf if never)."""
        now = time.time()
        with self._lock:
            previous = self._header.failed_at
            self._header.failed_at = now
        return now - previous if previous else float("inf")

    # --- counters (see COUNTERS) ----------------------------------------------------------------

    def _row(self, index: int) -> memoryview:
        start = self._counters_at // 8 + index * COUNTERS
        return self._all[start : start + COUNTERS]

    def counters(self) -> memoryview:
        """This worker's counter row (int64s, ``C_*``): the worker's to write, no lock needed."""
        if self._slot is None:
            return self._private
        if self._mine[0] != self._slot:
            self._mine = (self._slot, self._row(self._slot))
        return self._mine[1]

    def sibling_rows(self) -> list[tuple[int, memoryview]]:
        """(pid, counter row) of every other live worker with a slot, for the accept policy
        (``C_CONNECTIONS``, ``C_ACCEPT``): a scan of the slots, done on the tick, not per request."""
        me = os.getpid()
        found = []
        for index in self._occupied():
            slot = _Slot.from_buffer_copy(self._slots[index])
            if slot.pid and slot.pid != me and slot.state != State.FREE and self._live(slot):
                found.append((slot.pid, self._row(index)))
        return found

    # --- the retired row ------------------------------------------------------------------------

    def _live_copy(self) -> _Retired:
        return self._copies[self._header.folds % 2]

    def _fold(self, index: int) -> None:
        """Under the lock: a departed worker's counts and exit into the retired row, at once.

        Built in the spare copy and published by one store (``folds + 1``), which also marks the
        slot's claim folded: a crash before that store leaves only the spare copy half written
        (the next fold starts it again from the live one); after it, nothing is left to undo.
        """
        folds = self._header.folds
        live, spare = self._copies[folds % 2], self._copies[(folds + 1) % 2]
        ctypes.memmove(ctypes.addressof(spare), ctypes.addressof(live), ctypes.sizeof(_Retired))
        row, totals = self._row(index), spare.row
        for field in FOLDED:
            totals[R_TOTALS + field] += row[field]
        slot = _Slot.from_buffer_copy(self._slots[index])
        if slot.pid:
            _record_exit(totals, slot)
        spare.folded[index] = slot.claims
        self._header.folds = folds + 1

    def count_accepted(self, generation: int) -> bool:
        """The first ready worker of a generation after the first: one accepted reload."""
        if generation <= max(1, self._live_copy().row[R_ACCEPTED_GEN]):
            return False
        with self._lock:
            row = self._live_copy().row  # folds only happen under this lock: stays live meanwhile
            if generation <= max(1, row[R_ACCEPTED_GEN]):
                return False
            row[R_ACCEPTED_GEN] = (
                generation  # the mark first: a crash loses the count, never doubles it
            )
            row[R_ACCEPTED] += 1
        return True

    def snapshot(self) -> Snapshot:
        """Every slot not yet folded with its counters, and the retired row, read lock-free.

        Consistent with respect to folds unless a fold lands during each of ``READ_ATTEMPTS``
        reads (then the last read: a departed worker's counts may show twice or not at all in
        that one answer). A reader never waits on a writer.
        """
        for _ in range(READ_ATTEMPTS):
            folds = self._header.folds
            copy = _Retired.from_buffer_copy(self._copies[folds % 2])
            slots = tuple(
                self._view(index)
                for index in self._occupied()
                if self._slots[index].claims != copy.folded[index]
            )
            if self._header.folds == folds:
                break
        retired = (folds, *copy.row[1:])
        return Snapshot(slots, retired, self.reloads())

    def _view(self, index: int) -> SlotView:
        slot = _Slot.from_buffer_copy(self._slots[index])
        return SlotView(_peer(slot), self._live(slot), tuple(self._row(index)))


_ZEROS = memoryview(bytes(COUNTERS * 8)).cast("q")


def _peer(slot: _Slot) -> Peer:
    return Peer(
        slot.pid,
        State(slot.state),
        slot.age,
        slot.generation,
        slot.started,
        slot.changed,
        slot.reason,
        slot.memory,
    )


def _record_exit(totals: ctypes.Array, slot: _Slot) -> None:
    """A departed worker's exit in the (spare) retired row: by reason and in the ring."""
    totals[R_EXITS + min(slot.reason, EXIT_KINDS - 1)] += 1
    at = R_RING + 3 * (totals[R_RING_NEXT] % RING)
    totals[at], totals[at + 1], totals[at + 2] = slot.pid, slot.reason, int(slot.changed)
    totals[R_RING_NEXT] += 1


@dataclass(frozen=True)
class SlotView:
    peer: Peer
    alive: bool
    counters: tuple  # the slot's counter row (C_*)


@dataclass(frozen=True)
class Snapshot:
    """The whole table at one moment, for the metrics renderer (pure from here on)."""

    slots: tuple  # of SlotView, occupied slots only (live, or dead and not yet folded)
    retired: tuple  # the retired row (R_*)
    reloads: Reloads


class ProcessLock:
    """A lock between processes that needs no ``/proc``, survives ``setuid`` and that a SIGKILLed
    holder cannot leave held: a POSIX record lock (``fcntl.lockf``, F_SETLKW) on an unlinked
    temporary file opened once, in the master, and used through the inherited descriptor.

    Record locks belong to the process, not to the open file description: a forked child does not
    inherit its parent's lock, and two processes sharing one descriptor exclude each other. The
    kernel drops a process's locks when it dies. Verified on Linux 6.18 (tests/test_table_crash.py
    ``test_the_lock_*``): a child using the parent's descriptor is refused (EAGAIN) while the
    parent holds it; a child's unlock does not release the parent's lock; a SIGKILLed holder's
    lock is free at once; after ``setuid(nobody)`` the inherited descriptor still locks, where
    re-opening ``/proc/self/fd/N`` (the flock design this replaces) raises PermissionError.

    Two caveats of record locks. Threads of one process share them (a second thread "gets" a lock
    its process holds), so only a worker's main thread takes it and every reader is lock-free (the
    master's watchdog thread reads). Closing any descriptor of the file drops the process's locks,
    so the file is never opened a second time.
    """

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(
            prefix="hardened-worker-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        os.unlink(path)
        self._fd = fd

    def __enter__(self) -> ProcessLock:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


# --- liveness -------------------------------------------------------------------------------

_proc_missing_said = False


def process_start(pid: int) -> int:
    """Process ``pid``'s start time (clock ticks after boot, field 22 of ``/proc/PID/stat``), 0
    when it cannot be read. The first time ``/proc`` cannot even show this process, says once
    (per pool: the master asks first) that liveness falls back to ``kill(pid, 0)``."""
    global _proc_missing_said
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        if not _proc_missing_said and not os.path.exists(f"/proc/{os.getpid()}/stat"):
            _proc_missing_said = True
            logging.getLogger("gunicorn.error").warning(
                "hardened_worker: /proc/PID/stat is unreadable: a worker's liveness is checked "
                "with kill(pid, 0) alone, which takes a reused pid for the worker that had it"
            )
        return 0
    # comm (field 2) may hold spaces and parentheses: count the fields after its last ")".
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def is_running(pid: int, start_time: int = 0) -> bool:
    """Is the process that had ``start_time`` (0: unknown) as ``pid`` still there (a zombie
    counts)? ``kill(pid, 0)`` first: a free pid costs one syscall; a taken one is compared by
    start time, so a reused pid is not taken for the worker that had it."""
    if not alive(pid):
        return False
    if not start_time:
        return True
    now = process_start(pid)
    return now == start_time or not now  # unreadable (no /proc, hidepid): kill's answer stands


def alive(pid: int) -> bool:
    """Is some process ``pid`` there (a zombie counts)? See :func:`is_running` for the one that
    had it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
