"""No OOM kill and no failed request in a real memory cgroup (cgroup v1, as root).

Each test creates its own memory cgroup (``bench.memcg.MemoryCgroup``: below this process's own
memory cgroup, else below ``/sys/fs/cgroup/memory/``), sets its limit, starts the gunicorn master
inside it through a shell that writes its own pid to ``cgroup.procs`` and then execs gunicorn (so
every worker is forked inside), loads it with wrk and recording Python clients (half POSTs), and
removes the cgroup afterwards. What counts: the cgroup's ``oom_kill`` counter, every failed request.

A machine where no memory cgroup can be made fails these tests with that reason: they prove the
promise the memory-constrained example makes, nothing else can stand in for them.
Load runs take ``/tmp/bench.lock`` (other load runs on this machine take it too).
"""

from __future__ import annotations

import fcntl
import re

import pytest

from bench import memcg
from bench.common import MIB

EXAMPLE = ["-c", str(memcg.EXAMPLE)]


@pytest.fixture
def load_lock():
    with open("/tmp/bench.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(tmp_path, **kwargs) -> dict:
    try:
        return memcg.run_one(tmp_path, "hardened", EXAMPLE, **kwargs)
    except memcg.CgroupUnavailable as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize("kib", [64, 8])
def test_shipped_example_holds_a_700_mib_cgroup_without_oom_kill_or_failed_request(
    kib, tmp_path, load_lock
):
    r = run(tmp_path, kib=kib, limit=700 * MIB, workers=3, duration=30)
    summary = {
        k: r[k]
        for k in (
            "oom_kills",
            "failed",
            "client_failures",
            "peak_cgroup_mib",
            "peak_worker_uss_mib",
            "recycles_surge",
            "recycles_drain_first",
            "recycles_hard",
            "oom_lines",
            "memory_log_lines",
        )
    }
    assert r["oom_kills"] == 0, summary
    assert r["failed"] == 0, summary
    assert r["master_alive_at_end"], summary
    assert r["requests"] > 1000, summary
    # The example measured its budget (master, app, one successor) and said so at start:
    [budget] = r["budget"]
    assert re.search(
        r"memory budget: cgroup limit 700 MiB = master \d+ MiB \+ 3 workers x hard "
        r"limit \d+ MiB .*\+ one successor \d+ MiB \(app footprint measured\)",
        budget,
    )
    if kib == 64:  # the leak outgrows the limits many times over: recycling did happen
        assert r["recycles_surge"] + r["recycles_drain_first"] + r["recycles_hard"] >= 3, summary


def test_a_limit_too_small_for_workers_plus_one_runs_without_surge(tmp_path, load_lock):
    # One worker of a 60 MiB app in 160 MiB: the master plus two apps and the margin do not fit.
    r = run(tmp_path, kib=64, limit=160 * MIB, workers=1, duration=15, connections=4, clients=2)
    summary = {
        k: r[k] for k in ("oom_kills", "failed", "client_failures", "budget", "memory_log_lines")
    }
    [budget] = r["budget"]
    assert "too small for 1 + 1 apps" in budget and "without surge" in budget, budget
    assert r["oom_kills"] == 0 and r["failed"] == 0, summary
    assert r["recycles_surge"] == 0, summary  # never a successor first
    assert r["recycles_drain_first"] + r["recycles_hard"] >= 2, summary


def test_a_wrapped_command_runs_inside_and_the_cgroup_is_removed_afterwards(tmp_path):
    try:
        cg = memcg.MemoryCgroup(64 * MIB)
    except memcg.CgroupUnavailable as exc:
        pytest.fail(str(exc))
    import subprocess

    with cg:
        proc = subprocess.Popen(cg.wrap(["sleep", "30"]))
        try:
            memcg.rig.wait_for(lambda: proc.pid in cg.pids(), 10)
            assert cg.usage() > 0 and cg.oom_kills() == 0
        finally:
            proc.kill()
            proc.wait()
    assert not cg.path.exists()
