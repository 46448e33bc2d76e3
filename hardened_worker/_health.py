"""A health endpoint answered by the worker itself, as plain ASGI middleware.

``GET <path>`` (or ``HEAD``) never reaches the app: 200 with ``{"pid", "state", "age", "requests",
"generation", "reload"}`` while the worker is ready, 503 while it is booting, in its drain delay or
draining, so a Kubernetes readiness probe or a load balancer stops routing to it before it stops
accepting. ``generation`` is the answering worker's (1 + the master's HUPs when it was forked),
``reload`` the pool's last reload (:func:`hardened_worker._status.verdict`: its generation, its result,
the newest generation serving), so a deploy can tell from one probe which code answers.

Shedding (``HARDENED_MAX_QUEUE_TIME``) is reported (``"shedding": true``) but does not fail the
probe unless ``HARDENED_SHED_FAILS_HEALTH`` asks for it: under a fleet-wide overload, pods that
go NotReady one after another pile the load onto the rest until no endpoint is left. Other methods on
the path answer 405 with ``Allow: GET, HEAD``. An optional app-level check (``module:function``)
is run by a :class:`HealthCheck`: a false result, an exception or the timeout answers 503 and
names the reason in the body.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from hardened_worker._drain import ASGIApp, Receive, Scope, Send

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


def _is_async(check: Callable[[], Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one (``async def __call__``,
    which :func:`inspect.iscoroutinefunction` does not see on the object itself)."""
    call = type(check).__call__ if not inspect.isfunction(check) else None
    return inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(call)


class HealthCheck:
    """The app's health check, run with a timeout, one run at a time.

    ``check`` takes no arguments and returns a truthy value when the app is healthy. A coroutine
    function or an object with ``async def __call__`` is awaited on the event loop; anything
    else may block, so it is called in a thread of its own, and if it returns an awaitable (a
    ``lambda: db.ping()``) that is awaited on the loop too.

    ``await run()`` answers ``(ok, answer)``: ``(True, "ok")`` or ``(False, "returned false")``,
    ``(False, "raised ValueError")``, ``(False, "timed out after 1 s")``. Probes that arrive
    while a run is in flight share its answer rather than start another. A run that exceeds the
    timeout answers at the timeout; an async check is cancelled then, a thread cannot be: it
    runs on, and until it returns every probe answers at once that the check is still running
    instead of starting a second thread. So a hung check holds one thread, never a pile of
    them, and never one of the loop's default executor, which the app's own ``to_thread`` calls
    need (64 probes against a hung check used to starve it). The thread is a daemon, not an
    executor's: a ThreadPoolExecutor's threads are joined at exit, and a hung one would keep
    the worker from exiting until the master kills it.
    """

    def __init__(self, check: Callable[[], Any], timeout: float) -> None:
        self.check = check
        self.timeout = timeout
        self._async = _is_async(check)
        self._running: asyncio.Future[tuple[bool, str]] | None = None
        self._thread: threading.Thread | None = None
        self._thread_started = 0.0

    async def run(self) -> tuple[bool, str]:
        if self._running is None or self._running.done():
            if self._thread is not None and self._thread.is_alive():
                hung = time.monotonic() - self._thread_started
                return False, (
                    f"timed out after {self.timeout:g} s, still running after {hung:.0f} s"
                )
            self._running = asyncio.ensure_future(self._run_once())
        # shield: a probe that goes away (client disconnect) must not cancel the others' run.
        return await asyncio.shield(self._running)

    async def _run_once(self) -> tuple[bool, str]:
        try:
            healthy = bool(await asyncio.wait_for(self._call(), self.timeout))
        except asyncio.TimeoutError:
            return False, f"timed out after {self.timeout:g} s"
        except Exception as exc:  # the app's check failing is an answer, not a crash
            logger.warning("hardened_worker: health check raised %r", exc)
            return False, f"raised {type(exc).__name__}"
        return (True, "ok") if healthy else (False, "returned false")

    async def _call(self) -> Any:
        result = self.check() if self._async else await self._in_thread()
        if inspect.isawaitable(result):
            result = await result
        return result

    def _in_thread(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def call() -> None:
            try:
                outcome: tuple[Any, Exception | None] = (self.check(), None)
            except Exception as exc:
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop closed while the check hung: nobody is waiting
                pass

        self._thread = threading.Thread(
            target=call, name="hardened_worker health check", daemon=True
        )
        self._thread_started = time.monotonic()
        self._thread.start()
        return future


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():  # the run timed out and was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerStatus:
    """What the health body reports; the server updates ``state`` and reads ``requests``."""

    def __init__(self, requests: Callable[[], int]) -> None:
        self.state = "booting"
        self.born = time.monotonic()
        self.requests = requests
        # HARDENED_MAX_QUEUE_TIME: whether the worker sheds late requests now (reported), and
        # whether that makes it unready too (HARDENED_SHED_FAILS_HEALTH, off by default).
        self.shedding: Callable[[], bool] = lambda: False
        self.shed_fails_health = False
        self.generation = 0  # this worker's (0: not known, outside a hardened_worker pool)
        self.reload: Callable[[], dict[str, Any]] | None = None  # the pool's last reload

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not (self.shed_fails_health and self.shedding())

    def body(self, **extra: Any) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": self.state,
            "age": round(time.monotonic() - self.born, 3),
            **({"shedding": True} if self.shedding() else {}),
            "requests": self.requests(),
            **({"generation": self.generation} if self.generation else {}),
            **({"reload": self.reload()} if self.reload is not None else {}),
            **extra,
        }


_METHODS = ("GET", "HEAD")


class HealthMiddleware:
    """Answers ``path`` itself (see the module docstring); everything else goes to ``app``.

    ``check`` is the app's check (a callable, run by a :class:`HealthCheck` with
    ``check_timeout``) or a :class:`HealthCheck` to share with other users, such as a readiness
    gate; it runs only while the worker is ready. The one in use is ``health_check``.
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        status: WorkerStatus,
        check: Callable[[], Any] | HealthCheck | None = None,
        check_timeout: float = 1.0,
    ) -> None:
        self.app = app
        self.path = path
        self.status = status
        self.health_check: HealthCheck | None = (
            check
            if isinstance(check, HealthCheck) or check is None
            else HealthCheck(check, check_timeout)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if scope["method"] not in _METHODS:
            return await _respond(
                send,
                405,
                {"error": "method not allowed"},
                head=False,
                headers=[(b"allow", ", ".join(_METHODS).encode())],
            )
        extra: dict[str, Any] = {}
        healthy = self.status.ready
        if healthy and self.health_check is not None:
            healthy, extra["check"] = await self.health_check.run()
        await _respond(
            send, 200 if healthy else 503, self.status.body(**extra), head=scope["method"] == "HEAD"
        )


async def _respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    head: bool,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else content})
