"""Where a worker is stuck, and why it exited.

Three tools, each for a different kind of hang:

* :class:`StallWatchdog`, a daemon thread that notices the event loop has not ticked for longer
  than a threshold and logs, once per stall, the main thread's stack and the request it is
  serving. Python threads get the GIL back every ``sys.getswitchinterval()`` even from busy
  Python code, and at once from ``time.sleep`` or blocking I/O.
* :func:`arm_abort_dump`: gunicorn's master sends SIGABRT on ``--timeout``. A Python-level
  handler cannot run while the loop is blocked inside a C call, but faulthandler's C handler
  can: it writes every thread's stack to the error log before the Python handler runs.
* startup stacks: the worker's startup alarm hands the stuck frame to :func:`format_stack`.

A log that cannot be written (a full disk, a revoked file) must not fail a boot, a request or
the master: :func:`tolerate_log_failures` makes a failed line a count and at most one line on
stderr, not logging's traceback per line; nothing here raises for want of a log.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from hardened_worker._lifecycle import Reason

# Innermost frames only: the gunicorn and asyncio frames above them are the same in every dump.
STACK_LIMIT = 20

# The table stores an index into this tuple; the reasons themselves are lifecycle.Reason.
EXIT_REASONS = tuple(reason.value for reason in Reason)


def format_stack(frame: FrameType | None) -> str:
    """A frame's stack, most recent call last, as traceback prints it."""
    if frame is None:
        return "  (no Python frame)\n"
    return "".join(traceback.format_stack(frame, limit=STACK_LIMIT))


def coroutine_stack(coro: Any) -> str:
    """Where a suspended coroutine waits, following ``await`` down to the innermost coroutine.

    ``Task.get_stack()`` gives only the outermost frame of a suspended coroutine.
    """
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "".join(traceback.format_list(traceback.StackSummary.extract(frames)))


def request_in(frame: FrameType | None) -> str | None:
    """``"GET /path"`` of the ASGI request whose code this stack runs, if any.

    Walking the frames for an ASGI ``scope`` local costs nothing per request, unlike recording
    each request as it starts.
    """
    while frame is not None:
        scope = frame.f_locals.get("scope")
        if isinstance(scope, dict) and scope.get("type") in ("http", "websocket"):
            return f"{scope.get('method', 'WEBSOCKET')} {scope.get('path', '?')}"
        frame = frame.f_back
    return None


def main_thread_frame() -> FrameType | None:
    ident = threading.main_thread().ident
    return sys._current_frames().get(ident) if ident is not None else None


