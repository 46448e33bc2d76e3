"""``hardened_x = ...`` in ``gunicorn.conf.py``: the same table, parser and one-line errors as the
environment; the environment wins; ``0`` and units mean one thing everywhere; names of a newer
release warn; preset-only knobs say when they do nothing. Pure tables first, then real processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from rig import ROOT, _clean_environ, get, run_gunicorn, wait_for

from hardened_worker import _checks as checks
from hardened_worker import config
from hardened_worker.config import SETTINGS, ConfigError, Source

CONF = "gunicorn.conf.py"


def from_file(**names) -> config.Settings:
    return config.load({}, config.file_source(names, CONF))


# --- the file's Python values, read by the environment's parser --------------------------------


@pytest.mark.parametrize(
    "name,value,attr,expected",
    [
        ("hardened_memory_limit", "512Mi", "memory_limit", 512 * 1024**2),
        ("hardened_drain_delay", 5, "drain_delay", 5.0),  # a bare number is seconds, as in the env
        ("hardened_drain_delay", 0.25, "drain_delay", 0.25),
        ("hardened_spread", False, "spread", False),
        ("hardened_rolling", True, "rolling", True),
        ("hardened_max_inflight", 64, "max_inflight", 64),
        (
            "hardened_bind",
            ["127.0.0.1:8000", "unix:/run/a.sock"],
            "bind",
            ["127.0.0.1:8000", "unix:/run/a.sock"],
        ),
        ("hardened_metrics_allow", ("10.0.0.0/8", "unix"), "metrics_allow", "10.0.0.0/8,unix"),
        ("hardened_request_timeout", None, "request_timeout", None),  # None is empty: off
        ("HARDENED_HEALTH_PATH", "/ready", "health_path", "/ready"),  # either case
    ],
)
def test_a_file_value_is_parsed_like_the_environment(name, value, attr, expected):
    settings = from_file(**{name: value})
    assert getattr(settings, attr) == expected
    assert settings.origin[attr] == CONF


@pytest.mark.parametrize(
    "names,line",
    [
        (
            {"hardened_memory_limit": "512"},
            "hardened_worker: hardened_memory_limit in gunicorn.conf.py = '512' is not a size (no unit: "
            "write B for bytes, Mi for 2^20); use e.g. 512Mi",
        ),
        (
            {"hardened_memory_limit": 512},
            "hardened_worker: hardened_memory_limit in gunicorn.conf.py = 512 is not a size (no unit: "
            "write B for bytes, Mi for 2^20); use e.g. 512Mi",
        ),
        (
            {"hardened_drain_delay": "5 minutes"},
            "hardened_worker: hardened_drain_delay in gunicorn.conf.py = '5 minutes' is not a duration; use e.g. 5s",
        ),
        (
            {"hardened_memry_limit": "1Gi"},
            "hardened_worker: hardened_memry_limit in gunicorn.conf.py = '1Gi' is not a known setting; "
            "did you mean hardened_memory_limit?",
        ),
        (
            {"hardened_spread": {"on": True}},
            "hardened_worker: hardened_spread in gunicorn.conf.py = {'on': True} is not a string, number, "
            "boolean or list of strings; use e.g. false",
        ),
    ],
)
def test_a_bad_file_value_is_one_line_naming_the_file(names, line):
    with pytest.raises(ConfigError) as caught:
        from_file(**names)
    assert str(caught.value) == line


def test_modules_and_functions_in_the_file_are_not_settings():
    import hardened_worker

    settings = from_file(hardened_worker=hardened_worker, hardened_helper=lambda: None)
    assert settings.origin["memory_limit"] == config.DEFAULT


# --- precedence: environment (raw_env included) > file > a preset's raw_env defaults > default ---


class Cfg:
    """The attributes of gunicorn's Config that checks.sources reads."""

    def __init__(self, env=None, config_location=""):
        self.env = env or {}
        self.config = config_location


@pytest.fixture
def conf_module(monkeypatch):
    """A configuration file as gunicorn leaves it: its module registered as ``__config__``."""
    import types

    module = types.ModuleType("__config__")
    monkeypatch.setitem(sys.modules, "__config__", module)
    return module


@pytest.mark.parametrize(
    "environ,raw_env,file,expected,origin",
    [
        ({}, {}, {"hardened_drain_delay": "2s"}, 2.0, "gunicorn.conf.py"),
        ({"HARDENED_DRAIN_DELAY": "1s"}, {}, {"hardened_drain_delay": "2s"}, 1.0, "environment"),
        (
            {"HARDENED_DRAIN_DELAY": "3s"},
            {"HARDENED_DRAIN_DELAY": "3s"},
            {"hardened_drain_delay": "2s"},
            3.0,
            "raw_env",
        ),
        ({}, {}, {}, 0.0, "default"),
    ],
)
def test_the_environment_wins_over_the_file(conf_module, environ, raw_env, file, expected, origin):
    vars(conf_module).update(file)
    settings = config.load_sources(checks.sources(environ, Cfg(raw_env, "./gunicorn.conf.py")))
    assert (settings.drain_delay, settings.origin["drain_delay"]) == (expected, origin)


