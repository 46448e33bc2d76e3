"""systemd ``Type=notify`` readiness that means "a worker serves", not "the master started".

gunicorn's master sends ``READY=1`` from ``Arbiter.start()``, after the ``on_starting`` hook and
before any worker is forked: ``systemctl start`` returns, and ``After=`` units start, while the
app is still importing and running its lifespan startup (or is about to fail it). This module
moves the message to the first worker whose lifespan startup completed:

* :func:`defer_ready`, called in the master from the ``on_starting`` hook (the vm preset does it),
  takes ``NOTIFY_SOCKET`` out of the environment, so gunicorn's own ``sd_notify`` finds nothing to
  send, and keeps the address for the workers, which inherit it by fork;
* :func:`notify_ready`, called by each worker once it is ready, sends
  ``READY=1``/``MAINPID=<master>``/``STATUS=...``. Only the first caller of a master's life sends
  it: a one-byte token in a pipe the master creates, read by exactly one process (a pipe read is
  atomic); later workers, and those of every HUP, find the pipe empty.

The unit needs ``NotifyAccess=all``: the message comes from a worker, not from the main process.
``MAINPID=`` names the master, which is also what makes a binary upgrade (USR2) work: the new
master runs ``on_starting`` again and its first ready worker reports the new main pid.

The address is also kept in ``_HARDENED_WORKER_NOTIFY_SOCKET`` in the environment, so a master that
USR2 re-executes after a HUP (whose configuration no longer saw ``NOTIFY_SOCKET``) still finds it.
The name must not start with ``HARDENED_``: the settings validator rejects unknown names.

Reloads (``systemctl reload``, a HUP to the master):

* :func:`notify_reloading`, in the master as it forks the first worker of a new generation:
  ``RELOADING=1`` with ``MONOTONIC_USEC=`` (``Type=notify-reload``, systemd 253+, requires it;
  older systemd ignores the field) and ``STATUS=``;
* :func:`notify_reloaded`, in the first worker of that generation to become ready: ``READY=1``, so
  ``systemctl reload`` returns once the new code serves;
* :func:`notify_reload_rejected`, in the first failed worker of a rejected generation: ``READY=1``
  too, with ``STATUS=reload rejected: ...``. systemd (up to 258 at least) has no way for a
  notify-reload service to fail a reload job (``RELOADING=1``/``READY=1`` is all there is; a
  reload-failure field is proposed in systemd PR #39745): the job ends, ``systemctl status``
  shows the rejection. Withholding ``READY=1`` instead would fail the job only after
  ``TimeoutStartSec=`` and block further reloads meanwhile.

:class:`Watchdog` (``WatchdogSec=``, any systemd with ``sd_notify``): a thread in the master sends
``WATCHDOG=1`` (and ``STATUS=`` with a one-line pool summary) every half ``WATCHDOG_USEC``, only
while the pool is healthy (the callable it is given says so: see ``metrics.health``). It is a
thread, not the arbiter's loop, because gunicorn's ``Arbiter.reload`` blocks that loop for up to
``--graceful-timeout`` while old workers leave.

No gunicorn import: the datagram is written here, as ``sd_notify(3)`` describes (``AF_UNIX``
``SOCK_DGRAM``; a leading ``@`` means the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

NOTIFY_SOCKET = "NOTIFY_SOCKET"
STASH = "_HARDENED_WORKER_NOTIFY_SOCKET"
_TOKEN = b"R"

_address: str | None = None
_token_fd: int | None = None
_owner: int | None = None  # the pid of the master that called defer_ready


def _supported(address: str) -> bool:
    # sd_notify(3) also knows "vsock:" addresses; gunicorn does not, so neither do we: we leave
    # such an address alone and gunicorn's own (early) READY=1 is what systemd gets.
    return address.startswith(("/", "@"))


def defer_ready(environ: MutableMapping[str, str] | None = None) -> bool:
    """In the master, before gunicorn's own READY=1: hold readiness back for the workers.

    Returns True when there is a supervisor to tell (``NOTIFY_SOCKET`` was set). Calling it again
    in the same master changes nothing: the token is created once per master.
    """
    global _address, _token_fd, _owner
    environ = os.environ if environ is None else environ
    address = environ.get(NOTIFY_SOCKET) or environ.get(STASH)
    if not address or not _supported(address):
        return False
    environ.pop(NOTIFY_SOCKET, None)
    environ[STASH] = address
    if _owner == os.getpid() and _address == address:
        return True
    if _token_fd is not None:
        os.close(_token_fd)
    read_end, write_end = os.pipe()
    os.write(write_end, _TOKEN)
    os.close(write_end)
    os.set_blocking(read_end, False)
    _address, _token_fd, _owner = address, read_end, os.getpid()
    return True


def notify_ready(mainpid: int, log: Any = None) -> bool:
    """In a worker whose lifespan startup completed: tell systemd, once per master start.

    Does nothing (returns False) when :func:`defer_ready` did not run in this worker's master,
    or when another worker already sent it.
    """
    if _address is None or _token_fd is None:
        return False
    try:
        taken = os.read(_token_fd, 1)
    except OSError:  # BlockingIOError: another worker holds it (the pipe is empty)
        return False
    if taken != _TOKEN:  # end of file: already taken
        return False
    log = log if log is not None else logging.getLogger("gunicorn.error")
    pid = os.getpid()
    state = f"READY=1\nMAINPID={mainpid}\nSTATUS=serving: worker {pid} is ready"
    try:
        notify(state, _address)
    except OSError as exc:
        log.warning(
            "hardened_worker: worker %s could not tell systemd READY=1 at %s: %s",
            pid,
            _address,
            exc,
        )
        return False
    log.info("hardened_worker: worker %s told systemd READY=1 (main pid %s)", pid, mainpid)
    return True


def address() -> str | None:
    """Where systemd listens: the deferred address, else this process's environment's."""
    found = _address or os.environ.get(NOTIFY_SOCKET) or os.environ.get(STASH)
    return found if found and _supported(found) else None


def _send(state: str, log: Any, what: str) -> bool:
    target = address()
    if target is None:
        return False
    log = log if log is not None else logging.getLogger("gunicorn.error")
    try:
        notify(state, target)
    except OSError as exc:
        log.warning("hardened_worker: could not tell systemd %s at %s: %s", what, target, exc)
        return False
    return True


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_reloading(generation: int, log: Any = None) -> bool:
    """In the master, as a HUP's new generation is forked: a reload has begun."""
    sent = _send(
        f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}\n"
        f"STATUS=reloading: generation {generation} starting",
        log,
        "RELOADING=1",
    )
    if sent and log is not None:
        log.info("hardened_worker: told systemd RELOADING=1 (generation %d)", generation)
    return sent


