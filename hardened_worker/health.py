"""A health endpoint answered by the worker itself, as plain ASGI middleware.

``GET <path>`` never reaches the app: 200 with ``{"pid", "state", "age", "requests"}`` while the
worker is ready, 503 while it is booting, in its drain delay or draining, so a Kubernetes readiness
probe or a load balancer stops routing to it before it stops accepting. An optional app-level check
(``module:function``, sync or async, returning a truthy value when healthy) runs with a timeout;
a false result, an exception or the timeout answers 503 and names the reason in the body.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import time
from typing import Any, Callable, Optional

from hardened_worker.drain import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("hardened_worker.health")


def load_check(reference: str) -> Callable[[], Any]:
    """``'pkg.mod:func'`` -> the callable; raises ImportError/AttributeError with the reference."""
    module_name, _, attr = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{reference} is not callable")
    return target


class WorkerStatus:
    """What the health body reports; the server updates ``state`` and reads ``requests``."""

    def __init__(self, requests: Callable[[], int]) -> None:
        self.state = "booting"
        self.born = time.monotonic()
        self.requests = requests

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def body(self, **extra: Any) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": self.state,
            "age": round(time.monotonic() - self.born, 3),
            "requests": self.requests(),
            **extra,
        }


class HealthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        path: str,
        status: WorkerStatus,
        check: Optional[Callable[[], Any]] = None,
        check_timeout: float = 1.0,
    ) -> None:
        self.app = app
        self.path = path
        self.status = status
        self.check = check
        self.check_timeout = check_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        extra: dict[str, Any] = {}
        healthy = self.status.ready
        if healthy and self.check is not None:
            healthy, extra["check"] = await self._run_check()
        body = json.dumps(self.status.body(**extra)).encode()
        await send({
            "type": "http.response.start",
            "status": 200 if healthy else 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        })
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    async def _run_check(self) -> tuple[bool, str]:
        assert self.check is not None
        try:
            if inspect.iscoroutinefunction(self.check):
                result = await asyncio.wait_for(self.check(), self.check_timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(self.check), self.check_timeout)
        except asyncio.TimeoutError:
            return False, f"timed out after {self.check_timeout:g} s"
        except Exception as exc:  # the app's check failing is an answer, not a crash
            logger.warning("hardened_worker: health check raised %r", exc)
            return False, f"raised {type(exc).__name__}"
        return (True, "ok") if result else (False, "returned false")
