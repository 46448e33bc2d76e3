"""An app with a real footprint and a steady leak, for the memory-cgroup tests and bench.

At import it holds ``BALLAST_MIB`` MiB (default 60), written so every page is resident (a plain
``bytearray(n)`` is calloc'd: zero pages that cost nothing until touched). Every HTTP request
keeps ``?kib=`` KiB more (default ``BALLAST_LEAK_KIB``, else 64), also written. ``/`` and every
other path leak alike, so wrk needs no path; POST bodies are read and ignored.
"""

import os

MiB = 1024 * 1024

BALLAST = bytearray(b"\x01") * (int(os.environ.get("BALLAST_MIB", "60")) * MiB)
LEAK_KIB = int(os.environ.get("BALLAST_LEAK_KIB", "64"))
LEAKED = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # the body, if any
        message = await receive()
        more = message.get("more_body", False)
    kib = LEAK_KIB
    for part in scope.get("query_string", b"").decode().split("&"):
        if part.startswith("kib="):
            kib = int(part[4:])
    LEAKED.append(bytearray(b"\x01") * (kib * 1024))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"6")],
        }
    )
    await send({"type": "http.response.body", "body": b"leaked"})
