"""The README's FastAPI server-sent-events example, as the tests run it (tests/test_streams.py).

``/events`` streams an event every 100 ms and ends once the worker drains; ``/events?watch=0``
ignores the drain (the worker ends it at the drain deadline). Each stream records
``started events <pid>`` in ``TESTAPP_EVENTS`` after its first event.
"""

import asyncio
import contextlib
import os

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

app = FastAPI()


def _record(event):
    path = os.environ.get("TESTAPP_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


@app.get("/")
async def root():
    return {"ok": True}


@app.get("/events")
async def events(request: Request, watch: int = 1):
    # Set when this worker starts draining; a never-set Event under other servers.
    draining = (
        request.scope.get("extensions", {})
        .get("hardened_worker", {})
        .get("draining", asyncio.Event())
    )

    async def stream():
        n = 0
        while not (watch and draining.is_set()):
            yield f"id: {n}\ndata: tick {n}\n\n"
            if n == 0:
                _record("started events")
            n += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(draining.wait() if watch else asyncio.sleep(1), 0.1)

    return StreamingResponse(stream(), media_type="text/event-stream")
