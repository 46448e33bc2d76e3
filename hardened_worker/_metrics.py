"""Pool metrics in the Prometheus text format, answered by whichever worker gets the scrape.

No ``prometheus_client`` multiprocess directory: every worker counts in plain Python objects on
the request path and copies its counts into its own row of the shared table
(:mod:`hardened_worker._readiness`, ``COUNTERS``) on its tick, with plain int64 stores through a
memoryview (no lock, no syscall), and the worker that answers
``HARDENED_METRICS_PATH`` reads every row, lock-free, and renders the whole pool. What workers that
have left counted is folded into the table's retired row before their slot is reused, so totals
never go back (a recycled worker's requests stay counted).

Four parts: :class:`Tally` (this worker's counts), :class:`MetricsMiddleware` (the endpoint, who
may read it), :func:`pool` (a table snapshot as plain data, also the ``?format=json`` answer the
status command reads) and :func:`render` (that data as Prometheus text): the last two are pure.

Who may read it (:class:`Access`): loopback peers and peers on a UNIX socket listener, for a
request no proxy relayed, and ``HARDENED_METRICS_ALLOW``; never a peer for being a trusted proxy
(``--forwarded-allow-ips``: a proxy relays strangers). The peer is the socket's, never a forwarded
header's. Others get 403. The path is matched as received (``raw_path``): ``/%6detrics`` is not it.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import os
import string
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hardened_worker import _diagnostics as diagnostics
from hardened_worker import _forwarded as forwarded
from hardened_worker import _spread as spread
from hardened_worker._lifecycle import Phase, Reason
from hardened_worker._memory import _parse_rollup
from hardened_worker._readiness import (
    BUCKETS,
    C_ACCEPT,
    C_BEAT,
    C_BUCKET0,
    C_CONNECTIONS,
    C_DURATION_US,
    C_INFLIGHT,
    C_MEMORY,
    C_PHASE,
    C_REQUESTS,
    C_SHED,
    C_STALLS,
    C_STATUS0,
    EXIT_KINDS,
    R_ACCEPTED,
    R_EXITS,
    R_REJECTED,
    R_RING,
    R_RING_NEXT,
    R_TOTALS,
    RING,
    Snapshot,
    State,
    monotonic_ms,
)

PREFIX = "hardened_worker_"
PHASES = tuple(Phase)  # C_PHASE holds the index + 1 (0: not yet published)
STATES = ("booting", "ready", "stopping", "draining")
_STATE_OF_PHASE = {
    Phase.BOOTING: "booting",
    Phase.WAITING: "booting",
    Phase.READY: "ready",
    Phase.SURGING: "ready",
    Phase.DEFERRING: "stopping",
    Phase.STOPPING: "stopping",
    Phase.DRAINING: "draining",
    Phase.EXITING: "draining",
}
RECYCLE_CAUSES = ("max-requests", "max-lifetime", "memory")
CODES = ("1xx", "2xx", "3xx", "4xx", "5xx")  # C_STATUS0 + i counts CODES[i]
LOCAL = ("127.0.0.0/8", "::1", "unix")  # loopback, and peers on a UNIX socket listener
_ASCII = "".join(c for c in string.printable if not c.isspace())


def phase_code(phase: Phase) -> int:
    return PHASES.index(phase) + 1


def _reason(code: int) -> str:
    """A slot's reason field (EXIT_REASONS index + 1) as a label; 0 means none was recorded."""
    if 0 < code <= len(diagnostics.EXIT_REASONS):
        return diagnostics.EXIT_REASONS[code - 1]
    # SIGKILLed (the OOM killer), a segfault, or dead before recording a reason: what the
    # master's exit_reason (child_exit) says too, and docs/operations.md.
    return Reason.CRASH.value


def _state(peer_state: State, phase: int) -> str:
    if peer_state == State.FAILED:
        return "failed"
    if peer_state == State.RETIRING:
        return "draining"
    if 0 < phase <= len(PHASES):
        return _STATE_OF_PHASE[PHASES[phase - 1]]
    return "booting"


