"""The pure part of backpressure and shedding: the accept rule, the in-flight set, X-Request-Start."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardened_worker import _forwarded as forwarded
from hardened_worker._overload import (
    TCP_INFO_SIZE,
    InFlight,
    ShedMiddleware,
    accepting,
    parse_request_start,
    received_ago,
    retry_after,
    shed,
    shedding,
    waited,
)

NOW = 1_764_600_000.25  # 2025-12-01, epoch seconds


@pytest.mark.parametrize(
    "in_flight,bound,expected",
    [
        (0, None, True),
        (10**6, None, True),
        (0, 4, True),
        (3, 4, True),
        (4, 4, False),
        (5, 4, False),
        (0, 1, True),
        (1, 1, False),
    ],
)
def test_accepting(in_flight, bound, expected):
    assert accepting(in_flight, bound) is expected


@given(st.integers(1, 6), st.lists(st.booleans(), max_size=60))
def test_the_in_flight_set_pauses_exactly_at_the_bound(bound, ops):
    calls = []
    tasks = InFlight(bound, lambda: calls.append("pause"), lambda: calls.append("resume"))
    live = []
    for n, add in enumerate(ops):
        if add:
            live.append(n)
            tasks.add(n)
        elif live:
            tasks.discard(live.pop(0))
        assert tasks.paused is (len(tasks) >= bound)
    # pause and resume alternate, starting with a pause, and the last one says where it stands
    assert calls == ["pause", "resume"] * (len(calls) // 2) + ["pause"] * (len(calls) % 2)
    assert (calls[-1:] == ["pause"]) is tasks.paused


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"t=1764600000.250", NOW),  # nginx: t=${msec}
        (b"1764600000250", NOW),  # Heroku: milliseconds
        (b"t=1764600000250000", NOW),  # microseconds
        (b"t=1764600000", 1_764_600_000.0),  # seconds
        (b"1764600000.25", NOW),
        (b" t=1764600000250 ", NOW),
        (b"", None),
        (b"t=", None),
        (b"soon", None),
        (b"t=-5", None),
        (b"t=1e9", None),
        (b"t=\xc2\xb9", None),
        ("t=１７".encode(), None),
        (b"1,2", None),
    ],
)
def test_request_start(value, expected):
    assert parse_request_start(value) == (pytest.approx(expected) if expected else expected)


@given(st.floats(1e9, 9.9e9), st.sampled_from(["s", "ms", "us", "t=ms", "t=us", "t=s.ms"]))
def test_request_start_reads_every_format_back(when, form):
    number = {
        "s": f"{int(when)}",
        "ms": f"{int(when * 1e3)}",
        "us": f"{int(when * 1e6)}",
        "t=ms": f"t={int(when * 1e3)}",
        "t=us": f"t={int(when * 1e6)}",
        "t=s.ms": f"t={when:.3f}",
    }[form]
    tolerance = 1.0 if form == "s" else 0.002
    assert parse_request_start(number.encode()) == pytest.approx(when, abs=tolerance)


@given(st.binary(max_size=40))
def test_request_start_never_raises(value):
    result = parse_request_start(value)
    assert result is None or result >= 0


def test_waited_shed_retry_after_and_shedding():
    assert waited(None, NOW) is None
    assert waited(NOW - 3, NOW) == pytest.approx(3)
    assert waited(NOW + 3, NOW) == 0.0  # a proxy clock ahead of ours: no wait
    assert shed(None, 1.0) is False and shed(5.0, None) is False
    assert shed(1.0, 1.0) is False and shed(1.01, 1.0) is True
    assert [retry_after(b) for b in (0.2, 1.0, 1.5, 30.0)] == [1, 1, 2, 30]
    assert shedding(None, 10.0) is False
    assert shedding(9.5, 10.0) is True and shedding(8.9, 10.0) is False


# --- the layer, in-process ----------------------------------------------------------------------


def run(layer, headers=(), client=("127.0.0.1", 5000), send_self=None):
    sent, ran = [], []

    async def send(message):
        sent.append(message)

    async def main():
        await layer(
            {
                "type": "http",
                "method": "GET",
                "path": "/",
                "headers": list(headers),
                "client": client,
                "server": ("127.0.0.1", 8000),
            },
            None,
            send,
        )

    layer.app = lambda scope, receive, send: _ran(ran, send)
    asyncio.run(main())
    return sent, ran


async def _ran(ran, send):
    ran.append(1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def trusted(value="127.0.0.1"):
    return forwarded.trusted_from_gunicorn([value])


def test_a_late_request_from_a_trusted_proxy_gets_503_without_running_the_app():
    layer = ShedMiddleware(None, 2.0, trusted(), wall=lambda: NOW)
    sent, ran = run(layer, [(b"x-request-start", b"t=%d" % int((NOW - 5) * 1e6))])
    assert ran == [] and sent[0]["status"] == 503
    assert (b"retry-after", b"2") in sent[0]["headers"]
    assert layer.shed_count == 1 and layer.shedding()


def test_in_time_untrusted_or_unmarked_requests_run():
    layer = ShedMiddleware(None, 2.0, trusted(), wall=lambda: NOW)
    assert run(layer, [(b"x-request-start", b"t=%d" % int((NOW - 1) * 1e6))])[1] == [1]
    assert run(layer, [])[1] == [1]
    assert run(layer, [(b"x-request-start", b"garbage")])[1] == [1]
    late = [(b"x-request-start", b"t=%d" % int((NOW - 5) * 1e6))]
    assert run(ShedMiddleware(None, 2.0, trusted("10.0.0.1"), wall=lambda: NOW), late)[1] == [1]
    assert layer.shed_count == 0 and not layer.shedding()


def test_without_a_proxy_header_the_connection_accept_time_counts():
    async def main(accepted_ago):
        layer = ShedMiddleware(
            None, 1.0, trusted("10.0.0.1"), lambda send: time.monotonic() - accepted_ago
        )
        sent, ran = [], []

        async def send(message):
            sent.append(message)

        layer.app = lambda scope, receive, send: _ran(ran, send)
        await layer({"type": "http", "headers": [], "client": ("127.0.0.1", 1)}, None, send)
        return sent[0]["status"], ran

    assert asyncio.run(main(5.0)) == (503, [])
    assert asyncio.run(main(0.1)) == (200, [1])


@pytest.mark.parametrize(
    "last_data_recv_ms, expected",
    [(0, 0.0), (4, 0.004), (2500, 2.5), (2**32 - 1, (2**32 - 1) / 1000)],
)
def test_received_ago_reads_tcpi_last_data_recv(last_data_recv_ms, expected):
    info = bytearray(TCP_INFO_SIZE)
    info[52:56] = last_data_recv_ms.to_bytes(4, sys.byteorder)
    info[48:52] = info[56:60] = (77).to_bytes(4, sys.byteorder)  # its neighbours are not read
    assert received_ago(bytes(info)) == expected


def test_received_ago_of_a_short_value_is_unknown():
    assert received_ago(b"") is None and received_ago(bytes(55)) is None
