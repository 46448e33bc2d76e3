"""--reuse-port: gunicorn 27 gives each worker its own listening socket, and closing it resets
what is queued on it. A leaving worker takes the queued connections first (_server.py); the
handshakes still in flight at that instant are the kernel's to migrate (net.ipv4.tcp_migrate_req),
which the master says at start when it is off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rig import ROOT, Background, under_load, wait_for

from hardened_worker import _checks as checks

MIGRATE = Path(checks.TCP_MIGRATE_REQ)


def test_hups_under_load_lose_nothing_with_reuse_port(master):
    if MIGRATE.read_text().strip() != "1" and not os.environ.get("IN_OWN_NETNS"):
        # The machine's setting is not ours to change: run this test again in a network namespace
        # of its own (loopback up, tcp_migrate_req=1 there only).
        test = f"{Path(__file__).name}::test_hups_under_load_lose_nothing_with_reuse_port"
        done = subprocess.run(
            [
                "unshare",
                "-n",
                "sh",
                "-c",
                "ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1"
                ' && exec "$0" -m pytest -q -p no:cacheprovider "$1"',
                sys.executable,
                f"tests/{test}",
            ],
            cwd=ROOT,
            env={**os.environ, "IN_OWN_NETNS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        return
    m = master(args=["--reuse-port"], env={"TESTAPP_STARTUP_DELAY": "0.5"}, workers=2)
    m.wait_workers(2)

    def reloads() -> None:
        for generation in (2, 3, 4):
            m.signal(signal.SIGHUP)
            m.wait_log(rf"ready in [\d.]+ s \(generation {generation}\)", timeout=30, count=2)
            time.sleep(1)

    outcomes, load = under_load(m.port, reloads, seconds=14)
    assert outcomes.failures == [] and load.socket_errors == 0 and load.non_2xx == 0, (
        outcomes.counts,
        load,
    )
    assert len(outcomes) > 100 and "tcp_migrate_req" not in m.log()


def test_the_master_says_when_the_kernel_will_not_migrate():
    assert checks.reuse_port_warning("1\n") is None
    for value in ("0\n", None):
        warning = checks.reuse_port_warning(value)
        assert warning is not None and "net.ipv4.tcp_migrate_req=1" in warning


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queues of the listening sockets on ``port`` (ss: Recv-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


def test_a_leaving_worker_serves_the_connections_queued_on_its_own_socket(master):
    # The machine's tcp_migrate_req as it is (0 by default): nothing but the worker saves them.
    m = master(args=["--reuse-port"], env={"HARDENED_MAX_INFLIGHT": "1"}, workers=1)
    [worker] = m.wait_workers(1)
    busy = Background(m.port, "/sleep?s=3")  # at HARDENED_MAX_INFLIGHT: it stops accepting
    m.wait_started("/sleep")
    queued = [Background(m.port, "/pid", timeout=20) for _ in range(5)]
    wait_for(lambda: accept_queue(m.port) >= 5, timeout=10)
    os.kill(worker, signal.SIGTERM)  # no successor: it drains at once, closing its socket
    results = [request.join(30) for request in queued]
    assert results == [(200, str(worker).encode())] * 5, results
    assert busy.join(30) == (200, b"slept")