# --- the pool as data (pure) --------------------------------------------------------------------


def pool(snapshot: Snapshot, now: float, backlog: int = -1) -> dict[str, Any]:
    """Everything the metrics show, as plain data (JSON-ready), from one table snapshot."""
    retired = snapshot.retired
    totals = {
        "requests": retired[R_TOTALS + C_REQUESTS],
        "duration_us": retired[R_TOTALS + C_DURATION_US],
        "stalls": retired[R_TOTALS + C_STALLS],
        "shed": retired[R_TOTALS + C_SHED],
    }
    buckets = [retired[R_TOTALS + C_BUCKET0 + i] for i in range(len(BUCKETS) + 1)]
    codes = [retired[R_TOTALS + C_STATUS0 + i] for i in range(len(CODES))]
    exits: dict[str, int] = {}
    for kind in range(EXIT_KINDS):
        if retired[R_EXITS + kind]:  # "none recorded" and "crash" are one label: add up
            exits[_reason(kind)] = exits.get(_reason(kind), 0) + retired[R_EXITS + kind]
    last_exits = []
    for n in range(min(retired[R_RING_NEXT], RING)):
        at = R_RING + 3 * ((retired[R_RING_NEXT] - 1 - n) % RING)
        last_exits.append(
            {"pid": retired[at], "reason": _reason(retired[at + 1]), "at": retired[at + 2]}
        )
    workers = []
    for slot in snapshot.slots:
        row = slot.counters
        totals["requests"] += row[C_REQUESTS]
        totals["duration_us"] += row[C_DURATION_US]
        totals["stalls"] += row[C_STALLS]
        totals["shed"] += row[C_SHED]
        for i in range(len(buckets)):
            buckets[i] += row[C_BUCKET0 + i]
        for i in range(len(codes)):
            codes[i] += row[C_STATUS0 + i]
        peer = slot.peer
        if not slot.alive:  # gone, its slot not yet reused: its exit counts already
            reason = _reason(peer.reason)
            exits[reason] = exits.get(reason, 0) + 1
            last_exits.insert(0, {"pid": peer.pid, "reason": reason, "at": int(peer.changed)})
            continue
        if peer.state == State.FREE:
            continue  # leaving: no longer part of the pool
        workers.append(
            {
                "pid": peer.pid,
                "state": _state(peer.state, row[C_PHASE]),
                "generation": peer.generation,
                "age": peer.age,
                "up_s": round(now - peer.started, 3),
                "requests": row[C_REQUESTS],
                "in_flight": row[C_INFLIGHT],
                "memory_bytes": row[C_MEMORY] or peer.memory,
                "connections": row[C_CONNECTIONS],
                "accept": spread.ACCEPT_NAMES[row[C_ACCEPT]],
            }
        )
    workers.sort(key=lambda w: w["age"])
    last_exits.sort(key=lambda e: -e["at"])
    return {
        "workers": workers,
        "requests": totals["requests"],
        "codes": dict(zip(CODES, codes)),
        "in_flight": sum(w["in_flight"] for w in workers),
        "duration": {
            "buckets": list(zip((*BUCKETS, float("inf")), buckets)),
            "sum_s": totals["duration_us"] / 1e6,
            "count": sum(buckets),
        },
        "exits": exits,
        "last_exits": last_exits[:RING],
        "reloads": {"accepted": retired[R_ACCEPTED], "rejected": retired[R_REJECTED]},
        "generation": snapshot.reloads.generation,
        "stalls": totals["stalls"],
        "shed": totals["shed"],
        "listen_backlog": backlog,
    }


