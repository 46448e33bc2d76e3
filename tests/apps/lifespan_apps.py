"""Apps with particular lifespan behaviour."""


async def raises_in_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("boom in startup")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
