"""The uvicorn ``Server`` subclass: the one module that leans on uvicorn internals.

Supported: the uvicorn range of :mod:`hardened_worker._versions` (checked before the worker loads).
What it relies on, all exercised by the real-process tests:

* ``Server.main_loop`` / ``on_tick`` (the 100 ms tick) and ``server_state.connections``/``tasks``;
* the HTTP protocols' ``cycle`` (its ``response_started``/``response_complete``), ``scope``,
  ``transport``, ``timeout_keep_alive_task`` and ``shutdown()`` (httptools and h11 both have them);
* that a response whose ``cycle.keep_alive`` is False carries ``Connection: close`` (httptools since
  uvicorn 0.53, the floor: ``shutdown()`` on a busy connection at the drain relies on it);
* ``uvicorn._compat.asyncio_run`` (the event loop runner uvicorn-worker uses too);
* that the HTTP protocols build no access record when the ``uvicorn.access`` logger has no
  handlers (``access_log = logger.hasHandlers()``): the worker empties it, the access log is
  :mod:`hardened_worker._accesslog`'s;
* ``Server.should_exit`` / ``force_exit`` / ``started`` and
  ``config.loaded_app`` (replaced at the drain);
* the protocols' ``app`` attribute, reassigned on live connections when the drain starts (they
  read it per request), and websockets' ``asgi_send`` (websockets) or ``send`` (wsproto);
* ``LifespanOn``'s ``receive``/``send``/events, subclassed for the lifespan rules below;
* ``server_state.tasks`` replaced, before any protocol exists, by ``overload.InFlight`` (a ``set``
  whose ``add``/``discard``, called by the protocols per request, pause and resume accepting);
* the accept path is ours, not ``loop.create_server``'s (libuv accepts until ``EAGAIN`` per
  readiness event, so one worker took a whole burst of connections): ``loop.add_reader`` on each
  listening socket, ``accept()`` one connection at a time (deciding before each, at most
  ``ACCEPT_BATCH`` per event), ``loop.connect_accepted_socket`` with the
  protocol factory uvicorn's ``startup`` would use; pausing (HARDENED_MAX_INFLIGHT, the accept
  policy of :mod:`hardened_worker._spread`, the drain) is removing the reader;
* ``server_state.connections`` replaced by ``_Connections`` (the protocols ``add`` themselves in
  ``connection_made`` and ``discard`` in ``connection_lost``: the open-connection count the accept
  policy publishes), or by its subclass ``_Accepted`` (HARDENED_MAX_QUEUE_TIME), and
  an HTTP ``send`` being the bound method of a cycle with a ``transport`` (whose protocol is the
  connection, whose ``socket`` extra gives the kernel's TCP_INFO), for ``first_request_accepted_at``;
* an exception out of the app after its response started makes ``run_asgi`` close the
  connection (what ``deadline.Cut`` relies on to cut a response), logged on ``uvicorn.error``;
* the HTTP protocols' ``connection_made(transport)`` (subclassed to hand them a
  ``writes.OneWrite`` around the transport, so a response's head and body leave in one write)
  (the loop that runs them flushes what is held);
* ``server_state.total_requests``, counted once per response by the protocols (read for the
  stats and the accept policy's churn test);
* a request task's coroutine is its cycle's ``run_asgi`` (httptools and h11 alike), whose frame's
  ``self`` is the cycle (:func:`request_cycle`, how a deadline finds the transport to abort).

The phases read top to bottom: ``startup`` (lifespan, then accept), ``main_loop`` (serving; the
host's ``on_tick`` decides when to stop), ``shutdown`` (the drain). The server knows its worker only
as a :class:`Host` (it never imports the worker module) and offers back ``request_stop``,
``begin_drain``, ``stats`` and ``startup_failure``. Signals are the worker's business: ``serve``
does not install uvicorn's handlers, so nothing re-raises SIGTERM at exit and a graceful stop ends
with status 0.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import hashlib
import importlib
import os
import socket
import stat
import struct
import tempfile
import termios
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from uvicorn._compat import asyncio_run
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import Server

from hardened_worker import _deadline as deadline
from hardened_worker import _diagnostics as diagnostics
from hardened_worker import _drain as drain
from hardened_worker import _flags as flags
from hardened_worker import _overload as overload
from hardened_worker import _readiness as readiness
from hardened_worker import _spread as spread
from hardened_worker import _writes as writes
from hardened_worker import config
from hardened_worker._protocols import descriptors
from hardened_worker._protocols import http as guarded_http

WEBSOCKET_CLOSE_WAIT = 5.0  # seconds a client has to answer our close frame
NOT_READY_SHUTDOWN = 5.0  # seconds of lifespan shutdown for a worker whose app never got ready
STREAM_END_WAIT = 0.5  # at the drain deadline: seconds cancelled requests get to end their streams
# Connections one readiness event of a listening socket may take (libuv: all). Measured on
# Connection: close traffic against UvicornWorker (bench/README.md): 16 gave p99 1.3-1.5x (a
# worker accepting a run of connections serves none of them meanwhile), 8 gave 1.04-1.06x at the
# same requests/s; 4 and 1 cost requests/s (0.94x, 0.81x).
ACCEPT_BATCH = 8


def request_cycle(task: asyncio.Task[Any] | None) -> Any:
    """The uvicorn request cycle running ``task`` (its coroutine is the cycle's ``run_asgi``, in
    httptools and h11 alike): its ``transport`` and ``disconnected``; None for anything else."""
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    cycle = frame.f_locals.get("self") if frame is not None else None
    return cycle if hasattr(cycle, "transport") and hasattr(cycle, "disconnected") else None


class Host(Protocol):
    """What the server needs from its worker."""

    pid: Any
    log: Any
    settings: config.Settings
    cfg: Any  # gunicorn's: --limit-request-line, --limit-request-fields, --limit-request-field_size, --reuse-port
    stall: Any  # the stall watchdog: tick()
    table: Any  # readiness.Table: counters() and sibling_rows(), for the accept policy

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
        self.error: BaseException | None = None
        self.failure: str | None = None
        self.task: asyncio.Task[None] | None = None

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
                    "lifespan.startup); serving without lifespan events",
                    exc,
                )
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
    for module, name in (
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
        ("uvicorn.protocols.http.h11_impl", "H11Protocol"),
    ):
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

    class OneWriteProtocol(protocol_class):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(writes.OneWrite(transport, flusher))

    OneWriteProtocol.__name__ = OneWriteProtocol.__qualname__ = "OneWrite" + protocol_class.__name__
    return OneWriteProtocol


class _Connections(set):
    """``server_state.connections`` telling the server when a connection closes (the protocols
    ``discard`` themselves in ``connection_lost``): the accept policy's count. Per connection,
    never per request."""

    opened: Any = None  # callables, the server's
    closed: Any = None

    def add(self, conn: Any) -> None:
        set.add(self, conn)
        if self.opened is not None:
            self.opened()

    def discard(self, conn: Any) -> None:
        set.discard(self, conn)
        if self.closed is not None:
            self.closed()


class _Accepted(_Connections):
    """``_Connections`` remembering when each connection was accepted (the protocols add
    themselves in ``connection_made``): HARDENED_MAX_QUEUE_TIME's wait without a proxy's
    X-Request-Start. Installed only with that setting."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[Any, float] = {}

    def add(self, conn: Any) -> None:
        super().add(conn)
        # Not loop.time(): uvloop's is cached when the loop iteration starts, so an accept after
        # requests that ran 20 ms in the same iteration would count 20 ms of wait it never had.
        self.at[conn] = time.monotonic()

    def discard(self, conn: Any) -> None:
        self.at.pop(conn, None)
        super().discard(conn)