# --- Prometheus text (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One metric family as it is declared once, rendered (:func:`render`) and documented
    (:func:`reference`, the table in docs/operations.md)."""

    name: str  # without PREFIX
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str


# The naming rule: a series with a ``pid`` label (one live worker) is named ``worker_*`` and no
# name is used both with and without ``pid``, so ``sum()`` over a family never counts a request
# twice. Pool families count the whole pool, workers that left included.
FAMILIES = (
    Family(
        "workers",
        "gauge",
        ("state",),
        "Workers of the pool by state: booting, ready, stopping, draining (failed: a worker "
        "whose start failed).",
    ),
    Family(
        "requests_total",
        "counter",
        (),
        "HTTP requests the app ran to their end, pool-wide, workers that left included (not "
        "the health path, shed requests nor scrapes), as of each worker's last tick.",
    ),
    Family(
        "responses_total",
        "counter",
        ("code",),
        "The requests of requests_total by status class (1xx .. 5xx); a request the app sent "
        "no status for (it raised, passed its deadline) counts as 5xx: the server answered "
        "500 or 504.",
    ),
    Family("inflight_requests", "gauge", (), "HTTP requests in progress, pool-wide."),
    Family(
        "request_duration_seconds",
        "histogram",
        ("le",),
        "From the request reaching the app to its last body byte handed to the server, pool-wide.",
    ),
    Family(
        "worker_exits_total",
        "counter",
        ("reason",),
        "Workers that exited, by reason (see Exit reasons in the operations guide).",
    ),
    Family(
        "recycles_total",
        "counter",
        ("cause",),
        "Planned replacements (counted once the worker left), by cause.",
    ),
    Family(
        "reloads_total",
        "counter",
        ("result",),
        "HUP reloads: accepted (the new generation serves) or rejected.",
    ),
    Family(
        "event_loop_stalls_total",
        "counter",
        (),
        "Event loop stalls past HARDENED_STALL_THRESHOLD, pool-wide.",
    ),
    Family(
        "shed_requests_total",
        "counter",
        (),
        "Requests answered 503 without running the app (HARDENED_MAX_QUEUE_TIME), pool-wide.",
    ),
    Family(
        "listen_backlog",
        "gauge",
        (),
        "Connections waiting in the accept queue (gunicorn's get_backlog; -1 unknown).",
    ),
    Family("generation", "gauge", (), "The master's configuration generation (1 + HUPs)."),
    Family(
        "worker_requests_total",
        "counter",
        ("pid",),
        "HTTP requests each live worker ran to their end (as requests_total), as of its last "
        "tick; a worker's series ends when it leaves, its requests stay in requests_total.",
    ),
    Family("worker_inflight_requests", "gauge", ("pid",), "HTTP requests in progress, per worker."),
    Family("worker_open_connections", "gauge", ("pid",), "Connections each worker holds open."),
    Family(
        "worker_memory_bytes",
        "gauge",
        ("pid",),
        "Each worker's memory in HARDENED_MEMORY_MEASURE (uss by default: the measure the "
        "memory limits compare), published once a second.",
    ),
)
_FAMILIES = {f.name: f for f in FAMILIES}


def reference() -> str:
    """The families as a Markdown table (docs/operations.md holds it; a test keeps them equal)."""
    rows = ["| name | type | labels | help |", "| --- | --- | --- | --- |"]
    for f in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in f.labels) or "-"
        rows.append(f"| `{PREFIX}{f.name}` | {f.kind} | {labels} | {f.help} |")
    return "\n".join(rows) + "\n"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def render(data: dict[str, Any]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of :func:`pool`'s data, in the
    order and with the help of :data:`FAMILIES`."""
    workers = data["workers"]
    counts = {state: 0 for state in STATES}
    for w in workers:
        counts[w["state"]] = counts.get(w["state"], 0) + 1
    duration = data["duration"]
    cumulative = 0
    histogram = []
    for bound, count in duration["buckets"]:
        cumulative += count
        histogram.append(("_bucket", {"le": _number(float(bound))}, cumulative))
    histogram += [("_sum", {}, duration["sum_s"]), ("_count", {}, duration["count"])]

    def per_worker(key: str) -> list[tuple[str, dict, float]]:
        return [("", {"pid": w["pid"]}, w[key]) for w in workers]

    samples: dict[str, Iterable[tuple[str, dict, float]]] = {
        "workers": [("", {"state": s}, n) for s, n in counts.items()],
        "requests_total": [("", {}, data["requests"])],
        "responses_total": [("", {"code": c}, n) for c, n in data["codes"].items()],
        "inflight_requests": [("", {}, data["in_flight"])],
        "request_duration_seconds": histogram,
        "worker_exits_total": [("", {"reason": r}, n) for r, n in sorted(data["exits"].items())],
        "recycles_total": [("", {"cause": c}, data["exits"].get(c, 0)) for c in RECYCLE_CAUSES],
        "reloads_total": [
            ("", {"result": r}, data["reloads"][r]) for r in ("accepted", "rejected")
        ],
        "event_loop_stalls_total": [("", {}, data["stalls"])],
        "shed_requests_total": [("", {}, data["shed"])],
        "listen_backlog": [("", {}, data["listen_backlog"])],
        "generation": [("", {}, data["generation"])],
        "worker_requests_total": per_worker("requests"),
        "worker_inflight_requests": per_worker("in_flight"),
        "worker_open_connections": per_worker("connections"),
        "worker_memory_bytes": per_worker("memory_bytes"),
    }
    out: list[str] = []
    for f in FAMILIES:
        full = PREFIX + f.name
        out.append(f"# HELP {full} {f.help}")
        out.append(f"# TYPE {full} {f.kind}")
        for suffix, labels, value in samples[f.name]:
            out.append(f"{full}{suffix}{_labels(**labels)} {_number(value)}")
    return "\n".join(out) + "\n"


