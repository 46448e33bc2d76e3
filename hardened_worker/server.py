"""The uvicorn ``Server`` subclass: the one module that leans on uvicorn internals.

Supported: uvicorn 0.54 (pinned ``>=0.54,<0.60`` in pyproject.toml). What it relies on, all
exercised by the real-process tests:

* ``Server.main_loop`` / ``on_tick`` (the 100 ms tick) and ``server_state.connections``/``tasks``;
* the HTTP protocols' ``cycle``, ``scope``, ``transport``, ``timeout_keep_alive_task`` and
  ``shutdown()`` (httptools and h11 both have them);
* ``uvicorn._compat.asyncio_run`` (the event loop runner uvicorn-worker uses too);
* the access log record's arguments (``SkipPath``: the path is the third);
* ``Server.should_exit`` / ``force_exit`` / ``started`` / ``servers`` and
  ``config.loaded_app`` (replaced at the drain);
* the protocols' ``app`` attribute, reassigned on live connections when the drain starts (they
  read it per request), and websockets' ``asgi_send`` (websockets) or ``send`` (wsproto);
* ``LifespanOn``'s ``receive``/``send``/events, subclassed for the lifespan rules below;
* an exception out of the app after its response started makes ``run_asgi`` close the
  connection (what ``deadline.Cut`` relies on to cut a response), logged on ``uvicorn.error``.

The phases read top to bottom: ``startup`` (lifespan, then accept), ``main_loop`` (serving; the
host's ``on_tick`` decides when to stop), ``shutdown`` (the drain). The server knows its worker only
as a :class:`Host` (it never imports the worker module) and offers back ``request_stop``,
``begin_drain``, ``stats`` and ``startup_failure``. Signals are the worker's business: ``serve``
does not install uvicorn's handlers, so nothing re-raises SIGTERM at exit and a graceful stop ends
with status 0.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import struct
import termios
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from uvicorn._compat import asyncio_run
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import Server

from hardened_worker import diagnostics, drain

WEBSOCKET_CLOSE_WAIT = 5.0  # seconds a client has to answer our close frame
NOT_READY_SHUTDOWN = 5.0  # seconds of lifespan shutdown for a worker whose app never got ready
STREAM_END_WAIT = 0.5  # at the drain deadline: seconds cancelled requests get to end their streams


class Host(Protocol):
    """What the server needs from its worker."""

    pid: Any
    log: Any
    settings: Any  # drain_idle_window
    stall: Any  # the stall watchdog: tick()

    def wrap_app(self, app: Any) -> Any: ...
    async def until_ready(self) -> str: ...  # "" or why the app is not ready
    def on_ready(self) -> None: ...
    def on_tick(self) -> bool: ...  # True: stop serving and drain
    def on_drain_tick(self) -> None: ...
    def holding(self) -> bool: ...  # keep draining although nothing is left (a retiring worker)
    def drain_plan(self) -> drain.DrainPlan: ...
    def heartbeat(self) -> None: ...


@dataclass(frozen=True)
class Stats:
    started: bool  # lifespan startup done and accepting
    requests: int  # served so far
    connections: int
    in_flight: int


class HardenedLifespan(LifespanOn):
    """``lifespan="on"`` semantics, with apps that lack lifespan support detected, not guessed.

    An app that raises before it ever called ``receive()`` never looked at the lifespan protocol:
    it does not support it (a bare ``assert scope["type"] == "http"``) and is served without it.
    An app that raises after receiving ``lifespan.startup`` failed its startup: that is logged once
    with the traceback and the worker does not serve.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.received = False
        self.unsupported = False
        self.error: Optional[BaseException] = None
        self.failure: Optional[str] = None
        self.task: Optional[asyncio.Task[None]] = None

    async def receive(self) -> Any:
        self.received = True
        return await super().receive()

    async def send(self, message: Any) -> None:
        if message["type"] == "lifespan.startup.failed" and message.get("message"):
            self.failure = str(message["message"])  # the app's reason, for the one-line summary
        await super().send(message)

    async def startup(self) -> None:
        self.logger.info("Waiting for application startup.")
        self.task = asyncio.get_running_loop().create_task(self.main())
        await self.receive_queue.put({"type": "lifespan.startup"})
        await self.startup_event.wait()
        if self.startup_failed or (self.error_occurred and not self.unsupported):
            self.logger.error("Application startup failed.")
            self.should_exit = True
        else:
            self.logger.info("Application startup complete.")

    async def main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.config.loaded_app(scope, self.receive, self.send)
        except (SystemExit, KeyboardInterrupt, asyncio.CancelledError):
            raise  # a startup timeout, a stop signal, or the loop closing after one: not app errors
        except BaseException as exc:
            self.error_occurred = True
            if self.startup_failed or self.shutdown_failed:
                return
            if not self.received:
                self.unsupported = True
                self.logger.info(
                    "ASGI lifespan not supported by the app (it raised %r before receiving "
                    "lifespan.startup); serving without lifespan events", exc)
            else:
                self.error = exc
                phase = "shutdown" if self.startup_event.is_set() else "startup"
                self.logger.error("Exception in ASGI lifespan %s", phase, exc_info=exc)
        finally:
            self.startup_event.set()
            self.shutdown_event.set()

    def suspended_stack(self) -> str:
        """Where the app's lifespan coroutine waits, or "" if it is running or finished."""
        if self.task is None or self.task.done():
            return ""
        coro = self.task.get_coro()
        return "" if getattr(coro, "cr_running", False) else diagnostics.coroutine_stack(coro)


