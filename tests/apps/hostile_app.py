"""Test app for hostile clients (tests/test_hostile_deadline.py): plain ASGI.

* ``/`` tiny; ``/pid``;
* ``/stream?mib=N``: a chunked response of N MiB (default 1024) in 1 MiB chunks, written as fast
  as the client reads (uvicorn's flow control holds the app in ``send`` while the client does not);
  records ``started stream <pid>`` in ``TESTAPP_EVENTS`` once the first chunk is handed over;
* lifespan shutdown takes ``HOSTILE_SHUTDOWN_S`` seconds (default 0): a worker that outlives its
  drain deadline, so what it freed is seen before its exit frees everything.
"""

import asyncio
import os
from urllib.parse import parse_qs

CHUNK = bytes(1024 * 1024)


def _record(event):
    path = os.environ.get("TESTAPP_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


async def _respond(send, body, status=200):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await asyncio.sleep(float(os.environ.get("HOSTILE_SHUTDOWN_S", "0")))
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/":
        return await _respond(send, b"ok")
    if path == "/pid":
        return await _respond(send, str(os.getpid()).encode())
    if path == "/stream":
        mib = int(parse_qs(scope["query_string"].decode()).get("mib", ["1024"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        for n in range(mib):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            if n == 0:
                _record("started stream")
        return await send({"type": "http.response.body", "body": b""})
    return await _respond(send, b"not found", status=404)