# --- the middleware -----------------------------------------------------------------------------


# Headers a proxy adds for the client it relays: a request with one came through a proxy.
RELAYED = frozenset((b"x-forwarded-for", b"forwarded", b"x-real-ip"))


class Access:
    """Who may read the metrics: this host (a loopback peer, a peer on a UNIX socket listener),
    unless the request carries a proxy's headers (:data:`RELAYED`), and the peers of
    ``HARDENED_METRICS_ALLOW`` (``allow``) whatever they carry.

    A trusted proxy (``--forwarded-allow-ips``) is no reason: it is trusted to say who its client
    is, and its clients are strangers. A proxy on this host is a loopback peer, hence the
    headers rule (the shipped nginx site also refuses the path). ``forwarded_allow_ips`` is
    accepted and ignored, for callers that pass it."""

    def __init__(self, forwarded_allow_ips: Any = None, allow: str | None = None) -> None:
        self.local = forwarded.parse_trusted(LOCAL)
        self.allowed = forwarded.parse_trusted(allow) if allow else None

    def allows(self, scope: dict) -> bool:
        client = scope.get("client")
        host = client[0] if client else None
        unix = forwarded.is_unix_listener(scope.get("server"))
        if self.allowed is not None and self.allowed.trusts_peer(host, unix):
            return True
        return self.local.trusts_peer(host, unix) and not relayed(scope)


def relayed(scope: dict) -> bool:
    """Did a proxy relay this request (one of its :data:`RELAYED` headers is present)?"""
    return any(name in RELAYED for name, _ in scope.get("headers", ()))


