"""The health path and the app's health check, driven in-process (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import threading

import pytest

from hardened_worker._health import HealthCheck, HealthMiddleware, WorkerStatus

PATH = "/healthz"


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def ready_status():
    status = WorkerStatus(lambda: 7)
    status.state = "ready"
    return status


async def probe(middleware, method="GET", path=PATH):
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    await middleware(scope, None, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def answer(check, timeout=5.0, status=None):
    middleware = HealthMiddleware(app, PATH, status or ready_status(), check, timeout)
    return asyncio.run(probe(middleware))


def check_answer(body):
    return json.loads(body)["check"]


# --- Which checks are awaited (issue 13 item 7) ----------------------------------------------


async def async_false():
    return False


class AsyncCallable:
    def __init__(self, result):
        self.result = result

    async def __call__(self):
        return self.result


def sync_returning_coroutine():
    return async_false()


CHECKS = [
    pytest.param(lambda: True, 200, "ok", id="sync-true"),
    pytest.param(lambda: 0, 503, "returned false", id="sync-false"),
    pytest.param(async_false, 503, "returned false", id="coroutine-function"),
    pytest.param(AsyncCallable(False), 503, "returned false", id="async-callable-object-false"),
    pytest.param(AsyncCallable(True), 200, "ok", id="async-callable-object-true"),
    pytest.param(sync_returning_coroutine, 503, "returned false", id="sync-returning-coroutine"),
    pytest.param(functools.partial(async_false), 503, "returned false", id="partial-of-async"),
    pytest.param(lambda: asyncio.sleep(0, result=True), 200, "ok", id="lambda-returning-awaitable"),
    pytest.param(lambda: 1 / 0, 503, "raised ZeroDivisionError", id="sync-raises"),
    pytest.param(AsyncCallable(None).__call__, 503, "returned false", id="bound-async-method"),
]


@pytest.mark.parametrize("check, status, reason", CHECKS)
def test_check_kinds(check, status, reason):
    got_status, _, body = answer(check)
    assert (got_status, check_answer(body)) == (status, reason)


def test_no_coroutine_is_left_unawaited(recwarn):
    answer(AsyncCallable(False))
    answer(sync_returning_coroutine)
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


# --- One run at a time, on its own thread ----------------------------------------------------


class HungCheck:
    """A sync check that blocks until released, counting its calls and recording its thread."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0
        self.threads = []

    def __call__(self):
        self.calls += 1
        self.threads.append(threading.current_thread())
        self.release.wait()
        return True


def test_hung_sync_check_holds_one_thread_and_probes_answer_at_once():
    hung = HungCheck()
    check = HealthCheck(hung, timeout=0.05)

    async def scenario():
        first = await asyncio.gather(*(check.run() for _ in range(20)))  # concurrent probes
        later = [await check.run() for _ in range(20)]  # while the thread still hangs
        return first, later

    first, later = asyncio.run(scenario())
    assert first == [(False, "timed out after 0.05 s")] * 20
    assert all(
        not ok and answer.startswith("timed out after 0.05 s, still running")
        for ok, answer in later
    )
    assert hung.calls == 1
    assert hung.threads[0].daemon and hung.threads[0].name == "hardened_worker health check"
    hung.release.set()
    hung.threads[0].join(timeout=10)
    assert asyncio.run(check.run()) == (True, "ok")  # the next probe runs it afresh
    assert hung.calls == 2


def test_check_never_uses_the_default_executor():
    """The app's own to_thread calls share the loop's default executor: a check must not."""
    seen = []

    def check():
        seen.append(threading.current_thread().name)
        return True

    async def scenario():
        default = await asyncio.to_thread(lambda: threading.current_thread().name)
        return default, await HealthCheck(check, 5).run()

    default_name, result = asyncio.run(scenario())
    assert result == (True, "ok")
    assert seen == ["hardened_worker health check"] and seen[0] != default_name


