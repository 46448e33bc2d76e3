"""``python -m hardened_worker status [--json] [--pid PID | --pidfile F | URL]`` and
``python -m hardened_worker reload [--wait] [--pid PID | --pidfile F] [--timeout S]``.

The shared table lives in the master's anonymous memory, which no other process can map. Two ways
to see it:

* **The master's status socket** (no setting needed): the master answers one JSON document, the
  pool (:func:`hardened_worker._metrics.pool`) plus the last reload's verdict (:func:`verdict`), to
  each connection on the abstract UNIX socket ``@hardened_worker.status.<pid namespace>.<master pid>``
  (:class:`StatusServer`, a thread started in ``Worker.check_config``). Found from the master's
  pid, so it needs no bind address, no health or metrics path, and no file (a read-only root file
  system, a ``PrivateTmp=`` unit). The client checks with ``SO_PEERCRED`` that the master itself
  answers (another process cannot squat the name and lie), the master that the client runs as its
  user or root. Linux only (abstract names), within the master's network namespace (the same host
  or container: ``kubectl exec``, the unit's own ``ExecReload=``).
* **The metrics path** (``HARDENED_METRICS_PATH`` with ``?format=json``), for a remote reader: the
  same snapshot the Prometheus answer is rendered from. ``URL`` is the metrics URL
  (``http://127.0.0.1:8000/metrics``; ``unix:/run/app/app.sock:/metrics`` for a UNIX socket bind).

With neither a pid nor a URL, ``status`` uses the one master socket of this network namespace
(``/proc/net/unix``), else the default URL.

``reload`` sends SIGHUP to the master; with ``--wait`` it then reads the status socket until the
reload's verdict: exit 0 once a worker of the new generation serves, 1 with the rejection line
when the new generation could not start (the old one keeps serving), or when the master exits or
the timeout passes. So ``ExecReload=`` of a systemd unit, and a deploy script, fail on a rejected
deploy.

Exit status: 0, 1 with one line, 2 for a usage error.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000/metrics"
USAGE = (
    "python -m hardened_worker status [--json] [--pid PID | --pidfile FILE | URL]\n"
    "       python -m hardened_worker reload [--wait] [--pid PID | --pidfile FILE] [--timeout S]"
)
SOCKET_PREFIX = "hardened_worker.status."
POLL = 0.1  # seconds between reads of the status socket while reload --wait waits
DEFAULT_RELOAD_TIMEOUT = 120.0


# --- the last reload's verdict (pure) ------------------------------------------------------------


def verdict(
    generation: int, rejected: int, accepted: int, abandoned: int, serving: Iterable[int]
) -> dict[str, Any]:
    """What became of the master's newest configuration load, from what the table holds.

    ``generation`` is the master's newest (1 + HUPs, as far as it has forked), ``rejected``,
    ``accepted`` and ``abandoned`` the newest generation each happened to, ``serving`` the
    generations of the workers that serve. ``result``: ``none`` (no reload yet), ``pending``,
    ``accepted`` (a worker of it became ready), ``rejected`` (it could not start; the previous
    one serves) or ``abandoned`` (stopped while booting: a shutdown during the reload)."""
    if generation <= 1:
        result = "none"
    elif rejected >= generation:
        result = "rejected"
    elif accepted >= generation:
        result = "accepted"
    elif abandoned >= generation:
        result = "abandoned"
    else:
        result = "pending"
    return {"generation": generation, "result": result, "serving": max(serving, default=0)}


def verdict_of(snapshot: Any) -> dict[str, Any]:
    """:func:`verdict` of a :meth:`hardened_worker._readiness.Table.snapshot`."""
    from hardened_worker._readiness import R_ACCEPTED_GEN, State

    r = snapshot.reloads
    serving = (
        s.peer.generation
        for s in snapshot.slots
        if s.alive and s.peer.state in (State.READY, State.SURGING)
    )
    return verdict(r.generation, r.rejected, snapshot.retired[R_ACCEPTED_GEN], r.abandoned, serving)


def reload_outcome(before: int, report: dict[str, Any]) -> str | None:
    """After a HUP sent when the master's generation was ``before``: ``accepted``, ``rejected``,
    ``abandoned``, or None while the new generation has not been decided (or not yet forked)."""
    reload = report["reload"]
    if reload["generation"] <= before or reload["result"] == "pending":
        return None
    return reload["result"]


def rejection_line(report: dict[str, Any]) -> str:
    reload = report["reload"]
    serving = (
        f"generation {reload['serving']} keeps serving"
        if reload["serving"]
        else "no generation serves"
    )
    return (
        f"hardened_worker: reload rejected: generation {reload['generation']} could not start; "
        f"{serving} (the error log's 'reload rejected' line says why)"
    )


# --- the master's status socket ----------------------------------------------------------------


def _pid_namespace() -> int:
    """This process's pid namespace (its inode), 0 when unknown. Containers of one pod share a
    network namespace, so their abstract socket names meet, while each has its own pids (two
    masters with pid 1): the namespace in the name keeps them apart."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def address(master_pid: int) -> str:
    """The abstract UNIX socket name (a leading NUL: no file) of the master ``master_pid`` of this
    pid namespace."""
    return f"\0{SOCKET_PREFIX}{_pid_namespace()}.{master_pid}"


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the other end, as the kernel recorded it at connect/listen (SO_PEERCRED)."""
    pid, uid, _gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    return pid, uid


class StatusServer:
    """In the master: one JSON document (``report()``) per connection on :func:`address`.

    A daemon thread, as the systemd watchdog's: gunicorn's arbiter loop has no place for another
    descriptor, and it blocks for up to ``--graceful-timeout`` during a HUP, exactly when a
    ``reload --wait`` asks. The thread holds no lock a forked worker could inherit held: it reads
    the table lock-free (``Table.snapshot``) and writes to its own socket, nothing else."""

    def __init__(self, report: Callable[[], dict[str, Any]], log: Any) -> None:
        self.report = report
        self.log = log
        self.sock: socket.socket | None = None

    def start(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address(os.getpid()))
            sock.listen(8)
        except OSError as exc:  # not Linux, or the name taken: status through the metrics path only
            sock.close()
            self.log.warning(
                "hardened_worker: no status socket for python -m hardened_worker "
                "status and reload --wait: %s",
                exc,
            )
            return False
        self.sock = sock
        # A forked worker must not keep the master's socket: an orphan would hold the name.
        os.register_at_fork(after_in_child=sock.close)
        threading.Thread(target=self._serve, name="hardened_worker status", daemon=True).start()
        return True

    def _serve(self) -> None:
        assert self.sock is not None
        owner = os.getuid()
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if _peer(conn)[1] not in (owner, 0):  # another user: nothing to read
                        continue
                    conn.settimeout(5.0)
                    conn.sendall(json.dumps(self.report()).encode())
                except Exception:  # one reader's trouble (gone, a torn read) never ends the thread
                    continue


def master_report(table: Any, now: float | None = None) -> dict[str, Any]:
    """What the status socket answers: the pool as the metrics path shows it, and the verdict."""
    from hardened_worker import _metrics as metrics

    snapshot = table.snapshot()
    return {
        **metrics.pool(snapshot, time.time() if now is None else now),
        "master": os.getpid(),
        "reload": verdict_of(snapshot),
    }


def query(pid: int, timeout: float = 5.0) -> dict[str, Any]:
    """The report of master ``pid``; OSError or ValueError with a readable message."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            sock.connect(address(pid))
        except ConnectionRefusedError:
            raise OSError(
                f"no hardened_worker master with pid {pid} answers (not running, or not "
                "hardened_worker.Worker)"
            ) from None
        holder = _peer(sock)[0]
        if holder != pid:
            raise ValueError(
                f"the status socket of pid {pid} is held by process {holder}, not the master"
            )
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    if not chunks:
        raise ValueError(f"master {pid} closed the status socket without answering (another user?)")
    return json.loads(b"".join(chunks))


