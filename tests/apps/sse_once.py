"""One server-sent event, then silence until the client leaves: through a proxy that buffers
the stream the client never sees the event (tests/test_examples.py, the nginx site)."""

from testapp import app as _testapp


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/events":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    return await _testapp(scope, receive, send)
