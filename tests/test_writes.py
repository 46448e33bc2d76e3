"""One write per response (hardened_worker._writes): order kept, nothing lost, every exit flushes."""

from __future__ import annotations

import asyncio

from hardened_worker._writes import BIG, Flusher, OneWrite


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.protocol = None

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, lines) -> None:
        self.writes.append(b"".join(lines))

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    def pause_reading(self) -> None:
        self.events.append("pause")


def run(body) -> FakeTransport:
    async def main() -> FakeTransport:
        transport = FakeTransport()
        await body(OneWrite(transport, Flusher(asyncio.get_running_loop())), transport)
        return transport

    return asyncio.run(main())


def test_head_and_body_in_one_step_leave_in_one_write() -> None:
    async def body(w, t):
        w.write(b"HTTP/1.1 200 OK\r\n\r\n")
        w.write(b"ok")
        assert t.writes == [b"HTTP/1.1 200 OK\r\n\r\nok"]
        await asyncio.sleep(0)
        assert t.writes == [b"HTTP/1.1 200 OK\r\n\r\nok"]

    run(body)


def test_a_lone_write_leaves_at_the_next_iteration() -> None:
    async def body(w, t):
        w.write(b"head")
        assert t.writes == [] and w.get_write_buffer_size() == 4
        await asyncio.sleep(0)
        assert t.writes == [b"head"]
        w.write(b"chunk")
        await asyncio.sleep(0)
        assert t.writes == [b"head", b"chunk"]

    run(body)


def test_order_kept_and_big_bodies_not_copied() -> None:
    async def body(w, t):
        w.write(b"head")
        big = b"x" * BIG
        w.write(big)
        w.write(b"tail")
        await asyncio.sleep(0)
        assert t.writes == [b"head", big, b"tail"]

    run(body)


def test_every_exit_flushes_first_and_abort_drops() -> None:
    async def body(w, t):
        w.write(b"a")
        w.close()
        assert t.writes == [b"a"] and t.events == ["close"]
        w.write(b"b")
        w.write_eof()
        w.write(b"c")
        w.writelines([b"d"])
        w.write(b"lost")
        w.abort()
        await asyncio.sleep(0)
        assert t.writes == [b"a", b"b", b"c", b"d"] and t.events == ["close", "eof", "abort"]

    run(body)


def test_after_an_upgrade_writes_pass_straight_through() -> None:
    async def body(w, t):
        w.write(b"101")
        w.set_protocol("ws")
        w.write(b"frame")
        assert t.writes == [b"101", b"frame"] and t.protocol == "ws"

    run(body)


def test_anything_else_is_the_transport_s() -> None:
    async def body(w, t):
        assert w.get_extra_info("peername") == ("127.0.0.1", 1)
        w.pause_reading()
        assert t.events == ["pause"]

    run(body)


def test_every_requests_counts_down_and_survives_a_failing_callback() -> None:
    from hardened_worker._memory import EveryRequests

    calls = []

    def callback() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    every = EveryRequests(3, callback)
    for _ in range(7):
        every.count()
    assert len(calls) == 2
