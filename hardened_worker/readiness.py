"""Which workers are ready, shared between the master and its workers.

Why shared memory: gunicorn's master knows nothing of readiness, and a worker told to stop on HUP
must know whether its successors are up. The master creates one anonymous ``MAP_SHARED`` mapping in
``Worker.check_config`` (before the first fork), every worker inherits it, and each worker writes
only its own slot; reads are a few ``struct.unpack_from`` calls, done on the 100 ms tick or while a
worker waits, never per request. A file-based table in ``--worker-tmp-dir`` would work too but costs
syscalls and leaves files behind when the master is SIGKILLed; the mapping dies with its processes.

A slot holds ``pid, state, age, generation, started, changed, reason, memory``; ``reason`` (an
index into :data:`hardened_worker.diagnostics.EXIT_REASONS`, plus one) is how the master's
``child_exit`` hook learns why a worker left; ``memory`` lets the largest worker know it is. ``age`` is gunicorn's spawn order;
``generation`` counts the master's configuration loads (1 at start, +1 per HUP). A slot whose pid
no longer exists is free, so a SIGKILLed worker needs no clean-up.

Behind the slots, a counters area (observability, see ``COUNTERS``): one row of int64 per slot,
which only that slot's worker writes, with plain stores through a memoryview (no lock, no
syscall): its request counts on its tick (``metrics.Tally``), a shed request or a stall as it
happens; whichever worker answers ``HARDENED_METRICS_PATH`` reads every row lock-free
(:meth:`Table.snapshot`). A departed worker's counts are folded into the pool's retired row under
the lock, by the worker that reuses its slot, with a sequence number readers retry on, so a total
never counts a worker twice or not at all.

The decisions are pure functions of a list of :class:`Peer` so they are tested without processes.
"""

from __future__ import annotations

import enum
import mmap
import fcntl
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable


class State(enum.IntEnum):
    FREE = 0
    BOOTING = 1  # importing the app or running lifespan startup
    READY = 2  # lifespan startup done and accepting
    STOPPING = 3  # told to stop; still serving while it waits or delays, then draining
    FAILED = 4  # could not start; about to exit
    WAITING = 5  # rolling reload: forked, waiting for its turn to load the app
    SURGING = 6  # recycling: serving while the successor it asked the master for starts
    RETIRING = 7  # recycling, successor ready: the master's next TTOU victim (see _gunicorn.py)


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


def retirement_gate(me: Peer, peers: Iterable[Peer], reloads: Reloads, stop_requested: float,
                    rolling: int = 0) -> Gate:
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
    if any(p.state in (State.BOOTING, State.WAITING) for p in newer):
        return Gate.WAIT
    if rolling and any(p.state == State.READY for p in newer) and not _rolling_turn(
            me, peers, newer, rolling):
        return Gate.WAIT  # an older worker of ours leaves first
    if any(p.state == State.READY for p in newer):
        return Gate.RETIRE
    if reloads.rejected > me.generation and (
            any(p.state == State.FAILED for p in newer)
            or reloads.rejected_at >= stop_requested):
        return Gate.ROLLBACK
    settled = max(reloads.rejected, reloads.abandoned)
    successors_seen = any(p.generation == reloads.generation for p in newer)
    if reloads.generation > me.generation and settled < reloads.generation and not successors_seen:
        return Gate.WAIT
    return Gate.RETIRE


def has_older_live(me: int, peers: Iterable[Peer]) -> bool:
    """A failed worker with an older, serving sibling must not halt the master (exit 3)."""
    return any(p.age < me and p.state in SERVING for p in peers)


# --- the shared table -----------------------------------------------------------------------

_SLOT = struct.Struct("=iiqqddiq")
_PID_STATE = struct.Struct("=ii")  # the head of a slot
# generation, rejected generation, rejected at, abandoned generation, time of the last failed start,
# age of the newest worker the master created
_HEADER = struct.Struct("=qqdqdq")
_HEADER_FIELDS = ("generation", "rejected", "rejected_at", "abandoned", "failed_at", "newest_age")
SLOTS = 512