class StallWatchdog:
    """Warn when the loop has not called :meth:`tick` for ``threshold`` seconds.

    ``tick`` is a single attribute store, called from the server's 100 ms tick, so the cost on
    the loop is nil; the thread wakes every ``threshold / 2``.
    """

    def __init__(self, threshold: float, log: logging.Logger | Any, pid: int) -> None:
        self.threshold = threshold
        self.log = log
        self.pid = pid
        self.last_tick = time.monotonic()
        self._stop = threading.Event()

    def start(self) -> None:
        # The Thread object is made here, in the worker: one created in the master (the object is
        # built before the fork) and started after it crashes on CPython 3.13.0 (gh-134381).
        if self.threshold > 0:
            threading.Thread(target=self._run, name="hardened-stall-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def _run(self) -> None:
        warned_for = 0.0
        while not self._stop.wait(self.threshold / 2):
            last = self.last_tick
            blocked = time.monotonic() - last
            if blocked < self.threshold or warned_for == last:
                continue
            warned_for = last  # one warning per stall
            frame = main_thread_frame()
            self.log.warning(
                "hardened_worker: worker %s event loop blocked for %.1f s (threshold %.1f s) "
                "serving %s; stack:\n%s",
                self.pid,
                blocked,
                self.threshold,
                request_in(frame) or "no request",
                format_stack(frame).rstrip(),
            )


class WorkerTimeout(SystemExit):
    """Raised into the blocked code when the master times the worker out (SIGABRT)."""


def skip_worker_timeout(record: logging.LogRecord) -> bool:
    """Logging filter: uvicorn's "Exception in ASGI application" for a :class:`WorkerTimeout` is
    not an app error, and the worker has already logged why and where."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, WorkerTimeout)


def error_log_stream(log: Any) -> Any:
    """The file gunicorn's error log writes to (stderr when it is ``-``)."""
    for handler in getattr(getattr(log, "error_log", None), "handlers", []):
        stream = getattr(handler, "stream", None)
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (OSError, ValueError, io.UnsupportedOperation):
            continue
    return sys.stderr


class LogFailures:
    """A log handler's ``handleError`` (logging's documented hook) that counts the lines it could
    not write and says so once, on stderr if that can be written, instead of logging's default: a
    traceback on stderr for every failed line (30,000 lines for 700 requests on a full disk).
    ``count`` is per handler; :data:`dropped` totals every handler of the process."""

    def __init__(self, handler: logging.Handler, who: str) -> None:
        self.name = getattr(handler, "baseFilename", None) or type(handler).__name__
        self.who = who  # "worker 123" or "master 45"
        self.count = 0

    def __call__(self, record: logging.LogRecord) -> None:
        global dropped
        self.count += 1
        dropped += 1
        if self.count == 1:
            why = sys.exc_info()[1]
            _try_stderr(
                f"hardened_worker: {self.who} cannot write its log {self.name} "
                f"({why!r}); its lines are dropped until it can (said once)\n"
            )


dropped = 0  # log lines this process could not write (every handler given a LogFailures)


def _try_stderr(line: str) -> None:
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # full too, closed, or None: nothing left to tell
        pass


def _closing_anyway(handler: logging.Handler, failures: LogFailures) -> Callable[[], None]:
    """``handler.close`` that does not raise when its last flush fails: gunicorn's
    ``reopen_files`` (USR1, logrotate's signal) closes then reopens each file, and a raise there
    leaves the loop of its caller (the worker's tick). The descriptor is closed either way."""
    close = handler.close

    def closing() -> None:
        try:
            close()
        except (OSError, ValueError):
            failures(logging.makeLogRecord({"msg": "close"}))

    return closing


def tolerate_log_failures(log: Any, who: str) -> None:
    """Give gunicorn's error and access log handlers (uvicorn's loggers share them) a
    :class:`LogFailures` and a close that cannot raise. The handlers live as long as the worker
    (USR1 reopens their files in place)."""
    for logger in (getattr(log, "error_log", None), getattr(log, "access_log", None)):
        for handler in getattr(logger, "handlers", ()):
            if not isinstance(handler.handleError, LogFailures):
                failures = LogFailures(handler, who)
                handler.handleError = failures
                handler.close = _closing_anyway(handler, failures)


def arm_abort_dump(log: Any, on_abort: Callable[[int, FrameType | None], None]) -> None:
    """On SIGABRT: every thread's stack from C first, then ``on_abort`` when Python runs again.

    faulthandler handles SIGABRT only through ``enable()`` (with the other fatal signals, which is
    welcome: a segfault in a C extension gets a stack too). Its handler writes the stacks
    ("Fatal Python error: Aborted"), restores the handler installed before it, the Python one set
    here, and re-raises the signal, so ``on_abort`` runs as soon as the main thread gets the GIL.

    Armed at the worker's boot, which is also when its log handlers get :class:`LogFailures`.
    """
    tolerate_log_failures(log, f"worker {os.getpid()}")
    signal.signal(signal.SIGABRT, on_abort)
    stream = error_log_stream(log)
    try:
        stream.flush()  # what is buffered goes out before any dump written under it
    except (OSError, ValueError):
        # A full disk: the master's failed line is still in the buffer this worker inherited.
        # The boot must go on (exiting 3 here made the master halt the whole service).
        pass
    faulthandler.enable(file=stream, all_threads=True)
