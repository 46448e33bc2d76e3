"""An open-loop HTTP client: requests leave at a fixed arrival rate whatever the answers.

wrk (and ``rig.Client``) is a closed loop: each connection sends its next request once the last
one is answered, so a server that slows down is offered less load, and the figures hide the
overload they should show. Here request ``i`` is due at ``start + i / rate`` and is sent then, on
its own task, however many are still unanswered; every request's outcome is recorded (status,
latency, or ``timeout`` past the client's timeout, or the error's name).

How it connects, and why:

* **A new connection per request** (``Connection: close``), not a pool. Arrivals at a fixed rate
  are independent clients; a pool of N connections would make the client a closed loop again once
  N are waiting (the next request queues in the client, invisible to the server and to the
  figures), and a request that waits for a pooled connection is not offered to the server at its
  due time. A fresh connection also makes every request the first on its connection, the case
  ``HARDENED_MAX_QUEUE_TIME``'s accept-time fallback covers, when no proxy is in front.
* **Through a proxy or direct**: the client only takes a host and port; ``bench/overload.py``
  points it at gunicorn, or at the rig's nginx with ``--via nginx`` (its docstring says why
  direct is the headline).

The client must never be the bottleneck: :class:`Run` reports ``lag`` (how late each request left
against its due time; p50, p99, max) so a result whose client fell behind can be told apart. It
runs on uvloop when installed and speaks raw HTTP/1.1 through a small ``asyncio.Protocol`` (no
stream objects per request). Latency is counted from the due time, so a late send counts against
the figure it would otherwise flatter, never for it.

``closed_loop`` is the calibration: ``concurrency`` loops, each sending its next request (also on
a new connection) when the last one ended; its rate of 200s is what the pool serves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
    uvloop = None

TIMEOUT = "timeout"
# Not loop.time(): uvloop's is libuv's loop time, in whole milliseconds and cached per iteration.
_clock = time.monotonic


class _Exchange(asyncio.Protocol):
    """One request on its own connection; ``done`` gets the status (int), or an error's name."""

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request = request
        self.done = done
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.expected: int | None = None  # header bytes + Content-Length, once headers are in

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            self.expected = end + 4 + length
        if len(self.buffer) >= self.expected:
            self._finish()

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(type(exc).__name__ if exc else "closed before the response")

    def _finish(self) -> None:
        if self.done.done():
            return
        line = bytes(self.buffer[: self.buffer.find(b"\r\n")])
        parts = line.split(b" ", 2)
        complete = self.expected is not None and len(self.buffer) >= self.expected
        if len(parts) >= 2 and parts[1].isdigit() and complete:
            self.done.set_result(int(parts[1]))
        else:
            self.done.set_result("incomplete response")
        if self.transport is not None:
            self.transport.close()


@dataclass
class Outcome:
    due: float  # seconds after the run's start at which the request was due
    lag: float  # seconds it left after its due time
    latency: float  # seconds from its due time to its outcome
    result: Any  # status (int), TIMEOUT, or an error's name
    path: str = ""


async def exchange(host: str, port: int, request: bytes, timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: _Exchange(request, done), host, port
            )
            return await done
    except TimeoutError:
        return TIMEOUT
    except OSError as exc:
        return type(exc).__name__
    finally:
        if transport is not None:
            transport.abort() if not done.done() else transport.close()


def request_bytes(path: str, host: str = "127.0.0.1") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-openloop\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()


@dataclass
class Run:
    rate: float
    duration: float
    timeout: float
    outcomes: list[Outcome] = field(default_factory=list)


