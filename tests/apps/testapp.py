"""The test suite's ASGI app, driven by the environment (so each master can be told what to do).

Endpoints: ``/`` (tiny), ``/pid``, ``/sleep?s=`` (async), ``/block?s=`` (blocks the loop with
time.sleep), ``/leak?kib=`` (keeps the memory), ``/cpu?ms=`` (that much CPU, on the loop),
``/client`` (what the app saw of the client), ``/ws`` (websocket echo), ``/table-lock?s=`` (holds the worker table's lock on the loop's thread,
recording ``locked <pid>`` once it has it). Lifespan, all optional:

* ``TESTAPP_STARTUP_DELAY`` seconds of ``await asyncio.sleep`` in lifespan startup;
* ``TESTAPP_STARTUP_BLOCK`` seconds of ``time.sleep`` in lifespan startup (blocks the loop);
* ``TESTAPP_STARTUP_FAIL=1`` raises in lifespan startup;
* ``TESTAPP_IMPORT_FAIL=1`` raises at import, ``TESTAPP_IMPORT_HANG`` sleeps at import;
* ``TESTAPP_EVENTS`` a file each worker appends ``import <pid>``, ``startup <pid>`` and
  ``shutdown <pid>`` to, and ``started /sleep <pid>`` (``/block``) as such a request begins.
"""

import asyncio
import json
import os
import time
from urllib.parse import parse_qs

if os.environ.get("TESTAPP_IMPORT_FAIL"):
    raise RuntimeError("TESTAPP_IMPORT_FAIL is set")
if os.environ.get("TESTAPP_IMPORT_HANG"):
    time.sleep(float(os.environ["TESTAPP_IMPORT_HANG"]))

LEAKED = []


def _record(event):
    path = os.environ.get("TESTAPP_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


_record("import")


async def _lifespan(receive, send):
    message = await receive()
    assert message["type"] == "lifespan.startup"
    try:
        if os.environ.get("TESTAPP_STARTUP_DELAY"):
            await asyncio.sleep(float(os.environ["TESTAPP_STARTUP_DELAY"]))
        if os.environ.get("TESTAPP_STARTUP_BLOCK"):
            time.sleep(float(os.environ["TESTAPP_STARTUP_BLOCK"]))
        if os.environ.get("TESTAPP_STARTUP_FAIL"):
            raise RuntimeError("TESTAPP_STARTUP_FAIL is set")
    except RuntimeError as exc:
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    _record("startup")
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    _record("shutdown")
    await send({"type": "lifespan.shutdown.complete"})


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


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):  # routing as Starlette does, below the mount point
        path = path[len(root) :]
    query = parse_qs(scope["query_string"].decode())
    if scope["method"] in ("POST", "PUT"):
        while (await receive()).get("more_body"):
            pass
    if path == "/":
        return await _respond(send, b"ok")
    if path == "/pid":
        return await _respond(send, str(os.getpid()).encode())
    if path == "/sleep":
        _record("started /sleep")  # what a test waits for before it signals
        await asyncio.sleep(float(query.get("s", ["1"])[0]))
        return await _respond(send, b"slept")
    if path == "/cpu":  # ms of this thread's CPU, computed: the overload bench's handler
        end = time.thread_time() + float(query.get("ms", ["5"])[0]) / 1000
        while time.thread_time() < end:
            sum(range(100))
        return await _respond(send, b"computed")
    if path == "/block":
        _record("started /block")
        time.sleep(float(query.get("s", ["1"])[0]))
        return await _respond(send, b"blocked")
    if path == "/table-lock":
        from hardened_worker.worker import Worker

        with Worker._table._lock:
            _record("locked")
            time.sleep(float(query.get("s", ["1"])[0]))
        return await _respond(send, b"unlocked")
    if path == "/leak":
        LEAKED.append(bytearray(os.urandom(1)) * (int(query.get("kib", ["256"])[0]) * 1024))
        return await _respond(send, b"leaked")
    if path == "/client":
        host = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]}.get("host")
        body = json.dumps(
            {
                "client": scope.get("client"),
                "scheme": scope["scheme"],
                "host": host,
                "server": scope.get("server"),
                "root_path": scope.get("root_path", ""),
                "path": scope["path"],
                "pid": os.getpid(),
            }
        ).encode()
        return await _respond(send, body, content_type=b"application/json")
    return await _respond(send, b"not found", status=404)


async def no_lifespan_app(scope, receive, send):
    """An app that does not support lifespan: must be served anyway."""
    assert scope["type"] == "http"
    await _respond(send, b"ok")
