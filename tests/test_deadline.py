"""HARDENED_REQUEST_TIMEOUT with a real master: the late request is cancelled, nothing else is."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading

import pytest
from rig import APPS, get, wait_for, wrk

WAIT_LINE = next(
    n
    for n, line in enumerate((APPS / "deadline_app.py").read_text().splitlines(), 1)
    if "WAIT-LINE" in line
)


def deadline_master(master, **env):
    return master(app="deadline_app:app", workers=1, env={"HARDENED_REQUEST_TIMEOUT": "1s", **env})


def request(port, path, timeout=30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_a_request_past_its_deadline_gets_504_and_the_worker_serves_on(master):
    m = deadline_master(master)
    [pid] = m.wait_workers(1)
    result = {}
    load = threading.Thread(
        target=lambda: result.update(wrk=wrk(m.port, "/", duration=3, connections=8))
    )
    load.start()
    conn, response = request(m.port, "/wait?s=10")
    body = response.read()
    conn.close()
    load.join()
    assert response.status == 504 and response.getheader("connection") == "close", body
    assert get(m.port, "/pid")[1] == str(pid).encode()  # the same worker, still serving
    fast = result["wrk"]
    assert fast.requests > 0 and fast.socket_errors == 0 and fast.non_2xx == 0
    [line] = m.wait_log(r"request deadline: GET /wait ended after [^\n]*\n[^\n]*\n[^\n]*")
    assert "no response started: answered 504" in line
    assert f'deadline_app.py", line {WAIT_LINE}, in app' in line  # where it was waiting
    # The 504's connection closed once the client read it; the abort check 1 s later (ABORT_GRACE,
    # within wrk's 3 s) leaves it alone: an exception in a loop callback would be in the error log.
    assert "Traceback" not in m.log() and "Exception in ASGI application" not in m.log()


def test_a_response_already_streaming_past_its_deadline_is_cut(master):
    m = deadline_master(master)
    m.wait_workers(1)
    conn, response = request(m.port, "/stream-then-wait")
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    conn.close()
    assert cut.value.partial == b"first chunk\n"
    m.wait_log(
        r"request deadline: GET /stream-then-wait ended after .* a response in progress: "
        r"connection closed"
    )
    assert "Traceback" not in m.log()


def test_the_app_sees_its_deadline_and_websockets_are_exempt(master):
    import websockets

    m = deadline_master(master, HARDENED_HEALTH_PATH="/healthz")
    m.wait_workers(1)
    seen = json.loads(get(m.port, "/deadline")[1])
    assert 0 < seen["remaining"] <= 1.0 and seen["draining"] is False

    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{m.port}/ws") as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            # A request started after the websocket opened passes its deadline: so has the socket.
            status = await asyncio.to_thread(lambda: get(m.port, "/wait?s=10", timeout=30)[0])
            assert status == 504
            await ws.send("after")
            return await ws.recv()

    assert asyncio.run(main()) == "after"
    assert get(m.port, "/healthz")[0] == 200  # never wrapped by the deadline
    assert m.log().count("request deadline:") == 1


def test_without_the_setting_nothing_is_cancelled(master):
    m = master(app="deadline_app:app", workers=1)
    m.wait_workers(1)
    seen = json.loads(get(m.port, "/deadline")[1])
    assert seen == {"remaining": None, "draining": False}
    assert get(m.port, "/wait?s=1.5", timeout=30) == (200, b"waited")
    wait_for(lambda: "started wait" in " ".join(m.events()), 5)
    assert "request deadline" not in m.log()