def _is_idle(conn: Any) -> bool:
    """True when no request is in progress on an HTTP connection and none has begun arriving."""
    if getattr(conn, "timeout_keep_alive_task", None) is not None:
        return True  # armed when a response completed, cancelled when new bytes arrive
    return getattr(conn, "cycle", None) is None and getattr(conn, "scope", None) is None


def _pending_bytes(conn: Any) -> int:
    sock = conn.transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return 1  # unknown: assume a request may be arriving and keep the connection
    return struct.unpack("i", raw)[0]


def _http_protocols() -> tuple[type, ...]:
    found = []
    for module, name in (("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
                         ("uvicorn.protocols.http.h11_impl", "H11Protocol")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:  # httptools is optional
            continue
    return tuple(found)


_HTTP_PROTOCOLS = _http_protocols()


def _is_http(conn: Any) -> bool:
    return isinstance(conn, _HTTP_PROTOCOLS)


class HardenedServer(Server):
    def __init__(self, config: Any, host: Host) -> None:
        super().__init__(config)
        self.host = host
        self.lifespan: HardenedLifespan
        self.drain_started: Optional[float] = None
        self.not_ready = ""  # the app's check never passed (Host.until_ready)
        self.drain_signal = drain.DrainSignal()  # the app's view of the drain (deadline.RequestGuard)

    def stats(self) -> Stats:
        state = self.server_state
        return Stats(self.started, state.total_requests, len(state.connections), len(state.tasks))

    @property
    def startup_failure(self) -> str:
        """Why the start failed: lifespan startup, or the app's check afterwards."""
        if self.not_ready:
            return self.not_ready
        lifespan = getattr(self, "lifespan", None)
        reason = (repr(lifespan.error) if lifespan.error else lifespan.failure) if lifespan else ""
        return f"lifespan startup failed: {reason}" if reason else "lifespan startup failed"

    def request_stop(self, force: bool) -> None:
        """Leave the main loop at once; ``force``: close every connection, wait for nothing."""
        self.should_exit = True
        if force:
            self.force_exit = True
            if self.drain_started is not None:
                self._close_all()
        self.wake()

    def run_loop(self, sockets: list[Any]) -> None:
        """Serve on a new event loop until the drain is over (or the boot was interrupted)."""
        serving = self.serve(sockets=sockets)
        try:
            asyncio_run(serving, loop_factory=self.config.get_loop_factory())
        finally:
            serving.close()  # a stop before the loop started it: no "never awaited" warning

    async def serve(self, sockets: Optional[list[Any]] = None) -> None:
        config = self.config
        if not config.loaded:
            config.load()
        config.loaded_app = self.host.wrap_app(config.loaded_app)
        self.lifespan = HardenedLifespan(config)
        await self.startup(sockets or [])
        if not self.started:
            return
        self._tick_stall_watchdog()
        self.host.on_ready()
        await self.main_loop()
        await self.shutdown(sockets)

    async def startup(self, sockets: list[Any]) -> None:  # type: ignore[override]
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            return
        self.not_ready = await self.host.until_ready()
        if self.not_ready:
            try:  # the app gets to clean up what its startup opened
                await asyncio.wait_for(self.lifespan.shutdown(), NOT_READY_SHUTDOWN)
            except asyncio.TimeoutError:
                pass
            return
        config = self.config
        loop = asyncio.get_running_loop()

        def create_protocol(_loop: Any = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop)

        # gunicorn's socket wrappers close their socket again after the loop did, logging EBADF:
        # hand the loop the plain socket inside.
        self.servers = [
            await loop.create_server(create_protocol, sock=getattr(sock, "sock", sock), ssl=config.ssl,
                                     backlog=config.backlog)
            for sock in sockets
        ]
        self.started = True

    async def main_loop(self) -> None:
        # uvicorn's loop, but a stop decided between ticks (memory) wakes it at once: a fast leak
        # grows by megabytes in the 100 ms a tick would otherwise wait.
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            try:
                await asyncio.wait_for(self._wake.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
            should_exit = await self.on_tick(counter)

    def wake(self) -> None:
        self._wake.set()

    def _tick_stall_watchdog(self) -> None:
        # A timer of its own, not the main loop's tick, so the watchdog also covers the drain.
        self.host.stall.tick()
        asyncio.get_running_loop().call_later(0.1, self._tick_stall_watchdog)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):  # should_exit (uvicorn's max-requests is off: ours)
            return True
        return self.host.on_tick()

    # --- the drain ------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Stop accepting at once (the other workers take new connections) and answer every
        request still arriving on an open connection with ``Connection: close``."""
        if self.drain_started is not None:
            return
        self.drain_started = time.monotonic()
        self.drain_signal.event.set()  # streams that watch it end now; clients reconnect elsewhere
        for server in self.servers:
            server.close()  # closes this process's copy of the listening socket too
        # The protocols read their ``app`` per request: wrapping it only now costs the requests
        # nothing until the drain. A connection the loop accepted just before the close gets its
        # protocol from config (hence both), and the drain loop re-applies it (see _closing).
        self.closing_app = drain.DrainMiddleware(self.config.loaded_app)
        self.config.loaded_app = self.closing_app
        self._closing()

    def _closing(self) -> None:
        for conn in self.server_state.connections:
            if _is_http(conn) and conn.app is not self.closing_app:
                conn.app = self.closing_app

    async def shutdown(self, sockets: Optional[list[Any]] = None) -> None:
        plan = self.host.drain_plan()
        self.begin_drain()
        if self.force_exit:
            self._close_all()
        else:
            await self._drain(plan)
        await self._lifespan_shutdown(plan)

    async def _drain(self, plan: drain.DrainPlan) -> None:
        state = self.server_state
        for conn in list(state.connections):
            cycle = getattr(conn, "cycle", None)
            if _is_http(conn) and cycle is not None and not cycle.response_complete:
                # The response in progress will carry Connection: close. (shutdown() on any other
                # connection closes it at once, even with a request half received.)
                conn.shutdown()
        await self._close_websockets(plan)
        idle_since: dict[Any, float] = {}
        window = self.host.settings.drain_idle_window
        beat = 0.0
        while (state.connections or state.tasks or self.host.holding()) \
                and time.monotonic() < plan.requests_deadline and not self.force_exit:
            self.host.on_drain_tick()
            self._closing()
            now = time.monotonic()
            if now - beat >= 1.0:
                beat = now
                self.host.heartbeat()
            for conn in list(state.connections):
                if not _is_http(conn) or not _is_idle(conn):
                    idle_since.pop(conn, None)
                    continue
                since = idle_since.setdefault(conn, now)
                if now - since >= window and _pending_bytes(conn) == 0:
                    conn.transport.close()
            await asyncio.sleep(0.05)
        if (state.connections or state.tasks) and not self.force_exit:
            await self._deadline_passed(plan)

    async def _close_websockets(self, plan: drain.DrainPlan) -> None:
        """A close frame with 1001 "going away" through each websocket's ASGI send (uvicorn's own
        shutdown sends 1012 and drops the connection at once), then a bounded wait for the
        closing handshake; the app receives ``websocket.disconnect`` as usual."""
        sockets = [c for c in self.server_state.connections if not _is_http(c)]
        for conn in sockets:
            send = getattr(conn, "asgi_send", None) or conn.send  # websockets_impl / sansio, wsproto
            try:
                await send({"type": "websocket.close", "code": 1001, "reason": "server shutting down"})
            except Exception:  # closed meanwhile by the client or the app: nothing to say goodbye to
                pass
        deadline = min(time.monotonic() + WEBSOCKET_CLOSE_WAIT, plan.requests_deadline)
        while any(c in self.server_state.connections for c in sockets) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in sockets:
            if conn in self.server_state.connections:
                conn.shutdown()  # a client that did not answer the close frame in time

    async def _deadline_passed(self, plan: drain.DrainPlan) -> None:
        in_flight = [c.scope for c in self.server_state.connections
                     if _is_http(c) and not _is_idle(c) and isinstance(getattr(c, "scope", None), dict)]
        self.host.log.warning(
            "hardened_worker: worker %s drain deadline passed; closing %d connections, in flight: %s",
            self.host.pid, len(self.server_state.connections),
            drain.describe_in_flight(in_flight, time.monotonic(), self.drain_started or plan.drain_at))
        # Cancelled first, closed after: an event stream gets its terminating chunk on the way out
        # (deadline.RequestGuard), anything else is cut when its task ends or at the close below.
        self.drain_signal.deadline_passed = True
        tasks = list(self.server_state.tasks)
        for task in tasks:
            task.cancel(msg="hardened_worker: drain deadline")
        if tasks:
            await asyncio.wait(tasks, timeout=STREAM_END_WAIT)
        self._close_all()

    def _close_all(self) -> None:
        for task in self.server_state.tasks:
            task.cancel(msg="hardened_worker: drain deadline")
        for conn in list(self.server_state.connections):
            conn.transport.close()

    async def _lifespan_shutdown(self, plan: drain.DrainPlan) -> None:
        async def heartbeat() -> None:
            while True:
                self.host.heartbeat()
                await asyncio.sleep(1.0)

        beating = asyncio.get_running_loop().create_task(heartbeat())
        budget = max(plan.lifespan_deadline - time.monotonic(), 0.1)
        if self.force_exit:
            budget = min(budget, 1.0)
        try:
            await asyncio.wait_for(self.lifespan.shutdown(), budget)
        except asyncio.TimeoutError:
            self.host.log.error(
                "hardened_worker: worker %s lifespan shutdown did not finish within %.1f s",
                self.host.pid, budget)
        finally:
            beating.cancel()


class SkipPath(logging.Filter):
    """Keeps health-probe requests out of the access log (uvicorn's record args: path third)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 2
                    and str(args[2]).split("?", 1)[0] == self.path)
