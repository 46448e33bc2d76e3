"""Reloads behind nginx with upstream keep-alive: HUP every 4 s for 16 s under wrk through nginx,
half the requests POSTs (nginx retries a GET that failed on a cached keep-alive connection, never
a POST, so only non-idempotent load shows lost requests). Counts non-2xx (502s) at the client and
"upstream prematurely closed" / "reset by peer" lines in nginx's error log. A Python client beside
wrk (``bench/timeline.py``, 4 keep-alive connections to nginx, GET and POST alternating) records
each request's outcome and time for the per-0.5 s timeline."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common, timeline
from bench.common import log, rig

NAME = "nginx"
HELP = "HUPs behind nginx keep-alive, mixed GET/POST: 502s and upstream resets"

CONF = """\
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""

PATTERNS = {
    "upstream_prematurely_closed": "upstream prematurely closed",
    "reset_by_peer": "reset by peer",
    "connection_refused": "Connection refused",
    "no_live_upstreams": "no live upstreams",
    "upstream_timed_out": "upstream timed out",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=int, default=16, help="seconds of wrk (default 16)")
    p.add_argument("--interval", type=float, default=4.0, help="seconds between HUPs (default 4)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--client-connections", type=int, default=4,
                   help="connections of the timeline client beside wrk (default 4)")


class Nginx:
    """nginx in the foreground in its own session, its files in ``tmp``; ``stop()`` is idempotent."""

    def __init__(self, tmp: Path, upstream: int) -> None:
        self.tmp = tmp
        self.port = rig.free_port()
        self.conf = tmp / "nginx.conf"
        self.error_log = tmp / "error.log"
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(CONF.format(user=user, tmp=tmp, upstream=upstream, port=self.port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([binary, "-p", str(tmp), "-c", str(self.conf), "-e", str(self.error_log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def wait_serving(self, timeout: float = 10.0) -> None:
        def serving() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            try:
                return rig.get(self.port, "/", timeout=1)[0] == 200
            except OSError:
                return False
        rig.wait_for(serving, timeout)

    def errors(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its workers, whatever became of the master
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


def run_one(cls: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp, common.master(cls, workers=args.workers) as m:
        tmp_path = Path(tmp)
        script = common.lua_script(tmp_path, "mixed.lua", common.MIXED_LUA)
        proxy = Nginx(tmp_path, m.port)
        try:
            proxy.wait_serving()
            t0 = time.monotonic()
            with timeline.Running(proxy.port, t0, args.client_connections) as client, \
                    common.WrkRun(proxy.port, "/", duration=args.duration, connections=args.connections,
                                  script=script) as load:
                sent = common.signal_at(m, signal.SIGHUP, common.every(args.interval, args.duration), t0)
                result = load.result()
            client_run = timeline.summary(client, args.duration)
            time.sleep(0.2)
            errors = proxy.errors()
        finally:
            proxy.stop()
        counts = {name: errors.count(text) for name, text in PATTERNS.items()}
        return {
            "non_2xx": result.non_2xx,
            **counts,
            "socket_errors": result.socket_errors,
            "rps": result.rps,
            "p99_ms": result.p99_ms,
            "requests": result.requests,
            "hups_sent_at_s": sent,
            "nginx_error_lines": sum(1 for line in errors.splitlines() if "[error]" in line),
            "nginx_error_samples": common.grep(errors, r"\[error\]", limit=5),
            "master_alive_at_end": common.master_alive(m),
            "log": common.log_digest(m.log()),
            "client_errors": client_run["errors"],
            "timeline": client_run,
        }


def run(args: argparse.Namespace) -> dict:
    per_class = {}
    for cls in args.classes:
        log(f"nginx: {cls}: {args.duration} s through nginx, HUP every {args.interval:g} s")
        per_class[cls] = r = run_one(cls, args)
        log(f"nginx: {cls}: {r['non_2xx']} non-2xx, {r['upstream_prematurely_closed']} premature closes, "
            f"{r['reset_by_peer']} resets, {r['socket_errors']} socket errors")
    keys = ("non_2xx", "upstream_prematurely_closed", "reset_by_peer", "socket_errors", "rps", "p99_ms",
            "client_errors")
    headline = {cls: {k: v[k] for k in keys} for cls, v in per_class.items()}
    return {
        "scenario": NAME,
        "ratios": common.ratios_vs_baseline(headline, ("rps", "p99_ms")),
        "headline": headline,
        "per_class": per_class,
        "config": {"workers": args.workers, "connections": args.connections, "duration_s": args.duration,
                   "hup_interval_s": args.interval, "load": "wrk Lua request(): GET and POST alternating",
                   "nginx": "upstream keepalive 32, proxy_http_version 1.1, Connection \"\"",
                   "timeline_client": {"connections": args.client_connections, "bucket_s": timeline.BUCKET_S,
                                       "load": "rig.Client through nginx: keep-alive, GET and POST alternating"}},
    }
