"""A request that blocks the event loop (``/block?s=30``, ``time.sleep`` in the app) past
``--timeout 5``: is the worker replaced within 20 s, and does the error log say where it was stuck
(a stack naming testapp.py) and why ("WORKER TIMEOUT")?"""

from __future__ import annotations

import argparse
import re
import time

from bench import common
from bench.common import Metric, rig

NAME = "hung"
HELP = "a request blocking the loop past --timeout: replaced? stack logged?"
TITLE = "Hung request"
SETUP = "`--timeout {timeout_s}`, one `/block?s={block_s:g}` (`time.sleep` in the app blocks the event loop)"
METRICS = (
    Metric("replaced", "replaced", "count", "higher"),
    # gunicorn's master looks for timed-out workers about once a second, whatever the worker class.
    Metric("replaced_after_s", "replaced after", "s", "lower", noise=1.0),
    Metric("stack_names_testapp", "stack names the blocking line", "count", "higher"),
    Metric("serving_after", "serving after", "count", "higher"),
)
NOTE = (
    "When a hung worker is caught varies by up to a second from run to run (gunicorn's master "
    "checks about once a second), whatever the worker class."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=int, default=5, help="gunicorn --timeout (default 5)")
    p.add_argument(
        "--block", type=float, default=30.0, help="seconds the request blocks (default 30)"
    )
    p.add_argument(
        "--within",
        type=float,
        default=20.0,
        help="seconds allowed for the replacement (default 20)",
    )
    p.add_argument(
        "--log-wait",
        type=float,
        default=3.0,
        help="seconds to wait after the replacement for the stack to reach the log (default 3)",
    )
    common.add_pool_arguments(p)


def _stack_logged(text: str) -> bool:
    return "testapp.py" in text and ("time.sleep" in text or "in app" in text)


# The stack may come from the stall watchdog (before the timeout) or from the abort on --timeout:
# ``stack_names_testapp`` is either, ``stack_logged_at_timeout`` only what follows WORKER TIMEOUT.


def _after_timeout(text: str) -> str:
    index = text.find("WORKER TIMEOUT")
    return text[index:] if index >= 0 else ""


def _excerpt(text: str, limit: int = 45) -> list[str]:
    """The log from the master's WORKER TIMEOUT line on (or from the first stall/stack line)."""
    lines = text.splitlines()
    for marker in (
        re.compile(r"WORKER TIMEOUT"),
        re.compile(r"testapp\.py|blocked|SIGKILL|SIGABRT|timed out"),
    ):
        for index, line in enumerate(lines):
            if marker.search(line):
                return [s[:300] for s in lines[index : index + limit]]
    return []


def run_one(cls: str, args: argparse.Namespace) -> dict:
    with common.master(cls, workers=args.workers, args=["--timeout", str(args.timeout)]) as m:
        before = set(m.workers())
        sent = time.monotonic()
        blocked = rig.Background(m.port, f"/block?s={args.block:g}", timeout=args.block + 30)
        replaced_after = None
        while time.monotonic() - sent < args.within:
            now = set(m.workers())
            if before - now and len(now) >= args.workers:
                replaced_after = time.monotonic() - sent
                break
            time.sleep(0.1)
        if replaced_after is not None:
            # The stack (if any) is written by the dying worker: give it a moment to land.
            try:
                rig.wait_for(lambda: _stack_logged(m.log()), args.log_wait)
            except TimeoutError:
                pass
        text = m.log()
        try:
            serving = rig.get(m.port, "/", timeout=3)[0] == 200
        except OSError:
            serving = False
        return {
            "replaced": replaced_after is not None,
            "replaced_after_s": replaced_after,
            "stack_names_testapp": _stack_logged(text),
            "stack_logged_at_timeout": _stack_logged(_after_timeout(text)),
            "worker_timeout_logged": "WORKER TIMEOUT" in text,
            "stall_warning_logged": bool(re.search(r"(?i)event loop blocked|stall", text)),
            "blocked_request_outcome": (
                blocked.result[0]
                if isinstance(blocked.result, tuple)
                else blocked.result or "still pending"
            ),
            "serving_after": serving,
            "master_alive": common.master_alive(m),
            "misleading_oom_message": "Perhaps out of memory" in text,
            "log": common.log_digest(text),
            "log_excerpt": _excerpt(text),
        }


def run(args: argparse.Namespace) -> dict:
    config = {
        "workers": args.workers,
        "timeout_s": args.timeout,
        "block_s": args.block,
        "within_s": args.within,
    }
    return common.each_class(
        NAME,
        METRICS,
        args,
        run_one,
        lambda r: (
            f"replaced {r['replaced']} after {r['replaced_after_s']}, stack logged "
            f"{r['stack_names_testapp']}, WORKER TIMEOUT logged {r['worker_timeout_logged']}"
        ),
        config,
    )
