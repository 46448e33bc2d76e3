"""The spread bench's own parts (``bench/spread.py``): which CPUs wrk and the pool get, that
pinning moves every thread of a real process, and how wrk's Lua output becomes requests per
worker. No measurement runs here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import spread


@pytest.mark.parametrize(
    "cpus, expected",
    [
        ({0}, None),  # one CPU: nothing to separate, both share it
        ({0, 1}, ({0}, {1})),
        ({3, 1}, ({1}, {3})),  # the CPUs this process may use, not 0..n-1
        ({0, 1, 2}, ({0}, {1, 2})),  # an odd CPU goes to the pool
        ({0, 1, 2, 3}, ({0, 1}, {2, 3})),
    ],
)
def test_placement_splits_client_from_pool(cpus, expected):
    assert spread.placement(cpus) == expected


def test_placement_never_shares_a_cpu():
    for n in range(2, 17):
        client, pool = spread.placement(set(range(n)))
        assert client and pool and not client & pool and client | pool == set(range(n))


def test_pin_moves_every_thread_of_a_process():
    # A worker has threads besides its loop's (the stall watchdog); sched_setaffinity moves one.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "print(flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        child.stdout.readline()  # the second thread has started

        def tasks() -> list[int]:
            return [int(t.name) for t in Path(f"/proc/{child.pid}/task").iterdir()]

        assert len(tasks()) == 2
        one = {min(os.sched_getaffinity(0))}
        assert os.sched_getaffinity(tasks()[-1]) != one, (
            "pinning can only be seen with 2 CPUs or more"
        )
        spread.pin(child.pid, one)
        assert [os.sched_getaffinity(t) for t in tasks()] == [one, one]
    finally:
        child.kill()
        child.wait()


def test_per_pid_counts_by_wrk_thread():
    raw = "Running 6s test\nserved-by 1 101 40\nserved-by 2 101 60\nserved-by 2 102 7\nserved-by 1 103 5\n"
    assert spread.per_pid(raw) == {101: [40, 60], 102: [0, 7], 103: [5]}


def test_count_lua_paces_only_when_asked():
    assert spread.count_lua() == spread.COUNT_LUA
    paced = spread.count_lua(3)
    assert paced.startswith(spread.COUNT_LUA) and paced.endswith(
        "delay = function() return 3 end\n"
    )
