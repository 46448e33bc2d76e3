"""More load than the pool can carry: backpressure by accepting less, shedding by queue time.

Pure apart from :class:`ShedMiddleware` (no I/O, no clock of its own): the server and the ASGI
layer call these with what they see.

* **Backpressure** (``HARDENED_MAX_INFLIGHT``): a worker with that many requests in flight stops
  accepting connections, so the kernel's accept queue, shared by every worker on the socket, hands
  new connections to a sibling instead of this worker answering 503 (uvicorn's
  ``--limit-concurrency``) while a sibling may be idle. Requests on connections it already holds
  are still served. :func:`accepting` is the rule, :class:`InFlight` the counter that applies it.
* **Shedding** (``HARDENED_MAX_QUEUE_TIME``): a request that has already waited longer than the
  bound before the app would run gets a fast 503 with ``Retry-After``: its client has most likely
  given up (or will before an answer comes), and the work would only delay the requests behind it.
  How long it waited comes from ``X-Request-Start``, set by a trusted proxy
  (:func:`parse_request_start` reads nginx's and Heroku's formats); without one, for the first
  request on a connection, from the moment the worker accepted it, or from when the kernel
  received the request's bytes if that was earlier (:func:`received_ago`, so time in the accept
  queue counts too; the server's ``first_request_accepted_at``). :func:`shed` is the rule. While a
  worker sheds (:func:`shedding`) its health path says so, and answers 503 only with
  ``HARDENED_SHED_FAILS_HEALTH``: by default a shedding worker stays in its load balancer, since
  taking every overloaded pod out of rotation in turn piles the load onto the rest until no
  endpoint is left.
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections.abc import Callable
from typing import Any

from hardened_worker._forwarded import is_unix_listener


def accepting(in_flight: int, bound: int | None) -> bool:
    """May a worker with ``in_flight`` requests accept new connections? ``bound`` None: always."""
    return bound is None or in_flight < bound


class InFlight(set):
    """The server's set of request tasks, calling ``pause`` when :func:`accepting` turns false and
    ``resume`` when it turns true again. Only installed when a bound is set: with none the server
    keeps its plain set and pays nothing."""

    def __init__(self, bound: int, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        super().__init__()
        self.bound = bound
        self.paused = False
        self._pause = pause
        self._resume = resume

    def add(self, task: Any) -> None:
        set.add(self, task)
        if not self.paused and not accepting(len(self), self.bound):
            self.paused = True
            self._pause()

    def discard(self, task: Any) -> None:
        set.discard(self, task)
        if self.paused and accepting(len(self), self.bound):
            self.paused = False
            self._resume()


# --- X-Request-Start -----------------------------------------------------------------------------
#
# nginx:   proxy_set_header X-Request-Start "t=${msec}";   ->  t=1700000000.123   (seconds, ms)
# Heroku:  X-Request-Start: 1700000000123                  ->  milliseconds since the epoch
# others (New Relic's agents accept these too): t=<microseconds>, t=<seconds>, with or without t=.
# A whole number is read by its size: the epoch in seconds has 10 digits until 2286, in ms 13, in
# us 16, so the unit is never in doubt for any date this code will see.
_REQUEST_START = re.compile(r"[ \t]*(?:t=)?([0-9]{1,20})(?:\.([0-9]{1,9}))?[ \t]*")


def parse_request_start(value: bytes) -> float | None:
    """The epoch seconds an ``X-Request-Start`` value names, or None when it is not one."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    match = _REQUEST_START.fullmatch(text)
    if match is None:
        return None
    whole, fraction = match.groups()
    if fraction is not None:
        return float(f"{whole}.{fraction}")  # a decimal point: seconds
    number = int(whole)
    if number >= 10**14:
        return number / 1e6  # microseconds
    if number >= 10**11:
        return number / 1e3  # milliseconds
    return float(number)


# --- the kernel's accept queue --------------------------------------------------------------------
#
# Linux's struct tcp_info (include/uapi/linux/tcp.h): eight u8 fields, then u32s; the ninth u32
# after the u8s, tcpi_last_data_recv (offset 52), is the milliseconds since the socket last
# received data (or since the connection was established, before any). For the first request on
# a connection it says how long the request has been on this host, accept queue included.
TCP_INFO_SIZE = 104
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_OFFSET = 52


