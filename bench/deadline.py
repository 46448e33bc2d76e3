"""A stuck upstream in half the requests: what happens to them, and to the fast half beside them?

2 workers run ``tests/apps/deadline_app.py``; an open-loop client (``bench/openloop.py``, a new
connection per request, straight to gunicorn) sends ``--rate`` requests a second for
``--duration`` seconds, every other one ``/wait?s=60`` (an ``await`` of a dead upstream, far past
any timeout) and the others ``/`` (fast). The client gives up after ``--client-timeout`` seconds,
as a proxy or an HTTP library would. Hardened runs with ``HARDENED_REQUEST_TIMEOUT``
(``--request-timeout``); UvicornWorker has nothing of the kind.

Per class: the fast half's answered rate and p99, how the stuck half ended (504s and when, or the
client's timeout), and what the workers held meanwhile: the server-side TCP connections
(ESTABLISHED on the gunicorn port, sampled every 0.25 s; peak and at the end of the load) and the
workers' RSS (start, peak, and its growth). With UvicornWorker a stuck request's task lives on
after its client left (nothing cancels it), so its memory stays until the upstream answers.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from bench import common, openloop
from bench.common import Metric, log

NAME = "deadline"
HELP = "half the requests stuck on a dead upstream: 504 at the deadline? the fast half's p99?"
TITLE = "Stuck upstream (request deadline)"
SETUP = (
    "{workers} workers, open loop at {rate:g} req/s for {duration_s} s, every other request "
    "`/wait?s={stuck_s:g}` (stuck), the others `/`; client timeout {client_timeout_s:g} s; "
    "hardened with HARDENED_REQUEST_TIMEOUT={request_timeout}"
)
METRICS = (
    Metric("fast_rps", "fast half answered", "req/s", "higher", noise=0.05),
    Metric("fast_p99_ms", "fast half p99", "ms", "lower", noise=5.0),
    Metric("stuck_504", "stuck: 504s", "count", "higher"),
    Metric("stuck_504_p50_s", "stuck: 504 after", "s", "lower", noise=0.2),
    Metric("stuck_client_timeouts", "stuck: client timeouts", "count", "lower"),
    Metric("connections_peak", "connections held (peak)", "count", "lower", noise=5.0),
    Metric("rss_growth_mib", "workers' RSS growth", "MiB", "lower", noise=2.0),
    Metric("errors", "errors", "count", "lower"),
)
CLASSES = ("hardened", "uvicorn")
FAST, STUCK = "/", "/wait?s={stuck_s:g}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=int, default=15, help="seconds of load (default 15)")
    p.add_argument(
        "--rate", type=float, default=100.0, help="requests a second, both halves (default 100)"
    )
    p.add_argument(
        "--stuck", type=float, default=60.0, help="seconds the stuck half awaits (default 60)"
    )
    p.add_argument(
        "--request-timeout", default="2s", help="hardened's HARDENED_REQUEST_TIMEOUT (default 2s)"
    )
    p.add_argument("--client-timeout", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--workers", type=int, default=2)


def established(port: int) -> int:
    """Server-side ESTABLISHED TCP connections on ``port`` (``/proc/net/tcp``, IPv4 loopback)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


class Sampler:
    """Connections and the workers' summed RSS every ``period`` seconds, in a thread."""

    def __init__(self, port: int, pids: list[int], period: float = 0.25) -> None:
        self.port, self.pids, self.period = port, pids, period
        self.samples: list[tuple[float, int, int]] = []  # (t, connections, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = sum(common.rss_bytes(pid) or 0 for pid in self.pids)
            self.samples.append((time.monotonic() - self._started, established(self.port), rss))
            self._stop.wait(self.period)

    def stop(self) -> Sampler:
        self._stop.set()
        self._thread.join(10)
        return self


