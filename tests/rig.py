"""The real-process test rig: a gunicorn master, load generators, nginx.

Everything here starts real processes in their own process group and tears them down by pid,
so tests can run side by side and never leave anything behind.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
# The console script, as deployments run it: `python -m gunicorn` breaks USR2, because the re-exec'd
# master gets gunicorn's own package directory first on sys.path and gunicorn/http shadows http.
GUNICORN = [str(Path(sys.executable).parent / "gunicorn")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    """Poll until ``predicate()`` is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def get(
    port: int,
    path: str = "/",
    timeout: float = 5.0,
    method: str = "GET",
    headers: dict | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Background:
    """One request in a thread; ``result`` is ``(status, body)`` or the exception's name."""

    def __init__(self, port: int, path: str, timeout: float = 60.0) -> None:
        self.result: object = None
        self._thread = threading.Thread(target=self._run, args=(port, path, timeout), daemon=True)
        self._thread.start()

    def _run(self, port: int, path: str, timeout: float) -> None:
        try:
            self.result = get(port, path, timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            self.result = type(exc).__name__

    def join(self, timeout: float = 60.0) -> object:
        self._thread.join(timeout)
        return self.result


def children(pid: int) -> list[int]:
    """Live child pids of ``pid`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Master:
    """One gunicorn master in its own process group, its error log in a file."""

    def __init__(
        self,
        tmp: Path,
        app: str = "testapp:app",
        worker: str = "hardened_worker.Worker",
        workers: int = 2,
        env: dict | None = None,
        args: Iterable[str] = (),
        port: int | None = None,
    ) -> None:
        self.tmp = tmp
        self.worker = worker
        self.port = port or free_port()
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        self.events_path = tmp / f"events-{self.port}.txt"
        self.cmd = [
            *GUNICORN,
            app,
            "-k",
            worker,
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{self.port}",
            "--pythonpath",
            str(APPS),
            "--no-control-socket",
            "--error-logfile",
            str(self.log_path),
            "--graceful-timeout",
            "10",
            *args,
        ]
        self.env = {**_clean_environ(), "TESTAPP_EVENTS": str(self.events_path), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 30.0) -> Master:
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.tmp,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_serving(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_serving(self, timeout: float = 30.0) -> None:
        def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.proc.returncode}:\n{self.output()}\n{self.log()}"
                )
            try:
                return get(self.port, "/", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_for(serving, timeout)

    def workers(self) -> list[int]:
        return children(self.pid)

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """``count`` live workers; for the hardened worker, each past its lifespan startup."""

        def settled() -> list[int] | None:
            pids = self.workers()
            if len(pids) != count:
                return None
            if "hardened_worker" in self.worker and not all(
                f"worker {pid} ready in" in self.log() for pid in pids
            ):
                return None
            return pids

        return wait_for(settled, timeout)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        """stdout/stderr of the master, once it has exited."""
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[str]:
        try:
            return self.events_path.read_text().split("\n")[:-1]
        except FileNotFoundError:
            return []

    def wait_started(self, path: str, count: int = 1, timeout: float = 30.0) -> None:
        """Until ``count`` requests to ``path`` (``/sleep``, ``/block``) have reached the app."""
        wait_for(
            lambda: sum(e.startswith(f"started {path} ") for e in self.events()) >= count, timeout
        )

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
        regex = re.compile(pattern)
        return wait_for(lambda: len(found := regex.findall(self.log())) >= count and found, timeout)

    def stop(self) -> None:
        """Tear down: the group, then any worker that left it, by pid."""
        if self.proc is None:
            return
        leftovers = self.workers() if self.proc.poll() is None else []
        for target in [self.pid, *leftovers]:
            try:
                os.killpg(target, signal.SIGKILL) if target == self.pid else os.kill(
                    target, signal.SIGKILL
                )
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout:
            self.proc.stdout.close()


def _clean_environ() -> dict:
    """The test process's environment without any HARDENED_* or FORWARDED_ALLOW_IPS of its own."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HARDENED_", "TESTAPP_")) and k != "FORWARDED_ALLOW_IPS"
    }


def run_gunicorn(
    env: dict, cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    """A gunicorn master with the worker on testapp, run to its end (a configuration it refuses
    stops it at once): what it printed, and its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "testapp:app",
        "-k",
        "hardened_worker.Worker",
        "--pythonpath",
        str(APPS),
        "-b",
        f"127.0.0.1:{free_port()}",
        "--no-control-socket",
        *args,
    ]
    return subprocess.run(
        cmd,
        env={**_clean_environ(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- exact per-request outcomes ---------------------------------------------------------------


@dataclass
class Outcomes:
    results: list = field(default_factory=list)  # (path, status or exception name)

    @property
    def counts(self) -> Counter:
        return Counter(r for _, r in self.results)

    @property
    def failures(self) -> list:
        return [(p, r) for p, r in self.results if r != 200]

    def __len__(self) -> int:
        return len(self.results)


class Client:
    """Keep-alive clients in threads, recording the outcome of every single request.

    Half of the requests are POSTs: a proxy may retry a failed GET, never a POST, so only
    non-idempotent requests prove that nothing was lost.
    """

    def __init__(
        self, port: int, paths: Iterable[str] = ("/",), concurrency: int = 8, timeout: float = 30.0
    ) -> None:
        self.port = port
        self.paths = list(paths)
        self.concurrency = concurrency
        self.timeout = timeout
        self.outcomes = Outcomes()
        self.timed: list[tuple[float, float, object]] = []  # (monotonic end, latency ms, outcome)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _loop(self, index: int, count: int | None) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while not self._stop.is_set() and (count is None or sent < count):
            path = self.paths[(index + sent) % len(self.paths)]
            method = "POST" if (index + sent) % 2 else "GET"
            sent += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            began = time.monotonic()
            try:
                conn.request(method, path, body=b"x" * 16 if method == "POST" else None)
                response = conn.getresponse()
                response.read()
                outcome: object = response.status
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn.close()
                conn = None
            ended = time.monotonic()
            with self._lock:
                self.outcomes.results.append((path, outcome))
                self.timed.append((ended, (ended - began) * 1000.0, outcome))
        if conn is not None:
            conn.close()

    def start(self, count_each: int | None = None) -> Client:
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._loop, args=(index, count_each), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 60.0) -> Outcomes:
        self._stop.set()
        return self.join(timeout)

    def join(self, timeout: float = 60.0) -> Outcomes:
        for thread in self._threads:
            thread.join(timeout)
        return self.outcomes


class Prober:
    """A fresh connection every 20 ms; each request's outcome and latency recorded."""

    def __init__(self, port: int, period: float = 0.02) -> None:
        self.port, self.period = port, period
        self.results: list[tuple[object, float]] = []  # (status or exception name, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                outcome: object = response.status
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
            finally:
                conn.close()
            self.results.append((outcome, time.monotonic() - began))
            self._stop.wait(max(self.period - (time.monotonic() - began), 0))

    def stop(self) -> Prober:
        self._stop.set()
        self._thread.join(30)
        return self

    @property
    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200]

    @property
    def longest(self) -> float:
        return max(latency for _, latency in self.results)


# --- wrk ----------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    rps: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    raw: str
    socket_error_kinds: dict = field(default_factory=dict)  # connect, read, write, timeout


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> WrkResult:
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", text)
    p99_ms = float(p99.group(1)) * _UNITS_MS[p99.group(2)] if p99 else float("nan")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    kinds = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups())))
        if errors
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests,
        rps,
        p99_ms,
        sum(kinds.values()),
        int(non_2xx.group(1)) if non_2xx else 0,
        text,
        kinds,
    )


