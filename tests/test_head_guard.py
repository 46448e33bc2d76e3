"""The protocol glue (hardened_worker._protocols.http) on a stand-in parser: every read reaches the
parser unless it passes a limit, whatever the split, and the count restarts per request."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from hardened_worker._protocols import http
from hardened_worker._protocols.limits import Limits

LIMITS = Limits.from_gunicorn(200, 8, 100)


class Transport:
    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


class Parser:
    """Stands in for uvicorn's protocol: records what it is given."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.cycle, self.client, self.parsed = loop, None, ("192.0.2.1", 4321), b""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parsed += data


def connection(lines: list[str]) -> tuple[Parser, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    guarded = http.guarded(Parser, http.Guard(LIMITS, 10.0, 60.0, lines.append))
    conn = guarded(loop)
    conn.connection_made(Transport())
    return conn, loop


def head(fields: int, body: bytes = b"") -> bytes:
    method = b"POST" if body else b"GET"
    framing = b"Content-Length: %d\r\n" % len(body) if body else b""
    return method + b" / HTTP/1.1\r\n" + framing + b"X: y\r\n" * fields + b"\r\n" + body


requests = st.builds(head, st.integers(0, 6), st.binary(max_size=120))


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(requests, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 3000), max_size=10),
)
def test_every_byte_reaches_the_parser_and_each_head_is_counted(stream, cuts):
    lines: list[str] = []
    conn, loop = connection(lines)
    data = b"".join(stream)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in zip(bounds, bounds[1:]):
        conn.data_received(data[start:stop])
    loop.close()
    assert conn.parsed == data and not conn.transport.closed and lines == []
    assert conn._head.heads == len(stream)


@settings(max_examples=200, deadline=None)
@given(before=st.lists(requests, max_size=4), cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_a_head_past_the_limit_after_good_requests_is_refused_before_the_parser_sees_it(
    before, cuts
):
    lines: list[str] = []
    conn, loop = connection(lines)
    good = b"".join(before)
    data = good + head(9)  # one field more than LIMITS allows
    bounds = sorted({0, len(good), len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in zip(bounds, bounds[1:]):
        conn.data_received(data[start:stop])
    loop.close()
    assert conn.parsed.startswith(good) and len(conn.parsed) < len(data)
    assert conn.transport.closed and conn.transport.written.startswith(b"HTTP/1.1 431 ")
    assert lines == [
        "hardened_worker: refused a request head from 192.0.2.1:4321: more header "
        "fields than --limit-request-fields 8, answered 431"
    ]