def run_one(cls: str, args: argparse.Namespace) -> dict:
    env = {"HARDENED_REQUEST_TIMEOUT": args.request_timeout} if cls == "hardened" else {}
    stuck_path = STUCK.format(stuck_s=args.stuck)
    # deadline_app records no lifespan events (common.master waits for them): the rig's wait.
    with common.master(
        cls, workers=args.workers, app="deadline_app:app", env=env, start=False
    ) as m:
        m.start()
        pids = m.wait_workers(args.workers)
        openloop.closed_loop("127.0.0.1", m.port, FAST, 4, 1.0)  # warm up
        rss_start = sum(common.rss_bytes(pid) or 0 for pid in pids)
        sampler = Sampler(m.port, pids)
        run = openloop.open_loop(
            "127.0.0.1", m.port, [FAST, stuck_path], args.rate, args.duration, args.client_timeout
        )
        sampler.stop()
        during = [s for s in sampler.samples if s[0] <= args.duration]
        fast = openloop.summary(run, FAST)
        stuck = [o for o in run.outcomes if o.path == stuck_path]
        ended_504 = sorted(o.latency for o in stuck if o.result == 504)
        other = {}
        for o in run.outcomes:
            if o.result not in (200, 504, openloop.TIMEOUT):
                other[str(o.result)] = other.get(str(o.result), 0) + 1
        peak_rss = max((s[2] for s in sampler.samples), default=rss_start)
        text = m.log()
        return {
            "fast_rps": fast["ok"] / args.duration,
            "fast_p50_ms": fast["ok_p50_ms"],
            "fast_p99_ms": fast["ok_p99_ms"],
            "fast_sent": fast["sent"],
            "fast_failures": fast["sent"] - fast["ok"],
            "stuck_sent": len(stuck),
            "stuck_504": len(ended_504),
            "stuck_504_p50_s": openloop.percentile(ended_504, 0.5),
            "stuck_504_max_s": max(ended_504) if ended_504 else None,
            "stuck_client_timeouts": sum(o.result == openloop.TIMEOUT for o in stuck),
            "stuck_200": sum(o.result == 200 for o in stuck),
            "connections_peak": max((s[1] for s in during), default=0),
            "connections_at_end": during[-1][1] if during else None,
            "rss_start_mib": rss_start / common.MIB,
            "rss_peak_mib": peak_rss / common.MIB,
            "rss_growth_mib": (peak_rss - rss_start) / common.MIB,
            "errors": sum(other.values()),
            "error_kinds": other,
            "client_lag_p99_ms": openloop.summary(run)["lag_p99_ms"],
            "same_pids_after": sorted(m.workers()) == sorted(pids),
            "deadline_lines": text.count("request deadline: GET /wait ended after"),
            "deadline_line_sample": common.grep(text, r"request deadline: GET /wait", 1),
            "log": common.log_digest(text),
            "samples": common.downsample([list(s) for s in sampler.samples], 120),
        }


def run(args: argparse.Namespace) -> dict:
    per_class = {}
    for cls in [c for c in args.classes if c in CLASSES]:
        log(
            f"deadline: {cls}: {args.rate:g} req/s for {args.duration} s, half /wait?s={args.stuck:g}"
        )
        per_class[cls] = r = run_one(cls, args)
        log(
            f"deadline: {cls}: fast {r['fast_rps']:.0f} req/s p99 {r['fast_p99_ms']} ms; stuck: "
            f"{r['stuck_504']} 504s (median {r['stuck_504_p50_s']} s), {r['stuck_client_timeouts']} "
            f"client timeouts; connections peak {r['connections_peak']}, RSS +{r['rss_growth_mib']:.1f} MiB"
        )
    keys = [m.key for m in METRICS]
    return {
        "scenario": NAME,
        "headline": {cls: {k: v[k] for k in keys} for cls, v in per_class.items()},
        "per_class": per_class,
        "config": {
            "workers": args.workers,
            "rate": args.rate,
            "duration_s": args.duration,
            "stuck_s": args.stuck,
            "client_timeout_s": args.client_timeout,
            "request_timeout": args.request_timeout,
        },
    }
