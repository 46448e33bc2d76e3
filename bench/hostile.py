"""Hostile clients (issue 25): slowloris and a huge header, each worker class on its defaults.

* **slowloris**: ``--slow`` connections each send one byte of a request head every 3 s for
  ``--hold`` seconds while wrk (4 connections) plays a normal client; counts the slow connections
  the server closed, wrk's p99 and errors, and the workers' RSS growth;
* **huge header**: one request with a ``--header-mib`` MiB header, sent as fast as the server
  reads, then the head's end; the status and the time to it, and the RSS growth of the worker that
  read it.
"""

from __future__ import annotations

import argparse
import re
import resource
import select
import socket
import time
from pathlib import Path

from bench import common
from bench.common import Metric

NAME = "hostile"
HELP = "slowloris (slow header bytes) and a huge header, beside a normal client"
TITLE = "Hostile clients"
SETUP = (
    "{slow} connections sending one header byte every 3 s for {hold_s:g} s beside wrk (4 connections); "
    "then one {header_mib} MiB header"
)
METRICS = (
    Metric("slow_closed_pct", "slowloris closed", "%", "higher", noise=0.02),
    Metric("normal_p99_ms", "normal client p99", "ms", "lower", noise=2.0),
    Metric("header_answer_ms", "huge header answered in", "ms", "lower", noise=50.0),
    Metric("header_peak_growth_mib", "peak RSS growth (huge header)", "MiB", "lower", noise=1.0),
    Metric("header_rss_growth_mib", "RSS growth kept (huge header)", "MiB", "lower", noise=1.0),
)
# A valid request line and the start of a header, then one header byte every 3 s (a method sent a
# byte at a time would be refused by the parser as soon as it stops being a known method).
SLOW_START = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
NOTE = (
    "UvicornWorker has no header-read timeout and no header size limit: it keeps every slow "
    "connection and reads the whole header before answering."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slow", type=int, default=1000, help="slowloris connections (default 1000)")
    p.add_argument(
        "--hold", type=float, default=15.0, help="seconds the slow clients keep at it (default 15)"
    )
    p.add_argument(
        "--header-mib", type=int, default=16, help="size of the huge header (default 16 MiB)"
    )
    common.add_pool_arguments(p)


def _raise_descriptor_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:  # inherited by the masters started after this
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _slowloris(port: int, count: int, hold: float) -> dict:
    poller = select.epoll()
    opened: dict[int, socket.socket] = {}
    failed = 0
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.send(SLOW_START)
        except OSError:
            failed += 1
            continue
        sock.setblocking(False)
        opened[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    closed, started = 0, time.monotonic()
    next_byte = started + 3.0
    while time.monotonic() - started < hold:
        for fd, _ in poller.poll(0.2):
            poller.unregister(fd)
            opened.pop(fd).close()
            closed += 1
        if time.monotonic() >= next_byte:
            next_byte += 3.0
            for sock in opened.values():
                try:
                    sock.send(b"v")
                except OSError:
                    pass
    for sock in opened.values():
        sock.close()
    poller.close()
    return {
        "slow_opened": count - failed,
        "slow_closed": closed,
        "slow_closed_pct": 100.0 * closed / count if count else None,
    }


def _huge_header(port: int, mib: int, timeout: float = 60.0) -> dict:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    chunk, left = b"v" * 65536, mib * 16
    pending, answer = memoryview(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "), b""
    started = time.monotonic()
    status = None
    try:
        while time.monotonic() - started < timeout and status is None:
            if not pending and left:
                pending, left = memoryview(chunk if left > 1 else chunk + b"\r\n\r\n"), left - 1
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                answer += data
                if b"\r\n" in answer:
                    status = int(answer.split()[1])
                elif not data:
                    status = 0  # closed without an answer
            if writable:
                try:
                    pending = pending[sock.send(pending) :]
                except OSError:
                    pending, left = memoryview(b""), 0
    finally:
        sock.close()
    return {"header_status": status, "header_answer_ms": (time.monotonic() - started) * 1000}


def _peak_rss(pid: int) -> int:
    """VmHWM: the most the worker ever had resident (what reading a huge header costs at its peak)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def run_one(cls: str, args: argparse.Namespace) -> dict:
    with common.master(cls, workers=args.workers, args=["--backlog", "4096"]) as m:
        workers = m.workers()
        before = {pid: common.rss_bytes(pid) or 0 for pid in workers}
        with common.WrkRun(m.port, "/", duration=int(args.hold), connections=4, threads=1) as wrk:
            slow = _slowloris(m.port, args.slow, args.hold)
            normal = common.wrk_summary(wrk.result())
        during = {pid: common.rss_bytes(pid) or 0 for pid in workers}
        peak = {pid: _peak_rss(pid) for pid in workers}
        header = _huge_header(m.port, args.header_mib)
        time.sleep(0.5)  # the worker that read it frees what it will
        after = {pid: common.rss_bytes(pid) or 0 for pid in workers}
        return {
            **slow,
            **header,
            "normal_p99_ms": normal["p99_ms"],
            "normal": normal,
            "slowloris_rss_growth_mib": max(during[p] - before[p] for p in workers) / common.MIB,
            "header_rss_growth_mib": max(after[p] - during[p] for p in workers) / common.MIB,
            "header_peak_growth_mib": max(_peak_rss(p) - peak[p] for p in workers) / common.MIB,
            "log": common.log_digest(m.log()),
        }


def run(args: argparse.Namespace) -> dict:
    _raise_descriptor_limit(args.slow + 1024)
    config = {
        "workers": args.workers,
        "slow": args.slow,
        "hold_s": args.hold,
        "header_mib": args.header_mib,
    }
    return common.each_class(
        NAME,
        METRICS,
        args,
        run_one,
        lambda r: (
            f"slowloris {r['slow_closed']}/{r['slow_opened']} closed, normal p99 {r['normal_p99_ms']:.1f} ms; "
            f"{args.header_mib} MiB header -> {r['header_status']} in {r['header_answer_ms']:.0f} ms, "
            f"peak RSS +{r['header_peak_growth_mib']:.1f} MiB, kept +{r['header_rss_growth_mib']:.1f} MiB"
        ),
        config,
    )