def received_ago(tcp_info: bytes) -> float | None:
    """Seconds since the socket last received data, from a ``getsockopt(TCP_INFO)`` value; None
    when the value is too short to hold the field (not Linux's layout)."""
    if len(tcp_info) < _LAST_DATA_RECV_OFFSET + _LAST_DATA_RECV.size:
        return None
    return _LAST_DATA_RECV.unpack_from(tcp_info, _LAST_DATA_RECV_OFFSET)[0] / 1000.0


def waited(start: float | None, now: float) -> float | None:
    """Seconds between ``start`` and ``now`` (both epoch); None when unknown. A clock skewed
    between the proxy and this host can make it negative: that is no wait at all."""
    if start is None:
        return None
    return max(now - start, 0.0)


def shed(wait: float | None, bound: float | None) -> bool:
    """Answer 503 without running the app? Only for a known wait past a set bound."""
    return bound is not None and wait is not None and wait > bound


def retry_after(bound: float) -> int:
    """``Retry-After`` seconds for a shed request: the bound rounded up, at least 1."""
    return max(1, math.ceil(bound))


SHEDDING_HOLD = 1.0  # at least this long after its last shed request a worker counts as shedding


def shedding(last_shed: float | None, now: float, hold: float = SHEDDING_HOLD) -> bool:
    """Is the worker shedding (reported by its health path)? ``last_shed``: when it last shed a
    request, on the same clock as ``now``; None if never."""
    return last_shed is not None and now - last_shed < hold


# --- the ASGI layer ------------------------------------------------------------------------------

_SHED_BODY = b"Service Unavailable: the request waited too long in the queue\n"


class ShedMiddleware:
    """Answers ``503`` with ``Retry-After``, without running the app, to a request that already
    waited longer than ``bound`` seconds (see the module docstring). Plain ASGI.

    ``trusted`` (a :class:`hardened_worker._forwarded.TrustedProxies`) says which peers'
    ``X-Request-Start`` is believed; for the others, ``accepted_at(send)`` (the server's, or
    None) gives the ``time.monotonic()`` at which the connection of the request was accepted (or its bytes
    received, if earlier: :func:`received_ago`), for the first request on a connection only (a
    keep-alive connection's later requests did not wait since then). ``shed_count`` and
    :meth:`shedding` are for the health path and the metrics.
    """

    def __init__(
        self,
        app: Any,
        bound: float,
        trusted: Any,
        accepted_at: Callable[[Any], float | None] | None = None,
        wall: Callable[[], float] = time.time,
        log: Callable[[str], None] = lambda line: None,
        counted: Callable[[], None] = lambda: None,
        fails_health: bool = False,
    ) -> None:
        self.app = app
        self.fails_health = fails_health  # HARDENED_SHED_FAILS_HEALTH: for the log line only
        self.log = log
        self.counted = counted  # the metrics' count (hardened_worker_shed_requests_total)
        self.bound = bound
        self.trusted = trusted
        self.accepted_at = accepted_at
        self.wall = wall
        self.shed_count = 0
        self.last_shed: float | None = None
        self._retry_after = str(retry_after(bound)).encode()

    def shedding(self) -> bool:
        return shedding(self.last_shed, time.monotonic(), max(SHEDDING_HOLD, self.bound))

    def _wait(self, scope: Any, send: Any) -> float | None:
        client = scope.get("client")
        if self.trusted is not None and self.trusted.trusts_peer(
            client[0] if client else None, is_unix_listener(scope.get("server"))
        ):
            for name, value in scope["headers"]:
                if name == b"x-request-start":
                    return waited(parse_request_start(value), self.wall())
        if self.accepted_at is not None:
            accepted = self.accepted_at(send)
            if accepted is not None:
                return waited(accepted, time.monotonic())
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        wait = self._wait(scope, send) if scope["type"] == "http" else None
        if not shed(wait, self.bound):
            return await self.app(scope, receive, send)
        if not self.shedding():  # one line per episode, not per request
            health = (
                "health answers 503 until none has waited that long for a while"
                if self.fails_health
                else "health still answers 200 (HARDENED_SHED_FAILS_HEALTH)"
            )
            self.log(
                f"shedding: {scope.get('method')} {scope.get('path')} waited {wait:.3g} s "
                f"(HARDENED_MAX_QUEUE_TIME {self.bound:g} s): 503, {health}"
            )
        self.shed_count += 1
        self.counted()
        self.last_shed = time.monotonic()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_SHED_BODY)).encode()),
                    (b"retry-after", self._retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _SHED_BODY})
