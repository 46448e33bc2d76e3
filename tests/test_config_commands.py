"""``python -m hardened_worker check-config`` and ``print-config``, as real processes.

gunicorn 27's own ``--check-config`` never imports the worker class (it loads the configuration,
imports the app and exits before building the Arbiter, which alone calls ``Worker.setup`` and
``Worker.check_config``): these commands run the worker's start-up checks on the configuration
gunicorn itself loads, ``raw_env`` included.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rig import APPS, GUNICORN, ROOT

from hardened_worker import config

KUBERNETES = "python:hardened_worker.presets.kubernetes"


def clean_env(**extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HARDENED_", "TESTAPP_", "GUNICORN_")) and k != "WEB_CONCURRENCY"
    }
    return {**env, **extra}


def command(*args: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hardened_worker", *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        cwd=cwd,
        timeout=60,
    )


def check(*args: str, **env: str) -> subprocess.CompletedProcess:
    return command(
        "check-config",
        "-k",
        "hardened_worker.Worker",
        "--pythonpath",
        str(APPS),
        *args,
        "testapp:app",
        env=clean_env(**env),
    )


def test_gunicorns_own_check_config_runs_none_of_the_workers_code():
    # Why the command exists: with no preset imported, nothing of hardened_worker runs.
    done = subprocess.run(
        [
            *GUNICORN,
            "--check-config",
            "-k",
            "hardened_worker.Worker",
            "--chdir",
            str(APPS),
            "testapp:app",
        ],
        capture_output=True,
        text=True,
        env=clean_env(HARDENED_MEMORY_LIMIT="lots"),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0


def test_check_config_passes_a_good_configuration():
    done = check("-e", "HARDENED_MEMORY_LIMIT=400Mi", HARDENED_DRAIN_DELAY="2s")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize(
    "args,env,line",
    [
        (
            (),
            {"HARDENED_MEMORY_LIMIT": "lots"},
            "HARDENED_MEMORY_LIMIT='lots' is not a size; use e.g. 512Mi",
        ),
        (
            ("-e", "HARDENED_STARTUP_TIMEOUT=9300000000"),
            {},
            "HARDENED_STARTUP_TIMEOUT='9300000000' is more than 720h, the largest accepted; use e.g. 90s",
        ),
        (
            ("--graceful-timeout", "10"),
            {"HARDENED_DRAIN_DELAY": "30s"},
            "HARDENED_DRAIN_DELAY=30s leaves no time to drain within --graceful-timeout 10s",
        ),
        ((), {"HARDENED_DRAIN_DELAI": "5s"}, "did you mean HARDENED_DRAIN_DELAY?"),
    ],
)
def test_check_config_fails_with_the_one_line(args, env, line):
    done = check(*args, **env)
    assert done.returncode == 1
    assert done.stderr.startswith("hardened_worker: ") and line in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_check_config_still_imports_the_app_as_gunicorn_does():
    done = check(TESTAPP_IMPORT_FAIL="1")
    assert done.returncode == 1 and "TESTAPP_IMPORT_FAIL is set" in done.stderr


def test_check_config_warns_when_a_config_loses_the_presets_defaults():
    done = command(
        "check-config",
        "-c",
        KUBERNETES,
        "-e",
        "HARDENED_MEMORY_LIMIT=400Mi",
        "--chdir",
        str(APPS),
        "testapp:app",
    )
    assert done.returncode == 0  # legal, but a -e option replaced the preset's raw_env
    assert done.stderr.strip() == (
        "hardened_worker: the configuration replaced the kubernetes preset's raw_env and lost "
        "HARDENED_HEALTH_PATH=/healthz, HARDENED_DRAIN_DELAY=5s; extend it instead: "
        "raw_env = [*raw_env, ...] (a -e option replaces it too)"
    )


def printed(*args: str, **env: str) -> dict[str, tuple[str, str, str]]:
    done = command("print-config", *args, env=clean_env(**env))
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition(" = ")
        text, _, origin = rest.rpartition(" # ")
        source, _, value = origin.partition(": ")
        rows[name.strip()] = (text.strip(), source, value)
    return rows


def test_print_config_shows_every_value_and_where_it_came_from(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from hardened_worker.presets.kubernetes import *\n"
        "raw_env = [*raw_env, 'HARDENED_MEMORY_LIMIT=400M']\n"
    )
    rows = printed(
        "-c", str(conf), HARDENED_STARTUP_TIMEOUT="90s", HARDENED_MEMORY_HARD_LIMIT="1Gi"
    )
    assert list(rows) == [s.env for s in config.SETTINGS]
    # Kubernetes' units, with Kubernetes' meaning: M is 10^6, Gi is 2^30.
    assert rows["HARDENED_MEMORY_LIMIT"] == ("400M", "raw_env", "400000000")
    assert rows["HARDENED_MEMORY_HARD_LIMIT"] == ("1Gi", "environment", "1073741824")
    assert rows["HARDENED_HEALTH_PATH"] == ("/healthz", "kubernetes preset", "'/healthz'")
    assert rows["HARDENED_STARTUP_TIMEOUT"] == ("90s", "environment", "90.0")
    assert rows["HARDENED_STALL_THRESHOLD"] == ("1s", "default", "1.0")
    assert rows["HARDENED_MAX_LIFETIME"] == ("", "default", "None")


def test_print_config_needs_no_app_and_refuses_a_bad_value_with_one_line():
    assert printed()["HARDENED_DRAIN_DELAY"] == ("0s", "default", "0.0")
    done = command("print-config", env=clean_env(HARDENED_MEMORY_LIMIT="512"))
    assert done.returncode == 1
    assert done.stderr == (
        "hardened_worker: HARDENED_MEMORY_LIMIT='512' is not a size (no unit: "
        "write B for bytes, Mi for 2^20); use e.g. 512Mi\n"
    )


def test_usage():
    done = command("serve")
    assert done.returncode == 2 and done.stderr.startswith("usage: python -m hardened_worker")
