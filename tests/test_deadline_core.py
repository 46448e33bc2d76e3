"""The pure part of request deadlines and stream endings: the decision table, the event-stream test,
the log line, and the ASGI guard driven in-process (no sockets, no server)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardened_worker import _deadline as deadline
from hardened_worker._deadline import (
    ENDINGS,
    Cause,
    Cut,
    Ending,
    RequestGuard,
    Response,
    describe,
    ending,
    is_event_stream,
    response_state,
    skip_expected,
)
from hardened_worker._drain import DrainSignal

C, R, N = Cause, Response, Ending

# Written out by hand, not read from ENDINGS: what the client sees, per clock and response state.
EXPECTED = {
    #                      NOT_STARTED         EVENT_STREAM   STARTED  COMPLETE
    C.REQUEST_DEADLINE: [N.GATEWAY_TIMEOUT, N.END_STREAM, N.CUT, N.NOTHING],
    C.DRAIN_DEADLINE: [N.CUT, N.END_STREAM, N.CUT, N.NOTHING],
}
STATES = [R.NOT_STARTED, R.EVENT_STREAM, R.STARTED, R.COMPLETE]


@pytest.mark.parametrize(
    "cause,response,expected",
    [(c, r, row[i]) for c, row in EXPECTED.items() for i, r in enumerate(STATES)],
)
def test_every_ending(cause, response, expected):
    assert ending(cause, response) is expected


def test_the_table_has_every_pair_and_nothing_else():
    assert set(ENDINGS) == {(c, r) for c in Cause for r in Response}


@given(st.sampled_from(list(Cause)), st.sampled_from(list(Response)))
def test_rules_that_hold_whatever_the_pair(cause, response):
    outcome = ending(cause, response)
    if response is not Response.NOT_STARTED:
        assert outcome is not Ending.GATEWAY_TIMEOUT  # no status line after a status line
    if response is Response.EVENT_STREAM:
        assert outcome is Ending.END_STREAM  # an EventSource must see a complete response
    if response is Response.STARTED:
        assert outcome is Ending.CUT  # never a clean end that looks like a whole download


@pytest.mark.parametrize(
    "headers,expected",
    [
        ([(b"content-type", b"text/event-stream")], True),
        ([(b"content-type", b"text/event-stream; charset=utf-8")], True),
        ([(b"Content-Type", b"Text/Event-Stream")], True),
        ([(b"content-type", b" text/event-stream ;x=1")], True),
        ([(b"x-a", b"1"), (b"content-type", b"text/event-stream")], True),
        ([(b"content-type", b"text/plain")], False),
        ([(b"content-type", b"text/event-streams")], False),
        ([(b"x-content-type", b"text/event-stream")], False),
        ([], False),
        (None, False),
    ],
)
def test_is_event_stream(headers, expected):
    assert is_event_stream(headers) is expected


_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)


@given(st.lists(st.tuples(_token, _token), max_size=3), st.booleans())
def test_event_stream_with_any_parameters_and_case(params, upper):
    media = b"TEXT/EVENT-STREAM" if upper else b"text/event-stream"
    value = b";".join([media, *(f"{k}={v}".encode() for k, v in params)])
    assert is_event_stream([(b"content-type", value)])


@given(st.tuples(_token, _token).filter(lambda t: f"{t[0]}/{t[1]}" != "text/event-stream"))
def test_any_other_media_type_is_not(media):
    assert not is_event_stream([(b"content-type", f"{media[0]}/{media[1]}".encode())])


def test_response_state():
    sse = {"type": "http.response.start", "headers": [(b"content-type", b"text/event-stream")]}
    plain = {"type": "http.response.start", "headers": []}
    assert response_state(None, False) is R.NOT_STARTED
    assert response_state(sse, False) is R.EVENT_STREAM
    assert response_state(plain, False) is R.STARTED
    assert response_state(sse, True) is R.COMPLETE


def test_the_log_line_names_the_request_the_clock_and_the_stack():
    line = describe(
        {"method": "GET", "path": "/slow"},
        C.REQUEST_DEADLINE,
        1.004,
        N.GATEWAY_TIMEOUT,
        R.NOT_STARTED,
        1.0,
        '  File "app.py", line 9, in slow\n',
    )
    assert line.startswith(
        "request deadline: GET /slow ended after 1.00 s "
        "(HARDENED_REQUEST_TIMEOUT 1 s), no response started: answered 504"
    )
    assert line.endswith('it was waiting at:\n  File "app.py", line 9, in slow')
    assert ": answered 504, 0 bytes sent;" in line


def test_a_request_cut_at_the_drain_deadline_says_how_much_of_it_got_out():
    line = describe(
        {"method": "GET", "path": "/export.csv"},
        C.DRAIN_DEADLINE,
        12.345,
        N.CUT,
        R.STARTED,
        None,
        "",
        sent=65536,
    )
    assert line == (
        "drain deadline: GET /export.csv ended after 12.35 s, a response in progress: "
        "connection closed, 65536 bytes sent"
    )


def _record(exc):
    return logging.LogRecord(
        "uvicorn.error",
        logging.ERROR,
        __file__,
        1,
        "Exception in ASGI application\n",
        None,
        (type(exc), exc, None),
    )


def test_the_filter_drops_only_tracebacks_of_requests_we_ended():
    assert not skip_expected(_record(Cut("request deadline: GET /")))
    assert not skip_expected(_record(asyncio.CancelledError("hardened_worker: drain deadline")))
    assert skip_expected(_record(asyncio.CancelledError()))
    assert skip_expected(_record(ValueError("the app's own bug")))


# --- the guard, in-process --------------------------------------------------------------------


def run(app, timeout=None, path="/", kind="http", signal=None, after=None):
    """Drive ``RequestGuard(app)`` with one request; returns (messages sent, exception, lines)."""
    signal = signal or DrainSignal()
    lines = []
    guard = RequestGuard(app, signal, timeout, lines.append)
    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    async def main():
        scope = {"type": kind, "method": "GET", "path": path}
        task = asyncio.ensure_future(guard(scope, receive, send))
        if after is not None:
            await after(task)
        try:
            await task
        except BaseException as exc:  # noqa: B036 - what the server would see
            return exc
        return None

    error = asyncio.run(main())
    return sent, error, lines


async def slow(scope, receive, send):
    await asyncio.sleep(60)


def test_a_request_past_its_deadline_gets_a_504_with_connection_close():
    sent, error, lines = run(slow, timeout=0.05, path="/slow")
    assert error is None
    assert sent[0]["status"] == 504 and (b"connection", b"close") in sent[0]["headers"]
    assert sent[1]["type"] == "http.response.body"
    [line] = lines
    assert "request deadline: GET /slow" in line and "test_deadline_core.py" in line
    assert "in slow" in line and "await asyncio.sleep(60)" in line


async def streaming(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await asyncio.sleep(60)


def test_a_response_in_progress_past_its_deadline_is_cut():
    sent, error, lines = run(streaming, timeout=0.05)
    assert isinstance(error, Cut)
    assert [m.get("status") for m in sent] == [200, None]
    assert "a response in progress: connection closed" in lines[0]


async def sse(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    while True:
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        await asyncio.sleep(0.01)


def test_an_event_stream_past_its_deadline_gets_its_final_chunk():
    sent, error, lines = run(sse, timeout=0.05)
    assert error is None
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_at_the_drain_deadline_an_event_stream_ends_and_anything_else_is_cut():
    signal = DrainSignal()

    async def drain_deadline(task):
        await asyncio.sleep(0.05)
        signal.deadline_passed = True
        task.cancel(msg="hardened_worker: drain deadline")

    sent, error, lines = run(sse, signal=signal, after=drain_deadline)
    assert error is None and sent[-1]["more_body"] is False
    signal = DrainSignal()
    sent, error, lines = run(streaming, signal=signal, after=drain_deadline)
    assert isinstance(error, Cut)
    [line] = lines  # one per cut request, with how much of its body got out
    assert line.startswith("drain deadline: GET / ended after ")
    assert line.endswith(
        " s, a response in progress: connection closed, "
        f"{sum(len(m.get('body', b'')) for m in sent)} bytes sent"
    )


def test_a_cancellation_that_is_not_ours_passes_through():
    async def cancel(task):
        await asyncio.sleep(0.01)
        task.cancel()

    sent, error, lines = run(slow, timeout=60, after=cancel)
    assert isinstance(error, asyncio.CancelledError) and sent == [] and lines == []


def test_the_app_sees_its_deadline_on_the_loop_clock_and_the_draining_event():
    seen = {}

    async def look(scope, receive, send):
        ours = scope["extensions"]["hardened_worker"]
        seen["left"] = ours["deadline"] - asyncio.get_running_loop().time()
        seen["draining"] = ours["draining"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    signal = DrainSignal()
    run(look, timeout=30, signal=signal)
    assert 0 < seen["left"] <= 30 and seen["draining"] is signal.event
    seen.clear()

    async def look_untimed(scope, receive, send):
        seen.update(scope["extensions"]["hardened_worker"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(look_untimed, signal=signal)
    assert seen == {"draining": signal.event, "deadline": None}


def test_websockets_pass_through_untouched():
    seen = {}

    async def ws(scope, receive, send):
        seen["scope"] = dict(scope)
        await asyncio.sleep(0.1)

    sent, error, lines = run(ws, timeout=0.01, kind="websocket")
    assert error is None and lines == [] and "extensions" not in seen["scope"]


def test_the_timer_is_cancelled_when_the_request_ends_in_time():
    async def quick(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        guard = RequestGuard(quick, DrainSignal(), 0.05, lambda line: None)

        async def send(message):
            pass

        await guard({"type": "http", "method": "GET", "path": "/"}, None, send)
        await asyncio.sleep(0.1)  # past the deadline: nothing may fire into this task now
        return "still running"

    assert asyncio.run(main()) == "still running"


def test_stack_starts_at_the_app():
    async def inner():
        await asyncio.sleep(60)

    async def outer():
        await inner()

    async def main():
        task = asyncio.ensure_future(outer())
        await asyncio.sleep(0.01)
        stack = deadline.app_stack(task.get_coro())
        task.cancel()
        return stack

    stack = asyncio.run(main())
    assert "in outer" in stack and "in inner" in stack


# --- abort_later on real transports (loopback sockets, both event loops) ------------------------


def _loops():
    import uvloop

    return [("asyncio", asyncio.new_event_loop), ("uvloop", uvloop.new_event_loop)]


@pytest.mark.parametrize("name,new_loop", _loops(), ids=[n for n, _ in _loops()])
def test_abort_later_leaves_a_transport_the_server_already_closed_alone(name, new_loop):
    # A 504 goes out with Connection: close and the client reads it: the server's transport has
    # closed its descriptor before the check runs, and uvicorn's cycle is not "disconnected"
    # (the response completed). The check must do nothing, not raise in a loop callback (asyncio
    # prints that to stderr: under a full pipe it blocked the whole worker).
    loop = new_loop()
    raised: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: raised.append(context))

    async def scenario() -> None:
        # The server's own accept path: accept(), then connect_accepted_socket (uvloop then hands
        # out a socket object whose descriptor reads -1 once the transport has closed it).
        listening = socket.create_server(("127.0.0.1", 0))
        reader, writer = await asyncio.open_connection(*listening.getsockname())
        conn, _ = listening.accept()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
        # The server reads the socket for TCP_INFO early; uvloop keeps that socket object, whose
        # descriptor then reads -1 (setsockopt raised ValueError, not OSError).
        assert transport.get_extra_info("socket") is not None
        transport.write(b"HTTP/1.1 504 Gateway Timeout\r\nconnection: close\r\n\r\n")
        transport.close()
        assert await reader.read() == b"HTTP/1.1 504 Gateway Timeout\r\nconnection: close\r\n\r\n"
        writer.close()
        deadline.abort_later(transport, lambda: False, closing=True, grace=0)
        deadline.abort_later(transport, lambda: False, closing=False, grace=0)
        await asyncio.sleep(0.05)  # the checks are due at once; give the loop a few turns
        listening.close()

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert raised == []
