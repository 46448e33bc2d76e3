"""How a request that runs too long ends: the per-request deadline, and event streams at the drain.

Two clocks can end a request the app has not finished: its own deadline
(``HARDENED_REQUEST_TIMEOUT``, off by default) and the drain deadline (the end of the share of
``--graceful-timeout`` that in-flight requests get, see :mod:`hardened_worker._drain`). Either way
the request's task is cancelled, and what the client then sees is one decision, :func:`ending`,
from :data:`ENDINGS`:

* no response started: a request deadline answers ``504`` with ``Connection: close``; at the drain
  deadline the connection is closed (as before this module: the client never got an answer, so a
  proxy may retry an idempotent request elsewhere);
* a ``text/event-stream`` response in progress gets its terminating chunk, a complete chunked
  response, so a browser's ``EventSource`` reconnects quietly (to a sibling, once this worker
  stopped accepting);
* any other response in progress is cut (the connection closes mid-body), so the client sees it
  incomplete, never a clean end that looks like a whole download.

Ending a request must free its connection: a graceful ``transport.close()`` waits until the
write buffer drains, which never happens when the client does not read (50 such clients kept 50
descriptors and 13 MiB for good). So a connection the ending closes, or one whose client has not
taken what was written, is aborted with a reset (:func:`reset`) if it is still open
:data:`ABORT_GRACE` later (:func:`abort_later`); the drain deadline's close does the same.

The app can see both clocks, in its scope (:data:`EXTENSION`)::

    scope["extensions"]["hardened_worker"]["draining"]  # asyncio.Event, set when the drain starts
    scope["extensions"]["hardened_worker"]["deadline"]  # loop.time() instant, or None (no timeout)

``deadline`` is on the event loop's clock (``asyncio.get_running_loop().time()``, monotonic), the
one ``asyncio.timeout_at`` takes: ``async with asyncio.timeout_at(deadline): ...``; what is left is
``deadline - loop.time()``, the value to pass to an upstream client's timeout.

A handler that *blocks* the loop (``time.sleep``, a CPU-bound loop) cannot be cancelled: nothing
runs to cancel it. The stall watchdog logs where it blocks and gunicorn's ``--timeout`` replaces
the worker (:mod:`hardened_worker._diagnostics`).

Pure apart from :class:`RequestGuard`, the ASGI layer that carries the decision out.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import struct
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from hardened_worker import _diagnostics as diagnostics
from hardened_worker._drain import ASGIApp, DrainSignal, Message, Receive, Scope, Send

EXTENSION = "hardened_worker"
CANCEL_MESSAGE = "hardened_worker: request deadline"
SWEEP_INTERVAL = 0.1  # seconds: how late past its deadline a request may be cancelled
# Seconds a client gets to take what is buffered for it once its request was ended, before its
# connection is reset: a client that reads takes a response's last 64 KiB in far less.
ABORT_GRACE = 1.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops the unsent
_monotonic = time.monotonic  # a request's age and duration
_current_task = asyncio.current_task


class Cause(enum.Enum):
    REQUEST_DEADLINE = "request deadline"  # HARDENED_REQUEST_TIMEOUT
    DRAIN_DEADLINE = "drain deadline"  # the end of --graceful-timeout's share for requests


class Response(enum.Enum):
    """How far the response had got when its request was ended."""

    NOT_STARTED = "no response started"
    EVENT_STREAM = "a text/event-stream response in progress"
    STARTED = "a response in progress"
    COMPLETE = "the response complete"  # the app was still running after sending it all


class Ending(enum.Enum):
    GATEWAY_TIMEOUT = "answered 504"
    END_STREAM = "stream ended"  # the terminating chunk: a complete response
    CUT = "connection closed"  # mid-response (or before one): the client sees it incomplete
    NOTHING = "nothing to send"  # the client has its whole response


ENDINGS: dict[tuple[Cause, Response], Ending] = {
    (Cause.REQUEST_DEADLINE, Response.NOT_STARTED): Ending.GATEWAY_TIMEOUT,
    (Cause.REQUEST_DEADLINE, Response.EVENT_STREAM): Ending.END_STREAM,
    (Cause.REQUEST_DEADLINE, Response.STARTED): Ending.CUT,
    (Cause.REQUEST_DEADLINE, Response.COMPLETE): Ending.NOTHING,
    (Cause.DRAIN_DEADLINE, Response.NOT_STARTED): Ending.CUT,
    (Cause.DRAIN_DEADLINE, Response.EVENT_STREAM): Ending.END_STREAM,
    (Cause.DRAIN_DEADLINE, Response.STARTED): Ending.CUT,
    (Cause.DRAIN_DEADLINE, Response.COMPLETE): Ending.NOTHING,
}


def ending(cause: Cause, response: Response) -> Ending:
    return ENDINGS[(cause, response)]


def is_event_stream(headers: Any) -> bool:
    """True when an ASGI ``http.response.start``'s headers say ``Content-Type: text/event-stream``
    (any parameters, any case: RFC 9110 section 8.3.1, the media type is case-insensitive)."""
    for name, value in headers or ():
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip(b" \t").lower() == b"text/event-stream"
    return False


def response_state(start: Message | None, complete: bool) -> Response:
    if start is None:
        return Response.NOT_STARTED
    if complete:
        return Response.COMPLETE
    if is_event_stream(start.get("headers")):
        return Response.EVENT_STREAM
    return Response.STARTED


_GATEWAY_TIMEOUT_BODY = b"Gateway Timeout: the request ran past the server's deadline\n"
GATEWAY_TIMEOUT = {
    "type": "http.response.start",
    "status": 504,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_GATEWAY_TIMEOUT_BODY)).encode()),
        (b"connection", b"close"),
    ],
}
END_OF_STREAM = {"type": "http.response.body", "body": b"", "more_body": False}


class Cut(Exception):
    """Raised out of the app's request so the server closes its connection mid-response.

    An exception after the response started is how ASGI servers close a connection (uvicorn:
    ``run_asgi`` closes the transport); :func:`skip_expected` keeps the traceback uvicorn would
    log for it out of the error log: the guard has already said what happened, in one line.
    """


def skip_expected(record: logging.LogRecord) -> bool:
    """Logging filter for ``uvicorn.error``: no "Exception in ASGI application" traceback for a
    request this module ended (:class:`Cut`), or for one the drain deadline cancelled."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, Cut):
        return False
    if (
        isinstance(exc, asyncio.CancelledError)
        and exc.args
        and str(exc.args[0]).startswith("hardened_worker:")
    ):
        return False
    return True


