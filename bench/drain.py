"""Graceful stop: SIGTERM to the master with slow requests (``/sleep?s=3``) in flight. Counts the
requests answered 200, the time from TERM to the master's exit, its exit status, and how many
workers ran lifespan shutdown. Each request's completion time is recorded too, so the time from the
last answer to the master's exit (what the drain itself adds) can be told from the requests' own
3 s."""

from __future__ import annotations

import argparse
import signal
import time
from collections import Counter

from bench import common
from bench.common import Metric, rig

NAME = "drain"
HELP = "TERM with 16 slow requests in flight: completed, time to exit"
TITLE = "Drain (SIGTERM)"
SETUP = (
    "SIGTERM to the master {term_after_s:g} s after sending {requests} × `/sleep?s={sleep_s:g}`; "
    "`--graceful-timeout {graceful_timeout_s}`"
)
METRICS = (
    Metric("completed_200", "answered 200", "count", "higher"),
    # gunicorn's stop loop polls every 100 ms: a tenth either way is the master, not the worker.
    Metric("term_to_master_exit_s", "time to exit", "s", "lower", noise=0.15),
)


class TimedBackground(rig.Background):
    """``rig.Background`` that also records when its outcome was known (``time.monotonic()``)."""

    def __init__(self, port: int, path: str, timeout: float = 60.0) -> None:
        self.finished: float | None = None
        super().__init__(port, path, timeout)

    def _run(self, port: int, path: str, timeout: float) -> None:
        try:
            super()._run(port, path, timeout)
        finally:
            self.finished = time.monotonic()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=16, help="slow requests in flight (default 16)")
    p.add_argument(
        "--sleep", type=float, default=3.0, help="seconds each request sleeps (default 3)"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds between sending the requests and TERM (default 1)",
    )
    common.add_pool_arguments(p)


def run_one(cls: str, args: argparse.Namespace) -> dict:
    with common.master(cls, workers=args.workers) as m:
        workers = m.workers()
        sent = time.monotonic()
        requests = [
            TimedBackground(m.port, f"/sleep?s={args.sleep:g}", timeout=60)
            for _ in range(args.requests)
        ]
        time.sleep(args.settle)
        term = time.monotonic()
        m.signal(signal.SIGTERM)
        try:
            status = m.wait_exit(60)
        except Exception:
            status = None
        exit_s = time.monotonic() - term
        outcomes = [r.join(60) for r in requests]
        done = time.monotonic() - sent
        counts = Counter(o[0] if isinstance(o, tuple) else str(o) for o in outcomes)
        answered = [r.finished - term for r in requests if r.finished is not None]
        last_answer = max(answered) if answered else None
        shutdowns = [line for line in m.events() if line.startswith("shutdown ")]
        text = m.log()
        return {
            "completed_200": counts.get(200, 0),
            "in_flight": args.requests,
            "term_to_master_exit_s": exit_s if status is not None else None,
            "master_exit_status": status,
            "term_to_last_answer_s": last_answer,
            "last_answer_to_master_exit_s": (exit_s - last_answer)
            if status is not None and last_answer is not None
            else None,
            "outcomes": {str(k): v for k, v in counts.items()},
            "lifespan_shutdowns": f"{len(shutdowns)}/{len(workers)}",
            "all_answered_after_s": done,
            "log": common.log_digest(text),
            "log_lines": common.grep(
                text,
                r"draining|exiting|Worker exiting|Shutting down|"
                r"Waiting for|graceful|SIGKILL|exited with",
                limit=12,
            ),
        }


def run(args: argparse.Namespace) -> dict:
    config = {
        "workers": args.workers,
        "requests": args.requests,
        "sleep_s": args.sleep,
        "term_after_s": args.settle,
        "graceful_timeout_s": 10,
    }
    return common.each_class(
        NAME,
        METRICS,
        args,
        run_one,
        lambda r: (
            f"{r['completed_200']}/{r['in_flight']} answered 200, master exited {r['master_exit_status']} "
            f"after {r['term_to_master_exit_s']}"
        ),
        config,
    )
