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

No gunicorn import: the datagram is written here, as ``sd_notify(3)`` describes (``AF_UNIX``
``SOCK_DGRAM``; a leading ``@`` means the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, MutableMapping, Optional

NOTIFY_SOCKET = "NOTIFY_SOCKET"
STASH = "_HARDENED_WORKER_NOTIFY_SOCKET"
_TOKEN = b"R"

_address: Optional[str] = None
_token_fd: Optional[int] = None
_owner: Optional[int] = None  # the pid of the master that called defer_ready


def _supported(address: str) -> bool:
    # sd_notify(3) also knows "vsock:" addresses; gunicorn does not, so neither do we: we leave
    # such an address alone and gunicorn's own (early) READY=1 is what systemd gets.
    return address.startswith(("/", "@"))


def defer_ready(environ: Optional[MutableMapping[str, str]] = None) -> bool:
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
        log.warning("hardened_worker: worker %s could not tell systemd READY=1 at %s: %s",
                    pid, _address, exc)
        return False
    log.info("hardened_worker: worker %s told systemd READY=1 (main pid %s)", pid, mainpid)
    return True


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