# The wake sockets: one UNIX datagram socket per worker, in a directory of the pool's own. Not
# abstract names: those are listed in /proc/net/unix and open to any local user (a flood from
# another uid cut requests/s by 40%; binding the next pids' names first left a new worker without
# its socket). A file socket in a 0700 directory can be reached by this uid (and root) only, and
# the directory's name is derived from the pool's secret token (readiness.Table, never shown):
# nobody else can predict it to create it first, and one found existing must be ours and private.
_WAKE_DIR_TRIES = 3  # a sibling may remove the directory as we enter it (_leave_wake_directory)


@functools.lru_cache(maxsize=4)
def _wake_directory(pool: str) -> str:
    digest = hashlib.sha256(b"hardened-worker-wake:" + pool.encode()).hexdigest()[:32]
    return os.path.join(tempfile.gettempdir(), "hardened-worker-wake-" + digest)


def _wake_address(pool: str, pid: int) -> str:
    """A worker's wake socket (``pool``: the table's token; it keeps pools that share a /tmp
    and reuse each other's pids, a Kubernetes pod's containers, apart)."""
    return os.path.join(_wake_directory(pool), str(pid))


def _enter_wake_directory(pool: str) -> None:
    """Make the pool's wake directory (0700), or check that the one found is this user's own
    and private: a directory someone else made, or opened up, is refused."""
    path = _wake_directory(pool)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o077:
        raise PermissionError(errno.EPERM, "not a private directory of this user", path)


