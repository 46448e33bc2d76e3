"""What a client can make the forwarded middleware keep (memory) and parse (CPU); issue 13.

Structural, not timing: memory is what tracemalloc sees retained, CPU is how many elements and
entries get parsed.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from hardened_worker import _forwarded as forwarded
from hardened_worker._forwarded import ForwardedMiddleware, parse_trusted, resolve

MiB = 1024 * 1024


async def app(scope, receive, send):
    pass


def request(middleware, headers, client=("127.0.0.1", 5000)):
    """One request through the middleware, driven without an event loop (it never suspends)."""
    scope = {
        "type": "http",
        "server": ("127.0.0.1", 8000),
        "client": client,
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": headers,
    }
    coroutine = middleware(scope, None, None)
    with pytest.raises(StopIteration):
        coroutine.send(None)
    return scope


def ipv6_client(i):
    """Distinct per request: an IPv6 client has 2**64 addresses to rotate through."""
    return f"2001:db8:{i >> 16 & 0xFFFF:x}:{i & 0xFFFF:x}::1"


def grown_by(run):
    """Bytes that ``run()`` left allocated, and the most it had allocated at once."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, peak - before


@pytest.fixture(autouse=True)
def empty_module_memos():
    """The hop parsers' memos are per process: start each test from empty ones."""
    for parse in (forwarded._parse_xff_entry, forwarded._parse_node):
        parse.memo.clear()


# --- Memory (issue 13 item 3) -----------------------------------------------------------------


def test_distinct_long_headers_pin_almost_nothing():
    """Behind nginx the client writes the start of X-Forwarded-For: 5000 requests with distinct
    4 KiB values (and distinct client addresses) must not grow the worker by 4096 values."""
    middleware = ForwardedMiddleware(app, "127.0.0.1,::1")

    def flood():
        for i in range(5000):
            value = (f"{i:08x}," * 455 + " " + ipv6_client(i)).encode()  # 4 KiB
            headers = [(b"x-forwarded-for", value), (b"x-forwarded-proto", b"https")]
            assert request(middleware, headers)["scheme"] == "https"

    kept, peak = grown_by(flood)
    assert peak < 2 * MiB and kept < 2 * MiB  # was ~17 MiB once 4096 values were memoised


def test_long_values_are_never_memoised():
    middleware = ForwardedMiddleware(app, "127.0.0.1")
    request(middleware, [(b"x-forwarded-for", b"1.2.3.4, " * 400 + b"203.0.113.7")])
    assert len(middleware._verdicts) == 0
    request(middleware, [(b"x-forwarded-for", b"203.0.113.7")])
    assert len(middleware._verdicts) == 1


def test_every_memo_stays_within_its_byte_budget():
    """Short, distinct, memoisable values through both families fill every memo; each stays
    within its budget, and the sizes they charge cover what tracemalloc sees them keep."""
    xff = ForwardedMiddleware(app, "127.0.0.1,::1, 2001:db8::/112")
    fwd = ForwardedMiddleware(app, xff.trusted, family="forwarded")
    memos = {
        "verdicts (x-forwarded)": xff._verdicts,
        "verdicts (forwarded)": fwd._verdicts,
        "X-Forwarded-For entries": forwarded._parse_xff_entry.memo,
        "Forwarded nodes": forwarded._parse_node.memo,
        "trusted hops": xff.trusted._hop_memo,
        "trusted peers": xff.trusted._peer_memo,
    }

    requests = 2500  # more distinct keys than any memo holds: each is cleared on the way

    def fill():
        for i in range(requests):
            client = ipv6_client(i)
            peer = (f"2001:db8::{i & 0xFFFF:x}", 1)  # in 2001:db8::/112: trusted peers
            request(xff, [(b"x-forwarded-for", f"{client}, 2001:db8::{i:x}".encode())], peer)
            request(fwd, [(b"forwarded", f'for="[{client}]";proto=https'.encode())], peer)

    kept, _ = grown_by(fill)
    for name, memo in memos.items():
        assert 0 < memo.spent <= memo.budget, name
        assert 0 < len(memo) < requests, name
    assert kept <= sum(memo.spent for memo in memos.values())
    assert sum(memo.budget for memo in memos.values()) <= 4 * MiB


def test_memo_counts_bytes_and_clears_when_full():
    memo = forwarded._Memo(budget=1000, item_max=100)
    for i in range(100):
        memo.put(i, str(i), 30)
        assert memo.spent <= 1000
    assert len(memo) == 1 and memo.get(99) == "99"  # 33 fit; the 34th, 67th and 100th cleared
    memo.put("big", "x", 101)
    assert memo.get("big") is None
    memo.clear()
    assert (len(memo), memo.spent) == (0, 0)


# --- CPU: parse only what the walk needs (issue 13 item 1) -------------------------------------


def counting(monkeypatch, name):
    calls = []
    original = getattr(forwarded, name)

    def counted(text):
        calls.append(text)
        return original(text)

    monkeypatch.setattr(forwarded, name, counted)
    return calls


def test_forwarded_parses_only_the_elements_the_walk_reaches(monkeypatch):
    calls = counting(monkeypatch, "_parse_element")
    client_written = ", ".join(['for=192.0.2.1;host="a b"'] * 2000)  # ~50 KiB, all invalid
    line = f"{client_written}, for=203.0.113.9, for=127.0.0.2, for=127.0.0.3".encode()
    result = resolve(
        ("127.0.0.1", 1), [(b"forwarded", line)], parse_trusted("127.0.0.0/8"), "forwarded"
    )
    assert result is not None and result.client == ("203.0.113.9", 0)
    assert len(calls) == 3


def test_x_forwarded_for_parses_only_the_entries_the_walk_reaches(monkeypatch):
    calls = counting(monkeypatch, "_parse_xff_entry")
    line = b"garbage, " * 6000 + b"203.0.113.9, 127.0.0.2"
    result = resolve(("127.0.0.1", 1), [(b"x-forwarded-for", line)], parse_trusted("127.0.0.0/8"))
    assert result is not None and result.client == ("203.0.113.9", 0)
    assert calls == ["127.0.0.2", "203.0.113.9"]


@pytest.mark.parametrize(
    "family, header, hop",
    [
        ("x-forwarded", b"x-forwarded-for", b"127.0.0.2"),
        ("forwarded", b"forwarded", b"for=127.0.0.2"),
    ],
)
def test_a_line_of_trusted_hops_is_walked_only_so_far(monkeypatch, family, header, hop):
    """Every hop trusted (a trusted client, or 0.0.0.0/0): the walk still stops early."""
    parser = "_parse_xff_entry" if family == "x-forwarded" else "_parse_element"
    calls = counting(monkeypatch, parser)
    line = b", ".join([hop] * 4000)
    result = resolve(("127.0.0.1", 1), [(header, line)], parse_trusted("127.0.0.0/8"), family)
    assert result is None  # too many hops to say who the client is: the peer stands
    assert len(calls) <= forwarded._MAX_HOPS + 2