def wrk_command(
    port: int,
    path: str = "/",
    duration: float = 5.0,
    connections: int = 32,
    threads: int = 2,
    timeout: str = "10s",
    script: Path | None = None,
) -> list[str]:
    """wrk's command line, for :func:`wrk` and the bench's background runs alike."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        f"--timeout={timeout}",
        f"http://127.0.0.1:{port}{path}",
    ]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    return cmd


def wrk(
    port: int,
    path: str = "/",
    duration: float = 5.0,
    connections: int = 32,
    threads: int = 2,
    timeout: str = "10s",
    script: Path | None = None,
) -> WrkResult:
    cmd = wrk_command(port, path, duration, connections, threads, timeout, script)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def under_load(
    port: int, action: Callable[[], object], seconds: float, script: Path | None = None
) -> tuple[Outcomes, WrkResult]:
    """The Python client (exact outcomes, half POSTs) and wrk (volume, 32 connections) against
    ``port`` while ``action()`` runs; both outcomes once wrk's ``seconds`` are over."""
    client = Client(port, concurrency=8).start()
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(wrk=wrk(port, duration=seconds, connections=32, script=script))
    )
    load.start()
    action()
    load.join()
    return client.stop(), result["wrk"]


def have(program: str) -> bool:
    return shutil.which(program) is not None or Path(f"/usr/sbin/{program}").exists()


