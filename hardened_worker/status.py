"""``python -m hardened_worker status [--json] [URL]``: the pool of a running service.

The shared table lives in the master's anonymous memory, which no other process can map; the
running service shows it instead, through ``HARDENED_METRICS_PATH`` with ``?format=json``: the same
snapshot the Prometheus answer is rendered from (:func:`hardened_worker.metrics.pool`), so the
command and a scrape never disagree. ``URL`` is the metrics URL (default
``http://127.0.0.1:8000/metrics``; ``unix:/run/app/app.sock:/metrics`` for a UNIX socket bind).
The command must run where the metrics path lets it in (loopback, by default).

Exit status: 0, or 1 with one line when the service cannot be reached or refuses.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from typing import Any, Optional

DEFAULT_URL = "http://127.0.0.1:8000/metrics"
USAGE = "python -m hardened_worker status [--json] [URL]"


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
        raise ValueError(f"{url} answered {response.status} (is HARDENED_METRICS_PATH set, and "
                         "this host allowed by HARDENED_METRICS_ALLOW?)")
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError(f"{url} did not answer the pool's JSON (not a hardened_worker metrics "
                         "path?)") from None


def _size(n: int) -> str:
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


def format_table(pool: dict[str, Any], now: Optional[float] = None) -> str:
    """The pool for a person."""
    now = time.time() if now is None else now
    lines = [f"generation {pool['generation']}; {pool['requests']} requests served, "
             f"{pool['in_flight']} in flight; reloads: {pool['reloads']['accepted']} accepted, "
             f"{pool['reloads']['rejected']} rejected; listen backlog "
             f"{pool['listen_backlog'] if pool['listen_backlog'] >= 0 else 'unknown'}"]
    rows = [("PID", "STATE", "GEN", "AGE", "UP", "REQUESTS", "IN FLIGHT", "CONNECTIONS", "ACCEPT", "MEMORY")]
    for w in pool["workers"]:
        rows.append((str(w["pid"]), w["state"], str(w["generation"]), str(w["age"]),
                     _ago(w["up_s"]), str(w["requests"]), str(w["in_flight"]), str(w["connections"]),
                     w["accept"], _size(w["memory_bytes"]) if w["memory_bytes"] else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
              for row in rows]
    if pool["last_exits"]:
        lines.append("last exits: " + ", ".join(
            f"{e['pid']} {e['reason']} ({_ago(now - e['at'])} ago)" for e in pool["last_exits"]))
    if pool["exits"]:
        lines.append("exits by reason: " + ", ".join(
            f"{reason} {n}" for reason, n in sorted(pool["exits"].items())))
    return "\n".join(lines)


def main(args: list[str]) -> int:
    as_json = "--json" in args
    rest = [a for a in args if a != "--json"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    url = rest[0] if rest else DEFAULT_URL
    try:
        pool = fetch(url)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"hardened_worker: status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(pool, indent=2) if as_json else format_table(pool), flush=True)
    return 0
