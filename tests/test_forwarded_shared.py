"""The socket peer kept per request even when an outer layer shares one extensions dict."""

from __future__ import annotations

import asyncio

from hardened_worker._forwarded import EXTENSION, ForwardedMiddleware


def test_peer_of_each_request_not_the_first_one_s() -> None:
    shared = {"draining": None, "deadline": None}  # as deadline.RequestGuard hands every request
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["client"], scope["extensions"][EXTENSION]["peer"]))

    middleware = ForwardedMiddleware(app, "127.0.0.1")

    async def main() -> None:
        for port in (1111, 2222):
            scope = {
                "type": "http",
                "client": ("127.0.0.1", port),
                "server": ("127.0.0.1", 8000),
                "headers": [(b"x-forwarded-for", b"203.0.113.7")],
                "extensions": {EXTENSION: shared},
            }
            await middleware(scope, None, None)
            assert scope["extensions"][EXTENSION]["draining"] is None  # the outer layer's keys kept

    asyncio.run(main())
    assert seen == [
        (("203.0.113.7", 0), ("127.0.0.1", 1111)),
        (("203.0.113.7", 0), ("127.0.0.1", 2222)),
    ]
    assert "peer" not in shared
