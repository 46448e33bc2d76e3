"""HARDENED_* parsing (pure) and its enforcement by a real master at start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from hardened_worker import config
from hardened_worker.config import SETTINGS, ConfigError, parse_duration, parse_size
from rig import APPS, free_port

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize("text,expected", [
    ("512MiB", 512 * MiB), ("1.5GiB", int(1.5 * GiB)), ("300MB", 300_000_000), ("1024", 1024),
    ("64k", 64 * KiB), ("64 KiB", 64 * KiB), ("2G", 2 * GiB), ("1gb", 1_000_000_000), ("0", 0),
    (" 128mib ", 128 * MiB), ("10B", 10), (".5GiB", GiB // 2),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-1MiB", "1.2.3MiB", "12 parsecs", "MiB", "1e3", "0x10"])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("text,expected", [
    ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), ("0", 0.0), ("90 s", 90.0),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "", "-5s", "5 minutes", "5d", "s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "B", "KiB", "MiB", "GiB", "KB", "MB", "GB"]))
def test_size_roundtrip(number, unit):
    factor = {"": 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "KB": 1000, "MB": 10**6, "GB": 10**9}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


@given(st.text(max_size=30))
def test_load_never_raises_anything_but_config_error(text):
    for setting in SETTINGS:
        try:
            config.load({setting.env: text})
        except ConfigError as exc:
            assert str(exc).startswith(f"hardened_worker: {setting.env}=")


def test_defaults_all_parse():
    values = config.load({}).values
    assert set(values) == {s.attr for s in SETTINGS}
    assert values["startup_timeout"] == 60.0 and values["memory_limit"] is None


def test_unknown_variable_names_the_closest_one():
    with pytest.raises(ConfigError, match=r"HARDENED_MEMRY_LIMIT='1G' is not a known setting; did you mean HARDENED_MEMORY_LIMIT\?"):
        config.load({"HARDENED_MEMRY_LIMIT": "1G"})


def test_every_setting_has_an_example_that_parses():
    for setting in SETTINGS:
        setting.parse(setting.example)


def test_readme_table_lists_every_setting():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert config.markdown_table() in readme


# One bad value per variable, each refused by a real master before any worker boots.
BAD = {
    "STARTUP_TIMEOUT": "forever", "DRAIN_DELAY": "5 minutes", "DRAIN_IDLE_WINDOW": "-1",
    "HEALTH_PATH": "healthz", "HEALTH_CHECK": "not a reference", "HEALTH_CHECK_TIMEOUT": "1d",
    "HEALTH_ACCESS_LOG": "maybe", "STALL_THRESHOLD": "1x", "READY_TIMEOUT": "soon", "ROLLING": "one by one",
    "FORWARDED": "both", "FORWARDED_HOST": "2", "FORWARDED_PORT": "yess", "FORWARDED_PREFIX": "nope",
    "MEMORY_LIMIT": "lots", "MEMORY_HARD_LIMIT": "more", "MEMORY_MEASURE": "vss",
    "MEMORY_JITTER": "90%", "MEMORY_CHECK_INTERVAL": "often", "MEMORY_CHECK_REQUESTS": "-3",
    "MEMORY_MIN_LIFETIME": "1y", "MAX_LIFETIME": "forever", "MAX_LIFETIME_JITTER": "some", "MEMORY_CGROUP": "sometimes", "CGROUP_ROOT": "sys/fs",
}


def test_bad_table_covers_every_setting():
    assert set(BAD) == {s.name for s in SETTINGS}


def run_gunicorn(env: dict, tmp_path, *args) -> subprocess.CompletedProcess:
    from rig import _clean_environ

    cmd = [sys.executable, "-m", "gunicorn", "testapp:app", "-k", "hardened_worker.Worker",
           "--pythonpath", str(APPS), "-b", f"127.0.0.1:{free_port()}", "--no-control-socket", *args]
    return subprocess.run(cmd, env={**_clean_environ(), **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_value_stops_gunicorn_with_one_line(name, tmp_path):
    done = run_gunicorn({f"HARDENED_{name}": BAD[name]}, tmp_path)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "hardened_worker:" in line]
    assert len(lines) == 1, done.stderr
    assert f"HARDENED_{name}={BAD[name]!r}" in lines[0] and "use e.g." in lines[0]
    assert "Traceback" not in done.stderr
    assert "Booting worker" not in done.stderr


def test_unknown_variable_stops_gunicorn(tmp_path):
    done = run_gunicorn({"HARDENED_DRAIN_DELAI": "5s"}, tmp_path)
    assert done.returncode != 0
    assert "HARDENED_DRAIN_DELAI='5s' is not a known setting; did you mean HARDENED_DRAIN_DELAY?" in done.stderr
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


def test_raw_env_values_are_validated_too(tmp_path):
    done = run_gunicorn({}, tmp_path, "-e", "HARDENED_MEMORY_LIMIT=lots")
    assert done.returncode != 0
    assert "HARDENED_MEMORY_LIMIT='lots' is not a size; use e.g. 512MiB" in done.stderr


def test_drain_delay_must_fit_the_graceful_timeout(tmp_path):
    done = run_gunicorn({"HARDENED_DRAIN_DELAY": "30s"}, tmp_path, "--graceful-timeout", "10")
    assert done.returncode != 0
    assert "HARDENED_DRAIN_DELAY=30s leaves no time to drain" in done.stderr
