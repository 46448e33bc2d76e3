"""The pool size, against a real master: exactly --workers (plus the operator's TTIN/TTOU) once
recycling, reloads and a stopped master have settled (the orders tests/test_pool_model.py found)."""

from __future__ import annotations

import os
import signal
import threading
import time

from rig import wait_for, wrk

STARTUP = {"TESTAPP_STARTUP_DELAY": "0.3"}


def settled_at(m, count: int) -> list[int]:
    """The workers once the pool has stayed the same ``count`` workers for 3 s (a recycle still
    under way when the load stopped may finish first), or fail with what it was."""
    deadline = time.monotonic() + 40
    while True:
        before = sorted(m.workers())
        time.sleep(3)
        after = sorted(m.workers())
        if before == after and len(after) == count:
            return after
        if time.monotonic() > deadline:
            raise AssertionError(f"the pool did not settle at {count}: {before} then {after}")


def load(m, seconds: int, connections: int = 16) -> threading.Thread:
    thread = threading.Thread(
        target=wrk,
        args=(m.port,),
        daemon=True,
        kwargs={"duration": seconds, "connections": connections},
    )
    thread.start()
    return thread


def test_max_requests_recycling_and_a_hup_leave_the_configured_size(master):
    m = master(
        env=STARTUP, workers=2, args=["--max-requests", "2000", "--max-requests-jitter", "200"]
    )
    m.wait_workers(2)
    running = load(m, 8)
    time.sleep(3)  # recycles under way
    m.signal(signal.SIGHUP)
    running.join()
    settled_at(m, 2)
    assert m.log().count("recycling: ") >= 1  # the surges this test is about did happen


def test_a_stopped_master_loses_no_worker_and_gains_none(master):
    # SIGCONT discards pending SIGTTIN/SIGTTOU (POSIX): a pool counted with them drifted here.
    m = master(env=STARTUP, workers=2, args=["--max-requests", "300"])
    m.wait_workers(2)
    running = load(m, 8)
    time.sleep(2)
    for _ in range(3):
        os.kill(m.pid, signal.SIGSTOP)
        time.sleep(1)
        os.kill(m.pid, signal.SIGCONT)
        time.sleep(0.5)
    running.join()
    settled_at(m, 2)
    assert m.log().count("recycling: ") >= 2


def test_operator_ttin_and_ttou_around_a_hup_follow_gunicorn(master):
    m = master(env=STARTUP, workers=2, args=["--max-requests", "500"])
    m.wait_workers(2)
    running = load(m, 10)
    m.signal(signal.SIGTTIN)
    m.signal(signal.SIGTTIN)
    settled = wait_for(lambda: len(m.workers()) == 4, timeout=20)
    assert settled
    m.signal(signal.SIGHUP)  # gunicorn resets the count to --workers on HUP
    time.sleep(2)
    m.signal(signal.SIGTTOU)  # and then one fewer
    running.join()
    settled_at(m, 1)
