"""Graceful drain: the time budget, and the ASGI piece that tells clients to go away.

The budget (:func:`plan`): gunicorn's master SIGKILLs a worker ``--graceful-timeout`` seconds after
it sends SIGTERM on shutdown. Inside that window the worker spends the drain delay (still serving
normally, so load balancers stop routing first), then drains connections, then runs lifespan
shutdown. Lifespan shutdown gets a reserved share at the end (20% of the window, between 1 s and
10 s) so a slow request can never make the app skip its clean-up; a safety margin of 0.5 s keeps
the worker's own exit ahead of the master's SIGKILL.

The middleware (:class:`DrainMiddleware`): while draining, every response carries
``Connection: close``, so a client (or a proxy such as nginx with upstream keep-alive) learns from
the response itself that the connection ends, instead of finding it reset on its next request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFETY_MARGIN = 0.5
STARTED_KEY = "hardened.started"


@dataclass(frozen=True)
class DrainPlan:
    """Absolute ``time.monotonic()`` instants of one stop."""

    drain_at: float  # drain delay over: stop accepting
    requests_deadline: float  # in-flight requests are cancelled past this
    lifespan_deadline: float  # lifespan shutdown is abandoned past this


def plan(now: float, graceful_timeout: float, drain_delay: float) -> DrainPlan:
    """Split ``graceful_timeout`` (counted from ``now``, when SIGTERM arrived)."""
    end = now + max(graceful_timeout - SAFETY_MARGIN, 0.1)
    share = min(max(graceful_timeout * 0.2, 1.0), 10.0)
    drain_at = min(now + drain_delay, end)
    requests_deadline = max(drain_at, end - share)
    return DrainPlan(drain_at, requests_deadline, end)


def check_budget(graceful_timeout: float, drain_delay: float) -> str | None:
    """Why a drain delay cannot fit in the graceful timeout, or None if it fits."""
    if drain_delay and drain_delay + 1.0 > graceful_timeout:
        return (
            f"HARDENED_DRAIN_DELAY={drain_delay:g}s leaves no time to drain within "
            f"--graceful-timeout {graceful_timeout:g}s; use a delay at least 1 s shorter"
        )
    return None


def describe_in_flight(scopes: list[Scope], now: float, drain_started: float) -> str:
    """``GET /slow (over 12.3 s), POST /upload (0.4 s)`` for the deadline log line.

    Requests that began before the drain carry no stamp (stamping every request would cost every
    request): their age is at least the drain's.
    """
    parts = []
    for scope in scopes:
        started = scope.get(STARTED_KEY)
        age = f"{now - started:.1f} s" if started else f"over {now - drain_started:.1f} s"
        parts.append(f"{scope.get('method', 'WEBSOCKET')} {scope.get('path', '?')} ({age})")
    return ", ".join(parts) if parts else "none"


class DrainSignal:
    """What the app and the request guard see of this worker's drain.

    ``event`` (an ``asyncio.Event``, in every request's scope as
    ``scope["extensions"]["hardened_worker"]["draining"]``) is set when the drain starts, so a
    stream can end at once and its client reconnect to a sibling; ``deadline_passed`` turns true
    when the requests still running are ended (:mod:`hardened_worker._deadline`).
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.deadline_passed = False


class DrainMiddleware:
    """Adds ``Connection: close`` to every response; plain ASGI, usable anywhere.

    It costs nothing before the drain: the server puts it in front of the app on each open
    connection only when the drain starts. It stamps each request's start (``hardened.started``)
    so the deadline log can give its age.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[STARTED_KEY] = time.monotonic()

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_closing)
