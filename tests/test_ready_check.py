"""Ready means the app says so: with HARDENED_HEALTH_CHECK, a new worker accepts (and counts as a
successor) only once lifespan startup completed and the check passes."""

from __future__ import annotations

import json
import signal

from rig import APPS, get, under_load


def test_a_reload_whose_check_never_passes_is_rejected_with_its_answer(master, tmp_path):
    env_file = tmp_path / "env.json"
    env_file.write_text("{}")
    m = master(args=["-c", str(APPS / "reload_conf.py")], env={"RELOAD_ENV_FILE": str(env_file)})
    old = m.wait_workers(2)
    env_file.write_text(
        json.dumps(
            {"HARDENED_HEALTH_CHECK": "health_checks:failing", "HARDENED_READY_TIMEOUT": "2s"}
        )
    )

    def reload() -> None:
        m.signal(signal.SIGHUP)
        m.wait_log("reload rejected", timeout=20)
        m.wait_log("keeps serving: generation 2 failed to start", timeout=10, count=2)

    outcomes, load = under_load(m.port, reload, seconds=6)
    assert outcomes.failures == [] and load.socket_errors == 0 and load.non_2xx == 0
    log = m.log()
    assert log.count("reload rejected") == 1
    assert (
        "reload rejected: generation 2 cannot start (health check not passing after 2 s: "
        "returned false)" in log
    )
    assert set(old) <= set(m.workers())


def test_a_passing_check_lets_the_worker_serve(master):
    m = master(
        env={"HARDENED_HEALTH_CHECK": "health_checks:passing", "HARDENED_HEALTH_PATH": "/healthz"}
    )
    m.wait_workers(2)
    assert get(m.port, "/healthz")[0] == 200


def test_a_cold_start_whose_check_never_passes_stops_with_the_answer(master):
    m = master(
        env={"HARDENED_HEALTH_CHECK": "health_checks:failing", "HARDENED_READY_TIMEOUT": "1s"},
        wait=False,
        workers=1,
    )
    assert m.wait_exit(20) != 0
    assert "failed to start: health check not passing after 1 s: returned false" in m.log()
