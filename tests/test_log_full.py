"""Logging can fail without taking anything down (issue 25, item 4).

The error and access logs on a 64 KiB tmpfs filled to the last byte: a worker booted then
(TTIN, HUP) inherits the master's unflushed log buffer and its log writes fail with ENOSPC; none of
that may fail a boot, a request or the master. Real gunicorn, real mount (root: the test fails,
never skips, where it cannot mount).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from rig import Client, Master, get, wait_for


class OutputToFile(Master):
    """A master whose stdout/stderr go to a file, not a pipe nobody reads while it runs (a
    handler's error report per failed line would fill a pipe and block the writer)."""

    def start(self, wait: bool = True, timeout: float = 30.0) -> Master:
        self.out_path = self.tmp / f"output-{self.port}.txt"
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.tmp,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_serving(timeout)
        return self

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")


@pytest.fixture
def small_disk(tmp_path: Path):
    where = tmp_path / "logs"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs here (root needed): {mounted.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Append to ``path`` until the disk refuses a single byte (its last page full too)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for size in (4096, 1):
            while True:
                try:
                    os.write(fd, b"x" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)


def pool(port: int) -> dict:
    status, body = get(port, "/metrics?format=json")
    assert status == 200, body
    return json.loads(body)


def settled(m: Master, count: int, not_in: set = frozenset()) -> list[int]:
    """``count`` workers, all ready by the shared table (the log cannot tell), none of ``not_in``."""
    seen = []

    def ready():
        pids = sorted(m.workers())
        workers = pool(m.port)["workers"]
        seen[:] = [pids, [(w["pid"], w["state"], w["generation"]) for w in workers]]
        return (
            len(pids) == count
            and not set(pids) & set(not_in)
            and sorted(w["pid"] for w in workers if w["state"] == "ready") == pids
            and pids
        )

    try:
        return wait_for(ready, 60)
    except TimeoutError:
        raise AssertionError(f"not {count} ready workers: children, table: {seen}") from None


def rotate(m: Master, pids: list[int], logs: list[Path]) -> None:
    """What logrotate does (rename, then USR1 to the master, which reopens its own files and
    passes USR1 on to its workers): until the master and each worker has reopened every log under
    its name (a new, empty file: on a full disk a file can still be created)."""
    for log in logs:
        log.rename(log.with_name(log.name + ".1"))
    m.signal(signal.SIGUSR1)
    pids = [m.pid, *pids]

    def reopened(pid: int) -> bool:
        fds = Path(f"/proc/{pid}/fd")
        open_now = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
        return all(str(log) in open_now for log in logs)

    wait_for(lambda: all(reopened(pid) for pid in pids), 30)


def test_a_full_log_disk_fails_no_boot_no_request_and_not_the_master(tmp_path, small_disk):
    error_log, access_log = small_disk / "error.log", small_disk / "access.log"
    m = OutputToFile(
        tmp_path,
        workers=2,
        env={"HARDENED_METRICS_PATH": "/metrics"},
        args=["--error-logfile", str(error_log), "--access-logfile", str(access_log)],
    )
    m.start()
    try:
        first = settled(m, 2)
        fill(small_disk / "filler")
        fill(error_log)
        fill(access_log)
        client = Client(m.port, concurrency=4).start()
        m.signal(signal.SIGTTOU)
        one = settled(m, 1)
        m.signal(signal.SIGTTIN)
        two = settled(m, 2)
        m.signal(signal.SIGHUP)
        three = settled(m, 2, not_in=set(first) | set(one) | set(two))  # a new generation serves
        rotate(m, three, [error_log, access_log])
        assert settled(m, 2) == three
        outcomes = client.stop()
        assert len(outcomes) > 0 and outcomes.failures == [], outcomes.counts
        assert m.proc.poll() is None, m.output()
        assert os.statvfs(small_disk).f_bavail == 0  # still full: nothing above needed the disk
        print(
            f"{len(outcomes)} requests, 0 failed; master output {len(m.output())} bytes:\n"
            f"{m.output()[-2000:]}"
        )
    finally:
        m.stop()
