"""Streams at drain, with a real master: server-sent events end cleanly, other streams are cut."""

from __future__ import annotations

import http.client
import re
import signal

import pytest
from rig import get, wait_for


def open_stream(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    return conn, response


def started(m, what, count=1):
    wait_for(lambda: sum(e.startswith(f"started {what} ") for e in m.events()) >= count, 15)


def no_traceback(log):
    assert "Traceback" not in log and "CancelledError" not in log
    assert "Exception in ASGI application" not in log


def test_an_sse_stream_that_watches_the_drain_ends_at_once_on_sigterm(master):
    m = master(app="fastapi_sse:app", workers=1, args=["--graceful-timeout", "10"])
    [pid] = m.wait_workers(1)
    conn, response = open_stream(m.port, "/events")
    started(m, "events")
    m.signal(signal.SIGTERM)
    body = response.read()  # to the terminating chunk: raises IncompleteRead on a broken transfer
    conn.close()
    assert body.startswith(b"id: 0\ndata: tick 0\n\n") and body.endswith(b"\n\n")
    assert m.wait_exit(15) == 0
    log = m.log()
    assert "drain deadline passed" not in log  # it ended with the drain, not at the deadline
    assert f"worker {pid} exiting: reason shutdown" in log
    no_traceback(log)


def test_an_sse_stream_that_ignores_the_drain_is_ended_cleanly_at_the_deadline(master):
    m = master(app="fastapi_sse:app", workers=1, args=["--graceful-timeout", "4"])
    m.wait_workers(1)
    conn, response = open_stream(m.port, "/events?watch=0")
    started(m, "events")
    m.signal(signal.SIGTERM)
    body = response.read()
    conn.close()
    assert body.startswith(b"id: 0\n") and body.endswith(b"\n\n")
    assert m.wait_exit(15) == 0
    log = m.log()
    assert "drain deadline passed" in log and "GET /events" in log
    no_traceback(log)


def test_at_the_drain_deadline_sse_ends_cleanly_and_a_plain_stream_is_cut(master):
    m = master(app="deadline_app:app", workers=1, args=["--graceful-timeout", "4"])
    m.wait_workers(1)
    sse_conn, sse = open_stream(m.port, "/sse?watch=0")
    plain_conn, plain = open_stream(m.port, "/chunked")
    started(m, "sse")
    started(m, "chunked")
    m.signal(signal.SIGTERM)
    assert sse.read().endswith(b"\n\n")
    with pytest.raises(http.client.IncompleteRead) as cut:
        plain.read()
    assert cut.value.partial.startswith(b"line 0\n")  # incomplete, never a clean end
    sse_conn.close()
    plain_conn.close()
    assert m.wait_exit(15) == 0
    log = m.log()
    assert "drain deadline passed" in log
    # One line per ended request: method, path, age, how it ended and the body bytes that got out.
    [chunked] = re.findall(
        r"drain deadline: GET /chunked ended after ([0-9.]+) s, a response in "
        r"progress: connection closed, ([0-9]+) bytes sent$",
        log,
        re.M,
    )
    assert float(chunked[0]) > 0 and int(chunked[1]) == len(cut.value.partial)
    assert (
        len(
            re.findall(
                r"drain deadline: GET /sse ended after [0-9.]+ s, a text/event-stream "
                r"response in progress: stream ended, [1-9][0-9]* bytes sent$",
                log,
                re.M,
            )
        )
        == 1
    )
    no_traceback(log)


def test_a_hup_with_watching_sse_clients_retires_the_old_worker_without_waiting(master):
    m = master(app="fastapi_sse:app", workers=1, args=["--graceful-timeout", "10"])
    [old] = m.wait_workers(1)
    streams = [open_stream(m.port, "/events") for _ in range(3)]
    started(m, "events", 3)
    m.signal(signal.SIGHUP)
    for conn, response in streams:
        assert response.read().endswith(b"\n\n")
        conn.close()
    m.wait_log(rf"worker {old} exiting: reason reload", timeout=15)
    [new] = m.wait_workers(1)
    assert new != old and get(m.port, "/")[0] == 200
    log = m.log()
    assert "drain deadline passed" not in log
    no_traceback(log)


def test_the_app_sees_the_draining_event_set_during_the_drain(master):
    m = master(
        app="deadline_app:app",
        workers=1,
        args=["--graceful-timeout", "10"],
        env={"HARDENED_DRAIN_IDLE_WINDOW": "5s"},
    )
    m.wait_workers(1)
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=30)
    conn.request("GET", "/deadline")
    first = conn.getresponse().read()
    assert b'"draining": false' in first
    stream_conn, stream = open_stream(m.port, "/sse?watch=1")  # holds the drain open meanwhile
    started(m, "sse")
    m.signal(signal.SIGTERM)
    m.wait_log(r"draining: reason shutdown")
    conn.request("GET", "/deadline")  # on the held keep-alive connection, during the drain
    response = conn.getresponse()
    assert b'"draining": true' in response.read() and response.getheader("connection") == "close"
    stream.read()
    stream_conn.close()
    conn.close()
    assert m.wait_exit(15) == 0
