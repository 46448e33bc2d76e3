"""Surge recycling against a real master: every planned replacement starts its successor first.

One worker (the Kubernetes preset's choice for a small pod), an app whose startup takes 2 s, and
a prober opening a fresh connection every 20 ms, as a load balancer or a readiness probe does.
What must hold, from recorded facts rather than timing: no request fails; the successor imported
the app before the old worker ran its lifespan shutdown (the two overlapped); never more than two
processes held the app (imports minus shutdowns, in the order the app wrote them).
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from rig import POST_LUA, Background, Nginx, Prober, alive, get, under_load, wait_for

STARTUP = {"TESTAPP_STARTUP_DELAY": "2"}


def most_loaded_at_once(events: list[str]) -> int:
    """Processes holding the app at once: ``import`` opens an interval, ``shutdown`` closes it."""
    loaded = most = 0
    for line in events:
        if line.startswith("import "):
            loaded += 1
        elif line.startswith("shutdown "):
            loaded -= 1
        most = max(most, loaded)
    return most


def overlapped(events: list[str], old: str, new: str) -> bool:
    return events.index(f"import {new}") < events.index(f"shutdown {old}")


CAUSES = {
    "max-requests": ({}, ["--max-requests", "50"], None),
    "max-lifetime": ({"HARDENED_MAX_LIFETIME": "5s"}, [], None),
    # The soft limit is passed by leaking; the hard one is far, so the old worker serves on.
    "memory": (
        {"HARDENED_MEMORY_LIMIT": "64MiB", "HARDENED_MEMORY_HARD_LIMIT": "1GiB"},
        [],
        "/leak?kib=8192",
    ),
}


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_one_worker_recycles_with_its_successor_started_first(master, cause):
    env, args, leak = CAUSES[cause]
    m = master(env={**STARTUP, **env}, args=args, workers=1)
    [first] = m.wait_workers(1)
    prober = Prober(m.port)
    if leak:
        for _ in range(8):  # 64 MiB leaked: past the soft limit from any baseline
            assert get(m.port, leak)[0] == 200
    m.wait_log(rf"worker {first} retiring: reason {cause}", timeout=30)
    [second] = m.wait_workers(1)
    assert second != first
    m.wait_log(rf"worker {first} exiting: reason {cause}", timeout=15)
    prober.stop()
    events = m.events()
    assert prober.failures == []
    assert overlapped(events, str(first), str(second))
    assert most_loaded_at_once(events) == 2
    log = m.log()
    assert f"worker {first} recycling: " in log and "its successor starts first" in log
    assert "Booting worker" in log and log.count("Booting worker") == 2  # no extra respawn
    print(f"{cause}: {len(prober.results)} probes, longest {prober.longest * 1000:.0f} ms")


@pytest.mark.parametrize("through", ["direct", "nginx"])
def test_recycles_under_load_lose_nothing_and_go_one_at_a_time(master, tmp_path, through):
    m = master(
        env=STARTUP, args=["--max-requests", "400", "--max-requests-jitter", "50"], workers=3
    )
    m.wait_workers(3)
    nginx = Nginx(tmp_path, m.port).start() if through == "nginx" else None
    script = tmp_path / "post.lua"  # wrk alternates GET and POST: a proxy never retries a POST
    script.write_text(POST_LUA)
    try:
        outcomes, load = under_load(
            nginx.port if nginx else m.port,
            lambda: m.wait_log("retiring: reason max-requests", timeout=60, count=3),
            seconds=12,
            script=script,
        )
    finally:
        failures = nginx.upstream_failures() if nginx else []
        if nginx:
            nginx.stop()
    assert outcomes.failures == [] and load.socket_errors == 0 and load.non_2xx == 0
    assert failures == []
    assert most_loaded_at_once(m.events()) <= 4  # workers + 1
    m.wait_workers(3)


def test_a_worker_killed_while_it_holds_the_table_lock_blocks_nobody(master):
    m = master(args=["--max-requests", "40"], workers=2)
    holder, other = m.wait_workers(2)
    Background(m.port, "/table-lock?s=60")  # one of the two takes it; find out which
    locked = int(
        wait_for(lambda: [e for e in m.events() if e.startswith("locked ")], 10)[0].split()[1]
    )
    other = holder if locked == other else other
    os.kill(locked, signal.SIGKILL)  # as the OOM killer would: no clean-up of any kind
    # The replacement claims its slot and the other worker recycles: both take the lock.
    replacement = wait_for(lambda: [p for p in m.workers() if p not in (locked, other)], 15)[0]
    m.wait_log(rf"worker {replacement} ready in", timeout=15)
    for _ in range(120):  # 40 each, whichever worker gets them
        get(m.port, "/")
    m.wait_log(r"retiring: reason max-requests", timeout=15)


def test_term_to_a_successor_waiting_on_the_held_table_lock_leaves_cleanly(master):
    m = master(env={"HARDENED_ROLLING": "1"}, workers=1)
    [old] = m.wait_workers(1)
    Background(m.port, "/table-lock?s=3")
    wait_for(lambda: any(e.startswith("locked ") for e in m.events()), 10)
    m.signal(signal.SIGHUP)  # the successor waits for its turn, which needs the lock
    successor = wait_for(lambda: [p for p in m.workers() if p != old], 10)[0]
    os.kill(successor, signal.SIGTERM)
    m.wait_log(rf"worker {successor} exiting while booting: reason shutdown", timeout=10)
    wait_for(lambda: not alive(successor), 10)
    assert f"Worker (pid:{successor}) exited with code" not in m.log()  # status 0


def test_rolling_reload_counts_the_startup_timeout_from_the_turn(master):
    m = master(
        env={
            "TESTAPP_STARTUP_DELAY": "3",
            "HARDENED_ROLLING": "1",
            "HARDENED_STARTUP_TIMEOUT": "5s",
            "HARDENED_READY_TIMEOUT": "25s",
        },
        args=["--graceful-timeout", "30"],
        workers=3,
    )
    m.wait_workers(3, timeout=30)

    def reload() -> None:
        m.signal(signal.SIGHUP)
        m.wait_log(r"ready in [\d.]+ s \(generation 2\)", timeout=40, count=3)

    outcomes, load = under_load(m.port, reload, seconds=14)
    assert outcomes.failures == [] and load.socket_errors == 0 and load.non_2xx == 0
    log = m.log()
    assert "startup timed out" not in log
    assert log.count("loading the app after waiting") >= 1
    assert log.count("exiting: reason reload") == 3


def test_a_worker_killed_while_its_successor_starts_leaves_the_pool_at_its_size(master):
    m = master(env=STARTUP, args=["--max-requests", "20"], workers=1)
    [first] = m.wait_workers(1)
    for _ in range(20):
        get(m.port, "/")
    m.wait_log(rf"worker {first} recycling: ", timeout=10)  # it asked the master for one more
    os.kill(first, signal.SIGKILL)
    # The master forked the successor for the surge; once it reaped the dead worker there is no
    # surge left to count, so the successor is the whole pool: nothing to fork, nothing to stop.
    [survivor] = wait_for(
        lambda: len(m.workers()) == 1 and first not in m.workers() and m.workers(), timeout=20
    )
    m.wait_log(rf"worker {survivor} ready in", timeout=20)
    assert get(m.port, "/")[0] == 200
    assert m.workers() == [survivor] and "exiting: reason shutdown" not in m.log()


def test_a_reload_during_a_surge_leaves_the_pool_at_its_size(master):
    m = master(env=STARTUP, args=["--max-requests", "10"], workers=2)
    old = m.wait_workers(2)
    for _ in range(30):  # both pass 10: one surges, the other waits its turn
        get(m.port, "/")
    m.wait_log(r"recycling: .*its successor starts first", timeout=10)
    m.signal(signal.SIGHUP)  # resets the master's worker count while the surge is under way
    m.wait_log(r"ready in [\d.]+ s \(generation 2\)", timeout=30, count=2)
    wait_for(lambda: not any(alive(pid) for pid in old), timeout=30)
    new = wait_for(lambda: len(m.workers()) == 2 and m.workers(), timeout=30)
    for pid in new:
        assert f"worker {pid} ready in" in m.log() and f"worker {pid} exiting" not in m.log()
    log = m.log()
    generation_2 = set(re.findall(r"worker (\d+) ready in [\d.]+ s \(generation 2\)", log))
    assert {str(pid) for pid in new} <= generation_2
    assert not any(f"worker {pid} exiting" in log for pid in generation_2)  # none given back