class Tally:
    """This worker's HTTP request counts. On the request path only ``in_flight``, ``durations``
    and ``statuses`` are touched, by :class:`~hardened_worker._deadline.RequestGuard` (``in_flight``
    raised as a request reaches the app, lowered and its seconds and status appended as it ends):
    an increment and two appends, no call of ours. :meth:`publish` turns the durations into the
    counts and the histogram (a sort and a bisect per bucket, in C), the statuses into counts by
    class (:data:`CODES`; 0, no status sent, and anything outside 100-599 count as 5xx: the
    server answered 500, the deadline 504) and copies everything into the
    worker's row of the shared table, on the worker's tick, as it exits and before it answers a
    scrape. Counting through shared memory and a layer of its own per request cost the metrics 14%
    of requests/s. A scrape so sees a sibling's counts as of that sibling's last tick (at most
    100 ms old); ``durations`` holds at most a tick's worth of requests."""

    __slots__ = ("in_flight", "durations", "statuses", "requests", "seconds", "buckets", "codes")

    def __init__(self) -> None:
        self.in_flight = 0
        self.durations: list[float] = []  # requests ended since the last publish
        self.statuses: list[int] = []  # their statuses (0: none sent)
        self.requests = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.codes = [0] * len(CODES)

    def publish(self, row: Any) -> None:
        durations, self.durations = self.durations, []
        if durations:
            durations.sort()
            self.requests += len(durations)
            self.seconds += sum(durations)
            below = 0
            for i, bound in enumerate(BUCKETS):
                upto = bisect.bisect_right(durations, bound, below)  # <= bound: Prometheus' le
                self.buckets[i] += upto - below
                below = upto
            self.buckets[-1] += len(durations) - below
        statuses, self.statuses = self.statuses, []
        for status in statuses:
            code = status // 100
            self.codes[code - 1 if 1 <= code <= 5 else 4] += 1
        row[C_INFLIGHT] = self.in_flight
        row[C_REQUESTS] = self.requests
        row[C_DURATION_US] = int(self.seconds * 1_000_000)
        for i, count in enumerate(self.buckets):
            row[C_BUCKET0 + i] = count
        for i, count in enumerate(self.codes):
            row[C_STATUS0 + i] = count


class MetricsMiddleware:
    """Answers ``path`` for the whole pool (the counting is :class:`Tally`'s).

    ``table`` is the shared table; ``tally`` this worker's, published before a scrape is
    answered; ``backlog`` returns the listen backlog; ``access`` an :class:`Access`; ``port``:
    answer only on connections to that local port, and nothing else there (404; a websocket is
    refused). Install it outside the forwarded middleware: the peer it checks must be the socket's.

    The server calls :attr:`asgi`, a plain method, not a coroutine of ours: a request for the
    app costs one call here, the app's own coroutine is what the server awaits (a call through
    ``__call__``, the type's slot, cost three times as much).
    """

    def __init__(
        self,
        app: Any,
        table: Any,
        path: str,
        access: Access,
        tally: Tally | None = None,
        backlog: Callable[[], int] = lambda: -1,
        port: int | None = None,
    ) -> None:
        self.app = app
        self.table = table
        self.path = path
        # As a client sends it: ASCII as written, anything else UTF-8 percent-encoded.
        self._raw_path = urllib.parse.quote(path, safe=_ASCII).encode("ascii")
        self.access = access
        self.tally = tally
        self.backlog = backlog
        self.port = port
        self.asgi = self._on_port if port is not None else self._on_path

    def _on_path(self, scope: dict, receive: Any, send: Any) -> Awaitable[None]:
        if self._is_metrics(scope) and scope["type"] == "http":
            return self.answer(scope, send)
        return self.app(scope, receive, send)

    def _is_metrics(self, scope: dict) -> bool:
        """The path as received, not decoded: ``/%6detrics`` is not ``/metrics``, so a proxy
        rule on the path cannot be passed by escaping it (ASGI servers without ``raw_path``:
        the decoded path)."""
        raw = scope.get("raw_path")
        return raw == self._raw_path or (raw is None and scope.get("path") == self.path)

    def _on_port(self, scope: dict, receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] != "lifespan":
            server = scope.get("server")
            if server and server[1] == self.port:  # the metrics port: nothing of the app
                return self.only_metrics(scope, send)
        return self.app(scope, receive, send)

    async def only_metrics(self, scope: dict, send: Any) -> None:
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if self._is_metrics(scope):
            return await self.answer(scope, send)
        return await _respond(send, 404, b"text/plain", b"not found\n")

    async def answer(self, scope: dict, send: Any) -> None:
        if not self.access.allows(scope):
            return await _respond(send, 403, b"text/plain", b"forbidden\n")
        if self.tally is not None:
            self.tally.publish(self.table.counters())
        data = pool(self.table.snapshot(), time.time(), self.backlog())
        if b"format=json" in scope.get("query_string", b""):
            data["answered_by"] = os.getpid()
            return await _respond(send, 200, b"application/json", json.dumps(data).encode())
        await _respond(
            send,
            200,
            b"text/plain; version=0.0.4; charset=utf-8",
            render(data).encode() + app_metrics(),
        )


