"""Readiness gating: the pure gate, the shared table, and HUP reloads against a real master."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from rig import APPS, Client, under_load, wait_for

from hardened_worker._readiness import (
    Gate,
    Peer,
    Reloads,
    State,
    Table,
    has_older_live,
    may_load,
    retirement_gate,
)

NOW = 1_000_000.0


def peer(age, generation, state, pid=None):
    return Peer(pid or 100 + age, state, age, generation, NOW - 10, NOW - 1)


ME = peer(1, 1, State.READY)
OLD_SIBLING = peer(2, 1, State.READY)


@pytest.mark.parametrize(
    "peers,reloads,expected",
    [
        # Plain shutdown / TTOU: nobody newer, no reload pending.
        ([OLD_SIBLING], Reloads(1), Gate.RETIRE),
        ([], Reloads(1), Gate.RETIRE),
        # HUP: successors booting, then ready.
        (
            [OLD_SIBLING, peer(3, 2, State.BOOTING), peer(4, 2, State.BOOTING)],
            Reloads(2),
            Gate.WAIT,
        ),
        ([OLD_SIBLING, peer(3, 2, State.READY), peer(4, 2, State.BOOTING)], Reloads(2), Gate.WAIT),
        ([OLD_SIBLING, peer(3, 2, State.READY), peer(4, 2, State.READY)], Reloads(2), Gate.RETIRE),
        # The old generation's younger worker is not a successor.
        ([peer(2, 1, State.BOOTING)], Reloads(1), Gate.RETIRE),
        # HUP just happened: the new workers have not claimed their slots yet.
        ([OLD_SIBLING], Reloads(2), Gate.WAIT),
        # The reload was rejected: its last failed worker left after our SIGTERM, or is still there.
        ([OLD_SIBLING], Reloads(2, rejected=2, rejected_at=NOW + 0.5), Gate.ROLLBACK),
        (
            [OLD_SIBLING, peer(3, 2, State.FAILED)],
            Reloads(2, rejected=2, rejected_at=NOW - 30),
            Gate.ROLLBACK,
        ),
        # A stop after a rejected reload's last failure is a real stop (TTOU, shutdown), however soon.
        ([OLD_SIBLING], Reloads(2, rejected=2, rejected_at=NOW - 30), Gate.RETIRE),
        ([OLD_SIBLING], Reloads(2, rejected=2, rejected_at=NOW - 0.5), Gate.RETIRE),
        # One successor failed while another is ready: the new generation serves.
        (
            [peer(3, 2, State.FAILED), peer(4, 2, State.READY)],
            Reloads(2, rejected=2, rejected_at=NOW),
            Gate.RETIRE,
        ),
        # A shutdown during a reload: the booting successors were stopped.
        ([OLD_SIBLING, peer(3, 2, State.STOPPING)], Reloads(2, abandoned=2), Gate.RETIRE),
        ([OLD_SIBLING], Reloads(2, abandoned=2), Gate.RETIRE),
        ([OLD_SIBLING, peer(3, 2, State.STOPPING)], Reloads(2), Gate.RETIRE),
        # Two HUPs in a row: the newest generation is what counts.
        (
            [peer(3, 2, State.STOPPING), peer(5, 3, State.BOOTING)],
            Reloads(3, abandoned=2),
            Gate.WAIT,
        ),
        ([peer(3, 2, State.READY)], Reloads(3), Gate.RETIRE),
    ],
)
def test_retirement_gate(peers, reloads, expected):
    assert retirement_gate(ME, peers, reloads, stop_requested=NOW) == expected


@pytest.mark.parametrize(
    "peers,expected",
    [
        ([], False),
        ([peer(1, 1, State.READY)], True),
        ([peer(1, 1, State.STOPPING)], True),
        ([peer(1, 1, State.FAILED)], False),
        ([peer(1, 1, State.BOOTING)], False),
        ([peer(9, 1, State.READY)], False),
    ],
)
def test_has_older_live(peers, expected):
    assert has_older_live(5, peers) == expected


def test_table_is_shared_with_forked_children():
    table = Table()
    table.record_spawn(3)
    pid = os.fork()
    if pid == 0:  # the child claims a slot and becomes ready, as a worker would
        table.claim(age=7, generation=3)
        table.set_state(State.READY)
        table.set_reason(4)
        time.sleep(2)
        os._exit(0)
    try:
        seen = wait_for(
            lambda: [p for p in table.peers() if p.pid == pid and p.state == State.READY], 5
        )
        assert seen[0].age == 7 and seen[0].generation == 3
        assert table.reloads().generation == 3
        assert table.reason_of(pid) == 4
    finally:
        os.waitpid(pid, 0)
    assert [p for p in table.peers() if p.pid == pid] == []  # a dead pid frees its slot


@pytest.mark.parametrize(
    "surged,blocks",
    [(True, True), (False, False)],
    ids=["draining after its surge", "stopped by the operator"],
)
def test_a_worker_draining_after_its_surge_still_holds_the_turn(surged, blocks):
    # It still holds the app until it exits: a second surge meanwhile put workers + 2 apps in memory.
    from hardened_worker._diagnostics import EXIT_REASONS

    table = Table()
    ready = os.pipe()
    pid = os.fork()
    if pid == 0:
        table.claim(age=1, generation=1)
        table.set_state(State.READY)
        if surged:
            assert table.take_surge_turn(EXIT_REASONS.index("max-requests"))
            table.set_state(State.RETIRING)
        table.set_state(State.STOPPING)  # the master's SIGTERM: the drain
        os.write(ready[1], b"x")
        time.sleep(30)
        os._exit(0)
    try:
        os.read(ready[0], 1)
        table.claim(age=2, generation=1)
        table.set_state(State.READY)
        assert table.take_surge_turn(EXIT_REASONS.index("max-requests")) is not blocks
        assert table.recycling() == (1 if blocks else 0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    table.set_state(State.READY)
    assert table.take_surge_turn(EXIT_REASONS.index("max-requests"))  # gone: the turn is free


def test_rejection_is_claimed_once():
    table = Table()
    assert table.reject(2) is True
    assert table.reject(2) is False
    assert table.reloads().rejected == 2 and table.reloads().rejected_at > 0


# --- against a real master -----------------------------------------------------------------


def test_hup_with_slow_startup_under_load_loses_nothing(master):
    m = master(env={"TESTAPP_STARTUP_DELAY": "2"})

    def reloads():
        for _ in range(3):
            time.sleep(3.5)
            m.signal(signal.SIGHUP)

    outcomes, load = under_load(m.port, reloads, 14)
    assert len(outcomes) > 500 and outcomes.failures == []
    assert load.requests > 1000 and load.socket_errors == 0 and load.non_2xx == 0
    log = m.log()
    assert log.count("reason reload") >= 4  # the old generations really left
    assert "generation 4" in log


@pytest.mark.parametrize("bad", ["TESTAPP_STARTUP_FAIL", "TESTAPP_IMPORT_FAIL"])
def test_bad_deploy_is_rejected_and_a_good_one_then_succeeds(master, tmp_path, bad):
    env_file = tmp_path / "env.json"
    env_file.write_text("{}")
    m = master(args=["-c", str(APPS / "reload_conf.py")], env={"RELOAD_ENV_FILE": str(env_file)})
    old = m.wait_workers(2)

    def deploys():
        time.sleep(1)
        env_file.write_text(json.dumps({bad: "1"}))
        m.signal(signal.SIGHUP)
        m.wait_log("reload rejected", timeout=15)
        time.sleep(3)
        assert m.proc.poll() is None
        assert all(pid in m.workers() for pid in old)
        env_file.write_text("{}")
        m.signal(signal.SIGHUP)
        m.wait_log(r"ready in [\d.]+ s \(generation 3\)", timeout=20, count=2)
        wait_for(lambda: not any(pid in m.workers() for pid in old), timeout=15)

    outcomes, load = under_load(m.port, deploys, 14)
    assert outcomes.failures == [] and load.socket_errors == 0 and load.non_2xx == 0
    log = m.log()
    assert log.count("reload rejected") == 1
    assert "reload rejected: generation 2 cannot start" in log
    assert m.proc.poll() is None


def test_shutdown_during_a_reload_does_not_wait_for_the_successors(master):
    m = master(env={"TESTAPP_STARTUP_DELAY": "3"}, args=["--graceful-timeout", "20"])
    m.signal(signal.SIGHUP)
    m.wait_log("will stop once its successors are ready", timeout=10)
    started = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(20) == 0
    assert time.monotonic() - started < 5  # not the 16 s ready timeout


def test_usr2_reexec_then_term_of_the_old_master_loses_nothing(master):
    from rig import children

    m = master(env={"TESTAPP_STARTUP_DELAY": "1"})
    old_workers = m.wait_workers(2)
    client = Client(m.port, concurrency=8).start()
    time.sleep(1)
    m.signal(signal.SIGUSR2)
    new_master = wait_for(lambda: [p for p in children(m.pid) if p not in old_workers], 10)[0]
    wait_for(lambda: len(children(new_master)) == 2, 10)
    m.wait_log(r"ready in", timeout=15, count=4)  # the new master's workers finished startup
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    time.sleep(1)
    outcomes = client.stop()
    assert len(outcomes) > 100 and outcomes.failures == []
    assert len(children(new_master)) == 2  # the new master serves on
    assert get_pid_served(m.port) in children(new_master)


def get_pid_served(port):
    from rig import get

    return int(get(port, "/pid")[1])


# --- rolling reloads -------------------------------------------------------------------------


def test_may_load_admits_one_more_than_the_worker_count():
    loaded = [peer(1, 1, State.READY), peer(2, 1, State.STOPPING)]
    assert may_load(loaded, workers=2)
    assert not may_load(loaded + [peer(3, 2, State.BOOTING)], workers=2)
    assert may_load(loaded + [peer(3, 2, State.WAITING), peer(4, 2, State.FAILED)], workers=2)


@pytest.mark.parametrize(
    "me,peers,expected",
    [
        # Nothing of the new generation is ready: everybody waits.
        (
            peer(1, 1, State.READY),
            [peer(2, 1, State.READY), peer(3, 2, State.BOOTING), peer(4, 2, State.WAITING)],
            Gate.WAIT,
        ),
        # One successor ready: the oldest leaves, the next one waits for a second successor.
        (
            peer(1, 1, State.READY),
            [peer(2, 1, State.READY), peer(3, 2, State.READY), peer(4, 2, State.WAITING)],
            Gate.RETIRE,
        ),
        (
            peer(2, 1, State.READY),
            [peer(1, 1, State.STOPPING), peer(3, 2, State.READY), peer(4, 2, State.WAITING)],
            Gate.WAIT,
        ),
        (peer(2, 1, State.READY), [peer(3, 2, State.READY), peer(4, 2, State.BOOTING)], Gate.WAIT),
        (peer(2, 1, State.READY), [peer(3, 2, State.READY), peer(4, 2, State.READY)], Gate.RETIRE),
    ],
)
def test_rolling_gate_retires_one_old_worker_per_ready_successor(me, peers, expected):
    assert retirement_gate(me, peers, Reloads(2), stop_requested=NOW, rolling=2) == expected


def test_rolling_hup_under_load_never_holds_more_than_workers_plus_one(master):
    m = master(env={"TESTAPP_STARTUP_DELAY": "1", "HARDENED_ROLLING": "1"})

    def reloads():
        time.sleep(2)
        m.signal(signal.SIGHUP)
        m.wait_log(r"ready in [\d.]+ s \(generation 2\)", timeout=20, count=2)
        time.sleep(1)

    outcomes, load = under_load(m.port, reloads, 9)
    assert len(outcomes) > 200 and outcomes.failures == []
    assert load.socket_errors == 0 and load.non_2xx == 0
    loaded, peak = set(), 0
    for event in m.events():  # import .. shutdown is when a worker holds the app
        kind, *_, pid = event.split()
        if kind == "import":
            loaded.add(pid)
        elif kind == "shutdown":
            loaded.discard(pid)
        peak = max(peak, len(loaded))
    assert peak == 3, m.events()
    assert m.log().count("loading the app after waiting") == 1
