"""systemd readiness: the datagram itself, the once-per-master token, and a real master under it.

A real ``AF_UNIX`` datagram socket stands in for systemd's notification socket.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import time
import uuid

import pytest
from rig import get, wait_for

from hardened_worker import _systemd as systemd


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    monkeypatch.delenv(systemd.NOTIFY_SOCKET, raising=False)
    monkeypatch.delenv(systemd.STASH, raising=False)
    systemd._reset()
    yield
    systemd._reset()


@pytest.fixture
def listener(tmp_path):
    """systemd's side: a datagram socket bound in tmp_path; yields (address, socket)."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()


def received(sock: socket.socket, timeout: float) -> list[str]:
    """Every datagram that arrives within ``timeout`` (after the first, only those already queued)."""
    sock.settimeout(timeout)
    messages = []
    try:
        messages.append(sock.recv(4096).decode())
        sock.setblocking(False)
        while True:
            messages.append(sock.recv(4096).decode())
    except (TimeoutError, BlockingIOError):
        pass
    return messages


def fields(message: str) -> dict:
    return dict(line.split("=", 1) for line in message.split("\n") if line)


# --- the datagram -------------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path(listener):
    path, sock = listener
    systemd.notify("READY=1\nSTATUS=x", path)
    assert received(sock, 2) == ["READY=1\nSTATUS=x"]


def test_notify_reaches_an_abstract_socket_named_with_at():
    name = f"hardened-worker-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        systemd.notify("READY=1", "@" + name)
        assert received(sock, 2) == ["READY=1"]


def test_notify_refuses_addresses_it_cannot_reach():
    with pytest.raises(OSError, match="unsupported"):
        systemd.notify("READY=1", "vsock:2:1234")


# --- deferral ---------------------------------------------------------------------------------


def test_defer_ready_silences_gunicorns_own_ready(listener, monkeypatch):
    from gunicorn import systemd as gunicorn_systemd

    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.defer_ready() is True
    assert "NOTIFY_SOCKET" not in os.environ
    assert os.environ[systemd.STASH] == path
    gunicorn_systemd.sd_notify("READY=1\nSTATUS=Gunicorn arbiter booted", logging.getLogger("t"))
    assert received(sock, 0.2) == []


def test_defer_ready_without_a_supervisor_changes_nothing():
    environ = {"PATH": "/bin"}
    assert systemd.defer_ready(environ) is False
    assert environ == {"PATH": "/bin"}
    assert systemd.notify_ready(1) is False


def test_defer_ready_leaves_an_unsupported_address_to_gunicorn():
    environ = {"NOTIFY_SOCKET": "vsock:2:1234"}
    assert systemd.defer_ready(environ) is False
    assert environ == {"NOTIFY_SOCKET": "vsock:2:1234"}


def test_defer_ready_finds_the_kept_address_after_a_reload(listener):
    # A HUP builds a new gunicorn Config whose environment no longer has NOTIFY_SOCKET; a master
    # re-executed by USR2 starts from that environment.
    path, sock = listener
    environ = {systemd.STASH: path}
    assert systemd.defer_ready(environ) is True
    assert systemd.notify_ready(4321) is True
    assert fields(received(sock, 2)[0])["MAINPID"] == "4321"


def test_only_one_of_many_workers_sends_ready(listener):
    path, sock = listener
    environ = {"NOTIFY_SOCKET": path}
    assert systemd.defer_ready(environ) is True
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # a "worker": inherits the token pipe like gunicorn's forked workers
            try:
                sent = systemd.notify_ready(os.getppid(), log=logging.getLogger("quiet"))
            finally:
                os._exit(0 if sent else 1)  # noqa: B012
        children.append(pid)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children)
    assert codes == [0, 1, 1, 1]
    [message] = received(sock, 2)
    assert fields(message)["READY"] == "1"
    assert fields(message)["MAINPID"] == str(os.getpid())
    # The token is gone for good: a later worker (after a HUP) sends nothing.
    assert systemd.notify_ready(os.getpid()) is False
    # And deferring again in the same master does not bring it back.
    assert systemd.defer_ready(environ) is True
    assert systemd.notify_ready(os.getpid()) is False