def test_concurrent_probes_share_one_run():
    calls = []

    async def scenario():
        gate = asyncio.Event()

        async def slow():
            calls.append(1)
            await gate.wait()
            return True

        middleware = HealthMiddleware(app, PATH, ready_status(), slow, 5)
        probes = [asyncio.ensure_future(probe(middleware)) for _ in range(10)]
        await asyncio.sleep(0)  # let every probe reach the shared run
        gate.set()
        return await asyncio.gather(*probes)

    results = asyncio.run(scenario())
    assert calls == [1]
    assert {status for status, _, _ in results} == {200}


def test_async_check_is_cancelled_at_the_timeout_and_the_next_probe_starts_afresh():
    cancelled = []
    calls = []

    async def never():
        calls.append(1)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def scenario():
        check = HealthCheck(never, 0.01)
        return [await check.run(), await check.run()]

    assert asyncio.run(scenario()) == [(False, "timed out after 0.01 s")] * 2
    assert calls == [1, 1] and cancelled == [1, 1]


def test_a_probe_going_away_does_not_cancel_the_shared_run():
    async def scenario():
        gate = asyncio.Event()

        async def slow():
            await gate.wait()
            return True

        check = HealthCheck(slow, 5)
        first = asyncio.ensure_future(check.run())
        second = asyncio.ensure_future(check.run())
        await asyncio.sleep(0)
        first.cancel()  # e.g. the prober disconnected
        gate.set()
        return await second

    assert asyncio.run(scenario()) == (True, "ok")


def test_a_hung_check_does_not_keep_the_process_from_exiting():
    """A worker must be able to exit while its check hangs (executor threads are joined)."""
    script = (
        "import asyncio, threading\n"
        "from hardened_worker._health import HealthCheck\n"
        "hang = threading.Event()\n"
        "print(asyncio.run(HealthCheck(hang.wait, 0.05).run()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(False, 'timed out after 0.05 s')"


# --- The API the readiness gate uses ----------------------------------------------------------


@pytest.mark.parametrize(
    "check, expected",
    [
        (lambda: True, (True, "ok")),
        (lambda: [], (False, "returned false")),
        (AsyncCallable("yes"), (True, "ok")),
        (lambda: {}[1], (False, "raised KeyError")),
    ],
)
def test_health_check_run_answers_ok_and_why(check, expected):
    assert asyncio.run(HealthCheck(check, 5).run()) == expected


def test_middleware_can_share_a_health_check():
    check = HealthCheck(lambda: True, 5)
    middleware = HealthMiddleware(app, PATH, ready_status(), check)
    assert middleware.health_check is check
    assert asyncio.run(probe(middleware))[0] == 200


# --- The health path ----------------------------------------------------------------------------


def test_get_and_head():
    middleware = HealthMiddleware(app, PATH, ready_status())
    status, headers, body = asyncio.run(probe(middleware))
    assert status == 200 and json.loads(body)["requests"] == 7
    head_status, head_headers, head_body = asyncio.run(probe(middleware, "HEAD"))
    assert head_status == 200 and head_body == b""
    assert int(head_headers[b"content-length"]) > 0  # what GET would send ("age" differs)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get"])
def test_other_methods_are_not_allowed(method):
    calls = []
    middleware = HealthMiddleware(app, PATH, ready_status(), lambda: calls.append(1) or True)
    status, headers, body = asyncio.run(probe(middleware, method))
    assert status == 405 and headers[b"allow"] == b"GET, HEAD"
    assert json.loads(body) == {"error": "method not allowed"}
    assert calls == []  # the check does not run for them


def test_other_paths_reach_the_app():
    middleware = HealthMiddleware(app, PATH, ready_status())
    assert asyncio.run(probe(middleware, "POST", "/healthz/x"))[0] == 299


def test_not_ready_answers_503_without_running_the_check():
    calls = []
    status = WorkerStatus(lambda: 0)
    got, _, body = answer(lambda: calls.append(1) or True, status=status)
    assert got == 503 and json.loads(body)["state"] == "booting" and calls == []


def test_constructor_as_the_worker_calls_it():
    middleware = HealthMiddleware(app, PATH, ready_status(), async_false, 2.5)
    assert middleware.health_check.timeout == 2.5
    assert HealthMiddleware(app, PATH, ready_status()).health_check is None
