"""One write per response: a transport proxy that lets a response's head and body leave together.

uvicorn's HTTP protocols write a response's status line and headers at ``http.response.start``
and its body at ``http.response.body``: two ``transport.write`` calls, and uvloop sends each at
once, so a small response costs two ``send`` system calls (two trips through the TCP stack and two
wake-ups of the reader) where one would do. Profiled under wrk, those two writes are the largest
part of a request's CPU (see ``bench/README.md``).

:class:`OneWrite` holds a write until either the next write in the same step of the event loop
joins it (the usual case: an app sends the start and the body without waiting in between) or the
loop's next iteration flushes it (one ``call_soon`` per loop iteration for every connection
holding a write, :class:`Flusher`, not one per response). Order is kept, nothing is written twice, and
every way out flushes first (``close``, ``write_eof``, ``writelines``, ``set_protocol``); ``abort``
drops what is held, as it drops the transport's own buffer. After ``set_protocol`` (a websocket
upgrade) writes pass straight through. Everything else is the transport's own (``__getattr__``).
Plain asyncio: no uvicorn internals here (``_server.py`` installs it).
"""

from __future__ import annotations

from typing import Any

BIG = 64 * 1024  # a held write and one this long go out as two writes, never copied into one


class Flusher:
    """The writes held in this iteration of one event loop, flushed together at the next."""

    __slots__ = ("loop", "held")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.held: list[OneWrite] = []

    def hold(self, writer: OneWrite) -> None:
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(writer)

    def flush(self) -> None:
        held, self.held = self.held, []
        for writer in held:
            try:
                writer.flush()
            except Exception:  # one broken connection must not keep the others' writes held
                pass


class OneWrite:
    __slots__ = ("transport", "_flusher", "_held", "_through")

    def __init__(self, transport: Any, flusher: Flusher) -> None:
        self.transport = transport
        self._flusher = flusher
        self._held: bytes | None = None
        self._through = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) < BIG:
                self.transport.write(held + data)
                return
            self.transport.write(held)
        elif not self._through and data:
            self._held = data
            self._flusher.hold(self)
            return
        self.transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():  # closed meanwhile: dropped, as its buffer is
                self.transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.flush()
        self.transport.writelines(lines)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = None
        self.transport.abort()

    def set_protocol(self, protocol: Any) -> None:
        self.flush()
        self._through = True  # an upgraded connection (websocket) writes as it always did
        self.transport.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self.transport.get_write_buffer_size() + (len(held) if held is not None else 0)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)