def notify_reloaded(mainpid: int, generation: int, log: Any = None) -> bool:
    """In the first ready worker of a reloaded generation: the reload is done."""
    pid = os.getpid()
    sent = _send(
        f"READY=1\nMAINPID={mainpid}\nSTATUS=serving: reloaded, generation {generation} "
        f"ready (worker {pid})",
        log,
        "READY=1",
    )
    if sent and log is not None:
        log.info(
            "hardened_worker: worker %s told systemd the reload is done (generation %d)",
            pid,
            generation,
        )
    return sent


def notify_reload_rejected(mainpid: int, generation: int, detail: str, log: Any = None) -> bool:
    """In the first failed worker of a rejected generation: the reload is over, and rejected."""
    line = " ".join(
        f"reload rejected: generation {generation} cannot start ({detail}); the "
        "previous generation keeps serving".split()
    )
    return _send(f"READY=1\nMAINPID={mainpid}\nSTATUS={line}", log, "READY=1")


class Watchdog:
    """``WATCHDOG=1`` from the master every ``interval`` seconds while ``healthy()`` returns a
    status line (None: unhealthy, nothing is sent, and systemd's watchdog runs out)."""

    def __init__(self, interval: float, healthy: Callable[[], str | None], log: Any = None) -> None:
        self.interval = interval
        self.healthy = healthy
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="hardened-systemd-watchdog", daemon=True
        )

    @classmethod
    def from_environ(
        cls,
        healthy: Callable[[], str | None],
        log: Any = None,
        environ: Mapping[str, str] | None = None,
    ) -> Watchdog | None:
        """As ``sd_watchdog_enabled(3)``: ``WATCHDOG_USEC`` set, ``WATCHDOG_PID`` unset or ours,
        or our parent's when we are the master a USR2 started (gunicorn sets ``GUNICORN_PID`` to
        the old master's pid): it becomes the main process once the old master leaves."""
        environ = os.environ if environ is None else environ
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        pid = environ.get("WATCHDOG_PID")
        ours = (str(os.getpid()), environ.get("GUNICORN_PID"))
        if usec <= 0 or (pid and pid not in ours):
            return None
        return cls(usec / 2e6, healthy, log)  # half the timeout, as sd_watchdog_enabled advises

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                status = self.healthy()
            except Exception:  # a torn read, a table gone at exit: skip this beat
                continue
            if status is not None:
                _send(f"WATCHDOG=1\nSTATUS={status}", self.log, "WATCHDOG=1")


def notify(state: str, address: str) -> None:
    """Send one ``sd_notify`` datagram to ``address``; raises OSError."""
    if not _supported(address):
        raise OSError(f"unsupported NOTIFY_SOCKET address {address!r}")
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(target)
        sock.sendall(state.encode("utf-8"))


def _reset() -> None:
    """Forget the deferred state (tests)."""
    global _address, _token_fd, _owner
    if _token_fd is not None:
        os.close(_token_fd)
    _address = _token_fd = _owner = None
