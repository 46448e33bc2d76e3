"""A bad HARDENED_* value arriving with a HUP (a configuration file's raw_env), against a real master.

The master must log the one line, keep running and serving, and keep the previous values.
"""

from __future__ import annotations

import signal

import pytest
from rig import get, wait_for

GOOD = 'raw_env = ["HARDENED_HEALTH_PATH=/healthz"]\n'


@pytest.mark.parametrize(
    "name,value,reason",
    [
        (
            "MEMORY_LIMIT",
            "9" * 398 + "Mi",
            "(400 characters) is more than 1Pi, the largest accepted",
        ),  # OverflowError
        ("STARTUP_TIMEOUT", "9300000000", "is more than 720h, the largest accepted"),  # setitimer
        ("HEALTH_CHECK_TIMEOUT", "0", "must be more than 0"),
    ],
)
def test_a_bad_value_at_hup_keeps_the_master_and_the_previous_settings(
    master, tmp_path, name, value, reason
):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(GOOD)
    m = master(args=["-c", str(conf)], workers=1)
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)")
    assert get(m.port, "/healthz")[0] == 200

    conf.write_text(f'raw_env = ["HARDENED_HEALTH_PATH=/ready", "HARDENED_{name}={value}"]\n')
    m.signal(signal.SIGHUP)
    line = f"hardened_worker: HARDENED_{name}="
    wait_for(lambda: m.proc.poll() is not None or line in m.log(), 30)
    assert m.proc.poll() is None, m.log()  # the master lives
    m.wait_log(r"ready in [\d.]+ s \(generation 2\)")  # and replaced its workers
    m.wait_log(r"exiting: reason reload")  # the old one, whose health path says 503 while it drains
    logged = [text for text in m.log().splitlines() if line in text]
    assert logged and all(f"{reason}; use e.g. " in text for text in logged)
    # The previous values: the health path is still /healthz, /ready is the app's 404.
    assert get(m.port, "/healthz")[0] == 200
    assert get(m.port, "/ready")[0] == 404
    assert get(m.port, "/") == (200, b"ok")
    log = m.log()
    assert "Traceback" not in log and "Unhandled exception" not in log

    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