def test_a_missing_socket_is_a_warning_not_an_error(tmp_path, caplog):
    systemd.defer_ready({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.WARNING, logger="gunicorn.error"):
        assert systemd.notify_ready(1) is False
    assert "could not tell systemd READY=1" in caplog.text


# --- a real master ----------------------------------------------------------------------------


def test_ready_arrives_once_after_lifespan_startup_and_a_hup_is_a_reload(master, listener):
    path, sock = listener
    started = time.monotonic()
    m = master(
        args=["-c", "python:hardened_worker.presets.vm"],
        wait=False,
        env={"NOTIFY_SOCKET": path, "TESTAPP_STARTUP_DELAY": "1"},
    )
    messages = received(sock, 20)
    elapsed = time.monotonic() - started
    assert len(messages) == 1, messages
    message = fields(messages[0])
    assert message["READY"] == "1"
    assert message["MAINPID"] == str(m.pid)
    assert "is ready" in message["STATUS"]
    # gunicorn's own READY=1 would have come within a few hundred ms, before any worker existed.
    assert elapsed >= 1.0
    assert any(e.startswith("startup ") for e in m.events())
    assert get(m.port, "/", timeout=2)[0] == 200  # systemd's "started" means "serving" now
    log = m.log()
    assert "systemd READY=1 waits for the first ready worker" in log
    assert log.count("told systemd READY=1 (main pid %d)" % m.pid) == 1

    m.wait_log(r"ready in [\d.]+ s \(generation 1\)", count=2)  # the second one too
    m.signal(signal.SIGHUP)
    m.wait_log(r"ready in [\d.]+ s \(generation 2\)", count=2)
    m.wait_log(r"exited: reason reload", count=2)
    # A HUP is a reload: RELOADING=1, then READY=1 once, from the new generation; the start's
    # token is not sent again.
    reload = [fields(message) for message in received(sock, 5)]
    assert [("RELOADING" in f, "READY" in f) for f in reload] == [(True, False), (False, True)]
    assert m.log().count("told systemd READY=1") == 1

    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0


def test_without_the_deferral_gunicorn_says_ready_before_any_worker_is(master, listener):
    # What the vm preset fixes: the base preset leaves gunicorn's own READY=1 alone.
    path, sock = listener
    m = master(
        args=["-c", "python:hardened_worker.presets.base"],
        wait=False,
        env={"NOTIFY_SOCKET": path, "TESTAPP_STARTUP_DELAY": "2"},
    )
    [message] = received(sock, 20)
    assert fields(message) == {"READY": "1", "STATUS": "Gunicorn arbiter booted"}
    assert not any(e.startswith("startup ") for e in m.events())
    m.wait_serving()
    assert received(sock, 0.2) == []
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    wait_for(lambda: "master %d stopped" % m.pid in m.log(), timeout=5)


# --- reloads and the watchdog against a real master ------------------------------------------


def collect(sock: socket.socket, until, timeout: float = 30.0) -> list[dict]:
    """Datagrams (as fields) until ``until(fields_so_far)`` is true; TimeoutError otherwise."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no match within {timeout} s: {got}")
        sock.settimeout(left)
        got.append(fields(sock.recv(4096).decode()))
    return got


def quiet_for(sock: socket.socket, seconds: float) -> list[dict]:
    """Read until nothing arrived for ``seconds``; return what arrived before."""
    got: list[dict] = []
    sock.settimeout(seconds)
    try:
        while True:
            got.append(fields(sock.recv(4096).decode()))
    except TimeoutError:
        return got


def test_reloads_and_the_watchdog_under_a_fake_systemd(master, listener, tmp_path):
    path, sock = listener
    env_file = tmp_path / "env.json"
    env_file.write_text("{}")
    conf = tmp_path / "conf.py"  # the vm preset, and an environment a test rewrites before a HUP
    conf.write_text(
        "import json, os\n"
        "from hardened_worker.presets.vm import *\n"
        "raw_env = [f'{k}={v}' for k, v in\n"
        "           json.load(open(os.environ['RELOAD_ENV_FILE'])).items()]\n"
        "workers = 2\n"
    )
    m = master(
        args=["-c", str(conf)],
        wait=False,
        env={
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "400000",
            "TESTAPP_STARTUP_DELAY": "1",
            "RELOAD_ENV_FILE": str(env_file),
        },
    )
    # Start: READY=1 only once a worker is ready; the watchdog only while one serves.
    start = collect(sock, lambda got: any("READY" in f for f in got))
    assert any(e.startswith("startup ") for e in m.events())
    assert all("WATCHDOG" in f for f in start[:-1])
    ping = collect(sock, lambda got: got and "2 ready" in got[-1].get("STATUS", ""))[-1]
    assert ping["WATCHDOG"] == "1" and ping["STATUS"] == "serving: 2 ready (generation 1)"

    # A good reload: RELOADING=1 (with the monotonic time), then READY=1 once generation 2 serves.
    m.signal(signal.SIGHUP)
    got = collect(sock, lambda got: any("READY" in f for f in got))
    [reloading] = [f for f in got if "RELOADING" in f]
    assert got.index(reloading) < len(got) - 1
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert "reloaded, generation 2 ready" in got[-1]["STATUS"]
    assert re.search(r"ready in [\d.]+ s \(generation 2\)", m.log())

    # A rejected reload: RELOADING=1, then READY=1 whose STATUS names the rejection.
    env_file.write_text(json.dumps({"TESTAPP_STARTUP_FAIL": "1"}))
    m.signal(signal.SIGHUP)
    got = collect(sock, lambda got: any("READY" in f for f in got))
    assert any("RELOADING" in f for f in got)
    assert got[-1]["STATUS"].startswith("reload rejected: generation 3 cannot start")
    # (while the old workers cancel their stop, they count as stopping)
    collect(
        sock,
        lambda got: (
            got
            and "WATCHDOG" in got[-1]
            and got[-1]["STATUS"].startswith("serving: 2 ready (generation 2)")
            and "reload rejected: generation 3" in got[-1]["STATUS"]
        ),
    )

    # The watchdog stops when no worker's loop runs (SIGSTOP), and resumes with them.
    workers = m.workers()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        quiet_for(sock, 1.5)  # the beats older than 1 s: no more pings
        assert quiet_for(sock, 1.5) == []
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    collect(sock, lambda got: any("WATCHDOG" in f for f in got), timeout=10)


@pytest.mark.parametrize(
    "environ, enabled",
    [
        ({}, False),
        ({"WATCHDOG_USEC": "4000000"}, True),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "ME"}, True),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, False),  # another process is watched
        (
            {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1", "GUNICORN_PID": "1"},
            True,
        ),  # USR2 child
        ({"WATCHDOG_USEC": "0"}, False),
        ({"WATCHDOG_USEC": "soon"}, False),
    ],
)
def test_watchdog_from_environ(environ, enabled):
    environ = {k: str(os.getpid()) if v == "ME" else v for k, v in environ.items()}
    watchdog = systemd.Watchdog.from_environ(lambda: None, environ=environ)
    assert (watchdog is not None) is enabled
    if watchdog is not None:
        assert watchdog.interval == 2.0  # half of WATCHDOG_USEC
