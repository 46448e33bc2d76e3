"""The uvicorn ``Server`` subclass: the one module that leans on uvicorn internals.

Supported: uvicorn 0.54 (pinned ``>=0.54,<0.60`` in pyproject.toml). What it relies on, all
exercised by the real-process tests:

* ``Server.main_loop`` / ``on_tick`` (the 100 ms tick) and ``server_state.connections``/``tasks``;
* the HTTP protocols' ``cycle`` (its ``response_started``/``response_complete``), ``scope``,
  ``transport``, ``timeout_keep_alive_task`` and ``shutdown()`` (httptools and h11 both have them);
* ``uvicorn._compat.asyncio_run`` (the event loop runner uvicorn-worker uses too);
* that the HTTP protocols build no access record when the ``uvicorn.access`` logger has no
  handlers (``access_log = logger.hasHandlers()``): the worker empties it, the access log is
  :mod:`hardened_worker.accesslog`'s;
* ``Server.should_exit`` / ``force_exit`` / ``started`` / ``servers`` and
  ``config.loaded_app`` (replaced at the drain);
* the protocols' ``app`` attribute, reassigned on live connections when the drain starts (they
  read it per request), and websockets' ``asgi_send`` (websockets) or ``send`` (wsproto);
* ``LifespanOn``'s ``receive``/``send``/events, subclassed for the lifespan rules below;
* ``server_state.tasks`` replaced, before any protocol exists, by ``overload.InFlight`` (a ``set``
  whose ``add``/``discard``, called by the protocols per request, pause and resume accepting);
  the ``servers``' ``sockets`` (``fileno()``), dup'ed to listen again after a pause;
* ``server_state.connections`` replaced likewise by ``_Accepted`` (HARDENED_MAX_QUEUE_TIME), and
  an HTTP ``send`` being the bound method of a cycle with a ``transport`` (whose protocol is the
  connection), for ``first_request_accepted_at``;
* an exception out of the app after its response started makes ``run_asgi`` close the
  connection (what ``deadline.Cut`` relies on to cut a response), logged on ``uvicorn.error``;
* the HTTP protocols' ``connection_made(transport)`` (subclassed to hand them a
  ``writes.OneWrite`` around the transport, so a response's head and body leave in one write)
  (the loop that runs them flushes what is held);
* ``server_state.total_requests += 1`` once per response, in the protocols: ``count_requests``
  swaps in a ``ServerState`` whose ``total_requests`` setter also counts down (the memory check
  every N requests, without an ASGI layer).

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
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from uvicorn._compat import asyncio_run
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import Server, ServerState

from hardened_worker import diagnostics, drain, overload, writes

WEBSOCKET_CLOSE_WAIT = 5.0  # seconds a client has to answer our close frame
NOT_READY_SHUTDOWN = 5.0  # seconds of lifespan shutdown for a worker whose app never got ready
STREAM_END_WAIT = 0.5  # at the drain deadline: seconds cancelled requests get to end their streams


class Host(Protocol):
    """What the server needs from its worker."""

    pid: Any
    log: Any
    settings: Any  # drain_idle_window, max_inflight, max_queue_time
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


def _one_write(protocol_class: type, flusher: writes.Flusher) -> type:
    """``protocol_class`` writing through :class:`writes.OneWrite` (one write per response)."""
    class OneWriteProtocol(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(writes.OneWrite(transport, flusher))

    OneWriteProtocol.__name__ = OneWriteProtocol.__qualname__ = "OneWrite" + protocol_class.__name__
    return OneWriteProtocol


class _CountedState(ServerState):
    """``server_state`` whose request count, where the protocols keep it, also runs ``every``."""

    every: Any = None  # memory.EveryRequests
    _total = 0

    @property  # type: ignore[override]
    def total_requests(self) -> int:
        return self._total

    @total_requests.setter
    def total_requests(self, value: int) -> None:
        self._total = value
        if self.every is not None:
            self.every.count()


class _Accepted(set):  # type: ignore[type-arg]
    """``server_state.connections`` remembering when each connection was accepted (the protocols
    add themselves in ``connection_made``): HARDENED_MAX_QUEUE_TIME's wait without a proxy's
    X-Request-Start. Installed only with that setting."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[Any, float] = {}

    def add(self, conn: Any) -> None:
        set.add(self, conn)
        self.at[conn] = asyncio.get_running_loop().time()

    def discard(self, conn: Any) -> None:
        set.discard(self, conn)
        self.at.pop(conn, None)


