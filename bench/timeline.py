"""Per-request outcomes over time, for the plots: wrk reports totals only, so the scenarios that
reload under load (``hup``, ``nginx``) run this Python client beside wrk.

:class:`TimedClient` is the test rig's ``rig.Client`` (keep-alive connections in threads, GET and
POST alternating, every outcome recorded as ``(path, status or exception name)``) with one addition:
each outcome also gets the time it was known and the request's latency, kept in ``timed`` (the
rig's ``outcomes`` stay exactly what the tests see). :func:`buckets` turns that into fixed-width
buckets of completed requests and errors.
"""

from __future__ import annotations

import time
from collections import Counter

from bench.common import rig

BUCKET_S = 0.5


class TimedClient(rig.Client):
    """``rig.Client``, whose ``(monotonic end, latency_ms, outcome)`` records are given here as
    seconds since ``t0``."""

    def __init__(
        self,
        port: int,
        t0: float,
        paths: tuple = ("/",),
        concurrency: int = 4,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(port, paths=paths, concurrency=concurrency, timeout=timeout)
        self.t0 = t0

    def since_t0(self) -> list[tuple[float, float, object]]:
        with self._lock:
            return [(ended - self.t0, latency, outcome) for ended, latency, outcome in self.timed]


def is_error(outcome: object) -> bool:
    """A socket error (exception name) or a status outside 2xx/3xx, as wrk counts them."""
    return not (isinstance(outcome, int) and outcome < 400)


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def buckets(
    timed: list[tuple[float, float, object]], duration: float, width: float = BUCKET_S
) -> dict:
    """``{"columns": [...], "points": [[t_start, ok, errors, p99_ms, max_ms], ...]}`` for every
    bucket in ``[0, duration)``; requests finishing outside that window are left out."""
    count = max(1, int(round(duration / width)))
    ok = [0] * count
    errors = [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    for t, latency, outcome in timed:
        index = int(t // width)
        if not 0 <= index < count:
            continue
        latencies[index].append(latency)
        if is_error(outcome):
            errors[index] += 1
        else:
            ok[index] += 1
    points = []
    for i in range(count):
        p99 = _p99(latencies[i])
        peak = max(latencies[i]) if latencies[i] else None
        points.append(
            [
                round(i * width, 2),
                ok[i],
                errors[i],
                round(p99, 1) if p99 is not None else None,
                round(peak, 1) if peak is not None else None,
            ]
        )
    return {
        "bucket_s": width,
        "columns": ["t_s", "ok", "errors", "p99_ms", "max_ms"],
        "points": points,
    }


def summary(client: TimedClient, duration: float) -> dict:
    """Totals of the client's run within ``[0, duration)`` plus the bucketed series."""
    timed = client.since_t0()
    inside = [(t, lat, o) for t, lat, o in timed if 0 <= t < duration]
    kinds = Counter(str(o) for _, _, o in inside if is_error(o))
    lat = [lat for _, lat, _ in inside]
    return {
        "requests": len(inside),
        "errors": sum(kinds.values()),
        "error_kinds": dict(kinds),
        "rps": len(inside) / duration if duration else None,
        "p99_ms": _p99(lat),
        "max_ms": max(lat) if lat else None,
        "concurrency": client.concurrency,
        "series": buckets(timed, duration),
    }


class Running:
    """A started :class:`TimedClient` as a context manager: stopped on the way out, whatever
    happened (its threads are daemons and finish their request in flight, at most ``timeout``)."""

    def __init__(
        self, port: int, t0: float | None = None, concurrency: int = 4, timeout: float = 10.0
    ) -> None:
        self.client = TimedClient(
            port,
            t0 if t0 is not None else time.monotonic(),
            concurrency=concurrency,
            timeout=timeout,
        )

    def __enter__(self) -> TimedClient:
        return self.client.start()

    def __exit__(self, *exc: object) -> None:
        self.client.stop(timeout=self.client.timeout + 5)