def test_the_file_wins_over_a_presets_raw_env_default(conf_module, monkeypatch):
    from hardened_worker import presets

    monkeypatch.setitem(presets.RAW_ENV_DEFAULTS, "kubernetes", {"HARDENED_DRAIN_DELAY": "5s"})
    environ = {"HARDENED_DRAIN_DELAY": "5s"}  # gunicorn applied the preset's raw_env
    cfg = Cfg({"HARDENED_DRAIN_DELAY": "5s"}, "gunicorn.conf.py")
    settings = config.load_sources(checks.sources(environ, cfg))
    assert (settings.drain_delay, settings.origin["drain_delay"]) == (5.0, "kubernetes preset")
    conf_module.hardened_drain_delay = "2s"
    settings = config.load_sources(checks.sources(environ, cfg))
    assert (settings.drain_delay, settings.origin["drain_delay"]) == (2.0, "gunicorn.conf.py")


def test_a_python_module_configuration_is_read_too(monkeypatch):
    import types

    module = types.ModuleType("myconf")
    module.hardened_stall_threshold = "250ms"
    monkeypatch.setitem(sys.modules, "myconf", module)
    settings = config.load_sources(checks.sources({}, Cfg({}, "python:myconf")))
    assert (settings.stall_threshold, settings.origin["stall_threshold"]) == (0.25, "python:myconf")


# --- names of a newer release warn; other unknown names stay one error ---------------------------


@pytest.mark.parametrize("source", [Source("environment", {}), Source(CONF, {}, in_file=True)])
def test_a_reserved_name_warns_instead_of_failing(source):
    name = config.RESERVED[0]
    settings = config.load_sources([Source(source.label, {name: "x-request-id"}, source.in_file)])
    assert settings.notes == (
        f"hardened_worker: {source.quoted(name, 'x-request-id')} is a setting "
        "of a newer hardened_worker; this release ignores it",
    )


def test_reserved_names_are_not_in_the_table():
    assert not set(config.RESERVED) & {s.env for s in SETTINGS}
    assert all(name.startswith(config.PREFIX) for name in config.RESERVED)


# --- preset-only knobs -------------------------------------------------------------------------

PRESET_ONLY = [s for s in SETTINGS if s.preset]


def test_the_preset_only_knobs_are_these():
    assert [s.name for s in PRESET_ONLY] == [
        "LOG_FORMAT",
        "ACCESS_LOG",
        "BIND",
        "PIDFILE",
        "TERMINATION_GRACE_PERIOD",
        "CPU_REQUEST",
    ]


@pytest.mark.parametrize("setting", PRESET_ONLY, ids=lambda s: s.name)
def test_a_preset_only_knob_without_its_preset_warns(setting):
    settings = config.load({setting.env: setting.example})
    assert checks.preset_warnings(settings, loaded=set()) == [
        f"hardened_worker: {setting.env} has no effect: only the {setting.preset} preset reads it, "
        "and this configuration does not use it"
    ]
    assert (
        checks.preset_warnings(settings, loaded={"hardened_worker.presets." + setting.preset}) == []
    )


@pytest.mark.parametrize("setting", PRESET_ONLY, ids=lambda s: s.name)
def test_a_preset_only_knob_in_the_file_warns_even_with_its_preset(setting):
    settings = from_file(**{setting.env.lower(): setting.example})
    assert checks.preset_warnings(
        settings, loaded={"hardened_worker.presets." + setting.preset}
    ) == [
        f"hardened_worker: {setting.env.lower()} in gunicorn.conf.py has no effect: the "
        f"{setting.preset} preset reads {setting.env} from the environment when it is imported"
    ]


# --- one meaning of 0 for every duration and size; sizes need a unit -----------------------------


def _kind(setting) -> str | None:
    for probe, value, kind in (("1Mi", 1024**2, "size"), ("1m", 60.0, "duration")):
        try:
            if setting.parse(probe) == value:
                return kind
        except ValueError:
            pass
    return None


MEASURED = [s for s in SETTINGS if _kind(s)]
# Knobs whose empty value is a computed default, not off: these have no off, so 0 is refused.
NO_OFF = {
    "STARTUP_TIMEOUT",
    "HEALTH_CHECK_TIMEOUT",
    "READY_TIMEOUT",
    "MEMORY_HARD_LIMIT",
    "MEMORY_CHECK_INTERVAL",
    "TERMINATION_GRACE_PERIOD",
}


def test_every_duration_and_size_is_in_one_of_the_two_zero_classes():
    assert {s.name for s in MEASURED} >= NO_OFF
    assert len(MEASURED) > len(NO_OFF)


