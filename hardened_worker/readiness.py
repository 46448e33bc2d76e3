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


# A rejection this close before our SIGTERM belongs to the reload that sent it: the master forks the
# new workers and signals the old ones in the same instant, and a broken app can fail in milliseconds;
# and after the last failed worker exits, the master may have re-sent SIGTERM (about once a second)
# before it reaped that worker. Failed workers refresh ``rejected_at`` as they exit.
REJECTION_WINDOW = 2.0


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
            or reloads.rejected_at >= stop_requested - REJECTION_WINDOW):
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
# generation, rejected generation, rejected at, abandoned generation, time of the last failed start,
# age of the newest worker the master created
_HEADER = struct.Struct("=qqdqdq")
_HEADER_FIELDS = ("generation", "rejected", "rejected_at", "abandoned", "failed_at", "newest_age")
SLOTS = 512


class Table:
    """Fixed-size table of worker slots in an anonymous shared mapping."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _HEADER.size + SLOTS * _SLOT.size)
        self._lock = FileLock()
        self._slot: int | None = None

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

    def adopt_orphaned_surge(self) -> int:
        """The pid of a worker that died SURGING (it asked the master for a successor, TTIN, and
        never for one fewer), its slot now freed; 0 if none. The caller sends that TTOU, or the
        pool keeps one worker too many for good."""
        if not any(self._read(i).state == State.SURGING for i in range(SLOTS)):
            return 0  # the common case, without the lock
        with self._lock:
            for index in range(SLOTS):
                peer = self._read(index)
                if peer.state == State.SURGING and not _alive(peer.pid):
                    _SLOT.pack_into(self._map, self._offset(index), 0, State.FREE, 0, 0, 0, 0, 0, 0)
                    return peer.pid
        return 0

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
