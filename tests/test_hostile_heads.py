"""What a hostile client may send before the app sees a request, against real gunicorn masters on
both of uvicorn's HTTP implementations: gunicorn's --limit-request-* (431/414, nothing more read,
bounded memory), the header and body read timeouts, and a worker out of descriptors."""

from __future__ import annotations

import re
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rig import wait_for
from test_head_limits_core import gunicorn_status

WORKERS = {"httptools": "hardened_worker.Worker", "h11": "h11_worker.H11Worker"}


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))


def exchange(
    port: int, head: bytes, then: bytes = b"", repeat: int = 0, timeout: float = 10.0
) -> tuple[int, float]:
    """Send ``head``, then ``then`` ``repeat`` times as fast as the server reads (stopping as soon
    as an answer arrives); return the answer's status (0: none, -1: reset) and the seconds from the
    first byte to the answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    started = time.monotonic()
    pending, answer = memoryview(head), b""
    try:
        while time.monotonic() - started < timeout:
            if not pending and repeat:
                pending, repeat = memoryview(then), repeat - 1
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 0.5)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    return (int(answer.split()[1]) if answer else -1), time.monotonic() - started
                if not chunk:
                    break
                answer += chunk
                if b"\r\n" in answer:
                    return int(answer.split()[1]), time.monotonic() - started
            if writable:
                try:
                    pending = pending[sock.send(pending) :]
                except (BrokenPipeError, ConnectionResetError):
                    pending, repeat = memoryview(b""), 0  # closed on us: read what it said
        return (int(answer.split()[1]) if answer else 0), time.monotonic() - started
    finally:
        sock.close()


def request(port: int, fields: int = 0, field: bytes = b"", target: bytes = b"/") -> int:
    head = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(b"X-%d: v\r\n" % i for i in range(fields - 1)) + field + b"\r\n"
    return exchange(port, head)[0]


@pytest.mark.parametrize("http", WORKERS)
def test_a_16_mib_header_and_a_1_mib_request_line_are_refused_at_once(master, http):
    m = master(worker=WORKERS[http], workers=1)
    (pid,) = m.wait_workers(1)
    exchange(m.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # warm: the first request's allocations
    before = rss_kib(pid)
    status, took = exchange(
        m.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", b"v" * 65536, repeat=256
    )
    line_status, line_took = exchange(m.port, b"GET /?q=", b"a" * 65536, repeat=16)
    growth = rss_kib(pid) - before
    print(
        f"{http}: 16 MiB header -> {status} in {took * 1000:.1f} ms; 1 MiB request line -> "
        f"{line_status} in {line_took * 1000:.1f} ms; worker RSS +{growth} KiB"
    )
    assert (status, line_status) == (431, 414)
    assert (
        took < 1.0 and line_took < 1.0
    )  # generous (the bound is 100 ms): nothing more was read
    assert growth < 2048
    assert request(m.port) == 200  # the worker serves on
    m.wait_log(
        r"refused a request head from 127\.0\.0\.1:\d+: a header field longer than "
        r"--limit-request-field_size 8190, answered 431"
    )


@pytest.mark.parametrize("http", WORKERS)
def test_limits_mean_what_gunicorn_means(master, http):
    m = master(
        worker=WORKERS[http],
        workers=1,
        env={"HARDENED_HEADER_TIMEOUT": "0"},
        args=[
            "--limit-request-fields",
            "10",
            "--limit-request-line",
            "0",
            "--limit-request-field_size",
            "0",
        ],
    )
    assert request(m.port, fields=10) == 200
    assert request(m.port, fields=11) == 431  # the 11th header
    # A request line of 0: unlimited in gunicorn 27, 8190 in 25.2: whatever the installed one's says.
    long_line = b"GET /?q=" + b"a" * 12000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert request(m.port, target=b"/?q=" + b"a" * 12000) == gunicorn_status(long_line, 0, 10, 0)
    assert request(m.port, field=b"X-Big: " + b"v" * 8181 + b"\r\n") == 200  # field size 0: 8190
    assert request(m.port, field=b"X-Big: " + b"v" * 8182 + b"\r\n") == 431
    m.wait_log(r"more header fields than --limit-request-fields 10, answered 431")


@pytest.mark.parametrize("http", WORKERS)
def test_keep_alive_and_pipelined_requests_are_counted_each_on_its_own(master, http):
    m = master(worker=WORKERS[http], workers=1, args=["--limit-request-fields", "3"])
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n" + b"X: 1\r\n" * 5 + b"\r\n" * 5
    )
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as sock:
        # Three requests at once, the first body looking like a head with too many fields.
        sock.sendall(
            head
            + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n"
        )
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 3:
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("http", WORKERS)
def test_a_stalled_body_is_closed_but_an_idle_keep_alive_connection_is_not(master, http):
    m = master(
        worker=WORKERS[http],
        workers=1,
        args=["--keep-alive", "30"],
        env={"HARDENED_HEADER_TIMEOUT": "1s", "HARDENED_BODY_TIMEOUT": "1s"},
    )
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)  # idle between requests: --keep-alive's, not the header clock
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
        closed = time.monotonic() - started
    assert answer == b"" and closed < 3.0  # closed after 1 s without a body byte
    m.wait_log(r"sent no more of any of the request body within HARDENED_BODY_TIMEOUT 1 s")


# --- slowloris --------------------------------------------------------------------------------


def raise_descriptor_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"needs {wanted} descriptors, the hard limit here is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


NORMAL_CLIENT = """
import socket, sys, time
port, until = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
while time.monotonic() < until:
    started = time.perf_counter()
    sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    answer = sock.recv(65536)
    print(time.perf_counter() - started if answer.startswith(b"HTTP/1.1 200") else repr(answer), flush=True)
    time.sleep(0.005)