# The counters area (observability): after the slots, one row of int64 per slot, written only by
# that slot's worker with plain stores through a memoryview (no lock, no syscall; the request
# counts are copied in on the worker's tick, metrics.Tally), read lock-free by whichever worker
# answers the metrics path. Then the pool's "retired" row: what workers that have left counted,
# folded in under the lock by the worker that reuses (or frees) a dead worker's slot, so a
# recycled worker's requests stay in the totals.
# Histogram buckets (seconds) are Prometheus' default ones, +Inf last.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
C_REQUESTS, C_INFLIGHT, C_DURATION_US, C_STALLS, C_PHASE, C_MEMORY, C_BUCKET0 = range(7)
C_BEAT = C_BUCKET0 + len(BUCKETS) + 1  # monotonic_ms() at the worker's last tick
COUNTERS = 26  # per slot; C_BUCKET0 .. C_BUCKET0 + len(BUCKETS) are the buckets
C_SHED = C_BEAT + 1  # requests HARDENED_MAX_QUEUE_TIME answered 503
# The accept policy (hardened_worker/spread.py) and the status: gauges, not folded, written on
# every change. C_CONNECTIONS: connections open; C_ACCEPT: 0 not accepting (booting, at
# HARDENED_MAX_INFLIGHT, draining), 1 listening, 2 yielding the accept to a sibling that holds
# fewer, 3 accepting whatever the counts (churn).
C_CONNECTIONS = C_SHED + 1
C_ACCEPT = C_SHED + 2
FOLDED = (C_REQUESTS, C_DURATION_US, C_STALLS, *range(C_BUCKET0, C_BUCKET0 + len(BUCKETS) + 1), C_SHED)
assert C_ACCEPT < COUNTERS
# The retired row: a sequence number (odd while a fold is in progress: readers retry), the newest
# generation counted as an accepted reload, the reload counts, a ring of the last exits (pid,
# reason, time), exits by reason (EXIT_REASONS index + 1; 0: none recorded), then the folded counters.
R_SEQ, R_ACCEPTED_GEN, R_ACCEPTED, R_REJECTED, R_RING_NEXT = range(5)
RING = 8
R_RING = 8
R_EXITS = R_RING + 3 * RING
EXIT_KINDS = 16  # room for EXIT_REASONS + 1
R_TOTALS = R_EXITS + EXIT_KINDS
RETIRED = R_TOTALS + COUNTERS


def monotonic_ms() -> int:
    """The clock of ``C_BEAT`` (CLOCK_MONOTONIC is the same in every process of the host)."""
    return int(time.monotonic() * 1000)


