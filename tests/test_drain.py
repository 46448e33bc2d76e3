"""Graceful drain under real load: nothing lost on TERM, TTOU/TTIN and --max-requests recycling."""

from __future__ import annotations

import json
import signal
import time

from rig import APPS, Background, get, under_load, wait_for


def test_term_with_16_slow_requests_in_flight_completes_them_all(master):
    m = master(args=["--graceful-timeout", "20"])
    pids = m.wait_workers(2)
    requests = [Background(m.port, "/sleep?s=3") for _ in range(16)]
    m.wait_started("/sleep", count=16)
    m.signal(signal.SIGTERM)
    sent_term = time.monotonic()
    assert [r.join()[0] for r in requests] == [200] * 16
    assert m.wait_exit(20) == 0
    # Soon after the last request ended (about 2 s after TERM), not at the 20 s graceful timeout.
    assert time.monotonic() - sent_term < 6.0
    events = m.events()
    assert all(f"shutdown {pid}" in events for pid in pids)


def test_ttou_ttin_cycles_under_load_lose_nothing(master):
    m = master(workers=3)

    def cycle(seconds):
        end = time.monotonic() + seconds - 1
        while time.monotonic() < end:
            m.signal(signal.SIGTTOU)
            time.sleep(0.75)
            m.signal(signal.SIGTTIN)
            time.sleep(0.75)

    outcomes, load = under_load(m.port, lambda: cycle(8), 8)
    assert len(outcomes) > 500 and outcomes.failures == []
    assert load.requests > 1000 and load.socket_errors == 0 and load.non_2xx == 0
    assert m.log().count("reason shutdown, served") >= 3  # workers really were retired


def test_max_requests_recycling_under_load_loses_nothing(master):
    m = master(workers=3, args=["--max-requests", "300", "--max-requests-jitter", "50"])
    outcomes, load = under_load(m.port, lambda: time.sleep(8), 8)
    assert len(outcomes) > 500 and outcomes.failures == []
    assert load.requests > 1000 and load.socket_errors == 0 and load.non_2xx == 0
    assert m.log().count("reason max-requests") >= 3


def test_drain_delay_keeps_serving_while_health_says_503(master):
    m = master(workers=1, env={"HARDENED_DRAIN_DELAY": "2s", "HARDENED_HEALTH_PATH": "/healthz"})
    status, body = get(m.port, "/healthz")
    assert status == 200 and json.loads(body)["state"] == "ready"
    m.signal(signal.SIGTERM)
    wait_for(lambda: get(m.port, "/healthz")[0] == 503, timeout=2)
    during = [get(m.port, "/")[0] for _ in range(5)]
    assert during == [200] * 5
    status, body = get(m.port, "/healthz")
    assert status == 503 and json.loads(body)["state"] == "stopping"
    assert m.wait_exit(15) == 0


def test_health_path_never_reaches_the_app_and_stays_out_of_the_access_log(master, tmp_path):
    access = tmp_path / "access.log"
    m = master(
        workers=1, env={"HARDENED_HEALTH_PATH": "/healthz"}, args=["--access-logfile", str(access)]
    )
    assert get(m.port, "/healthz")[0] == 200
    assert get(m.port, "/")[0] == 200
    wait_for(lambda: access.exists() and "GET / " in access.read_text(), timeout=5)
    assert "/healthz" not in access.read_text()


def test_app_level_health_check_answers_503_when_it_fails(master, tmp_path):
    flag = tmp_path / "database-down"
    m = master(
        workers=1,
        env={
            "HARDENED_HEALTH_PATH": "/healthz",
            "HEALTH_FAIL_FILE": str(flag),
            "HARDENED_HEALTH_CHECK": "health_checks:unless_flagged",
        },
    )
    assert get(m.port, "/healthz")[0] == 200  # the check passed: the worker got ready
    flag.touch()
    status, body = get(m.port, "/healthz")
    assert status == 503 and json.loads(body)["check"] == "returned false"


def test_hung_request_is_reported_with_its_stack_and_worker_abort_runs(master, tmp_path):
    hooks = tmp_path / "hooks.txt"
    m = master(
        workers=1,
        args=["--timeout", "4", "-c", str(APPS / "hooks_conf.py")],
        env={"HARDENED_STALL_THRESHOLD": "1s", "HOOKS_FILE": str(hooks)},
    )
    [pid] = m.wait_workers(1)
    request = Background(m.port, "/block?s=60")
    m.wait_log(r"WORKER TIMEOUT \(pid:%d\)" % pid, timeout=20)
    m.wait_log(r"worker %d timed out \(SIGABRT" % pid, timeout=10)
    wait_for(lambda: pid not in m.workers() and len(m.workers()) == 1, timeout=10)
    log = m.log()
    stall = log.index(f"worker {pid} event loop blocked")
    assert stall < log.index("WORKER TIMEOUT")
    assert "serving GET /block" in log[stall : stall + 300]
    dump = log[log.index("WORKER TIMEOUT") :]
    assert "testapp.py" in dump and "line" in dump
    assert "serving GET /block" in dump
    assert "Exception in ASGI application" not in log  # not an app error: the stacks say it all
    assert f"worker_abort {pid}" in hooks.read_text()
    assert f"child_exit {pid} timeout" in hooks.read_text()
    assert request.join(5) is not None


def test_open_websockets_get_a_1001_close_frame_and_lifespan_shutdown_runs(master):
    import asyncio

    import websockets

    m = master(workers=1)
    [pid] = m.wait_workers(1)
    codes = []

    async def session():
        async with websockets.connect(f"ws://127.0.0.1:{m.port}/ws") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            opened.append(1)
            try:
                await asyncio.wait_for(ws.recv(), 20)
            except websockets.ConnectionClosed as closed:
                codes.append(closed.rcvd.code if closed.rcvd else None)

    opened = []

    async def main():
        sessions = [asyncio.create_task(session()) for _ in range(8)]
        while len(opened) < 8:
            await asyncio.sleep(0.05)
        m.signal(signal.SIGTERM)
        await asyncio.gather(*sessions)

    asyncio.run(main())
    assert codes == [1001] * 8
    assert m.wait_exit(15) == 0
    assert f"shutdown {pid}" in m.events()