class HardenedServer(Server):
    def __init__(self, config: Any, host: Host) -> None:
        super().__init__(config)
        self.host = host
        self.lifespan: HardenedLifespan
        self.drain_started: Optional[float] = None
        self.not_ready = ""  # the app's check never passed (Host.until_ready)
        self.drain_signal = drain.DrainSignal()  # the app's view of the drain (deadline.RequestGuard)
        self.pauses = 0  # HARDENED_MAX_INFLIGHT: times this worker stopped accepting
        self._spares: list[socket.socket] = []
        self._resuming: Optional[asyncio.Task[None]] = None
        bound = getattr(host.settings, "max_inflight", None)
        if bound:  # the protocols take the set when they are created: replace it before any is
            self.server_state.tasks = overload.InFlight(bound, self._pause_accepting,
                                                        self._resume_accepting)
        if getattr(host.settings, "max_queue_time", None) is not None:
            self.server_state.connections = _Accepted()

    def count_requests(self, every: Any) -> None:
        """``every.count()`` once per completed response, counted where uvicorn counts requests.
        Before ``startup``: the protocols take ``server_state`` when they are created."""
        state = _CountedState()
        vars(state).update((k, v) for k, v in vars(self.server_state).items() if k != "total_requests")
        state.total_requests = self.server_state.total_requests
        state.every = every
        self.server_state = state

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

        protocol_class = _one_write(config.http_protocol_class, writes.Flusher(loop))

        def create_protocol(_loop: Any = None) -> asyncio.Protocol:
            return protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop)

        # gunicorn's socket wrappers close their socket again after the loop did, logging EBADF:
        # hand the loop the plain socket inside.
        self.servers = [
            await loop.create_server(create_protocol, sock=getattr(sock, "sock", sock), ssl=config.ssl,
                                     backlog=config.backlog)
            for sock in sockets
        ]
        self.started = True
        self._create_protocol = create_protocol  # to listen again after a pause (backpressure)

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

    def first_request_accepted_at(self, send: Any) -> Optional[float]:
        """Loop time at which the connection of the request whose ASGI ``send`` this is was
        accepted, for its first request only; None after that, or when unknown (a ``send``
        wrapped by a middleware, no HARDENED_MAX_QUEUE_TIME)."""
        accepted = self.server_state.connections
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if not isinstance(accepted, _Accepted) or transport is None:
            return None
        return accepted.at.pop(transport.get_protocol(), None)

    # --- backpressure: HARDENED_MAX_INFLIGHT (overload.InFlight decides) ----------------------

    def _pause_accepting(self) -> None:
        """At the bound: this worker's listening sockets leave the loop, so the kernel hands new
        connections to a sibling; the connections it holds are served as before."""
        if self.drain_started is not None or not self.started or self._resuming is not None:
            return  # draining: closed for good; resuming: it pauses again once it is done
        self._spares = [socket.socket(fileno=os.dup(listening.fileno()))
                        for server in self.servers for listening in server.sockets]
        for server in self.servers:
            server.close()  # this process's copy of the socket; the master's and siblings' stay
        self.servers = []
        self.pauses += 1
        if self.pauses == 1:  # the first time only: under load it can happen many times a second
            self.host.log.info(
                "hardened_worker: worker %s reached its in-flight bound (HARDENED_MAX_INFLIGHT %d): "
                "it leaves new connections to its siblings until below it", self.host.pid,
                self.server_state.tasks.bound)

    def _resume_accepting(self) -> None:
        if self.drain_started is None and self._resuming is None and self._spares:
            self._resuming = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        loop = asyncio.get_running_loop()
        spares, self._spares = self._spares, []
        try:
            for sock in spares:
                if self.drain_started is not None:
                    sock.close()
                    continue
                server = await loop.create_server(self._create_protocol, sock=sock,
                                                  ssl=self.config.ssl, backlog=self.config.backlog)
                if self.drain_started is not None:
                    server.close()  # the drain began while it was starting
                else:
                    self.servers.append(server)
        finally:
            self._resuming = None
        tasks = self.server_state.tasks
        if isinstance(tasks, overload.InFlight) and tasks.paused:
            self._pause_accepting()  # full again while it was listening again

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
        # A connection with no response under way is closed at once (its request is cut before
        # uvicorn could answer the cancellation with a 500). One whose response has started is
        # cancelled first and closed after: an event stream gets its terminating chunk on the way
        # out (deadline.RequestGuard), anything else is cut as its task ends or at the close below.
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if not (_is_http(conn) and cycle is not None and cycle.response_started
                    and not cycle.response_complete):
                conn.transport.close()
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