def _bind_waker(pool: str) -> socket.socket:
    address = _wake_address(pool, os.getpid())
    for attempt in range(_WAKE_DIR_TRIES):
        _enter_wake_directory(pool)
        waker = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            try:
                os.unlink(address)  # a worker of this pid that was killed left it; ours now
            except FileNotFoundError:
                pass
            waker.bind(address)
            return waker
        except FileNotFoundError:  # the directory went with the last sibling: make it again
            waker.close()
            if attempt == _WAKE_DIR_TRIES - 1:
                raise
        except BaseException:
            waker.close()
            raise
    raise AssertionError("unreachable")


def _leave_wake_directory(pool: str) -> None:
    """Remove this worker's socket, and the directory with the last one (nothing left in /tmp)."""
    try:
        os.unlink(_wake_address(pool, os.getpid()))
        os.rmdir(_wake_directory(pool))
    except OSError:  # ENOTEMPTY: siblings are in it; or already gone
        pass


class HardenedServer(Server):
    _reserve: descriptors.Reserve | None = None  # reset clients when out of descriptors
    _short_of_descriptors = False  # since an accept failed for want of one, until one succeeds

    def __init__(self, config: Any, host: Host) -> None:
        super().__init__(config)
        self.host = host
        self.lifespan: HardenedLifespan
        self.drain_started: float | None = None
        self.not_ready = ""  # the app's check never passed (Host.until_ready)
        self.drain_signal = (
            drain.DrainSignal()
        )  # the app's view of the drain (deadline.RequestGuard)
        self.pauses = 0  # HARDENED_MAX_INFLIGHT: times this worker stopped accepting
        self._at_bound = False  # HARDENED_MAX_INFLIGHT reached
        self._connection_cap = flags.connection_cap(host.cfg)  # --worker-connections, when set
        self._starved = False  # the last accept failed for want of descriptors or memory
        self._listeners: list[socket.socket] = []  # the listening sockets (gunicorn's, shared)
        self._accept = spread.OFF  # what this worker does now (and publishes as C_ACCEPT)
        self._pending = 0  # accepted, not yet in server_state.connections (connection_made)
        self._accepted = 0  # connections accepted, ever
        self._churning = False  # the last second's connections carried about a request each
        self._churn_mark = (0, 0)  # (_accepted, total_requests) a second ago
        self._spread = bool(getattr(host.settings, "spread", False))
        self._row = host.table.counters()
        self._pool = host.table.token  # in the wake sockets' names
        self._siblings: list[tuple[int, Any]] = []  # (pid, counter row), refreshed on the tick
        self._waker: socket.socket | None = None
        self._handovers: set[asyncio.Task[None]] = set()
        bound = getattr(host.settings, "max_inflight", None)
        if bound:  # the protocols take the set when they are created: replace it before any is
            self.server_state.tasks = overload.InFlight(
                bound, self._pause_accepting, self._resume_accepting
            )
        connections = (
            _Accepted()
            if getattr(host.settings, "max_queue_time", None) is not None
            else _Connections()
        )
        connections.opened, connections.closed = self._connection_opened, self._connection_closed
        self.server_state.connections = connections

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

    async def serve(self, sockets: list[Any] | None = None) -> None:
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

        guard = guarded_http.guard_of(self.host.cfg, self.host.settings, self.host.log)
        protocol_class = guarded_http.guarded(
            _one_write(config.http_protocol_class, writes.Flusher(loop)), guard
        )
        self._reserve = descriptors.Reserve()

        def create_protocol(_loop: Any = None) -> asyncio.Protocol:
            return protocol_class(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        # gunicorn's socket wrappers close their socket again after we did: take the plain
        # socket inside (closing a Python socket twice is harmless).
        self._listeners = [getattr(sock, "sock", sock) for sock in sockets]
        for listening in self._listeners:
            listening.setblocking(False)  # already so in every sibling (the flag is shared)
        self._create_protocol = create_protocol
        if self._spread:
            self._open_waker(loop)
            self._siblings = self.host.table.sibling_rows()
            # Siblings weigh a worker whose loop ticked lately (spread.weighed); the worker beats on
            # its tick (Host.on_tick), the first of which is still to come.
            self._row[readiness.C_BEAT] = readiness.monotonic_ms()
        self.started = True
        self._decide()
        if self._waker is not None:  # siblings read a newcomer's row from their next tick on,
            self._wake_siblings(range(len(self._siblings)))  # or from this hello

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

    def first_request_accepted_at(self, send: Any) -> float | None:
        """``time.monotonic()`` at which the connection of the request whose ASGI ``send`` this is was
        accepted, or at which the kernel received its last bytes if that was earlier (TCP_INFO:
        time spent in the accept queue, which the worker cannot see otherwise), for its first
        request only; None after that, or when unknown (a ``send`` wrapped by a middleware, no
        HARDENED_MAX_QUEUE_TIME)."""
        accepted = self.server_state.connections
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if not isinstance(accepted, _Accepted) or transport is None:
            return None
        at = accepted.at.pop(transport.get_protocol(), None)
        if at is None:
            return None
        try:
            info = transport.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_INFO, overload.TCP_INFO_SIZE
            )
        except (OSError, AttributeError, ValueError):  # not TCP (a UNIX socket bind), or closed
            return at
        ago = overload.received_ago(info)
        return at if ago is None else min(at, time.monotonic() - ago)

    # --- accepting: a connection at a time, while the rules let this worker -----------------

    def _wanted(self) -> int:
        """What this worker should do about new connections now (spread.OFF/LISTENING/YIELDING)."""
        if (
            not self.started
            or self.drain_started is not None
            or self._at_bound
            or self._starved
            or (self._connection_cap is not None and self._open() >= self._connection_cap)
        ):
            return spread.OFF
        if not self._spread:
            return spread.LISTENING
        if self._churning:
            return spread.UNBALANCED
        if spread.listens(self._open(), self._rows()):
            return spread.LISTENING
        # About to yield: only to a sibling still alive (a dead one's row is stale until the tick).
        self._siblings = [(pid, row) for pid, row in self._siblings if readiness.alive(pid)]
        return spread.LISTENING if spread.listens(self._open(), self._rows()) else spread.YIELDING

    def _open(self) -> int:
        return len(self.server_state.connections) + self._pending

    def _rows(self) -> list[spread.Sibling]:
        """The siblings' rows as the rule weighs them (a blocked one's as not accepting)."""
        now_ms = readiness.monotonic_ms()
        return [
            spread.weighed(
                row[readiness.C_CONNECTIONS], row[readiness.C_ACCEPT], row[readiness.C_BEAT], now_ms
            )
            for _, row in self._siblings
        ]

    def _decide(self) -> None:
        """Listen or not (the reader on each listening socket), publish the count and the state
        in this worker's row, and wake the siblings whose own answer that flips."""
        state = self._wanted()
        loop = asyncio.get_running_loop()
        accepting = (spread.LISTENING, spread.UNBALANCED)
        if state in accepting and self._accept not in accepting:
            for listening in self._listeners:
                loop.add_reader(listening.fileno(), self._acceptable, listening)
        elif state not in accepting and self._accept in accepting:
            for listening in self._listeners:
                loop.remove_reader(listening.fileno())
        row = self._row
        count = self._open()
        if (
            state != row[readiness.C_ACCEPT] or count != row[readiness.C_CONNECTIONS]
        ):  # also for the status
            changed = state != row[readiness.C_ACCEPT]
            row[readiness.C_CONNECTIONS], row[readiness.C_ACCEPT] = count, state
            if changed or state != spread.UNBALANCED:  # siblings never weigh an unbalanced count
                self._wake_siblings(spread.to_wake(spread.Sibling(count, state), self._rows()))
        self._accept = state

    def _acceptable(self, listening: socket.socket) -> None:
        """A listening socket is readable (every worker's loop hears it): take connections one at
        a time, deciding before each whether the rules still let this worker (at most
        ACCEPT_BATCH per event, so the loop's other work is not held up by a flood)."""
        for _ in range(ACCEPT_BATCH):
            self._decide()
            if self._accept not in (spread.LISTENING, spread.UNBALANCED):
                return
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # a sibling took it, or the client gave up first
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: it would fail again at once
                # (the socket stays readable): off until a connection closes or the next tick.
                self._cannot_accept(listening, exc)
                self._starved = True
                self._decide()
                return
            self._short_of_descriptors = False
            self._pending += 1
            self._accepted += 1
            task = asyncio.get_running_loop().create_task(self._hand_over(conn))
            self._handovers.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._handovers.discard)
        self._decide()

    def _take_queued(self, listening: socket.socket) -> None:
        """--reuse-port: the socket is this worker's alone (gunicorn 27 binds one per worker), and
        closing it resets every connection queued on it (unless the kernel migrates them,
        ``net.ipv4.tcp_migrate_req``). So take them all first, in the same step as the close: they
        are served like any open connection during the drain (``Connection: close``)."""
        while True:
            try:
                conn, _ = listening.accept()
            except OSError:  # BlockingIOError: the queue is empty; out of descriptors: no more
                return
            self._pending += 1
            task = asyncio.get_running_loop().create_task(self._hand_over(conn))
            self._handovers.add(task)
            task.add_done_callback(self._handovers.discard)

    def _cannot_accept(self, listening: socket.socket, exc: OSError) -> None:
        """Out of descriptors, the clients waiting are reset (they would wait for nothing: a load
        balancer retries a reset elsewhere); logged once until an accept succeeds again."""
        first = not self._short_of_descriptors
        self._short_of_descriptors = True
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._reserve is not None:
            shortage = self._reserve.reset_pending(listening)
            if first:
                self.host.log.warning(
                    "hardened_worker: worker %s out of descriptors (%s; %d open, RLIMIT_NOFILE %d): "
                    "resetting new connections until one closes (%d reset now)",
                    self.host.pid,
                    exc.strerror,
                    shortage.open,
                    shortage.limit,
                    shortage.reset,
                )
        elif first:
            self.host.log.warning(
                "hardened_worker: worker %s cannot accept: %s", self.host.pid, exc
            )

    async def _hand_over(self, conn: socket.socket) -> None:
        made: list[Any] = []

        def protocol() -> asyncio.Protocol:
            made.append(self._create_protocol())
            return made[0]

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, conn, ssl=self.config.ssl
            )
        except Exception:  # a failed TLS handshake, a reset: that connection only, as the
            conn.close()  # loop's own accept path drops it
            if not made or getattr(made[0], "transport", None) is None:  # it never joined
                self._pending -= 1
                if self.started:
                    self._decide()

    def _connection_opened(self) -> None:
        # Accepted and now in server_state.connections: the count is the same, nothing to decide.
        if self._pending:
            self._pending -= 1

    def _connection_closed(self) -> None:
        if self.started:
            self._starved = False  # a descriptor is free again
            self._decide()

    # --- waking siblings (the accept policy) ------------------------------------------------

    def _open_waker(self, loop: Any) -> None:
        try:
            waker = _bind_waker(self._pool)
        except OSError as exc:  # no /tmp, a path too long: the tick re-decides instead
            self.host.log.warning(
                "hardened_worker: worker %s has no wake socket (%s); the accept "
                "policy re-reads the table on the 100 ms tick only",
                self.host.pid,
                exc,
            )
            return
        waker.setblocking(False)
        loop.add_reader(waker.fileno(), self._woken)
        self._waker = waker

    def _woken(self) -> None:
        assert self._waker is not None
        known = {pid for pid, _ in self._siblings}
        stranger = False
        while True:
            try:
                _, sender = self._waker.recvfrom(64)
            except (BlockingIOError, InterruptedError):
                break
            stranger = stranger or sender not in {_wake_address(self._pool, pid) for pid in known}
        if stranger:  # a sibling started since the last tick
            self._siblings = self.host.table.sibling_rows()
        if self.started:
            self._decide()

    def _wake_siblings(self, indexes: Iterable[int]) -> None:
        if self._waker is None:
            return
        for index in indexes:
            try:
                self._waker.sendto(
                    b"w", socket.MSG_DONTWAIT, _wake_address(self._pool, self._siblings[index][0])
                )
            except OSError:  # queue full (a wake is pending there already), gone, or not listening
                pass  # yet (it reads the table when it starts)

    def _close_waker(self) -> None:
        if self._waker is not None:
            asyncio.get_running_loop().remove_reader(self._waker.fileno())
            self._waker.close()
            self._waker = None
            _leave_wake_directory(self._pool)

    # --- backpressure: HARDENED_MAX_INFLIGHT (overload.InFlight decides) ----------------------

    def _pause_accepting(self) -> None:
        """At the bound: this worker stops accepting, so the kernel hands new connections to a
        sibling; the connections it holds are served as before."""
        if self.drain_started is not None or not self.started:
            return
        self._at_bound = True
        self._decide()
        self.pauses += 1
        if self.pauses == 1:  # the first time only: under load it can happen many times a second
            self.host.log.info(
                "hardened_worker: worker %s reached its in-flight bound (HARDENED_MAX_INFLIGHT %d): "
                "it leaves new connections to its siblings until below it",
                self.host.pid,
                getattr(self.server_state.tasks, "bound", None),
            )

    def _resume_accepting(self) -> None:
        if self._at_bound:
            self._at_bound = False
            if self.started:
                self._decide()

    def wake(self) -> None:
        self._wake.set()

    def _tick_stall_watchdog(self) -> None:
        # A timer of its own, not the main loop's tick, so the watchdog also covers the drain.
        self.host.stall.tick()
        asyncio.get_running_loop().call_later(0.1, self._tick_stall_watchdog)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):  # should_exit (uvicorn's max-requests is off: ours)
            return True
        if self.started and (self._spread or self._starved):
            if self._spread:
                if counter % 10 == 0:  # siblings that came or went: a scan of the table (0.1 ms),
                    # once a second (a newcomer says hello, a dead one is checked before yielding)
                    self._siblings = self.host.table.sibling_rows()
                    accepted, answered = self._accepted, self.server_state.total_requests
                    self._churning = spread.churning(
                        accepted - self._churn_mark[0], answered - self._churn_mark[1]
                    )
                    self._churn_mark = (accepted, answered)
            self._starved = False
            self._decide()
        return self.host.on_tick()

    # --- the drain ------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Stop accepting at once (the other workers take new connections) and answer every
        request still arriving on an open connection with ``Connection: close``."""
        if self.drain_started is not None:
            return
        self.drain_started = time.monotonic()
        self.drain_signal.event.set()  # streams that watch it end now; clients reconnect elsewhere
        if self.started:
            self._decide()  # OFF: the reader goes, and siblings that yielded to us are woken
            self._close_waker()
        for listening in self._listeners:
            if self.host.cfg.reuse_port:
                self._take_queued(listening)
            listening.close()  # this process's copy; the master's and the siblings' stay
        self._listeners = []
        # The protocols read their ``app`` per request: wrapping it only now costs the requests
        # nothing until the drain. A connection the loop accepted just before the close gets its
        # protocol from config (hence both), and the drain loop re-applies it (see _closing).
        self.closing_app = drain.DrainMiddleware(self.config.loaded_app)
        self.config.loaded_app = self.closing_app
        self._closing()

    def _closing(self) -> None:
        connections: set[Any] = self.server_state.connections  # uvicorn's protocols, untyped here
        for conn in connections:
            if _is_http(conn) and conn.app is not self.closing_app:
                conn.app = self.closing_app

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
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
        while (
            (state.connections or state.tasks or self._handovers or self.host.holding())
            and time.monotonic() < plan.requests_deadline
            and not self.force_exit
        ):
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
        sockets: list[Any] = [c for c in self.server_state.connections if not _is_http(c)]
        for conn in sockets:
            # websockets_impl and sansio have asgi_send, wsproto send
            send = getattr(conn, "asgi_send", None) or conn.send
            try:
                await send(
                    {"type": "websocket.close", "code": 1001, "reason": "server shutting down"}
                )
            except Exception:  # closed meanwhile by the client or the app: no goodbye to say
                pass
        deadline = min(time.monotonic() + WEBSOCKET_CLOSE_WAIT, plan.requests_deadline)
        while (
            any(c in self.server_state.connections for c in sockets) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        for conn in sockets:
            if conn in self.server_state.connections:
                conn.shutdown()  # a client that did not answer the close frame in time

    async def _deadline_passed(self, plan: drain.DrainPlan) -> None:
        connections: set[Any] = self.server_state.connections
        in_flight = [
            c.scope
            for c in connections
            if _is_http(c) and not _is_idle(c) and isinstance(getattr(c, "scope", None), dict)
        ]
        self.host.log.warning(
            "hardened_worker: worker %s drain deadline passed; closing %d connections, in flight: %s",
            self.host.pid,
            len(self.server_state.connections),
            drain.describe_in_flight(
                in_flight, time.monotonic(), self.drain_started or plan.drain_at
            ),
        )
        # A connection with no response under way is closed at once (its request is cut before
        # uvicorn could answer the cancellation with a 500). One whose response has started is
        # cancelled first and closed after: an event stream gets its terminating chunk on the way
        # out (deadline.RequestGuard), anything else is cut as its task ends or at the close below.
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if not (
                _is_http(conn)
                and cycle is not None
                and cycle.response_started
                and not cycle.response_complete
            ):
                self._close(conn)
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
            self._close(conn)

    def _close(self, conn: Any) -> None:
        """Close at the drain deadline; the close waits for the client to take what is buffered,
        so one that does not read is reset after deadline.ABORT_GRACE (the worker may still run
        its lifespan shutdown for a while: its descriptors and buffers must go now)."""
        conn.transport.close()
        connections = self.server_state.connections
        deadline.abort_later(conn.transport, lambda: conn not in connections)

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
                self.host.pid,
                budget,
            )
        finally:
            beating.cancel()
