"""Even spread across workers (HARDENED_SPREAD), real master: keep-alive connections opened at
once end up evenly on the workers, and so do their requests, by the workers' own counts (the
pool metrics, ``HARDENED_METRICS_PATH``, read from the shared table)."""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
from pathlib import Path

import pytest
from rig import get, wait_for
from test_metrics import settled, value

REQUESTS_PER_CONNECTION = 20


def per_worker_requests(port: int) -> dict[int, int]:
    status, body = get(port, "/metrics?format=json")
    assert status == 200
    return {w["pid"]: w["requests"] for w in json.loads(body)["workers"]}


@pytest.mark.parametrize("workers", [2, 4])
def test_connections_opened_at_once_are_spread_evenly(master, workers):
    m = master(workers=workers, env={"HARDENED_METRICS_PATH": "/metrics"})
    pids = m.wait_workers(workers)
    found = next(iter(settled(m.port, pids).values()))  # wait_serving's probes, all published
    before = {pid: value(found, "requests_total", pid=str(pid)) for pid in pids}
    conns = [http.client.HTTPConnection("127.0.0.1", m.port, timeout=30) for _ in range(8)]
    for conn in conns:  # all connected before any request: the burst a client pool opens
        conn.connect()
    held_by: dict[int, int] = {}
    for round_ in range(REQUESTS_PER_CONNECTION):
        for conn in conns:
            conn.request("GET", "/pid")
            response = conn.getresponse()
            pid = int(response.read())
            if round_ == 0:
                held_by[pid] = held_by.get(pid, 0) + 1
    assert sorted(held_by) == sorted(pids)
    assert set(held_by.values()) == {8 // workers}  # connections per worker: exactly even
    expected = {pid: 8 // workers * REQUESTS_PER_CONNECTION for pid in pids}

    def served() -> dict[int, int]:  # a sibling's counts show on its next tick
        after = per_worker_requests(m.port)
        return {pid: after[pid] - before[pid] for pid in pids}

    wait_for(lambda: served() == expected, 10)
    for conn in conns:
        conn.close()


def test_a_worker_that_holds_more_leaves_the_next_connection_to_its_sibling(master):
    m = master(workers=2)
    pids = m.wait_workers(2)
    held: dict[int, int] = {pid: 0 for pid in pids}
    conns = []
    for n in range(1, 9):  # one at a time, each kept open and answered before the next
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=30)
        conn.request("GET", "/pid")
        pid = int(conn.getresponse().read())
        conns.append(conn)
        if n % 2 == 0:  # the one ahead left this one to the other
            assert held[pid] < max(held.values()), (n, held, pid)
        held[pid] += 1
    assert set(held.values()) == {4}
    for conn in conns:
        conn.close()


def test_another_pool_in_the_network_namespace_takes_no_wake_socket_of_ours(master):
    """A Kubernetes pod's containers share a network namespace (abstract UNIX names) and each
    numbers its pids from 1: another pool's workers may hold our workers' pids. Stand in for one:
    the abstract names an older pool would bind for the next pids, taken before ours start. Ours
    are files in a directory named after the pool's token (test_wake_strangers.py)."""
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    foreign = []
    try:
        for pid in range(last + 1, last + 400):
            taken = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            foreign.append(taken)
            taken.bind(b"\0hardened-worker-wake-%d" % pid)  # a pool without a token of its own
        m = master(workers=2)
        pids = m.wait_workers(2)
        assert max(pids) < last + 400, "the workers' pids were not among those taken"
        names = {
            line.split()[-1]
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]
            if len(line.split()) == 8
        }
        for pid in pids:  # each worker bound a wake socket of its own pool
            assert any(re.fullmatch(rf"/.*/hardened-worker-wake-[0-9a-f]+/{pid}", n) for n in names)
        assert "has no wake socket" not in m.log()
    finally:
        for taken in foreign:
            taken.close()


def test_a_new_connection_does_not_wait_for_a_blocked_worker_that_holds_fewer(master):
    """The worker holding fewer connections is the one the other leaves new connections to, but
    while a handler blocks its loop it cannot accept: once its loop has not ticked for
    spread.STALE_MS, the other takes the connection, long before the block ends."""
    m = master(workers=2, args=["--keep-alive", "60"])  # no idle connection closes meanwhile
    pids = m.wait_workers(2)
    held: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in pids}
    for _ in range(3):  # 1/1, then the third to either: 2/1
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=30)
        conn.request("GET", "/pid")
        held[int(conn.getresponse().read())].append(conn)
    blocked = min(pids, key=lambda pid: len(held[pid]))
    other = next(pid for pid in pids if pid != blocked)
    assert (len(held[blocked]), len(held[other])) == (1, 2)
    blocker = held[blocked][0]
    blocker.request("GET", "/block?s=10")
    m.wait_started("/block")
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=30)
    conn.request("GET", "/pid")
    assert int(conn.getresponse().read()) == other
    assert select.select([blocker.sock], [], [], 0)[0] == [], "answered only after the block ended"
    for c in [conn, *held[blocked], *held[other]]:
        c.close()


def accepts(port: int) -> dict[int, str]:
    """What each worker does about new connections, as the pool's JSON shows it."""
    status, body = get(port, "/metrics?format=json")
    assert status == 200
    return {w["pid"]: w["accept"] for w in json.loads(body)["workers"]}


def test_clients_without_keep_alive_make_every_worker_take_what_comes_until_they_stop(master):
    """spread.churning: a second with at least 32 new connections carrying about one request each
    (clients, or a proxy, without keep-alive) and the workers neither yield nor wake each other
    (``churn``); a second after such traffic stops, the policy is back (the worker answering the
    scrape holds its connection, so it yields to the other: ``listening`` or ``yielding``)."""
    m = master(workers=2, env={"HARDENED_METRICS_PATH": "/metrics"})
    m.wait_workers(2)
    balanced = {"listening", "yielding"}
    wait_for(lambda: len(accepts(m.port)) == 2 and set(accepts(m.port).values()) <= balanced, 10)
    stop = threading.Event()

    def without_keep_alive() -> None:
        while not stop.is_set():
            assert get(m.port, "/")[0] == 200  # a connection of its own for every request

    clients = [threading.Thread(target=without_keep_alive) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: set(accepts(m.port).values()) == {"churn"}, 15)
    finally:
        stop.set()
        for client in clients:
            client.join()
    wait_for(lambda: set(accepts(m.port).values()) <= balanced, 15)