# --- nginx --------------------------------------------------------------------------------------

SITE = ROOT / "gunicorn_conf_examples" / "vm" / "nginx-site.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    assert found, "nginx is needed (make test installs it)"
    return found


def upstream_failures(error_log: str) -> list[str]:
    """Lines of an nginx error log where nginx lost an upstream connection or request.

    A client's own closes are not losses. nginx names what it was doing in each line's "while ..."
    clause: "while reading response header from upstream" is a loss, "while sending to client" is
    the client (wrk closing its sockets as a run ends) resetting a connection it no longer reads."""
    keys = (
        "upstream prematurely closed",
        "reset by peer) while",
        "connect() failed",
        "upstream timed out",
        "no live upstreams",
        "Broken pipe) while",
    )
    failures = []
    for line in error_log.splitlines():
        clause = re.search(r" while ([^,]*)", line)
        if (
            clause
            and "upstream" in clause.group(1)
            and "client prematurely closed" not in line
            and any(k in line for k in keys)
        ):
            failures.append(line)
    return failures


class Nginx:
    """A real nginx running the examples' site file in front of ``upstream_port``.

    The site's upstream ``127.0.0.1:8000`` becomes the gunicorn port and ``listen 80`` a free
    port, so the tests prove the very file users copy.
    """

    def __init__(self, tmp: Path, upstream_port: int, site: Path = SITE) -> None:
        self.dir = tmp / f"nginx-{upstream_port}"
        self.dir.mkdir()
        self.port = free_port()
        text = site.read_text()
        assert "server 127.0.0.1:8000;" in text and "listen 80;" in text
        text = text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
        (self.dir / "site.conf").write_text(
            text.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        )
        self.error_log = self.dir / "error.log"
        self.conf = self.dir / "nginx.conf"
        temp = self.dir / "temp"
        self.conf.write_text(f"""daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.dir}/site.conf;
}}
""")
        temp.mkdir()
        self.proc: subprocess.Popen | None = None

    def command(self, *extra: str) -> list[str]:
        return [
            nginx_binary(),
            "-p",
            str(self.dir),
            "-c",
            str(self.conf),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(
            self.command(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                return get(self.port, "/", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(up, 10)
        return self

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def upstream_failures(self) -> list[str]:
        return upstream_failures(self.log())

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


POST_LUA = """
-- Alternate GET and POST: a proxy may retry a failed GET, never a POST.
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("POST", nil, {["Content-Type"] = "text/plain"}, "payload")
  end
  return wrk.format("GET")
end
"""


# --- websockets ---------------------------------------------------------------------------------


def websocket_close_codes(
    port: int,
    action: Callable[[], object],
    sessions: int = 4,
    path: str = "/ws",
    timeout: float = 30.0,
) -> list:
    """Open ``sessions`` echo websockets to ``port``; once each has echoed, run ``action()`` (in a
    thread) and return the close code each one then receives (None: closed without a close frame)."""
    import asyncio

    import websockets

    async def close_code(ws) -> object:
        try:
            await asyncio.wait_for(ws.recv(), timeout)
            return "a message"
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    async def main() -> list:
        sockets = [
            await websockets.connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10)
            for _ in range(sessions)
        ]
        try:
            for ws in sockets:
                await ws.send("hello")
                assert await ws.recv() == "hello"
            await asyncio.to_thread(action)
            return list(await asyncio.gather(*(close_code(ws) for ws in sockets)))
        finally:
            for ws in sockets:
                await ws.close()

    return asyncio.run(main())