def _open_socket(transport: Any) -> Any:
    """The transport's socket while its descriptor is still open, else None. A transport closed
    by the server (a 504 sent with ``Connection: close`` and flushed) has given its descriptor
    back: uvloop's socket then has ``fileno() == -1`` and would raise ValueError, not OSError."""
    sock = transport.get_extra_info("socket")
    return sock if sock is not None and sock.fileno() >= 0 else None


def reset(transport: Any) -> None:
    """Abort an open connection with a reset: the kernel drops what it has not sent too (a plain
    close leaves it queued in FIN-WAIT-1 for minutes to a peer that never reads)."""
    sock = _open_socket(transport)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except (OSError, ValueError):
            pass  # the abort alone still frees the descriptor and our buffer
    transport.abort()


def abort_later(
    transport: Any, gone: Callable[[], bool], closing: bool = True, grace: float = ABORT_GRACE
) -> None:
    """In ``grace`` seconds, unless ``gone()`` (the connection was lost meanwhile): :func:`reset`
    ``transport`` if it was ``closing`` (a close that waits for the client), else only if its
    client has still not taken what was written (a kept-alive connection whose client reads is
    left alone). ``gone`` is checked first: once lost, the descriptor may already be another's;
    a transport whose descriptor is closed already (the client took everything) needs nothing.
    Nothing here raises: an exception in a loop callback is printed to stderr by asyncio."""

    def check() -> None:
        if gone() or _open_socket(transport) is None:
            return
        if not closing and (transport.is_closing() or not transport.get_write_buffer_size()):
            return
        reset(transport)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a forced stop after the loop ended: its transports went with it
        return
    loop.call_later(grace, check)