def masters(net_unix: str = "/proc/net/unix") -> list[int]:
    """Pids of the masters whose status socket is listening in this network namespace."""
    try:
        with open(net_unix) as lines:
            names = [line.split()[-1] for line in lines if SOCKET_PREFIX in line]
    except OSError:
        return []
    mine = f"@{SOCKET_PREFIX}{_pid_namespace()}."
    return sorted(
        {int(n[len(mine) :]) for n in names if n.startswith(mine) and n[len(mine) :].isdigit()}
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The pool as the service reports it; raises OSError or ValueError with a readable message."""
    if url.startswith("unix:"):
        path, _, target = url[5:].rpartition(":")
        conn: http.client.HTTPConnection = _UnixConnection(path, timeout)
    else:
        rest = url.split("://", 1)[-1]
        hostport, slash, target = rest.partition("/")
        target = slash + target
        conn = http.client.HTTPConnection(hostport, timeout=timeout)
    target = (target or "/metrics") + ("&" if "?" in target else "?") + "format=json"
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise ValueError(
            f"{url} answered {response.status} (is HARDENED_METRICS_PATH set, and "
            "this host allowed by HARDENED_METRICS_ALLOW?)"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError(
            f"{url} did not answer the pool's JSON (not a hardened_worker metrics path?)"
        ) from None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def format_table(pool: dict[str, Any], now: float | None = None) -> str:
    """The pool for a person."""
    now = time.time() if now is None else now
    verdict_text = ""
    if "reload" in pool:  # the status socket's answer: the last reload's verdict too
        r = pool["reload"]
        verdict_text = f" (last reload: {r['result']}; generation {r['serving']} serves)"
    lines = [
        f"generation {pool['generation']}{verdict_text}; {pool['requests']} requests served, "
        f"{pool['in_flight']} in flight; reloads: {pool['reloads']['accepted']} accepted, "
        f"{pool['reloads']['rejected']} rejected; listen backlog "
        f"{pool['listen_backlog'] if pool['listen_backlog'] >= 0 else 'unknown'}"
    ]
    rows = [
        (
            "PID",
            "STATE",
            "GEN",
            "AGE",
            "UP",
            "REQUESTS",
            "IN FLIGHT",
            "CONNECTIONS",
            "ACCEPT",
            "MEMORY",
        )
    ]
    for w in pool["workers"]:
        rows.append(
            (
                str(w["pid"]),
                w["state"],
                str(w["generation"]),
                str(w["age"]),
                _ago(w["up_s"]),
                str(w["requests"]),
                str(w["in_flight"]),
                str(w["connections"]),
                w["accept"],
                _size(w["memory_bytes"]) if w["memory_bytes"] else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]
    if pool["last_exits"]:
        lines.append(
            "last exits: "
            + ", ".join(
                f"{e['pid']} {e['reason']} ({_ago(now - e['at'])} ago)" for e in pool["last_exits"]
            )
        )
    if pool["exits"]:
        lines.append(
            "exits by reason: "
            + ", ".join(f"{reason} {n}" for reason, n in sorted(pool["exits"].items()))
        )
    return "\n".join(lines)


def _options(
    args: list[str], flags: tuple[str, ...], valued: tuple[str, ...]
) -> dict[str, Any] | None:
    """``--flag`` and ``--name VALUE`` options and positionals; None on a usage error."""
    found: dict[str, Any] = {"args": []}
    rest = iter(args)
    for arg in rest:
        if arg in flags:
            found[arg] = True
        elif arg in valued:
            value = next(rest, None)
            if value is None:
                return None
            found[arg] = value
        elif arg.startswith("-"):
            return None
        else:
            found["args"].append(arg)
    return found


def _pid(options: dict[str, Any]) -> int | None:
    """The master's pid from ``--pid`` or ``--pidfile``; ValueError with a readable message."""
    if "--pid" in options:
        text, where = options["--pid"], "--pid"
    elif "--pidfile" in options:
        try:
            with open(options["--pidfile"]) as f:
                text, where = f.read(), options["--pidfile"]
        except OSError as exc:
            raise ValueError(f"cannot read the pid file: {exc}") from None
    else:
        return None
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"{where}: {text.strip()!r} is not a process id")
    return int(text)


