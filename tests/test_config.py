"""HARDENED_* parsing (pure) and its enforcement by a real master at start-up."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rig import run_gunicorn

from hardened_worker import _checks as checks
from hardened_worker import config
from hardened_worker.config import SETTINGS, ConfigError, parse_duration, parse_size

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    "text,expected",
    [
        # Kubernetes' binary and decimal suffixes, with Kubernetes' meaning
        ("400Mi", 400 * MiB),
        ("1Gi", GiB),
        ("64Ki", 64 * KiB),
        ("2Ti", 2 * 1024**4),
        ("400M", 400 * 10**6),
        ("1G", 10**9),
        ("64k", 64_000),
        ("64K", 64_000),
        ("129e6", 129 * 10**6),
        ("1.0001k", 1001),
        ("0.5B", 1),  # a fraction of a byte rounds up, as Kubernetes does
        # the long spellings, binary and decimal
        ("512MiB", 512 * MiB),
        ("1.5GiB", int(1.5 * GiB)),
        ("300MB", 300_000_000),
        ("1gb", 10**9),
        ("64 KiB", 64 * KiB),
        (" 128mib ", 128 * MiB),
        ("10B", 10),
        (".5GiB", GiB // 2),
        ("1.Mi", MiB),
        ("1024B", 1024),
        ("0", 0),
        ("0.0", 0),
        ("1Pi", 1024**5),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "lots",
        "",
        "-1MiB",
        "1.2.3MiB",
        "12 parsecs",
        "MiB",
        "0x10",
        "1e3k",
        "1e-3",
        "1 e3",
        "\uff15Mi",
        "1\xa0Mi",
        "\u0665Mi",
        "1Mi\n",
        "512",
        "0.5",
        "1024",
    ],
)  # a bare number: sizes need a unit
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_a_lone_m_is_refused_because_kubernetes_reads_it_as_milli():
    with pytest.raises(ValueError, match="m is Kubernetes' milli"):
        parse_size("400m")


@pytest.mark.parametrize(
    "text", ["9" * 400 + "B", "1Ei", "1E", "1025Ti", "1e99", "1125899906842625B"]
)
def test_sizes_are_bounded(text):
    with pytest.raises(ValueError, match="is more than 1Pi, the largest accepted"):
        parse_size(text)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("90 s", 90.0),
        ("720h", 720 * 3600.0),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["soon", "", "-5s", "5 minutes", "5d", "s", "\uff15s", "1\xa0s", "1s\n"]
)
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["9300000000", "721h", "9" * 400, "43201m"])
def test_durations_are_bounded(text):
    with pytest.raises(ValueError, match="is more than 720h, the largest accepted"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["\uff11\uff16", "\u00b2", "1" * 5000, "1000000001"])
def test_counts_are_ascii_and_bounded(text):
    with pytest.raises(ValueError, match="is not a whole number|is more than 1000000000"):
        config.parse_count(text)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["B", "Ki", "Mi", "Gi", "KiB", "MiB", "GiB", "k", "M", "G", "KB", "MB", "GB"]),
)
def test_size_roundtrip(number, unit):
    base = unit.rstrip("B").lower()
    factor = 1 if not base else (1024 if base.endswith("i") else 1000) ** " kmg".index(base[0])
    assert parse_size(f"{number}{unit}") == number * factor


# Text that looks like values: digits (ASCII and not), units, dots, signs, blanks of every kind.
VALUE_LIKE = st.lists(
    st.sampled_from(
        list("0123456789.eE+-%:/ \t\xa0\u2009\uff15\u0665\u00b2")
        + ["Mi", "Gi", "M", "m", "k", "s", "ms", "h", "B", "Pi"]
    ),
    max_size=20,
).map("".join)


@given(
    st.one_of(
        st.text(max_size=30),
        VALUE_LIKE,
        st.from_regex(r"[0-9]{20,600}[a-zA-Z]{0,3}", fullmatch=True),
    )
)
def test_load_never_raises_anything_but_config_error(text):
    for setting in SETTINGS:
        try:
            config.load({setting.env: text})
        except ConfigError as exc:
            assert str(exc).startswith(f"hardened_worker: {setting.env}=")
            assert "\n" not in str(exc) and len(str(exc)) < 300


def test_no_value_overflows():
    # float("9" * 400) is inf: int(inf) raised OverflowError (a traceback, and at HUP a dead master).
    for setting in SETTINGS:
        try:
            config.load({setting.env: "9" * 400})
        except ConfigError as exc:
            assert "(400 characters)" in str(exc)


# Zero: refused where it would mean nothing sensible, documented where it means something.
ZERO_REFUSED = [
    "STARTUP_TIMEOUT",
    "HEALTH_CHECK_TIMEOUT",
    "READY_TIMEOUT",
    "MEMORY_HARD_LIMIT",
    "MEMORY_CHECK_INTERVAL",
    "TERMINATION_GRACE_PERIOD",
]
ZERO_MEANS = {
    "DRAIN_DELAY": "0 drains at once",
    "DRAIN_IDLE_WINDOW": "0 closes it",
    "STALL_THRESHOLD": "0 turns the watchdog off",
    "MEMORY_CHECK_REQUESTS": "0 reads on the interval only",
    "MEMORY_MIN_LIFETIME": "0 sets no minimum",
    "MAX_LIFETIME_JITTER": "0 none",
    "MEMORY_JITTER": "0% lowers none",
    "MAX_INFLIGHT": "off when empty or 0",
    "HEADER_TIMEOUT": "0 turns it off",
    "BODY_TIMEOUT": "0 turns it off",
    "MEMORY_LIMIT": "off when empty or 0",
    "MAX_LIFETIME": "off when empty or 0",
    "REQUEST_TIMEOUT": "off when empty or 0",
    "MAX_QUEUE_TIME": "off when empty or 0",
}


@pytest.mark.parametrize("name", ZERO_REFUSED)
def test_zero_is_refused_where_it_means_nothing(name):
    with pytest.raises(ConfigError, match=rf"HARDENED_{name}='0' must be more than 0; use e.g. "):
        config.load({f"HARDENED_{name}": "0"})


def test_zero_is_documented_wherever_it_is_accepted():
    numeric = [
        s
        for s in SETTINGS
        if s.name in ZERO_REFUSED
        or s.name in ZERO_MEANS
        or s.parse
        in (config.parse_duration, config.parse_size, config.parse_count, config.parse_percent)
    ]
    for setting in numeric:
        try:
            config.load({setting.env: "0%" if setting.name == "MEMORY_JITTER" else "0"})
        except ConfigError:
            assert setting.name in ZERO_REFUSED
        else:
            assert ZERO_MEANS[setting.name] in setting.meaning, setting.name


def test_defaults_all_parse():
    values = config.load({}).values
    assert set(values) == {s.attr for s in SETTINGS}
    assert values["startup_timeout"] == 60.0 and values["memory_limit"] is None


def test_unknown_variable_names_the_closest_one():
    with pytest.raises(
        ConfigError,
        match=r"HARDENED_MEMRY_LIMIT='1G' is not a known setting; did you mean HARDENED_MEMORY_LIMIT\?",
    ):
        config.load({"HARDENED_MEMRY_LIMIT": "1G"})


def test_every_setting_has_an_example_that_parses():
    for setting in SETTINGS:
        setting.parse(setting.example)


def test_the_settings_page_shows_the_table_generated_from_the_code():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    start, end = (
        "<!-- generated: settings (python docs/generate.py) -->\n",
        "<!-- /generated: settings -->",
    )
    assert page[page.index(start) + len(start) : page.index(end)] == config.markdown_table() + "\n"


# One bad value per variable, each refused by a real master before any worker boots.
BAD = {
    "STARTUP_TIMEOUT": "forever",
    "DRAIN_DELAY": "5 minutes",
    "DRAIN_IDLE_WINDOW": "-1",
    "HEALTH_PATH": "healthz",
    "HEALTH_CHECK": "not a reference",
    "HEALTH_CHECK_TIMEOUT": "1d",
    "HEALTH_ACCESS_LOG": "maybe",
    "STALL_THRESHOLD": "1x",
    "REQUEST_TIMEOUT": "0x",
    "HEADER_TIMEOUT": "10 seconds",
    "BODY_TIMEOUT": "-1s",
    "MAX_INFLIGHT": "four",
    "SPREAD": "evenly",
    "MAX_QUEUE_TIME": "2 secs",
    "SHED_FAILS_HEALTH": "if busy",
    "READY_TIMEOUT": "soon",
    "ROLLING": "one by one",
    "FORWARDED": "both",
    "FORWARDED_HOST": "2",
    "FORWARDED_PORT": "yess",
    "FORWARDED_PREFIX": "nope",
    "MEMORY_LIMIT": "lots",
    "MEMORY_HARD_LIMIT": "more",
    "MEMORY_MEASURE": "vss",
    "MEMORY_JITTER": "90%",
    "MEMORY_CHECK_INTERVAL": "often",
    "MEMORY_CHECK_REQUESTS": "-3",
    "MEMORY_MIN_LIFETIME": "1y",
    "MEMORY_CGROUP": "sometimes",
    "CGROUP_ROOT": "sys/fs",
    "MAX_LIFETIME": "forever",
    "MAX_LIFETIME_JITTER": "some",
    "LOG_FORMAT": "xml",
    "ACCESS_LOG": "maybe",
    "BIND": " , ",
    "PIDFILE": "pid\x01file",
    "TERMINATION_GRACE_PERIOD": "30 sec",
    "CPU_REQUEST": "two cores",
    "METRICS_PATH": "metrics",
    "METRICS_ALLOW": "10.0.0.0/33",
    "METRICS_PORT": "65536",
}


def test_bad_table_covers_every_setting():
    assert set(BAD) == {s.name for s in SETTINGS}


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
    assert (
        "HARDENED_DRAIN_DELAI='5s' is not a known setting; did you mean HARDENED_DRAIN_DELAY?"
        in done.stderr
    )
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


def test_raw_env_values_are_validated_too(tmp_path):
    done = run_gunicorn({}, tmp_path, "-e", "HARDENED_MEMORY_LIMIT=lots")
    assert done.returncode != 0
    assert "HARDENED_MEMORY_LIMIT='lots' is not a size; use e.g. 512Mi" in done.stderr


def test_drain_delay_must_fit_the_graceful_timeout(tmp_path):
    done = run_gunicorn({"HARDENED_DRAIN_DELAY": "30s"}, tmp_path, "--graceful-timeout", "10")
    assert done.returncode != 0
    assert "HARDENED_DRAIN_DELAY=30s leaves no time to drain" in done.stderr


# Values that passed validation and then crashed where they were used, or silently meant something
# else (issue 13): each now stops gunicorn with its one line, before any worker boots.
ONCE_ACCEPTED = [
    (
        "MEMORY_LIMIT",
        "9" * 398 + "Mi",
        "(400 characters) is more than 1Pi, the largest accepted",
    ),  # OverflowError
    (
        "STARTUP_TIMEOUT",
        "9300000000",
        "is more than 720h, the largest accepted",
    ),  # setitimer raised
    ("STARTUP_TIMEOUT", "\uff15s", "is not a duration"),  # a fullwidth 5
    ("DRAIN_DELAY", "1\xa0s", "is not a duration"),  # a no-break space
    ("READY_TIMEOUT", "0", "must be more than 0"),  # silently meant the default
    ("HEALTH_CHECK_TIMEOUT", "0", "must be more than 0"),  # always answered 503
    (
        "MEMORY_CHECK_REQUESTS",
        "\uff11\uff16",
        "is not a whole number",
    ),  # int() reads fullwidth digits
]


@pytest.mark.parametrize("name,value,reason", ONCE_ACCEPTED)
def test_values_that_crashed_later_stop_gunicorn_with_one_line(name, value, reason, tmp_path):
    done = run_gunicorn({f"HARDENED_{name}": value}, tmp_path)
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if "hardened_worker:" in line]
    assert f"hardened_worker: HARDENED_{name}=" in line and f"{reason}; use e.g. " in line
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


class FakeCfg:
    graceful_timeout = 30
    forwarded_allow_ips = ["127.0.0.1"]


@pytest.mark.parametrize(
    "env,problem",
    [
        (
            {"HARDENED_MAX_LIFETIME_JITTER": "1m"},
            "HARDENED_MAX_LIFETIME_JITTER=60s needs a longer HARDENED_MAX_LIFETIME (now off)",
        ),
        (
            {"HARDENED_MAX_LIFETIME": "1h", "HARDENED_MAX_LIFETIME_JITTER": "1h"},
            "HARDENED_MAX_LIFETIME_JITTER=3600s needs a longer HARDENED_MAX_LIFETIME (now 3600s)",
        ),
    ],
)
def test_max_lifetime_jitter_must_be_shorter_than_the_lifetime(env, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        checks.validate(env, FakeCfg())


def test_max_lifetime_settings():
    s = checks.validate(
        {"HARDENED_MAX_LIFETIME": "24h", "HARDENED_MAX_LIFETIME_JITTER": "0"}, FakeCfg()
    )
    assert (s.max_lifetime, s.max_lifetime_jitter) == (86400.0, 0.0)
    s = checks.validate({"HARDENED_MAX_LIFETIME": "2h"}, FakeCfg())
    assert (s.max_lifetime, s.max_lifetime_jitter) == (7200.0, None)  # None: 10% of the lifetime
    assert config.load({}).max_lifetime is None


def test_a_blank_value_means_the_default_and_a_blank_default_means_unset():
    defaults = config.load({})
    for setting in SETTINGS:
        blank = config.load({setting.env: " \t"})
        assert getattr(blank, setting.attr) == getattr(defaults, setting.attr), setting.name
        if not setting.default:
            assert getattr(defaults, setting.attr) is None, setting.name


def test_settings_attributes_are_the_table_and_carry_their_parsers_types(tmp_path):
    # What an editor and mypy see: one typed attribute per setting (from the parser's return
    # type), an unknown name an error, not Any.
    from mypy import api

    settings = config.load({"HARDENED_MEMORY_LIMIT": "512Mi"})
    assert [s.attr for s in SETTINGS] == [
        name for name, v in vars(config.Settings).items() if isinstance(v, config.Setting)
    ]
    assert settings.memory_limit == 512 * 1024**2 == settings.values["memory_limit"]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from hardened_worker import config\n"
        "s = config.load({})\n"
        "reveal_type(s.memory_limit)\n"
        "reveal_type(s.startup_timeout)\n"
        "reveal_type(s.forwarded)\n"
        "reveal_type(s.bind)\n"
        "s.memory_limt\n"
    )
    out, _, _ = api.run([str(probe), "--no-incremental", "--follow-imports=silent"])
    assert 'Revealed type is "int | None"' in out
    assert 'Revealed type is "float"' in out
    assert 'Revealed type is "str"' in out
    assert 'Revealed type is "list[str]"' in out
    assert '"Settings" has no attribute "memory_limt"' in out
