"""The shared table under SIGKILL at every step (SQLite's crash tests, the ALICE study).

For every function that writes shared state, a child process runs it under ``sys.settrace`` and
SIGKILLs itself at line event k, for every k from 1 to the number of line events that writer
executes in ``_readiness.py`` (and its callees there). Then a fresh process reads the table
(``snapshot``, ``peers``, ``reloads``) and must answer (a reader that spins is killed after
``WEDGE_LIMIT`` and counted wedged), with its CPU time under 100 ms; the totals must be exactly what
the workers counted (no double count, and with this design no loss either); every exit must be
counted once; and a new process must be able to claim the slot the writer was using (0 lost slots).

The pool every case starts from, restored byte for byte before each kill: a departed worker (slot
0, 7 requests, reason recorded), a worker that died SURGING (slot 1, 11 requests: its surge
unfinished), and a live worker (slot 2, 13 requests) that stays alive for the whole test.

To see it fail against another implementation of the table (e.g. the version before this design,
``git show <commit>:hardened_worker/_readiness.py > /tmp/old_readiness.py``), point
``HARDENED_TABLE_MODULE`` at that file; ``HARDENED_CRASH_WRITERS`` limits the run to some writers
(comma-separated names), ``HARDENED_WEDGE_LIMIT`` shortens the wait for a wedged reader (s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from hardened_worker import _metrics as metrics


def _table_module():
    path = os.environ.get("HARDENED_TABLE_MODULE")
    if not path:
        from hardened_worker import _readiness as readiness

        return readiness
    spec = importlib.util.spec_from_file_location("table_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rd = _table_module()
TRACED = {rd.__file__, metrics.__file__}  # metrics: Tally.publish writes a counter row
# s of wall time before a reader counts as wedged (a wedge is forever; generous for a loaded host)
WEDGE_LIMIT = float(os.environ.get("HARDENED_WEDGE_LIMIT", "10"))
READ_CPU_LIMIT = 0.1  # s of the reader's own CPU for snapshot() + peers() + reloads()

D1_REQUESTS, D2_REQUESTS, LIVE_REQUESTS = 7, 11, 13
POOL_REQUESTS = D1_REQUESTS + D2_REQUESTS + LIVE_REQUESTS
PUBLISHED = 5  # what the "publish" writer adds


# --- child processes ---------------------------------------------------------------------------


def _in_child(
    body: Callable[[], object], timeout: float = WEDGE_LIMIT
) -> tuple[object | None, int]:
    """Run ``body`` in a forked child; (its JSON result or None, its wait status). A child that
    has not answered within ``timeout`` is SIGKILLed: result None."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = json.dumps(body()).encode()
        except BaseException as exc:  # noqa: BLE001 (reported to the parent, which fails the test)
            result = json.dumps({"error": repr(exc)}).encode()
        os.write(w, result)
        os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return (json.loads(data) if data else None), status


def _killed_at(step: int, files: set[str], writer: Callable[[], object]) -> dict:
    """Run ``writer`` traced; SIGKILL this process at line event ``step`` of code in ``files``
    (0: never; past the last: right after the writer returned). Returns the number of line
    events seen and the functions they were in."""
    seen, functions = 0, set()

    def local(frame, event, arg):
        nonlocal seen
        if event == "line":
            seen += 1
            functions.add(frame.f_code.co_name)
            if seen == step:
                os.kill(os.getpid(), signal.SIGKILL)
        return local

    def calls(frame, event, arg):
        return local if frame.f_code.co_filename in files else None

    sys.settrace(calls)
    try:
        writer()
    finally:
        sys.settrace(None)
    if step > seen:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"events": seen, "functions": sorted(functions)}


# --- the pool every case starts from -------------------------------------------------------------


@dataclass
class Pool:
    table: object
    saved: bytes
    departed: int  # pid of the departed worker (slot 0)
    orphan: int  # pid of the worker that died SURGING (slot 1)
    live: int  # pid of the live worker (slot 2)

    def restore(self) -> None:
        self.table._map[:] = self.saved
        self.table._slot = None


def _worker(table, age: int, requests: int, then: Callable[[], None], live: bool = False) -> int:
    pid = os.fork()
    if pid == 0:
        table.claim(age, 1)
        table.set_state(rd.State.READY)
        row = table.counters()
        row[rd.C_REQUESTS] += requests
        row[rd.C_BUCKET0] += requests
        then()
        while live:  # until the test ends it
            time.sleep(60)
        os._exit(0)
    return pid