def _the_master() -> int:
    found = masters()
    if len(found) != 1:
        raise ValueError(
            "no hardened_worker master here; pass --pid or --pidfile"
            if not found
            else f"several masters ({', '.join(map(str, found))}); pass --pid or --pidfile"
        )
    return found[0]


def main(args: list[str]) -> int:
    """``status``."""
    options = _options(args, ("--json",), ("--pid", "--pidfile"))
    if (
        options is None
        or len(options["args"]) > 1
        or (options["args"] and ("--pid" in options or "--pidfile" in options))
    ):
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    try:
        pid = _pid(options)
        if pid is None and not options["args"] and masters():
            pid = _the_master()
        pool = (
            query(pid)
            if pid is not None
            else fetch(options["args"][0] if options["args"] else DEFAULT_URL)
        )
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"hardened_worker: status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(pool, indent=2) if "--json" in options else format_table(pool), flush=True)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reload_main(args: list[str]) -> int:
    """``reload``: SIGHUP to the master; with ``--wait``, the verdict (see the module docstring)."""
    from hardened_worker import config

    options = _options(args, ("--wait",), ("--pid", "--pidfile", "--timeout"))
    if options is None or options["args"]:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    try:
        timeout = config.parse_positive_duration(
            options.get("--timeout", str(DEFAULT_RELOAD_TIMEOUT))
        )
        pid = _pid(options) or _the_master()
        # Asked first even without --wait: a stale pid file must not HUP some other process.
        before = query(pid)["reload"]["generation"]
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"hardened_worker: reload: {exc}", file=sys.stderr)
        return 1
    if "--wait" not in options:
        return 0
    return _wait_for_verdict(pid, before, timeout)


def _wait_for_verdict(pid: int, before: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            report = query(pid)
        except (OSError, ValueError):
            if not _alive(pid):
                print(
                    f"hardened_worker: reload: master {pid} exited before the new generation "
                    "served",
                    file=sys.stderr,
                )
                return 1
            time.sleep(POLL)  # a reader's hiccup: ask again
            continue
        outcome = reload_outcome(before, report)
        if outcome == "accepted":
            print(
                f"hardened_worker: reload accepted: generation {report['reload']['generation']} "
                "serves",
                flush=True,
            )
            return 0
        if outcome == "rejected":
            print(rejection_line(report), file=sys.stderr)
            return 1
        if outcome == "abandoned":
            print(
                f"hardened_worker: reload abandoned: master {pid} stopped generation "
                f"{report['reload']['generation']} while it booted (shutting down?)",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL)
    print(
        f"hardened_worker: reload: no verdict within {timeout:g} s: generation {before + 1} is "
        "neither serving nor rejected (--timeout; the error log says what it is doing)",
        file=sys.stderr,
    )
    return 1
