"""hardened_worker.memory: the recycling policy (pure) and the /proc readers (real, Linux)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardened_worker.config import ConfigError
from hardened_worker.memory import (
    Decision,
    MemoryLimits,
    MemoryReader,
    MemoryWatch,
    baseline_message,
    decide,
    format_size,
    recycle_message,
    worker_soft_limit,
)

MiB = 1024**2
linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")


# --- limits -------------------------------------------------------------------------------------


def test_limits_default_hard_is_soft_plus_25_percent():
    limits = MemoryLimits.from_settings(512 * MiB, None, 0.05, 30.0)
    assert limits == MemoryLimits(512 * MiB, 640 * MiB, 0.05, 30.0)


def test_limits_explicit_hard():
    assert MemoryLimits.from_settings(100, 200).hard == 200


@pytest.mark.parametrize(
    "soft, hard, jitter, words",
    [
        (100, 99, 0.05, "HARDENED_MEMORY_HARD_LIMIT=99 B is below HARDENED_MEMORY_LIMIT=100 B"),
        (0, None, 0.05, "HARDENED_MEMORY_LIMIT=0 B must be more than 0"),
        (100, None, 1.0, "jitter"),
    ],
)
def test_limits_reject_bad_values(soft, hard, jitter, words):
    with pytest.raises(ConfigError, match=words):
        MemoryLimits.from_settings(soft, hard, jitter)


@pytest.mark.parametrize(
    "rng, expected", [(0.0, 1000), (0.5, 950), (0.999999, 900), (1.0, 900), (-1.0, 1000)]
)
def test_worker_soft_limit_table(rng, expected):
    assert worker_soft_limit(MemoryLimits(1000, 1250, 0.10), rng) == pytest.approx(expected, abs=1)


@given(
    soft=st.integers(1, 2**40),
    extra=st.integers(0, 2**40),
    jitter=st.floats(0, 0.5),
    rng=st.floats(0, 1, exclude_max=True),
)
def test_worker_soft_limit_stays_in_range(soft, extra, jitter, rng):
    limits = MemoryLimits(soft, soft + extra, jitter)
    value = worker_soft_limit(limits, rng)
    assert soft * (1 - jitter) - 1 <= value <= soft <= limits.hard
    assert value >= 1


# --- decide -------------------------------------------------------------------------------------

BASE = dict(soft=100, hard=125, age=60.0, min_lifetime=30.0, others_recycling=0, replacement_possible=True)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(used=99), Decision.OK),
        (dict(used=99, age=0.0, replacement_possible=False, others_recycling=3), Decision.OK),
        (dict(used=100), Decision.RECYCLE),  # reaching the limit counts
        (dict(used=110, others_recycling=1), Decision.WAIT_TURN),
        (dict(used=110, age=29.9), Decision.TOO_YOUNG),
        (dict(used=110, age=29.9, others_recycling=1), Decision.TOO_YOUNG),
        (dict(used=110, replacement_possible=False), Decision.BLOCKED_NO_REPLACEMENT),
        (dict(used=125), Decision.RECYCLE_HARD),
        (dict(used=200, others_recycling=5), Decision.RECYCLE_HARD),  # no waiting past hard
        (dict(used=200, age=0.0), Decision.RECYCLE_HARD),  # hard applies at any age
        (dict(used=200, replacement_possible=False), Decision.BLOCKED_NO_REPLACEMENT),
        (dict(used=100, hard=100), Decision.RECYCLE_HARD),  # soft == hard: hard wins
    ],
)
def test_decide_table(changes, expected):
    assert decide(**{**BASE, **changes}) is expected


decide_args = st.fixed_dictionaries(
    dict(
        used=st.integers(0, 1000),
        soft=st.integers(1, 500),
        extra=st.integers(0, 500),
        age=st.floats(0, 100),
        min_lifetime=st.floats(0, 100),
        others_recycling=st.integers(0, 4),
        replacement_possible=st.booleans(),
    )
)


def _decide(args):
    args = dict(args)
    args["hard"] = args["soft"] + args.pop("extra")
    return args, decide(**args)


@given(decide_args)
def test_decide_properties(args):
    args, d = _decide(args)
    used, soft, hard = args["used"], args["soft"], args["hard"]
    if used >= hard and args["replacement_possible"]:
        assert d is Decision.RECYCLE_HARD  # whatever the age and the others
    if args["others_recycling"] > 0 and used < hard:
        assert d is not Decision.RECYCLE  # one at a time
    if not args["replacement_possible"]:
        assert not d.recycles
    if used < soft:
        assert d is Decision.OK
    if d is Decision.RECYCLE:
        assert args["age"] >= args["min_lifetime"] and args["others_recycling"] == 0
    if args["age"] < args["min_lifetime"] and used < hard:
        assert not d.recycles


# --- MemoryWatch --------------------------------------------------------------------------------


class FakeReader:
    measure = "uss"
    exact = True

    def __init__(self, used=0):
        self.used = used
        self.thresholds = []

    def read(self, threshold):
        self.thresholds.append(threshold)
        return self.used


def make_watch(used=0, **kw):
    limits = MemoryLimits(1000, 1250, jitter=0.1, min_lifetime=30.0)
    reader = FakeReader(used)
    opts = dict(clock=lambda: 100.0, check_interval=0.25, check_requests=32, rng_value=0.5)
    opts.update(kw)
    return MemoryWatch(limits, reader, **opts), reader


def test_watch_due_on_interval_or_requests():
    watch, _ = make_watch()
    assert not watch.due(100.0, 0)
    assert not watch.due(100.24, 31)
    assert watch.due(100.25, 0)
    assert watch.due(100.0, 32)
    watch.check(100.3, 40, 0, True)
    assert not watch.due(100.54, 71)
    assert watch.due(100.55, 0)
    assert watch.due(100.3, 72)


def test_watch_check_requests_zero_means_interval_only():
    watch, _ = make_watch(check_requests=0)
    assert not watch.due(100.1, 10**9)
    assert watch.due(100.25, 0)


def test_watch_check_passes_jittered_soft_and_decides():
    watch, reader = make_watch(used=960)
    assert watch.soft == 950
    assert watch.check(200.0, 0, 0, True) == (Decision.RECYCLE, 960)
    assert reader.thresholds == [950]
    assert watch.check(200.0, 0, 1, True) == (Decision.WAIT_TURN, 960)
    reader.used = 1300
    assert watch.check(200.0, 0, 1, True) == (Decision.RECYCLE_HARD, 1300)
    reader.used = 10
    assert watch.check(200.0, 0, 1, False) == (Decision.OK, 10)


def test_watch_spaces_expensive_reads():
    # A read that takes 20 ms (a big worker over its limit) may take at most 2% of the time:
    # the next read is 1 s later, even when requests pour in.
    now = [100.0]

    class SlowReader(FakeReader):
        def read(self, threshold):
            now[0] += 0.020
            return 960

    watch = MemoryWatch(
        MemoryLimits(1000, 1250, 0.1), SlowReader(), clock=lambda: now[0],
        check_interval=0.25, check_requests=32, rng_value=0.5,
    )
    watch.check(200.0, 0, 1, True)
    assert not watch.due(200.5, 10_000)
    assert not watch.due(200.99, 10_000)
    assert watch.due(201.0, 0)


def test_watch_cheap_reads_keep_the_request_trigger():
    now = [100.0]

    class QuickReader(FakeReader):
        def read(self, threshold):
            now[0] += 2e-6
            return 10

    watch = MemoryWatch(
        MemoryLimits(1000, 1250, 0.1), QuickReader(), clock=lambda: now[0],
        check_interval=0.25, check_requests=32, rng_value=0.5,
    )
    watch.check(200.0, 0, 0, True)
    assert watch.due(200.001, 32)
    assert not watch.due(200.001, 31)


def test_watch_random_jitter_when_no_rng_value():
    watch, _ = make_watch(rng_value=None)
    assert 900 <= watch.soft <= 1000


def test_watch_baseline_warning_once():
    watch, reader = make_watch(used=960)
    assert not watch.baseline_warning_due()
    assert watch.check(110.0, 0, 0, True)[0] is Decision.TOO_YOUNG  # age 10 s < 30 s
    assert watch.baseline_warning_due()
    assert watch.baseline_warning_logged
    watch.check(111.0, 0, 0, True)
    assert not watch.baseline_warning_due()


def test_watch_no_baseline_warning_when_old():
    watch, _ = make_watch(used=960)
    watch.check(131.0, 0, 1, True)
    assert not watch.baseline_warning_due()


# --- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (int(131.2 * MiB), "131.2 MiB"), (3 * 1024**3, "3.0 GiB"), (5 * 1024**4, "5.0 TiB")],
)
def test_format_size(n, text):
    assert format_size(n) == text


def test_recycle_message():
    line = recycle_message(1234, int(131.2 * MiB), 128 * MiB, "uss", 5120, 12.34, hard=False)
    assert line == (
        "hardened_worker: worker 1234 recycling: memory uss 131.2 MiB over limit 128.0 MiB (soft), "
        "5120 requests served, up 12.3 s"
    )
    assert "(hard)" in recycle_message(1, 2, 1, "rss", 0, 7200, hard=True)
    assert "up 2.0 h" in recycle_message(1, 2, 1, "rss", 0, 7200, hard=True)
    assert "up 1.5 min" in recycle_message(1, 2, 1, "rss", 0, 90, hard=True)


def test_baseline_message():
    line = baseline_message(7, 300 * MiB, 256 * MiB, "pss", 2.0, 30.0)
    assert "\n" not in line
    assert "300.0 MiB" in line and "256.0 MiB" in line and "HARDENED_MEMORY_LIMIT" in line


def test_module_is_pure():
    # memory.py may be imported by master-side config checks: it must not pull the servers in.
    import subprocess

    code = "import sys, hardened_worker.memory; print('gunicorn' in sys.modules or 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- MemoryReader (real /proc) ------------------------------------------------------------------


def test_reader_rejects_unknown_measure():
    with pytest.raises(ValueError, match="uss|pss|rss"):
        MemoryReader("vsz")


@linux_only
def test_reader_sees_64_mib_allocation():
    with MemoryReader("uss") as uss, MemoryReader("pss") as pss, MemoryReader("rss") as rss:
        before_rss = rss.rss()
        before_uss = uss.read(0)
        block = bytearray(64 * MiB)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        grew_rss = rss.read(0) - before_rss
        grew_uss = uss.read(0) - before_uss  # threshold 0 forces smaps_rollup
        assert uss.exact
        assert grew_rss >= 60 * MiB
        assert abs(grew_uss - grew_rss) <= 8 * MiB
        after_uss, after_pss, after_rss = uss.read(0), pss.read(0), rss.rss()
        assert after_uss <= after_pss <= after_rss
        del block


@linux_only
def test_reader_below_threshold_returns_rss_without_smaps():
    with MemoryReader("uss") as reader:
        rss = reader.rss()
        assert reader.read(rss + 512 * MiB) == pytest.approx(reader.rss(), abs=4 * MiB)
        assert reader.read(0) < reader.rss()  # USS leaves out the shared libraries


@linux_only
def test_reader_without_smaps_rollup_falls_back_to_rss(monkeypatch):
    real_open = os.open

    def no_rollup(path, *args, **kw):
        if "smaps_rollup" in str(path):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", no_rollup)
    with MemoryReader("pss") as reader:
        assert reader.exact is False
        assert reader.read(0) == pytest.approx(reader.rss(), abs=4 * MiB)


@linux_only
def test_reader_rss_is_exact_and_close_is_idempotent():
    reader = MemoryReader("rss")
    assert reader.exact
    assert reader.read(0) > 0
    reader.close()
    reader.close()
