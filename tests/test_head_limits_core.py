"""The head-limits core (hardened_worker._protocols.limits): tables at every boundary, gunicorn's own
parser as the oracle, and any split of the bytes counting the same as one read."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http import errors
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened_worker._protocols.http import gunicorn_limits
from hardened_worker._protocols.limits import DEFAULTS, Breach, HeadCounter, Limits


def head(target_len: int = 1, values: tuple[int, ...] = (), line_end: bytes = b"\r\n") -> bytes:
    """A request head whose request line is ``GET /aaa HTTP/1.1`` with a target of ``target_len``
    bytes, and one field ``Xn: vvv`` per entry of ``values`` (its value's length)."""
    lines = [b"GET /" + b"a" * (target_len - 1) + b" HTTP/1.1"]
    lines += [b"X%d: " % i + b"v" * n for i, n in enumerate(values)]
    return line_end.join(lines) + line_end + line_end


def field_of_size(size: int, index: int = 0) -> int:
    """The value length giving field ``X<index>: v...`` a gunicorn size (line + CRLF) of ``size``."""
    return size - len(b"X%d: " % index) - 2


LINE = len(b"GET / HTTP/1.1")  # request line length with a 1-byte target


def fed(
    data: bytes, limits: Limits = DEFAULTS, step: int = 0, bare_lf: bool = True
) -> tuple[Breach | None, int]:
    counter = HeadCounter(limits, bare_lf)
    pieces = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        breach = counter.feed(piece)
        if breach is not None:
            return breach, counter.heads
    return None, counter.heads


SMALL = Limits.from_gunicorn(100, 4, 64)
CASES = [
    # (what, limits, bytes, expected breach, heads completed)
    ("a plain GET", DEFAULTS, head(values=(5, 5)), None, 1),
    ("request line at the limit", SMALL, head(100 - LINE + 1), None, 1),
    ("request line one past it", SMALL, head(100 - LINE + 2), Breach.REQUEST_LINE, 0),
    ("request line past it, no LF yet", SMALL, b"GET /" + b"a" * 200, Breach.REQUEST_LINE, 0),
    ("a CR is not content", SMALL, b"GET /" + b"a" * (100 - LINE) + b" HTTP/1.1\r", None, 0),
    ("fields at the limit", SMALL, head(values=(1, 1, 1, 1)), None, 1),
    ("one field past it", SMALL, head(values=(1, 1, 1, 1, 1)), Breach.FIELDS, 0),
    ("field size at the limit", SMALL, head(values=(field_of_size(64),)), None, 1),
    ("field size one past it", SMALL, head(values=(field_of_size(65),)), Breach.FIELD_SIZE, 0),
    (
        "a field past it, no LF yet",
        SMALL,
        b"GET / HTTP/1.1\r\nX: " + b"v" * 100,
        Breach.FIELD_SIZE,
        0,
    ),
    (
        "obs-fold adds to its field",
        SMALL,
        b"GET / HTTP/1.1\r\nX: " + b"v" * 40 + b"\r\n " + b"w" * 30 + b"\r\n\r\n",
        Breach.FIELD_SIZE,
        0,
    ),
    (
        "bare LF lines count the same",
        SMALL,
        head(values=(1, 1, 1, 1, 1), line_end=b"\n"),
        Breach.FIELDS,
        0,
    ),
    ("empty lines before the request line", SMALL, b"\r\n\r\n" + head(), None, 1),
    ("request line 0: unlimited", Limits.from_gunicorn(0, 4, 64), head(100_000), None, 1),
    (
        "request line capped at 8190",
        Limits.from_gunicorn(100_000, 4, 64),
        head(8190 - LINE + 2),
        Breach.REQUEST_LINE,
        0,
    ),
    ("fields 0: 32768", Limits.from_gunicorn(100, 0, 64), head(values=(1,) * 200), None, 1),
    (
        "field size 0: 8190",
        Limits.from_gunicorn(100, 4, 0),
        head(values=(field_of_size(8191),)),
        Breach.FIELD_SIZE,
        0,
    ),
    ("pipelined heads", SMALL, head() * 3, None, 3),
    (
        "a body is not a head",
        SMALL,
        b"POST / HTTP/1.1\r\nContent-Length: 300\r\n\r\n"
        + (b"GET /" + b"a" * 290 + b"\r\n\r\n")[:300]
        + head(),
        None,
        2,
    ),
    (
        "the head after a body is counted",
        SMALL,
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc" + head(values=(1,) * 5),
        Breach.FIELDS,
        1,
    ),
    (
        "chunked bodies are skipped",
        SMALL,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"40;ext=1\r\n" + b"x" * 0x40 + b"\r\n0\r\nT: 1\r\n\r\n" + head(values=(1,) * 5),
        Breach.FIELDS,
        1,
    ),
    (
        "an unknown framing stops the count",
        SMALL,
        b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n" + head(500),
        None,
        1,
    ),
]


@pytest.mark.parametrize("what, limits, data, breach, heads", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("step", [0, 1, 7])
@pytest.mark.parametrize("bare_lf", [True, False], ids=["h11", "httptools"])
def test_table(what, limits, data, breach, heads, step, bare_lf):
    assert fed(data, limits, step, bare_lf) == (breach, heads)


def test_a_16_mib_header_is_refused_at_the_first_read_past_the_limit():
    counter = HeadCounter(DEFAULTS)
    assert counter.feed(b"GET / HTTP/1.1\r\nX-Big: ") is None
    assert counter.feed(b"v" * 65536) is Breach.FIELD_SIZE


def test_the_clock_flags_follow_the_request():
    counter = HeadCounter(SMALL)
    assert not counter.in_head and not counter.in_body
    counter.feed(b"POST / HTTP/1.1\r\n")
    assert counter.in_head
    counter.feed(b"Content-Length: 4\r\n\r\nab")
    assert counter.in_body and not counter.in_head and counter.heads == 1
    counter.feed(b"cd")
    assert not counter.in_body and not counter.in_head
    counter.feed(b"G")
    assert counter.in_head


def test_limits_name_the_value_they_passed():
    assert [DEFAULTS.of(b) for b in Breach] == [4094, 100, 8190, 100 * 8192 + 4]


# --- gunicorn's own parser as the oracle --------------------------------------------------------


def gunicorn_config(line: int, fields: int, field_size: int) -> Config:
    cfg = Config()
    cfg.set("limit_request_line", line)
    cfg.set("limit_request_fields", fields)
    cfg.set("limit_request_field_size", field_size)
    return cfg


def gunicorn_status(data: bytes, line: int, fields: int, field_size: int) -> int:
    cfg = gunicorn_config(line, fields, field_size)
    try:
        Request(cfg, IterUnreader([data]), ("127.0.0.1", 1))
    except errors.LimitRequestLine:
        return 414
    except errors.LimitRequestHeaders:
        return 431
    return 200


@settings(max_examples=300, deadline=None)
@given(
    line=st.integers(0, 9000),
    fields=st.integers(0, 12),
    field_size=st.integers(0, 120),
    target=st.integers(1, 9000),
    values=st.lists(st.integers(0, 130), max_size=14),
    bare_lf=st.booleans(),
)
def test_same_answer_as_gunicorns_parser(line, fields, field_size, target, values, bare_lf):
    data = head(target, tuple(values))
    # The limits as the installed gunicorn reads its settings (what 0 means changed in 27).
    breach, _ = fed(
        data, gunicorn_limits(gunicorn_config(line, fields, field_size)), bare_lf=bare_lf
    )
    assert (200 if breach is None else breach.status) == gunicorn_status(
        data, line, fields, field_size
    )


# --- any split counts the same -----------------------------------------------------------------

messages = st.one_of(
    st.builds(
        lambda t, v: head(t, tuple(v)),
        st.integers(1, 150),
        st.lists(st.integers(0, 80), max_size=6),
    ),
    st.builds(
        lambda body: b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        st.binary(max_size=200),
    ),
    st.builds(
        lambda chunks: (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks if c)
            + b"0\r\n\r\n"
        ),
        st.lists(st.binary(max_size=40), max_size=4),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(messages, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    limits=st.builds(
        Limits.from_gunicorn, st.integers(0, 200), st.integers(0, 8), st.integers(0, 100)
    ),
    bare_lf=st.booleans(),
)
def test_any_split_counts_the_same_as_one_read(stream, cuts, limits, bare_lf):
    data = b"".join(stream)
    whole = fed(data, limits, bare_lf=bare_lf)
    counter, result = HeadCounter(limits, bare_lf), None
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in zip(bounds, bounds[1:]):
        result = counter.feed(data[start:stop])
        if result is not None:
            break
    assert (result, counter.heads) == whole
    if whole[0] is None:
        assert whole[1] == len(stream)  # every message's head found, none inside a body
