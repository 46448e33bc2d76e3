"""Test app for request deadlines and streams at drain (tests/test_deadline.py, test_streams.py).

Plain ASGI. Each slow endpoint records ``started <name> <pid>`` in ``TESTAPP_EVENTS`` once it is
running, so a test waits for that instead of sleeping:

* ``/`` tiny; ``/pid``; ``/deadline``: what the app sees of its deadline (JSON);
* ``/wait?s=`` awaits ``s`` seconds before answering (the line a deadline names is marked);
* ``/stream-then-wait``: a chunked response that sends one chunk, then awaits 60 s;
* ``/sse?watch=1``: server-sent events every 100 ms; with ``watch=1`` it ends once the worker
  drains (``scope["extensions"]["hardened_worker"]["draining"]``);
* ``/chunked``: a plain-text chunked response that never ends;
* ``/hold``: answers once the file ``$TESTAPP_EVENTS.release`` exists (records ``started hold``);
* ``/ws``: websocket echo.
"""

import asyncio
import json
import os
from urllib.parse import parse_qs


def _record(event):
    path = os.environ.get("TESTAPP_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


async def _respond(send, body, status=200, content_type=b"text/plain"):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _start_stream(send, content_type):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
        }
    )


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    ours = scope.get("extensions", {}).get("hardened_worker", {})
    if path == "/":
        return await _respond(send, b"ok")
    if path == "/pid":
        return await _respond(send, str(os.getpid()).encode())
    if path == "/deadline":
        deadline = ours.get("deadline")
        now = asyncio.get_running_loop().time()
        body = {
            "remaining": None if deadline is None else deadline - now,
            "draining": ours["draining"].is_set() if "draining" in ours else None,
        }
        return await _respond(send, json.dumps(body).encode(), content_type=b"application/json")
    if path == "/wait":
        _record("started wait")
        await asyncio.sleep(float(query.get("s", ["10"])[0]))  # WAIT-LINE
        return await _respond(send, b"waited")
    if path == "/hold":
        _record("started hold")
        while not os.path.exists(os.environ["TESTAPP_EVENTS"] + ".release"):
            await asyncio.sleep(0.02)
        return await _respond(send, b"released")
    if path == "/stream-then-wait":
        await _start_stream(send, b"text/plain")
        await send({"type": "http.response.body", "body": b"first chunk\n", "more_body": True})
        _record("started stream")
        await asyncio.sleep(60)
        return await send({"type": "http.response.body", "body": b"never\n"})
    if path == "/sse":
        watch = query.get("watch", ["0"])[0] == "1"
        draining = ours["draining"]
        await _start_stream(send, b"text/event-stream; charset=utf-8")
        n = 0
        while not (watch and draining.is_set()):
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True}
            )
            if n == 0:
                _record("started sse")
            n += 1
            if watch:
                try:
                    await asyncio.wait_for(draining.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0.1)
        return await send({"type": "http.response.body", "body": b"event: bye\ndata: draining\n\n"})
    if path == "/chunked":
        await _start_stream(send, b"text/plain")
        n = 0
        while True:
            await send({"type": "http.response.body", "body": b"line %d\n" % n, "more_body": True})
            if n == 0:
                _record("started chunked")
            n += 1
            await asyncio.sleep(0.1)
    return await _respond(send, b"not found", status=404)