@pytest.mark.parametrize("setting", MEASURED, ids=lambda s: s.name)
def test_zero_is_off_where_off_exists_and_refused_elsewhere(setting):
    for where in (
        Source("environment", {setting.env: "0"}),
        Source(CONF, {setting.env: 0}, in_file=True),
    ):
        if setting.name in NO_OFF:
            with pytest.raises(ConfigError, match="must be more than 0; use e.g. "):
                config.load_sources([where])
        else:
            assert not getattr(config.load_sources([where]), setting.attr)  # None or 0: off
            assert "0" in setting.meaning  # and the table says so


@pytest.mark.parametrize(
    "setting", [s for s in MEASURED if _kind(s) == "size"], ids=lambda s: s.name
)
def test_a_size_without_a_unit_is_refused(setting):
    with pytest.raises(ConfigError, match=r"='512' is not a size \(no unit"):
        config.load({setting.env: "512"})
    assert getattr(config.load({setting.env: "512Mi"}), setting.attr) == 512 * 1024**2


# --- real processes ----------------------------------------------------------------------------

BAD_SIZE = (
    "hardened_worker: hardened_memory_limit in gunicorn.conf.py = '512' is not a size (no "
    "unit: write B for bytes, Mi for 2^20); use e.g. 512Mi"
)


def test_a_setting_in_the_file_takes_effect_and_a_hup_rereads_it(master, tmp_path):
    conf = tmp_path / CONF
    conf.write_text('hardened_health_path = "/ready"\n')
    m = master(args=["-c", str(conf)], workers=1)
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)")
    assert get(m.port, "/ready")[0] == 200
    assert get(m.port, "/healthz")[0] == 404  # the app's own answer: the worker serves /ready

    # A bad value at HUP: one line, the master lives, the previous settings stay.
    conf.write_text('hardened_health_path = "/healthz"\nhardened_memory_limit = "512"\n')
    m.signal(signal.SIGHUP)
    m.wait_log(r"ready in [\d.]+ s \(generation 2\)")
    m.wait_log(r"exiting: reason reload")  # generation 1 has left: a draining worker answers 503
    assert m.proc.poll() is None
    assert get(m.port, "/ready")[0] == 200 and get(m.port, "/healthz")[0] == 404
    logged = [line for line in m.log().splitlines() if "hardened_memory_limit" in line]
    line = BAD_SIZE.replace(CONF, str(conf))  # the file as gunicorn was given it
    assert len(logged) == 1 and logged[0].endswith(
        f"{line} (keeping the previous HARDENED_* settings)"
    )

    # A good value at the next HUP takes effect.
    conf.write_text('hardened_health_path = "/healthz"\n')
    m.signal(signal.SIGHUP)
    m.wait_log(r"ready in [\d.]+ s \(generation 3\)")
    m.wait_log(r"exiting: reason reload", count=2)  # generations 1 and 2 have left
    wait_for(lambda: get(m.port, "/healthz")[0] == 200 and get(m.port, "/ready")[0] == 404, 30)
    assert "Traceback" not in m.log()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0


def test_a_wrong_setting_in_the_file_stops_gunicorn_with_one_line(tmp_path):
    (tmp_path / CONF).write_text('hardened_memory_limit = "512"\n')
    done = run_gunicorn({}, tmp_path)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "hardened_worker:" in line]
    assert len(lines) == 1 and lines[0].endswith(BAD_SIZE), done.stderr
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


def test_print_config_shows_the_file_as_the_source(tmp_path):
    (tmp_path / CONF).write_text(
        'hardened_drain_delay = "2s"\nhardened_request_id_header = "x-id"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "hardened_worker", "print-config"],
        cwd=tmp_path,
        env={**_clean_environ(), "HARDENED_STALL_THRESHOLD": "250ms", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split(" = ")[0].strip(): line for line in done.stdout.splitlines()}
    assert rows["HARDENED_DRAIN_DELAY"].endswith("# gunicorn.conf.py: 2.0")
    assert rows["HARDENED_STALL_THRESHOLD"].endswith("# environment: 0.25")
    assert done.stderr == (
        "hardened_worker: hardened_request_id_header in gunicorn.conf.py = 'x-id' "
        "is a setting of a newer hardened_worker; this release ignores it\n"
    )


def test_configuration_warnings_come_once_not_once_per_worker_or_reload(master, tmp_path):
    conf = tmp_path / CONF
    conf.write_text('hardened_request_id_header = "x-request-id"\n')  # a newer release's knob
    m = master(
        args=["-c", str(conf)], workers=2, env={"HARDENED_BIND": "127.0.0.1:9"}
    )  # no vm preset
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)", count=2)
    m.signal(signal.SIGHUP)
    m.wait_log(r"ready in [\d.]+ s \(generation 2\)", count=2)
    log = m.log()
    assert (
        log.count(
            "hardened_worker: HARDENED_BIND has no effect: only the vm preset reads it, "
            "and this configuration does not use it"
        )
        == 1
    )
    assert (
        log.count(
            f"hardened_worker: hardened_request_id_header in {conf} = 'x-request-id' is a "
            "setting of a newer hardened_worker; this release ignores it"
        )
        == 1
    )
    assert "Traceback" not in log