class Table:
    """Fixed-size table of worker slots in an anonymous shared mapping."""

    def __init__(self) -> None:
        self._counters_at = _HEADER.size + SLOTS * _SLOT.size
        self._retired_at = self._counters_at + SLOTS * COUNTERS * 8
        self._map = mmap.mmap(-1, self._retired_at + RETIRED * 8)
        self._lock = FileLock()
        self._slot: int | None = None
        self._all = memoryview(self._map).cast("q")  # type: ignore[arg-type]
        self._retired = self._all[self._retired_at // 8:]
        self._private = memoryview(bytearray(COUNTERS * 8)).cast("q")  # no slot: counted nowhere
        self.token = os.urandom(6).hex()  # this pool's, apart from any other's (wake sockets)
        self._mine: tuple = (None, self._private)  # (slot, its row), for counters()

    def _offset(self, index: int) -> int:
        return _HEADER.size + index * _SLOT.size

    def _read(self, index: int) -> Peer:
        pid, state, age, generation, started, changed, reason, memory = _SLOT.unpack_from(
            self._map, self._offset(index))
        return Peer(pid, State(state), age, generation, started, changed, reason, memory)

    def claim(self, age: int, generation: int) -> None:
        """Take a slot for this process (called in the worker after fork)."""
        now = time.time()
        with self._lock:
            for probe in range(SLOTS):
                index = (age + probe) % SLOTS
                peer = self._read(index)
                # A dead worker's SURGING slot is kept for adopt_orphaned_surge.
                if peer.pid == 0 or (peer.state != State.SURGING and not _alive(peer.pid)):
                    self._fold(index, peer)
                    _SLOT.pack_into(self._map, self._offset(index), os.getpid(), State.BOOTING,
                                    age, generation, now, now, 0, 0)
                    self._slot = index
                    return
        # More live workers than slots: readiness degrades to "no gating" for this worker.

    def set_state(self, state: State) -> None:
        if self._slot is None:
            return
        offset = self._offset(self._slot)
        fields = list(_SLOT.unpack_from(self._map, offset))
        fields[1], fields[5] = state, time.time()
        _SLOT.pack_into(self._map, offset, *fields)

    def _set_field(self, index: int, value: int) -> None:
        if self._slot is not None:
            offset = self._offset(self._slot)
            fields = list(_SLOT.unpack_from(self._map, offset))
            fields[index] = value
            _SLOT.pack_into(self._map, offset, *fields)

    def set_reason(self, reason: int) -> None:
        self._set_field(6, reason + 1)

    def set_memory(self, used: int) -> None:
        self._set_field(7, used)

    def left_since(self, reason: int, since: float) -> bool:
        """Did a worker stop for ``reason`` after ``since`` (time.time())? Gone ones count too."""
        for index in range(SLOTS):
            peer = self._read(index)
            if peer.reason == reason + 1 and peer.state in (State.STOPPING, State.FREE) \
                    and peer.changed >= since:
                return True
        return False

    def reason_of(self, pid: int) -> int | None:
        """The exit reason a (just exited) worker recorded, read in the master."""
        for index in range(SLOTS):
            fields = _SLOT.unpack_from(self._map, self._offset(index))
            if fields[0] == pid and fields[6]:
                return fields[6] - 1
        return None

    def take_surge_turn(self, reason: int) -> bool:
        """Start recycling (state SURGING) for ``reason`` unless another live worker recycles.

        Atomic across workers (the table lock), so recycles go one at a time across the pool; a
        recycling worker SIGKILLed meanwhile no longer counts (its pid is gone).
        """
        with self._lock:
            if any(p.state in RECYCLING for p in self.peers()):
                return False
            self.set_state(State.SURGING)
            self.set_reason(reason)
            return True

    def adopt_orphaned_surge(self) -> Peer | None:
        """A worker that died SURGING (it asked the master for a successor, TTIN, and never for
        one fewer), its slot now freed; None if there is none. The caller sends that TTOU, or the
        pool keeps one worker too many for good."""
        if not any(self._read(i).state == State.SURGING for i in range(SLOTS)):
            return None  # the common case, without the lock
        with self._lock:
            for index in range(SLOTS):
                peer = self._read(index)
                if peer.state == State.SURGING and not _alive(peer.pid):
                    self._fold(index, peer)
                    _SLOT.pack_into(self._map, self._offset(index), 0, State.FREE, 0, 0, 0, 0, 0, 0)
                    return peer
        return None

    def recycling(self) -> int:
        """How many other live workers are recycling (lock-free read)."""
        return sum(1 for p in self.peers() if p.state in RECYCLING)

    def state_of(self, pid: int, age: int) -> State:
        """The state worker ``pid`` published, read in the master (its slot search starts at age)."""
        for probe in range(SLOTS):
            fields = _SLOT.unpack_from(self._map, self._offset((age + probe) % SLOTS))
            if fields[0] == pid:
                return State(fields[1])
        return State.FREE

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
        for index in range(SLOTS):
            peer = self._read(index)
            if peer.pid and peer.pid != me and peer.state != State.FREE and _alive(peer.pid):
                found.append(peer)
        return found

    def _header(self) -> list:
        return list(_HEADER.unpack_from(self._map, 0))

    def _write(self, field: str, value: float) -> None:
        """One header field, in place: writers of different fields never undo each other."""
        index = _HEADER_FIELDS.index(field)
        code = _HEADER.format[1 + index]
        struct.pack_into("=" + code, self._map, struct.calcsize("=" + _HEADER.format[1:1 + index]),
                         value)

    def reloads(self) -> Reloads:
        generation, rejected, rejected_at, abandoned, _, _ = self._header()
        return Reloads(generation, rejected, rejected_at, abandoned)

    def record_spawn(self, generation: int, age: int) -> None:
        """Called by the master (the only writer of these two fields) before each fork."""
        self._write("generation", generation)
        self._write("newest_age", age)

    def newest_age(self) -> int:
        """Age of the newest worker the master has created so far."""
        return self._header()[5]

    def reject(self, generation: int) -> bool:
        """Record a rejected generation; True for the first caller, so one line says so."""
        with self._lock:
            first = self._header()[1] < generation
            if first:
                self._write("rejected", generation)
                self._retired[R_REJECTED] += 1
            self._write("rejected_at", time.time())
        return first

    def abandon(self, generation: int) -> None:
        """A booting worker was told to stop: its generation will not come."""
        with self._lock:
            if self._header()[3] < generation:
                self._write("abandoned", generation)

    def record_failure(self) -> float:
        """Note a failed start; return how long ago the previous one was (inf if never)."""
        now = time.time()
        with self._lock:
            previous = self._header()[4]
            self._write("failed_at", now)
        return now - previous if previous else float("inf")

    def me(self) -> Peer | None:
        return None if self._slot is None else self._read(self._slot)

    # --- counters (see COUNTERS) ----------------------------------------------------------------

    def _row(self, index: int) -> memoryview:
        start = self._counters_at // 8 + index * COUNTERS
        return self._all[start:start + COUNTERS]

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
        for index in range(SLOTS):
            pid, state = _PID_STATE.unpack_from(self._map, self._offset(index))
            if pid and pid != me and state != State.FREE and _alive(pid):
                found.append((pid, self._row(index)))
        return found

    def _fold(self, index: int, peer: Peer) -> None:
        """Under the lock: add a departed worker's counts to the retired row, clear its row."""
        row, retired = self._row(index), self._retired
        if peer.pid == 0 and not any(row):
            return
        retired[R_SEQ] += 1  # odd: readers retry
        for field in FOLDED:
            retired[R_TOTALS + field] += row[field]
        if peer.pid:
            kind = min(peer.reason, EXIT_KINDS - 1)
            retired[R_EXITS + kind] += 1
            at = R_RING + 3 * (retired[R_RING_NEXT] % RING)
            retired[at], retired[at + 1], retired[at + 2] = peer.pid, peer.reason, int(peer.changed)
            retired[R_RING_NEXT] += 1
        for field in range(COUNTERS):
            row[field] = 0
        retired[R_SEQ] += 1

    def count_accepted(self, generation: int) -> bool:
        """The first ready worker of a generation after the first: one accepted reload."""
        retired = self._retired
        if generation <= max(1, retired[R_ACCEPTED_GEN]):
            return False
        with self._lock:
            if generation <= max(1, retired[R_ACCEPTED_GEN]):
                return False
            retired[R_ACCEPTED_GEN] = generation
            retired[R_ACCEPTED] += 1
        return True

    def snapshot(self) -> "Snapshot":
        """Every slot with its counters, and the retired row, consistent with respect to folds."""
        while True:
            seq = self._retired[R_SEQ]
            if seq % 2:
                time.sleep(0)
                continue
            slots = []
            for index in range(SLOTS):
                peer = self._read(index)
                if peer.pid:
                    slots.append(SlotView(peer, _alive(peer.pid), tuple(self._row(index))))
            retired = tuple(self._retired)
            if self._retired[R_SEQ] == seq:
                return Snapshot(tuple(slots), retired, self.reloads())


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


class FileLock:
    """A lock between processes that a SIGKILLed holder cannot leave held.

    ``flock`` on an unlinked temporary file: the kernel releases it when the holder's descriptor
    closes, which process death does (a ``multiprocessing.Lock`` held by a dead process stays held
    forever and wedges everyone else). flock locks belong to an open file description, which a
    fork shares, so each process re-opens the file through ``/proc/self/fd`` before its first use.
    Only worker code on the main thread outside signal handlers takes it, briefly.
    """

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="hardened-worker-", dir="/dev/shm" if os.path.isdir(
            "/dev/shm") else None)
        os.unlink(path)
        self._shared = fd
        self._fd = fd
        self._owner = os.getpid()

    def _mine(self) -> int:
        if self._owner != os.getpid():
            self._fd = os.open(f"/proc/self/fd/{self._shared}", os.O_RDWR)
            self._owner = os.getpid()
        return self._fd

    def __enter__(self) -> "FileLock":
        fcntl.flock(self._mine(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def alive(pid: int) -> bool:
    """Is process ``pid`` still there (a zombie counts)?"""
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