def build_pool() -> Pool:
    table = rd.Table()
    table.record_spawn(1)
    departed = _worker(
        table, 0, D1_REQUESTS, lambda: (table.set_reason(2), table.set_state(rd.State.FREE))
    )
    os.waitpid(departed, 0)
    orphan = _worker(table, 1, D2_REQUESTS, lambda: table.take_surge_turn(3))
    os.waitpid(orphan, 0)
    live = _worker(table, 2, LIVE_REQUESTS, lambda: None, live=True)
    wait_until = time.monotonic() + 10
    while not any(p.pid == live for p in table.peers()):
        assert time.monotonic() < wait_until, "the live worker never claimed its slot"
        time.sleep(0.01)
    return Pool(table, bytes(table._map), departed, orphan, live)


@pytest.fixture(scope="module")
def pool():
    p = build_pool()
    yield p
    os.kill(p.live, signal.SIGKILL)
    os.waitpid(p.live, 0)


# --- the writers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Writer:
    name: str
    run: Callable[[object], object]  # traced
    slot_age: int = 0  # where a new claim probes from to take the writer's (or a dead) slot
    prepare: Callable[[object], object] | None = None  # untraced, in the writer's process
    adds: int = 0  # requests it adds to the totals


def _claimed(age: int) -> Callable[[object], object]:
    return lambda table: table.claim(age, 2)


def _publish(table) -> None:
    tally = metrics.Tally()
    tally.durations = [0.001] * PUBLISHED
    tally.publish(table.counters())


WRITERS = [
    Writer("claim", lambda t: t.claim(0, 2), slot_age=0),  # folds the departed worker's slot
    Writer("claim_a_dead_surging_slot", lambda t: t.claim(1, 2), slot_age=1),  # folds it
    Writer("set_state", lambda t: t.set_state(rd.State.STOPPING), 5, _claimed(5)),
    Writer("set_reason", lambda t: t.set_reason(4), 5, _claimed(5)),
    Writer("set_memory", lambda t: t.set_memory(123456), 5, _claimed(5)),
    Writer("take_surge_turn", lambda t: t.take_surge_turn(3), 5, _claimed(5)),
    Writer("try_load", lambda t: t.try_load(2), 5, _claimed(5)),
    Writer("record_spawn", lambda t: t.record_spawn(2)),
    Writer("record_wanted", lambda t: t.record_wanted(3)),
    Writer("reject", lambda t: t.reject(2)),
    Writer("abandon", lambda t: t.abandon(2)),
    Writer("record_failure", lambda t: t.record_failure()),
    Writer("count_accepted", lambda t: t.count_accepted(2)),
    Writer("counters", lambda t: t.counters().__setitem__(rd.C_STALLS, 1), 5, _claimed(5)),
    Writer("publish", _publish, 5, _claimed(5), adds=PUBLISHED),
]
SELECTED = [
    w
    for w in WRITERS
    if not os.environ.get("HARDENED_CRASH_WRITERS")
    or w.name in os.environ["HARDENED_CRASH_WRITERS"].split(",")
]


def _writer_process(pool: Pool, writer: Writer, step: int) -> Callable[[], object]:
    def body():
        if writer.prepare:
            writer.prepare(pool.table)
        return _killed_at(step, TRACED, lambda: writer.run(pool.table))

    return body


def _survivor(pool: Pool, writer: Writer) -> Callable[[], object]:
    """What another process sees after the writer died: reads, totals, and a claim."""

    def body():
        table = pool.table
        cpu = time.thread_time()
        snapshot, peers, reloads = table.snapshot(), table.peers(), table.reloads()
        cpu = time.thread_time() - cpu
        before = metrics.pool(snapshot, time.time())
        lost = _lost_slots(table)
        table.claim(writer.slot_age, 3)
        after = metrics.pool(table.snapshot(), time.time())
        return {
            "cpu": cpu,
            "peers": sorted(p.pid for p in peers),
            "generation": reloads.generation,
            "requests": [before["requests"], after["requests"]],
            "exits": [sum(before["exits"].values()), sum(after["exits"].values())],
            "slot_pids": [s.peer.pid for s in snapshot.slots],
            "lost": lost,
            "claimed": table._slot,
        }

    return body


def _lost_slots(table) -> int:
    """Slots that no live process holds and no claim would take (None: this table cannot tell)."""
    reusable = getattr(table, "_reusable", None)
    if reusable is None:
        return None
    live = {p.pid for p in table.peers()} | {os.getpid()}
    return sum(
        1
        for index in range(rd.SLOTS)
        if not reusable(index) and table._slots[index].pid not in live
    )


@dataclass
class CrashRun:
    events: int = 0
    functions: list = None
    wedged: int = 0
    max_cpu: float = 0.0
    problems: list = None

    def __post_init__(self):
        self.problems = []