def describe(
    scope: Scope,
    cause: Cause,
    elapsed: float,
    outcome: Ending,
    response: Response,
    timeout: float | None,
    stack: str,
    sent: int = 0,
) -> str:
    """The one log line (plus the stack where the request was waiting) for an ended request;
    ``sent``: the response body bytes the app had sent (how much of a cut download got out)."""
    what = f"{scope.get('method', '?')} {scope.get('path', '?')}"
    limit = (
        f" (HARDENED_REQUEST_TIMEOUT {timeout:g} s)"
        if cause is Cause.REQUEST_DEADLINE and timeout is not None
        else ""
    )
    line = (
        f"{cause.value}: {what} ended after {elapsed:.2f} s{limit}, "
        f"{response.value}: {outcome.value}, {sent} bytes sent"
    )
    if stack:
        line += "; it was waiting at:\n" + stack.rstrip()
    return line


_PLUMBING = tuple(
    os.path.dirname(module.__file__ or "") + os.sep for module in (uvicorn, diagnostics)
)


def app_stack(coro: Any) -> str:
    """Where a suspended request coroutine waits, from the first frame that is not the server's
    (uvicorn's ``run_asgi``, our layers): the app's file and line first."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None and not frame.f_code.co_filename.startswith(_PLUMBING):
            return diagnostics.coroutine_stack(coro)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return ""


class RequestGuard:
    """The ASGI layer that shows the app its deadline and the drain, and ends requests that run
    past either (see the module docstring). Plain ASGI: ``signal`` is the server's
    :class:`~hardened_worker._drain.DrainSignal`; ``timeout`` None means no request deadline.

    Only ``http`` requests: websockets pass through untouched (the drain closes them with 1001),
    and the health path is answered before this layer.

    Its cost per request is what it must know: how far the response got (``send`` is wrapped by a
    plain function, no coroutine of ours), and with a timeout, its task and deadline in the
    in-flight table. One timer sweeps that table (every :data:`SWEEP_INTERVAL`, or a quarter of a
    short timeout) while any request is in flight: an insert and a removal per request, not a
    timer of its own, and nothing of a finished request is kept (keeping them for a sweep promoted
    them out of the young GC generation: slower collections, a worse p99). A deadline may so pass
    by up to one sweep interval before the request is cancelled.

    This layer runs for every HTTP request anyway, so what else must see each one is counted
    here, at the cost of a call, not of a layer of its own (a layer cost the metrics 14% of
    requests/s): ``counted``, if given, is called once per request as it ends (the memory check
    every N requests); ``tally`` (a :class:`hardened_worker._metrics.Tally`) has ``in_flight``
    raised as a request reaches the app, lowered as it ends, the request's seconds appended to
    ``durations``: from reaching the app to the last body byte handed to the server (or to the
    app's return without one), and its status to ``statuses`` (0 when the app sent none).
    """

    def __init__(
        self,
        app: ASGIApp,
        signal: DrainSignal,
        timeout: float | None = None,
        log: Callable[[str], None] | None = None,
        counted: Callable[[], None] | None = None,
        tally: Any = None,
        cycle_of: Callable[[asyncio.Task[Any] | None], Any] = lambda task: None,
    ) -> None:
        self.app = app
        # the server's request cycle running a task (its transport and ``disconnected``), to abort
        # a client that does not read; how to find it is the server's (uvicorn internals) business
        self.cycle_of = cycle_of
        self.counted = counted
        self.tally = tally
        self.signal = signal
        self.timeout = timeout
        self.log = log or logging.getLogger("hardened_worker").warning
        # One read-only mapping for every request without a deadline: nothing written into it by
        # one request (a layer, the app) can reach the next.
        self._shared = types.MappingProxyType({"draining": signal.event, "deadline": None})
        self._event = signal.event  # the drain's Event: made once, never replaced
        self._in_flight: dict[Any, float] = {}  # task -> its deadline (loop time)
        self._expired: dict[Any, str] = {}  # task -> the stack where it waited when cancelled
        self._sweeping = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the worker's one loop, looked up once
        self._interval = min(SWEEP_INTERVAL, timeout / 4) if timeout else SWEEP_INTERVAL

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: Message | None = None
        ended = 0.0  # when the last body byte was handed over (monotonic); 0.0 until then
        sent = 0  # body bytes, for the log line of a request ended midway

        def sending(message: Message) -> Awaitable[None]:
            nonlocal start, ended, sent
            if message["type"] == "http.response.start":
                start = message
            else:
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    ended = _monotonic()
            return send(message)

        extensions = scope.get("extensions")
        if extensions is None:
            extensions = scope["extensions"] = {}
        task = None
        began = _monotonic()
        if self.timeout is None:
            extensions[EXTENSION] = self._shared
        else:
            loop = self._loop or self._bind()
            task = _current_task(loop)  # given the loop, it does not look it up again
            deadline = loop.time() + self.timeout
            extensions[EXTENSION] = {"draining": self._event, "deadline": deadline}
            self._in_flight[task] = deadline
            if not self._sweeping:
                self._sweeping = True
                loop.call_later(self._interval, self._sweep, loop)
        tally = self.tally
        if tally is not None:
            tally.in_flight += 1
        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            stack = self._expired.pop(task, None) if task is not None else None
            cause = (
                Cause.REQUEST_DEADLINE
                if stack is not None
                else Cause.DRAIN_DEADLINE
                if self.signal.deadline_passed
                else None
            )
            if cause is None:
                raise  # a quick stop, the client went away: not ours to decide
            current = asyncio.current_task()
            if current is not None and hasattr(current, "uncancel"):  # Python 3.11+
                current.uncancel()  # handled here: the answer's awaits must not count as cancelled
            await self._end(
                scope,
                send,
                response_state(start, ended > 0.0),
                cause,
                _monotonic() - began,
                stack or "",
                sent,
            )
        finally:
            if task is not None:
                self._in_flight.pop(task, None)
                if self._expired:  # almost always empty: no lookup
                    self._expired.pop(task, None)
            if tally is not None:
                tally.in_flight -= 1
                tally.durations.append((ended or _monotonic()) - began)
                tally.statuses.append(start["status"] if start is not None else 0)  # 0: none sent
            if self.counted is not None:
                self.counted()

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Expire the requests in flight whose deadline passed."""
        now = loop.time()
        late = [t for t, at in self._in_flight.items() if at <= now and t not in self._expired]
        for task in late:
            self._expire(task)
        if self._in_flight:
            loop.call_later(self._interval, self._sweep, loop)
        else:
            self._sweeping = False

    def _expire(self, task: asyncio.Task[Any]) -> None:
        """Note where the request waits, then cancel it."""
        if task.done():
            return
        self._expired[task] = app_stack(task.get_coro())
        task.cancel(msg=CANCEL_MESSAGE)

    async def _end(
        self,
        scope: Scope,
        send: Send,
        response: Response,
        cause: Cause,
        elapsed: float,
        stack: str,
        sent: int,
    ) -> None:
        """One line per ended request (at the drain deadline too, after the server's summary
        line: method, path, age, how far the response got and its bytes sent), then the ending."""
        outcome = ending(cause, response)
        self.log(describe(scope, cause, elapsed, outcome, response, self.timeout, stack, sent))
        cycle = self.cycle_of(asyncio.current_task())
        if cycle is not None and outcome is not Ending.NOTHING:
            # Each ending below may wait on a client that does not read: it gets ABORT_GRACE.
            abort_later(
                cycle.transport,
                lambda: cycle.disconnected,
                closing=outcome in (Ending.CUT, Ending.GATEWAY_TIMEOUT),
            )
        if outcome is Ending.GATEWAY_TIMEOUT:
            await send(GATEWAY_TIMEOUT)
            await send({"type": "http.response.body", "body": _GATEWAY_TIMEOUT_BODY})
        elif outcome is Ending.END_STREAM:
            await send(END_OF_STREAM)
        elif outcome is Ending.CUT:
            raise Cut(f"{cause.value}: {scope.get('method')} {scope.get('path')}")
