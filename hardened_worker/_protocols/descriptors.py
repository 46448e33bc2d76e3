"""Out of descriptors: reset the clients that cannot be served instead of leaving them waiting.

A worker at its ``RLIMIT_NOFILE`` cannot ``accept()``: the connection stays in the listening
socket's backlog, where the client waits until its own timeout, and a load balancer learns nothing.
libuv (so uvloop, so UvicornWorker) keeps one descriptor in reserve for this (``uv__emfile_trick``):
give it back, accept what is pending and close it at once, take the reserve again. We do the same,
with ``SO_LINGER`` 0 so the client sees a reset (and retries elsewhere) rather than an orderly end.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
from dataclasses import dataclass

RESET_AT_MOST = 1024  # connections one episode step resets (each costs about 10 us)
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Shortage:
    """What one step found: how many pending clients were reset, the soft limit and how many
    descriptors the process had open (-1: unknown)."""

    reset: int
    limit: int
    open: int


def _open_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # without listdir's own
    except OSError:
        return -1


class Reserve:
    """One descriptor held back (``/dev/null``), released only to reset clients."""

    def __init__(self) -> None:
        self._fd = self._take()

    @staticmethod
    def _take() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # already out: tried again at the next shortage
            return -1

    def reset_pending(self, listening: socket.socket) -> Shortage:
        """Free the reserve, reset the clients waiting on ``listening``, count, take it back."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        reset = 0
        for _ in range(RESET_AT_MOST):
            try:
                conn, _ = listening.accept()
            except OSError:  # EAGAIN: none left; EMFILE: no reserve to spend; a sibling took it
                break
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:  # a UNIX socket: closing is all it gets
                pass
            conn.close()
            reset += 1
        shortage = Shortage(reset, resource.getrlimit(resource.RLIMIT_NOFILE)[0], _open_count())
        self._fd = self._take()
        return shortage

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
