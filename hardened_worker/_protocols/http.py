"""uvicorn's HTTP protocols with gunicorn's head limits and the header/body read timeouts.

:func:`guarded` subclasses whichever protocol uvicorn chose (httptools or h11; both call
``data_received`` with each read and have ``loop``, ``transport``, ``cycle``, ``flow``, ``client``):
every read goes through a :class:`~.limits.HeadCounter` before the parser sees it, so a head past
a limit is answered 431/414 and closed with nothing of it buffered. The counter skips body bytes by
arithmetic, so the count restarts with each request of a keep-alive or pipelined connection.

The timeouts cost one timer per connection (``loop.call_at``), never one per read or per request:
the timer wakes at the earliest instant a bound could be passed, looks at what the connection is
doing and sleeps again. The header clock starts when the connection is made and, on keep-alive
connections, at the first byte of each later request (the wait before it is uvicorn's
``--keep-alive``); the body clock restarts with every read while a request body arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hardened_worker import config
from hardened_worker._protocols.limits import Breach, HeadCounter, Limits


class Throttled:
    """One log line at once, then at most one a second with how many were left out (a flood of
    hostile connections must not become a flood of lines)."""

    def __init__(self, log: Callable[[str], None], interval: float = 1.0) -> None:
        self.log = log
        self.interval = interval
        self._last = -interval
        self._left_out = 0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        if self._left_out:
            line += f" ({self._left_out} more like it in the last {now - self._last:.0f} s)"
        self._last, self._left_out = now, 0
        self.log(line)


@dataclass
class Guard:
    """What every guarded connection of a worker shares: the limits, the two bounds (0: off) and
    the log (a callable taking one line)."""

    limits: Limits
    header_timeout: float
    body_timeout: float
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        self.refused = Throttled(self.log)
        self.timed_out = Throttled(self.log)


def _peer(client: Any) -> str:
    if isinstance(client, tuple) and len(client) == 2:
        return "%s:%s" % client
    return "a UNIX socket peer" if client is None else str(client)


def _refusal(breach: Breach) -> bytes:
    body = breach.phrase + b"\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (breach.status, breach.phrase),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body,
        )
    )


def _busy(conn: Any) -> bool:
    """A response is under way: nothing may be written in the middle of it."""
    cycle = getattr(conn, "cycle", None)
    return cycle is not None and not cycle.response_complete


def guarded(protocol_class: Any, guard: Guard) -> type:
    """``protocol_class`` with the head limits and read timeouts of ``guard``."""
    timed = guard.header_timeout > 0 or guard.body_timeout > 0
    header_timeout, body_timeout = guard.header_timeout, guard.body_timeout
    # When the timer has nothing to watch it looks again after the shorter bound.
    recheck = min(t for t in (header_timeout, body_timeout) if t > 0) if timed else 0.0
    parse = protocol_class.data_received  # called directly: no super() object per read
    # llhttp (httptools) refuses any bare LF; h11 takes one as a line end.
    bare_lf = not any(
        c.__module__ == "uvicorn.protocols.http.httptools_impl" for c in protocol_class.__mro__
    )

    class Guarded(protocol_class):
        _head: HeadCounter
        _head_since: float | None  # loop.time() the current head began to be awaited; None: none is
        _read_at: float  # loop.time() of the last read
        _timer: Any

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head = HeadCounter(guard.limits, bare_lf)
            self._head_since = self._read_at = self.loop.time()
            self._timer = (
                self.loop.call_at(self._read_at + recheck, self._check_reads) if timed else None
            )

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            head = self._head
            after = head.whole_head(data)
            if after == len(data):  # the usual read: one whole head, nothing else
                if timed:
                    self._read_at = self.loop.time()
                    self._head_since = None
                parse(self, data)
                return
            if head.counting:
                if after < 0:
                    heads, breach = head.heads, head.feed(data, 0, tried=0)
                else:  # a whole head, then more (a body, pipelined requests)
                    heads, breach = head.heads - 1, head.feed(data, after)
                if breach is not None:
                    self._refuse(breach)
                    return
                if timed:
                    self._read_at = now = self.loop.time()
                    # A head ended (maybe another began), or none was awaited: one may have begun.
                    # A head still arriving keeps the instant it began.
                    if heads != head.heads or self._head_since is None:
                        self._head_since = now if head.in_head else None
            elif head is _REFUSED:
                return  # read before the close took effect
            elif timed:
                self._read_at = self.loop.time()
            parse(self, data)

        def _refuse(self, breach: Breach) -> None:
            transport = self.transport
            if not _busy(self):
                transport.write(_refusal(breach))
            transport.close()  # stops reading at once: the rest of the head is never read
            self._head = _REFUSED
            guard.refused(
                f"hardened_worker: refused a request head from {_peer(self.client)}: "
                f"{breach.described} {guard.limits.of(breach)}, answered {breach.status}"
            )

        def _check_reads(self) -> None:
            self._timer = None
            transport = self.transport
            if transport is None or transport.is_closing() or transport.get_protocol() is not self:
                return  # closed, or upgraded to a websocket (whose protocol has the transport now)
            now = self.loop.time()
            wake = now + recheck
            if self._head_since is not None and header_timeout > 0:
                due = self._head_since + header_timeout
                if now >= due and not _busy(self):  # (a pipelined head waits for the response)
                    return self._time_out(
                        "a complete request head", "HARDENED_HEADER_TIMEOUT", header_timeout
                    )
                wake = due if now < due else wake
            elif self._head.in_body and body_timeout > 0 and not self._app_holds_body():
                due = self._read_at + body_timeout
                if now >= due:
                    return self._time_out(
                        "any of the request body", "HARDENED_BODY_TIMEOUT", body_timeout
                    )
                wake = due
            self._timer = self.loop.call_at(wake, self._check_reads)

        def _app_holds_body(self) -> bool:
            """The body waits for the app, not the client: reading is paused (the app has not
            taken what arrived), or the client waits for ``100 Continue`` until the app reads."""
            return self.flow.read_paused or getattr(self.cycle, "waiting_for_100_continue", False)

        def _time_out(self, what: str, setting: str, bound: float) -> None:
            transport = self.transport
            # Nothing buffered waits to be sent in the usual case; what is (a client that neither
            # sends nor reads) must not keep the descriptor: reset.
            (transport.abort if transport.get_write_buffer_size() else transport.close)()
            guard.timed_out(
                f"hardened_worker: closed a connection from {_peer(self.client)} that "
                f"sent no more of {what} within {setting} {bound:g} s"
            )

    Guarded.__name__ = Guarded.__qualname__ = "Guarded" + protocol_class.__name__
    return Guarded


class _NotCounting:
    """Stands in for the counter of a refused connection: reads after the close are dropped."""

    counting = False
    in_head = in_body = False
    heads = 0

    def whole_head(self, data: bytes, pos: int = 0) -> int:
        return -1


_REFUSED: Any = _NotCounting()


def gunicorn_limits(cfg: Any) -> Limits:
    """The three ``--limit-request-*`` settings as the installed gunicorn's own parser reads them:
    it parses one tiny request with ``cfg`` and its normalised limits are read back (what 0 means
    changed between releases: a request line of 0 is 8190 in 25.2, unlimited in 27, 1 MiB with
    its C parser). :meth:`Limits.from_gunicorn` (27's Python parser) if that cannot be done."""
    try:
        from gunicorn.http.message import Request
        from gunicorn.http.unreader import IterUnreader

        probe = Request(cfg, IterUnreader([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]), ("127.0.0.1", 0))
        line = (
            probe._fast_limit_request_line
            if getattr(probe, "_use_fast", False)
            else probe.limit_request_line
        )
        return Limits(
            int(line), int(probe.limit_request_fields), int(probe.limit_request_field_size)
        )
    except Exception:  # a gunicorn whose parser reads differently: its documented meaning
        return Limits.from_gunicorn(
            cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )


def guard_of(cfg: Any, settings: config.Settings, log: Any) -> Guard:
    """The worker's guard: gunicorn's three ``--limit-request-*`` settings as its own parser reads
    them, and the two ``HARDENED_*`` read timeouts; ``log``: gunicorn's error logger."""
    return Guard(
        gunicorn_limits(cfg),
        settings.header_timeout or 0.0,
        settings.body_timeout or 0.0,
        log.warning,
    )
