"""Backpressure (HARDENED_MAX_INFLIGHT) and load shedding (HARDENED_MAX_QUEUE_TIME), real master."""

from __future__ import annotations

import http.client
import time

import pytest
from rig import get, wait_for


def connection(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def ask(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def connections_to(port, pid, count):
    """``count`` keep-alive connections whose worker is ``pid`` (others are opened and closed)."""
    held = []
    for _ in range(400):
        conn = connection(port)
        if ask(conn, "/pid")[1] == str(pid).encode():
            held.append(conn)
            if len(held) == count:
                return held
        else:
            conn.close()
    raise AssertionError(f"no {count} connections reached worker {pid}")


def test_a_worker_at_its_in_flight_bound_leaves_new_connections_to_its_sibling(master):
    # HARDENED_SPREAD off: its even spread would never let 5 connections reach one worker.
    m = master(
        app="deadline_app:app",
        workers=2,
        env={"HARDENED_MAX_INFLIGHT": "4", "HARDENED_SPREAD": "false"},
    )
    busy, other = m.wait_workers(2)
    held = connections_to(m.port, busy, 5)
    slow, spare = held[:4], held[4]
    for conn in slow:
        conn.request("GET", "/hold")
    wait_for(lambda: m.events().count(f"started hold {busy}") == 4, 15)
    # busy now holds 4 requests: at the bound it left the accept queue to its sibling.
    answers = [get(m.port, "/pid") for _ in range(40)]
    assert answers == [(200, str(other).encode())] * 40
    m.wait_log(rf"worker {busy} reached its in-flight bound \(HARDENED_MAX_INFLIGHT 4\)")
    # A connection it already held is still served, past the bound.
    assert ask(spare, "/pid") == (200, str(busy).encode())
    # Below the bound again, it accepts again.
    m.events_path.with_name(m.events_path.name + ".release").touch()
    for conn in slow:
        assert conn.getresponse().read() == b"released"
        conn.close()
    spare.close()
    seen = set()

    def both_answer():
        seen.add(get(m.port, "/pid")[1])
        return len(seen) == 2

    wait_for(both_answer, 30, interval=0.01)
    assert "Traceback" not in m.log()


def test_without_a_bound_both_workers_keep_accepting(master):
    m = master(app="deadline_app:app", workers=2, env={"HARDENED_SPREAD": "false"})
    busy, other = m.wait_workers(2)
    slow = connections_to(m.port, busy, 4)
    for conn in slow:
        conn.request("GET", "/hold")
    wait_for(lambda: m.events().count(f"started hold {busy}") == 4, 15)
    seen = set()

    def busy_still_accepts():
        conn = connection(m.port)
        try:
            seen.add(ask(conn, "/pid")[1])
        finally:
            conn.close()
        return str(busy).encode() in seen

    wait_for(busy_still_accepts, 30, interval=0.01)  # the control for the test above
    m.events_path.with_name(m.events_path.name + ".release").touch()
    for conn in slow:
        conn.close()


@pytest.mark.parametrize("fails_health", [False, True])
def test_a_request_that_waited_too_long_at_the_proxy_is_shed_and_health_says_so(
    master, fails_health
):
    import json

    m = master(
        app="deadline_app:app",
        workers=1,
        env={
            "HARDENED_MAX_QUEUE_TIME": "2s",
            "HARDENED_HEALTH_PATH": "/healthz",
            "HARDENED_METRICS_PATH": "/metrics",
            "HARDENED_SHED_FAILS_HEALTH": str(fails_health).lower(),
        },
    )
    m.wait_workers(1)
    now = time.time()
    late = {"X-Request-Start": f"t={int((now - 10) * 1e6)}"}  # nginx's t= in microseconds
    heroku_late = {"X-Request-Start": str(int((now - 10) * 1e3))}  # Heroku's milliseconds
    fresh = {"X-Request-Start": f"t={time.time():.3f}"}  # nginx's t=${msec}
    conn = connection(m.port)
    conn.request("GET", "/wait?s=0", headers=late)
    response = conn.getresponse()
    response.read()
    assert response.status == 503 and response.getheader("retry-after") == "2"
    # Shedding is reported; it takes the worker out of rotation only when the operator asked.
    status, body = get(m.port, "/healthz")
    assert status == (503 if fails_health else 200) and json.loads(body)["shedding"] is True
    assert get(m.port, "/wait?s=0", headers=heroku_late)[0] == 503
    assert "started wait" not in " ".join(m.events())  # the app never ran for them
    assert get(m.port, "/wait?s=0", headers=fresh) == (200, b"waited")
    assert m.log().count("shedding: GET /wait waited") == 1  # one line for the episode
    metrics = get(m.port, "/metrics")[1].decode()
    assert "hardened_worker_shed_requests_total 2" in metrics.splitlines()  # what was shed
    wait_for(lambda: get(m.port, "/healthz")[0] == 200, 15)  # no longer shedding


def test_an_untrusted_peer_cannot_get_its_requests_shed(master):
    m = master(
        app="deadline_app:app",
        workers=1,
        env={"HARDENED_MAX_QUEUE_TIME": "2s", "FORWARDED_ALLOW_IPS": "10.0.0.1"},
    )
    m.wait_workers(1)
    late = {"X-Request-Start": f"t={int((time.time() - 10) * 1e6)}"}
    assert get(m.port, "/wait?s=0", headers=late) == (200, b"waited")


def test_without_a_proxy_header_the_wait_counts_from_when_the_connection_was_accepted(master):
    # One worker. Connection `waiting` is opened before the request that blocks the loop, so the
    # worker accepted it first (the kernel's accept queue is FIFO); its request, sent while the loop
    # is blocked for 3 s, is read after: it waited 3 s since its accept, past the 1 s bound.
    m = master(workers=1, env={"HARDENED_MAX_QUEUE_TIME": "1s"})
    m.wait_workers(1)
    waiting = connection(m.port)
    waiting.connect()
    blocking = connection(m.port)
    blocking.request("GET", "/block?s=3")
    m.wait_started("/block")
    waiting.request("GET", "/")
    response = waiting.getresponse()
    assert (response.status, response.getheader("retry-after")) == (503, "1")
    response.read()
    assert blocking.getresponse().read() == b"blocked"  # it waited for nothing: it ran
    # The bound counts from the accept of the connection, once: a later request on it is served.
    assert ask(waiting, "/") == (200, b"ok")
    # And a connection accepted after the stall waited for nothing.
    assert get(m.port, "/") == (200, b"ok")
    m.wait_log(r"shedding: GET / waited [0-9.]+ s \(HARDENED_MAX_QUEUE_TIME 1 s\)")
    waiting.close()
    blocking.close()


def test_without_a_proxy_header_time_in_the_kernels_accept_queue_counts_too(master):
    # One worker, its loop blocked for 3 s: a connection made meanwhile waits in the kernel's
    # accept queue, where the worker cannot see it. Its request was received 3 s before the worker
    # accepted it; TCP_INFO says so, and it is shed although it was accepted just now.
    m = master(workers=1, env={"HARDENED_MAX_QUEUE_TIME": "1s"})
    m.wait_workers(1)
    blocking = connection(m.port)
    blocking.request("GET", "/block?s=3")
    m.wait_started("/block")
    queued = connection(m.port)
    queued.request("GET", "/")  # connect() completes in the kernel: the loop is blocked
    response = queued.getresponse()
    assert (response.status, response.getheader("retry-after")) == (503, "1")
    response.read()
    assert blocking.getresponse().read() == b"blocked"
    assert get(m.port, "/") == (200, b"ok")  # a request that did not wait is served
    queued.close()
    blocking.close()
