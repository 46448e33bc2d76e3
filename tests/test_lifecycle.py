"""Process behaviour against a real gunicorn master: exit status, signals, lifespan, startup hangs."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from rig import APPS, Background, alive, get, wait_for


def hooks_args(tmp_path):
    return ["-c", str(APPS / "hooks_conf.py")], {"HOOKS_FILE": str(tmp_path / "hooks.txt")}


def read_hooks(tmp_path):
    path = tmp_path / "hooks.txt"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_term_exits_zero_after_lifespan_shutdown_and_runs_worker_exit(master, tmp_path):
    args, env = hooks_args(tmp_path)
    m = master(args=args, env=env)
    pids = m.wait_workers(2)
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    log = m.log()
    for pid in pids:
        assert f"Worker exiting (pid: {pid})" in log
        assert f"shutdown {pid}" in m.events()
        assert f"worker_exit {pid} shutdown" in read_hooks(tmp_path)
        assert f"child_exit {pid} shutdown" in read_hooks(tmp_path)
    # Dying by the signal would make the master log "was sent SIGTERM"; a status != 0 "exited with code".
    assert "was sent" not in log
    assert "exited with code" not in log


def test_quit_stops_promptly(master):
    m = master(args=["--graceful-timeout", "30"])
    pids = m.wait_workers(2)
    started = time.monotonic()
    m.signal(signal.SIGQUIT)
    assert m.wait_exit(10) == 0
    # gunicorn gives workers 2 s after SIGQUIT before SIGKILL; ours leave well before.
    assert time.monotonic() - started < 2.0
    log = m.log()
    assert "SIGKILL" not in log
    for pid in pids:
        assert f"Worker exiting (pid: {pid})" in log


def test_workers_do_not_outlive_a_killed_master(master):
    m = master()
    pids = m.wait_workers(2)
    os.kill(m.pid, signal.SIGKILL)
    m.wait_exit(5)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)
    assert "lost its master" in m.log()


def test_failing_lifespan_startup_stops_a_cold_start_with_the_reason(master):
    m = master(env={"TESTAPP_STARTUP_FAIL": "1"}, wait=False)
    status = m.wait_exit(15)
    assert status != 0
    log = m.log()
    assert "failed to start: lifespan startup failed: TESTAPP_STARTUP_FAIL is set" in log
    assert "TESTAPP_STARTUP_FAIL is set" in log
    assert "appears unsupported" not in log


def test_exception_in_lifespan_startup_is_a_failed_start_logged_once(master, tmp_path):
    # An app that raises (instead of sending lifespan.startup.failed) after receiving startup.
    m = master(app="lifespan_apps:raises_in_startup", wait=False)
    assert m.wait_exit(15) != 0
    log = m.log()
    assert log.count("Traceback") >= 1
    assert log.count("boom in startup") >= 1
    assert "failed to start: lifespan startup failed: RuntimeError('boom in startup')" in log
    # Logged once per worker, not once per worker per layer.
    pids = set(re.findall(r"worker (\d+) failed to start", log))
    assert log.count("Exception in ASGI lifespan startup") == len(pids)


def test_app_without_lifespan_support_is_served(master):
    m = master(app="testapp:no_lifespan_app")
    assert get(m.port, "/")[0] == 200
    assert "ASGI lifespan not supported by the app" in m.log()


@pytest.mark.parametrize(
    "where,env,frame",
    [
        ("app import", {"TESTAPP_IMPORT_HANG": "60"}, "testapp.py"),
        ("lifespan startup", {"TESTAPP_STARTUP_BLOCK": "60"}, "testapp.py"),
        ("lifespan startup", {"TESTAPP_STARTUP_DELAY": "60"}, "testapp.py"),
    ],
)
def test_worker_stuck_in_startup_is_stopped_with_its_stack(master, where, env, frame):
    m = master(env={"HARDENED_STARTUP_TIMEOUT": "2s", **env}, wait=False, workers=1)
    status = m.wait_exit(20)
    assert status != 0
    log = m.log()
    assert f"startup timed out after 2.0 s in {where}; stuck at:" in log
    stack = log.split("stuck at:", 1)[1]
    assert frame in stack
    assert "failed to start: startup timed out" in log


def test_heartbeat_continues_through_a_long_drain(master):
    # --timeout 4: a drain of 7 s without heartbeats would be killed by the master.
    m = master(args=["--timeout", "4", "--graceful-timeout", "20"])
    request = Background(m.port, "/sleep?s=7")
    m.wait_started("/sleep")
    m.signal(signal.SIGTERM)
    assert request.join()[0] == 200
    assert m.wait_exit(20) == 0
    assert "WORKER TIMEOUT" not in m.log()


def test_graceful_timeout_bounds_the_drain_and_lifespan_shutdown_still_runs(master):
    m = master(args=["--graceful-timeout", "4"], workers=1)
    [pid] = m.wait_workers(1)
    request = Background(m.port, "/sleep?s=30")
    m.wait_started("/sleep")
    started = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    assert time.monotonic() - started < 4.5
    log = m.log()
    assert "drain deadline passed" in log and "GET /sleep" in log
    assert f"shutdown {pid}" in m.events()
    assert "SIGKILL" not in log
    assert request.join() == "RemoteDisconnected"  # cut at the deadline, after the log line


def test_usr1_reopens_the_log_files_after_a_rotation(master):
    m = master(workers=1)
    [pid] = m.wait_workers(1)
    rotated = m.log_path.with_suffix(".1")
    m.log_path.rename(rotated)  # what logrotate does before it signals
    m.signal(signal.SIGUSR1)  # the master reopens its files and passes USR1 to its workers
    wait_for(lambda: m.log_path.exists(), timeout=10)
    os.kill(pid, signal.SIGTERM)  # the worker's last lines must land in the new file
    m.wait_log(rf"worker {pid} exiting: reason shutdown", timeout=15)
    assert f"worker {pid} exiting" not in rotated.read_text()