def app_metrics() -> bytes:
    """The app's own prometheus_client metrics of every worker, in the same answer as the pool's
    (one endpoint, one scrape): with prometheus_client installed and ``PROMETHEUS_MULTIPROC_DIR``
    set (the presets keep that directory: :mod:`hardened_worker.presets._prometheus`); else
    nothing. The app's names are its own: ``hardened_worker_*`` is this module's."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or importlib.util.find_spec("prometheus_client") is None:
        return b""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry)


async def _respond(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-hardened-worker-pid", str(os.getpid()).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def backlog_of(sockets: Iterable[Any]) -> int:
    """The accept queue of the listeners, as gunicorn's ``get_backlog`` reads it (-1: unknown)."""
    total, known = 0, False
    for sock in sockets:
        get = getattr(sock, "get_backlog", None)
        value = get() if get else -1
        if value is not None and value >= 0:
            total, known = total + value, True
    return total if known else -1


def rss_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``), 0 where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_bytes(measure: str) -> int:
    """This process's memory in ``measure`` (``HARDENED_MEMORY_MEASURE``: uss, pss or rss), what
    the memory limits compare; the RSS where smaps_rollup is unreadable (as the limits do). Opened
    and closed at each call, once a second: a file kept open in the master would read the master.
    About 13 us per resident MiB (smaps_rollup walks the page tables)."""
    if measure != "rss":
        try:
            with open("/proc/self/smaps_rollup", "rb") as f:
                fields = _parse_rollup(f.read())
            return (
                fields["Pss"]
                if measure == "pss"
                else fields["Private_Clean"] + fields["Private_Dirty"]
            )
        except (OSError, KeyError, ValueError):
            pass
    return rss_bytes()


class StallCounting:
    """The stall watchdog's log, counting each stall warning into the worker's row."""

    def __init__(self, log: Any, table: Any) -> None:
        self._log = log
        self._table = table

    def warning(self, *args: Any, **kwargs: Any) -> None:
        self._table.counters()[C_STALLS] += 1
        self._log.warning(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def health(snapshot: Snapshot, now_ms: int, stale_ms: int) -> str | None:
    """The systemd watchdog's rule: the pool is healthy while at least one ready worker has
    ticked (its event loop ran: ``C_BEAT``) within ``stale_ms``. Returns the one-line pool summary
    for ``STATUS=``, or None when unhealthy. A single stuck worker is gunicorn's ``--timeout``'s
    business; a pool with none serving is the watchdog's."""
    beating = [
        slot
        for slot in snapshot.slots
        if slot.alive
        and slot.peer.state in (State.READY, State.SURGING)
        and _state(slot.peer.state, slot.counters[C_PHASE]) == "ready"
        and now_ms - slot.counters[C_BEAT] <= stale_ms
    ]
    if not beating:
        return None
    data = pool(snapshot, time.time())
    groups: dict[str, list[int]] = {}
    for w in data["workers"]:
        groups.setdefault(w["state"], []).append(w["generation"])
    parts = []
    for state, generations in sorted(groups.items(), key=lambda i: i[0] != "ready"):
        shown = ", ".join(str(g) for g in sorted(set(generations)))
        parts.append(
            f"{len(generations)} {state} (generation{'s' if ',' in shown else ''} {shown})"
        )
    line = "serving: " + ", ".join(parts)
    if data["reloads"]["rejected"] and snapshot.reloads.rejected >= snapshot.reloads.generation:
        line += f"; reload rejected: generation {snapshot.reloads.rejected} cannot start"
    return line


def health_check(table: Any, interval: float) -> Callable[[], str | None]:
    """:func:`health` on ``table`` now; a worker counts as beating within ``interval`` (>= 1 s)."""
    stale_ms = max(1000, int(interval * 1000))
    return lambda: health(table.snapshot(), monotonic_ms(), stale_ms)