def crash_every_line(pool: Pool, writer: Writer) -> CrashRun:
    pool.restore()
    dry, status = _in_child(_writer_process(pool, writer, 0))
    assert dry and "events" in dry, (dry, status)
    tally = CrashRun(events=dry["events"], functions=dry["functions"])
    for step in range(1, tally.events + 2):  # + 1: killed right after the writer returned
        pool.restore()
        died, status = _in_child(_writer_process(pool, writer, step))
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            tally.problems.append((step, "the writer was not killed", died, status))
            continue
        seen, _ = _in_child(_survivor(pool, writer))
        if seen is None:
            tally.wedged += 1
            tally.problems.append((step, "readers wedged"))
            continue
        if "error" in seen:
            tally.problems.append((step, seen["error"]))
            continue
        tally.max_cpu = max(tally.max_cpu, seen["cpu"])
        tally.problems += [(step, p, seen) for p in _judge(pool, writer, seen)]
    return tally


def _judge(pool: Pool, writer: Writer, seen: dict) -> list[str]:
    problems = []
    if seen["cpu"] >= READ_CPU_LIMIT:
        problems.append(f"readers took {seen['cpu'] * 1000:.1f} ms of CPU")
    if seen["peers"] != [pool.live]:
        problems.append("peers() is not exactly the live worker")
    total = POOL_REQUESTS + writer.adds
    for requests in seen["requests"]:  # the publish writer's store lands whole or not at all
        if requests not in (POOL_REQUESTS, total):
            problems.append(f"{requests} requests counted, {total} made")
    # Two workers died before the writer; the writer itself is a third exit once its pid is in a slot.
    writer_exited = any(
        pid not in (pool.departed, pool.orphan, pool.live) for pid in seen["slot_pids"]
    )
    if seen["exits"][0] != 2 + writer_exited:
        problems.append(f"{seen['exits'][0]} exits counted, {2 + writer_exited} happened")
    if seen["lost"]:
        problems.append(f"{seen['lost']} slots lost")
    if seen["claimed"] != writer.slot_age:
        problems.append(f"a new claim took slot {seen['claimed']}, not {writer.slot_age}")
    return problems


@pytest.mark.parametrize("writer", SELECTED, ids=lambda w: w.name)
def test_a_sigkill_at_any_line_of_a_writer_wedges_no_reader_and_loses_no_slot(pool, writer, capsys):
    tally = crash_every_line(pool, writer)
    with capsys.disabled():
        print(
            f"\n{writer.name}: {tally.events} line events in {', '.join(tally.functions)}; "
            f"{tally.wedged} wedged readers, reader CPU max {tally.max_cpu * 1000:.2f} ms, "
            f"{len(tally.problems)} problems"
        )
    assert tally.events > 0
    assert tally.problems == [], tally.problems[:5]


# --- the lock: what the ProcessLock docstring claims ----------------------------------------------


def _try_lock(lock) -> bool:
    import fcntl

    try:
        fcntl.lockf(lock._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def test_the_lock_is_per_process_through_the_inherited_descriptor():
    lock = rd.ProcessLock()
    with lock:  # held by this process: a child on the same descriptor is refused
        assert _in_child(lambda: _try_lock(lock))[0] is False
        # the child's unlock does not release the parent's lock (fork does not share it)
        _in_child(lambda: lock.__exit__(None, None, None))
        assert _in_child(lambda: _try_lock(lock))[0] is False
    assert _in_child(lambda: _try_lock(lock))[0] is True


def test_the_lock_of_a_sigkilled_holder_is_released_and_survives_setuid():
    lock = rd.ProcessLock()
    r, w = os.pipe()
    holder = os.fork()
    if holder == 0:
        lock.__enter__()
        os.write(w, b"held")
        time.sleep(60)
        os._exit(0)
    os.read(r, 4)
    assert _in_child(lambda: _try_lock(lock))[0] is False
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    assert _in_child(lambda: _try_lock(lock))[0] is True

    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)
        with lock:
            return os.getuid()

    assert os.getuid() == 0, "this test drops privileges: it must run as root"
    assert _in_child(as_nobody)[0] == 65534


# --- liveness ------------------------------------------------------------------------------------


def test_a_reused_pid_is_not_the_worker_that_had_it():
    """The slot of a dead worker whose pid now belongs to another process is free (pid + start
    time); the same pid with its own start time is alive."""
    me = os.getpid()
    start = rd.process_start(me)
    assert start > 0
    assert rd.is_running(me, start)
    assert not rd.is_running(me, start - 1)  # same pid, another process's start: not it
    table = rd.Table()
    table.claim(0, 1)
    table._slots[0].start_time = start - 1  # as if the worker that held this pid had died
    assert table._reusable(0)
    assert table.state_of(me, 0) is rd.State.BOOTING  # the master still finds the state (stale)