"""


class Latencies:
    """A normal keep-alive client in a process of its own (the slow clients' loop here must not
    hold its GIL), one request after another for ``seconds``, each one's latency recorded."""

    def __init__(self, port: int, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NORMAL_CLIENT, str(port), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def join(self) -> tuple[list[float], list[str]]:
        out, _ = self.proc.communicate(timeout=60)
        samples, errors = [], []
        for line in out.splitlines():
            try:
                samples.append(float(line))
            except ValueError:
                errors.append(line)
        return samples, errors + (
            [f"exit status {self.proc.returncode}"] if self.proc.returncode else []
        )


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


def test_2000_slow_header_connections_are_closed_within_the_timeout(master):
    slow, timeout = 2000, 2.0
    raise_descriptor_limit(slow + 1000)  # this process's and, inherited, the master's and workers'
    m = master(
        workers=2, env={"HARDENED_HEADER_TIMEOUT": f"{timeout:g}s"}, args=["--backlog", "4096"]
    )
    m.wait_workers(2)
    poller = select.epoll()
    burst = time.monotonic()
    opened: dict[int, tuple[socket.socket, float]] = {}
    for _ in range(slow):
        sock = socket.create_connection(("127.0.0.1", m.port))
        sock.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # then a byte every 3 s: never complete
        sock.setblocking(False)
        opened[sock.fileno()] = (sock, time.monotonic())
        poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    burst = time.monotonic() - burst
    # The normal client runs while the worker holds the slow connections and closes them (not
    # during this process's own burst of connects, which on 2 cores takes the CPU from everyone).
    normal = Latencies(m.port, timeout + 1.5)
    closed_after: list[float] = []
    next_byte = time.monotonic() + 3.0
    give_up = time.monotonic() + timeout + 10.0
    while opened and time.monotonic() < give_up:
        for fd, _ in poller.poll(0.2):
            sock, since = opened.pop(fd)
            closed_after.append(time.monotonic() - since)
            poller.unregister(fd)
            sock.close()
        if time.monotonic() >= next_byte:
            next_byte += 3.0
            for sock, _ in opened.values():
                try:
                    sock.send(b"v")
                except OSError:
                    pass
    samples, errors = normal.join()
    for sock, _ in opened.values():
        sock.close()
    print(
        f"{slow} connected in {burst:.2f} s; {len(closed_after)} of {slow} closed, the last {max(closed_after, default=0):.2f} s after "
        f"its connect; the normal client: {len(samples)} requests, p99 {p99(samples) * 1000:.2f} ms, "
        f"errors {errors[:3]}"
    )
    assert not opened, f"{len(opened)} slow connections still open"
    assert max(closed_after) < timeout + 1.0
    assert not errors and p99(samples) < 0.010
    m.wait_log(r"sent no more of a complete request head within HARDENED_HEADER_TIMEOUT 2 s")


# --- out of descriptors -----------------------------------------------------------------------


def test_out_of_descriptors_a_new_client_is_reset_at_once_and_it_is_logged_once(master):
    m = master(workers=1, env={"HARDENED_HEADER_TIMEOUT": "0"}, args=["--backlog", "1024"])
    (pid,) = m.wait_workers(1)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (128, 128))  # ulimit -n 128, for the worker
    idle = [socket.create_connection(("127.0.0.1", m.port)) for _ in range(400)]
    try:
        time.sleep(0.5)  # let the worker reach its limit
        started = time.monotonic()
        try:  # the reset may come before the request is sent, even before connect returns
            with socket.create_connection(("127.0.0.1", m.port), timeout=5) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = client.recv(65536)  # b"": closed; an answer if a descriptor was free
        except (ConnectionResetError, BrokenPipeError):
            answer = b"reset"
        waited = time.monotonic() - started
        print(f"the new client: {answer[:20]!r} after {waited * 1000:.0f} ms")
        assert waited < 1.0
        time.sleep(2.0)  # ten more ticks that find it still out of descriptors
        lines = re.findall(
            r"out of descriptors \(Too many open files; (\d+) open, RLIMIT_NOFILE 128\)", m.log()
        )
        assert len(lines) == 1, m.log()
        assert "cannot accept" not in m.log()
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: request(m.port) == 200, 10)  # and it serves again once descriptors are free
