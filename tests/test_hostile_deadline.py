"""Cutting means freeing: a request ended by its deadline (HARDENED_REQUEST_TIMEOUT) or by the
drain deadline releases its connection even when the client never reads (issue 25, item 3).

Real gunicorn, real sockets: 50 clients ask for a 1 GiB stream and never read a byte. The kernel's
buffers fill, uvicorn's flow control holds the app in ``send``; a graceful ``transport.close()``
would wait for a buffer that never drains. Counted from outside: the server side's ESTABLISHED
sockets (``ss``) and the worker's resident memory.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess

from rig import get, wait_for

CLIENTS = 50
DEADLINE = 2.0
FREED_WITHIN = 5.0  # seconds after the deadline: the bound


def established(port: int) -> int:
    """Server-side ESTABLISHED TCP sockets on ``port`` (the clients' ends have it as dport)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def non_readers(port: int, count: int = CLIENTS) -> list[socket.socket]:
    """``count`` clients of a 1 GiB stream that never read (small receive buffers: the server's
    send side fills at once)."""
    clients = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /stream?mib=1024 HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(s)
    return clients


def warmed(port: int) -> None:
    """Serve a few streams read to the end, so the baseline includes what any stream leaves."""
    for _ in range(3):
        status, body = get(port, "/stream?mib=8", timeout=30)
        assert status == 200 and len(body) == 8 * 1024 * 1024


def test_request_deadline_frees_connections_of_clients_that_never_read(master):
    m = master(app="hostile_app:app", workers=1, env={"HARDENED_REQUEST_TIMEOUT": f"{DEADLINE:g}s"})
    [pid] = m.wait_workers(1)
    warmed(m.port)
    before = rss_kib(pid)
    clients = non_readers(m.port)
    try:
        m.wait_started("stream", count=CLIENTS + 3)
        assert established(m.port) == CLIENTS
        during = rss_kib(pid)
        wait_for(lambda: established(m.port) == 0, DEADLINE + FREED_WITHIN)
        m.wait_log(r"request deadline: GET /stream ended", count=CLIENTS)
        assert get(m.port, "/pid")[1] == str(pid).encode()  # the same worker serves on
        after = wait_for(lambda: (r := rss_kib(pid)) - before < 4096 and r, 10)
        print(f"RSS KiB: before {before}, with {CLIENTS} stuck streams {during}, after {after}")
    finally:
        for s in clients:
            s.close()


def test_drain_deadline_frees_connections_of_clients_that_never_read(master):
    """SIGTERM with --graceful-timeout 2: all gone within 5 s of the drain deadline."""
    m = master(app="hostile_app:app", workers=1, args=["--graceful-timeout", "2"])
    m.wait_workers(1)
    clients = non_readers(m.port)
    try:
        m.wait_started("stream", count=CLIENTS)
        assert established(m.port) == CLIENTS
        m.signal(signal.SIGTERM)
        m.wait_log(r"drain deadline passed; closing 50 connections")
        wait_for(lambda: established(m.port) == 0, FREED_WITHIN)
        assert m.wait_exit(30) == 0
    finally:
        for s in clients:
            s.close()


def test_drain_deadline_frees_them_before_the_worker_exits(master):
    """The worker outlives its drain deadline (a lifespan shutdown that never ends; with
    --graceful-timeout 15 it gets 3 s after the requests' deadline): the connections are gone
    before that shutdown gives up, so the worker freed them, not the end of its event loop."""
    m = master(
        app="hostile_app:app",
        workers=1,
        args=["--graceful-timeout", "15"],
        env={"HOSTILE_SHUTDOWN_S": "60"},
    )
    m.wait_workers(1)
    clients = non_readers(m.port)
    try:
        m.wait_started("stream", count=CLIENTS)
        m.signal(signal.SIGTERM)
        m.wait_log(r"drain deadline passed; closing 50 connections")
        wait_for(lambda: established(m.port) == 0, FREED_WITHIN)
        assert "lifespan shutdown did not finish" not in m.log(), "freed only as the loop ended"
        m.wait_log(r"lifespan shutdown did not finish")  # the worker was still running meanwhile
    finally:
        for s in clients:
            s.close()
