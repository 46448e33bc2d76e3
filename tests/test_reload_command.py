"""``python -m hardened_worker reload --wait`` and ``status`` through the master's status socket:
a deploy that reports its verdict, with no metrics path. Real masters, real commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from rig import APPS, ROOT, _clean_environ, get, wait_for

from hardened_worker import _status as status


def command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hardened_worker", *args],
        capture_output=True,
        text=True,
        env={**_clean_environ(), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=timeout,
    )


# --- the verdict (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "generation,rejected,accepted,abandoned,serving,result",
    [
        (1, 0, 0, 0, [1, 1], "none"),
        (2, 0, 0, 0, [1, 1], "pending"),
        (2, 0, 2, 0, [1, 2], "accepted"),
        (2, 2, 0, 0, [1, 1], "rejected"),
        (3, 2, 0, 0, [1], "pending"),  # a newer HUP after a rejected one: not decided yet
        (3, 2, 3, 0, [3], "accepted"),
        (2, 0, 0, 2, [], "abandoned"),
    ],
)
def test_verdict(generation, rejected, accepted, abandoned, serving, result):
    v = status.verdict(generation, rejected, accepted, abandoned, serving)
    assert v == {"generation": generation, "result": result, "serving": max(serving, default=0)}


@pytest.mark.parametrize(
    "before,generation,result,outcome",
    [
        (1, 1, "none", None),  # the HUP not yet handled
        (1, 2, "pending", None),
        (1, 2, "accepted", "accepted"),
        (1, 2, "rejected", "rejected"),
        (2, 2, "accepted", None),  # the previous reload's verdict is not this one's
    ],
)
def test_reload_outcome_waits_for_a_newer_generation(before, generation, result, outcome):
    report = {"reload": {"generation": generation, "result": result, "serving": 1}}
    assert status.reload_outcome(before, report) == outcome


# --- the status socket -------------------------------------------------------------------------


def test_status_works_without_the_metrics_path(master):
    m = master(workers=2)
    pids = m.wait_workers(2)
    done = command("status", "--json", "--pid", str(m.pid))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(w["pid"] for w in report["workers"]) == sorted(pids)
    assert report["master"] == m.pid
    assert report["reload"] == {"generation": 1, "result": "none", "serving": 1}
    text = command("status", "--pid", str(m.pid)).stdout
    assert text.startswith("generation 1 (last reload: none; generation 1 serves);")
    # Only the master holds the socket: a worker that outlived it would keep the name bound.
    name = status.address(m.pid)[1:]
    [inode] = [line.split()[6] for line in open("/proc/net/unix") if line.split()[-1] == "@" + name]
    holders = [
        pid
        for pid in (m.pid, *pids)
        if f"socket:[{inode}]"
        in {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    ]
    assert holders == [m.pid]


def test_status_refuses_a_socket_the_master_does_not_hold():
    # Another process binds the name of pid 1's socket: the client sees who holds it, and refuses.
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(status.address(1))
    squatter.listen(1)
    try:
        with pytest.raises(ValueError, match=f"held by process {os.getpid()}, not the master"):
            status.query(1)
    finally:
        squatter.close()


def test_reload_of_no_master_is_one_line(tmp_path):
    pidfile = tmp_path / "gunicorn.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # a live process that is no master
    done = command("reload", "--wait", "--pidfile", str(pidfile))
    assert done.returncode == 1
    assert done.stderr == (
        f"hardened_worker: reload: no hardened_worker master with pid {os.getpid()} "
        "answers (not running, or not hardened_worker.Worker)\n"
    )
    assert command("reload", "--wait", "--pid", "x").returncode == 1
    assert command("reload", "--bogus").returncode == 2


# --- reload --wait against real masters --------------------------------------------------------


def test_an_accepted_reload_exits_0_once_the_new_generation_serves(master):
    m = master(workers=2, env={"HARDENED_HEALTH_PATH": "/healthz"})
    m.wait_workers(2)
    done = command("reload", "--wait", "--pid", str(m.pid))
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "hardened_worker: reload accepted: generation 2 serves\n",
        "",
    )
    # It returned once a generation 2 worker was ready; that worker logs it too.
    m.wait_log("reload accepted: generation 2 serves")
    report = json.loads(command("status", "--json", "--pid", str(m.pid)).stdout)
    assert report["reload"] == {"generation": 2, "result": "accepted", "serving": 2}

    def health_of_generation_2():
        code, body = get(m.port, "/healthz")
        answer = json.loads(body)
        return code == 200 and answer["generation"] == 2 and answer

    answer = wait_for(health_of_generation_2, 30)  # once generation 1 has left
    assert answer["reload"] == {"generation": 2, "result": "accepted", "serving": 2}


def test_a_rejected_reload_exits_1_with_the_rejection_line(master, tmp_path):
    env_file = tmp_path / "env.json"
    env_file.write_text("{}")
    m = master(args=["-c", str(APPS / "reload_conf.py")], env={"RELOAD_ENV_FILE": str(env_file)})
    old = m.wait_workers(2)
    env_file.write_text(
        json.dumps(
            {"HARDENED_HEALTH_CHECK": "health_checks:failing", "HARDENED_READY_TIMEOUT": "2s"}
        )
    )
    done = command("reload", "--wait", "--pid", str(m.pid))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "hardened_worker: reload rejected: generation 2 could not start; "
        "generation 1 keeps serving (the error log's 'reload rejected' line "
        "says why)\n"
    )
    assert "reload rejected: generation 2 cannot start" in m.log()
    assert set(old) <= set(m.workers())
    assert get(m.port, "/")[0] == 200


def test_the_only_master_of_this_namespace_is_found_from_proc_net_unix(tmp_path):
    ns = status._pid_namespace()
    net_unix = tmp_path / "unix"
    net_unix.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        f"0000: 00000002 00000000 00010000 0001 01 11 @hardened_worker.status.{ns}.812\n"
        f"0000: 00000002 00000000 00010000 0001 01 12 @hardened_worker.status.{ns + 1}.1\n"  # another pod container
        "0000: 00000002 00000000 00010000 0001 01 13 /run/app/app.sock\n"
    )
    assert status.masters(str(net_unix)) == [812]


def test_another_user_reads_nothing(master):
    # The master (root here) answers its own user and root only: a forked client turned nobody
    # (the venv's interpreter is not nobody's to run) connects and reads.
    assert os.getuid() == 0, "this test needs root, to run the client as another user"
    m = master(workers=1)
    m.wait_workers(1)
    assert status.query(m.pid)["master"] == m.pid  # root reads
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(status.address(m.pid))
                received = sock.recv(65536)
            os.write(write, b"read %d bytes" % len(received))
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read, "rb") as answer:
        assert answer.read() == b"read 0 bytes"