async def _open_loop(
    host: str, port: int, paths: Sequence[str], rate: float, duration: float, timeout: float
) -> Run:
    loop = asyncio.get_running_loop()
    requests = [request_bytes(path) for path in paths]
    run = Run(rate, duration, timeout)
    total = int(rate * duration)
    start = _clock() + 0.05
    pending: set[asyncio.Task] = set()

    async def one(i: int, due: float) -> None:
        lag = _clock() - due
        result = await exchange(host, port, requests[i % len(paths)], timeout)
        run.outcomes.append(
            Outcome(due - start, lag, _clock() - due, result, paths[i % len(paths)])
        )

    i = 0
    while i < total:
        now = _clock()
        while i < total and start + i / rate <= now:  # everything due by now leaves now
            task = loop.create_task(one(i, start + i / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(start + i / rate - _clock(), 0))
    if pending:
        await asyncio.wait(pending)
    run.outcomes.sort(key=lambda o: o.due)
    return run


async def _closed_loop(
    host: str, port: int, path: str, concurrency: int, duration: float, timeout: float
) -> Run:
    request = request_bytes(path)
    run = Run(0.0, duration, timeout)
    start = _clock()

    async def worker() -> None:
        while _clock() - start < duration:
            began = _clock()
            result = await exchange(host, port, request, timeout)
            run.outcomes.append(Outcome(began - start, 0.0, _clock() - began, result))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.rate = len(run.outcomes) / duration
    return run


def _run(coro: Any) -> Run:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def open_loop(
    host: str,
    port: int,
    path: str | Sequence[str],
    rate: float,
    duration: float,
    timeout: float = 1.0,
) -> Run:
    """Requests at ``rate`` per second for ``duration`` seconds, each on a new connection;
    several ``path``s take turns (request ``i`` goes to ``path[i % len(path)]``)."""
    paths = [path] if isinstance(path, str) else list(path)
    return _run(_open_loop(host, port, paths, rate, duration, timeout))


def closed_loop(
    host: str, port: int, path: str, concurrency: int, duration: float, timeout: float = 5.0
) -> Run:
    """``concurrency`` back-to-back request loops for ``duration`` seconds (the calibration)."""
    return _run(_closed_loop(host, port, path, concurrency, duration, timeout))


# --- figures -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary(run: Run, path: str | None = None) -> dict:
    """Per-outcome figures of a run, or of its requests to ``path`` (latencies in ms; goodput:
    200s answered within the timeout, per second of the run)."""
    outcomes = [o for o in run.outcomes if path is None or o.path == path]
    ok = [o.latency for o in outcomes if o.result == 200 and o.latency <= run.timeout]
    shed = [o.latency for o in outcomes if o.result == 503]
    timeouts = sum(o.result == TIMEOUT for o in outcomes)
    other: dict[str, int] = {}
    for o in outcomes:
        if o.result not in (200, 503, TIMEOUT):
            other[str(o.result)] = other.get(str(o.result), 0) + 1
    lags = [o.lag for o in outcomes]
    ms = lambda v: None if v is None else v * 1000.0  # noqa: E731
    return {
        "offered_rps": run.rate * len(outcomes) / max(len(run.outcomes), 1),
        "sent": len(outcomes),
        "goodput_rps": len(ok) / run.duration,
        "ok": len(ok),
        "ok_p50_ms": ms(percentile(ok, 0.50)),
        "ok_p99_ms": ms(percentile(ok, 0.99)),
        "ok_max_ms": ms(max(ok) if ok else None),
        "late_200s": sum(o.result == 200 and o.latency > run.timeout for o in outcomes),
        "shed_503": len(shed),
        "shed_p50_ms": ms(percentile(shed, 0.50)),
        "shed_p99_ms": ms(percentile(shed, 0.99)),
        "shed_max_ms": ms(max(shed) if shed else None),
        "timeouts": timeouts,
        "errors": sum(other.values()),
        "error_kinds": other,
        "lag_p50_ms": ms(percentile(lags, 0.50)),
        "lag_p99_ms": ms(percentile(lags, 0.99)),
        "lag_max_ms": ms(max(lags) if lags else None),
    }


def timeline(run: Run, step: float = 1.0) -> list[dict]:
    """Per ``step`` seconds of due time: how many 200s, 503s, timeouts and errors."""
    buckets: dict[int, dict] = {}
    for o in run.outcomes:
        b = buckets.setdefault(
            int(o.due // step),
            {"t": int(o.due // step) * step, "ok": 0, "shed": 0, "timeouts": 0, "errors": 0},
        )
        key = (
            "ok"
            if o.result == 200
            else "shed"
            if o.result == 503
            else "timeouts"
            if o.result == TIMEOUT
            else "errors"
        )
        b[key] += 1
    return [buckets[k] for k in sorted(buckets)]


if __name__ == "__main__":  # a quick check by hand: python -m bench.openloop PORT PATH RATE SECONDS
    import json
    import sys

    port, path, rate, seconds = (
        int(sys.argv[1]),
        sys.argv[2],
        float(sys.argv[3]),
        float(sys.argv[4]),
    )
    began = time.monotonic()
    print(json.dumps(summary(open_loop("127.0.0.1", port, path, rate, seconds)), indent=2))
    print(f"wall {time.monotonic() - began:.1f} s", file=sys.stderr)
