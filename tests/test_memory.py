"""hardened_worker._memory: the recycling policy (pure) and the /proc readers (real, Linux)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardened_worker._memory import (
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
from hardened_worker.config import ConfigError

MiB = 1024**2


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

BASE = dict(
    soft=100,
    hard=125,
    age=60.0,
    min_lifetime=30.0,
    baseline_over=True,
    others_recycling=0,
    replacement_possible=True,
)


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
        (
            dict(used=200, age=0.0, baseline_over=False),
            Decision.RECYCLE_HARD,
        ),  # grew there: any age
        (dict(used=200, age=0.0), Decision.TOO_YOUNG),  # a baseline over hard would loop
        (dict(used=200, replacement_possible=False), Decision.BLOCKED_NO_REPLACEMENT),
        (dict(used=100, hard=100), Decision.RECYCLE_HARD),  # soft == hard: hard wins
        # The minimum lifetime protects only a worker whose baseline was over the soft limit:
        (dict(used=110, age=0.4, baseline_over=False), Decision.RECYCLE),  # grew past: any age
        (dict(used=110, age=0.4, baseline_over=False, others_recycling=1), Decision.WAIT_TURN),
        (
            dict(used=110, age=0.4, baseline_over=False, replacement_possible=False),
            Decision.BLOCKED_NO_REPLACEMENT,
        ),
        (dict(used=110, age=30.0), Decision.RECYCLE),  # baseline over, minimum lifetime reached
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
        baseline_over=st.booleans(),
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
    young_baseline = args["baseline_over"] and args["age"] < args["min_lifetime"]
    if used >= hard and args["replacement_possible"] and not young_baseline:
        assert d is Decision.RECYCLE_HARD  # whatever the others
    if args["others_recycling"] > 0 and used < hard:
        assert d is not Decision.RECYCLE  # one at a time
    if not args["replacement_possible"]:
        assert not d.recycles
    if used < soft:
        assert d is Decision.OK
    if d is Decision.RECYCLE:
        assert args["others_recycling"] == 0
        assert args["age"] >= args["min_lifetime"] or not args["baseline_over"]
    if young_baseline:
        assert not d.recycles
    if d is Decision.TOO_YOUNG:
        assert args["baseline_over"]
    if not args["baseline_over"] and soft <= used < hard and args["replacement_possible"]:
        assert d is (Decision.WAIT_TURN if args["others_recycling"] else Decision.RECYCLE)


# --- MemoryWatch --------------------------------------------------------------------------------


class FakeReader:
    """Scripted memory: ``rss`` for statm, ``private`` for smaps_rollup (None: same as rss).

    Each precise() call advances the shared fake clock by ``precise_cost``."""

    measure = "uss"
    exact = True

    def __init__(self, rss=0, private=None, now=None, precise_cost=0.0):
        self.rss_value = rss
        self.private = private
        self.now = now if now is not None else [100.0]
        self.precise_cost = precise_cost
        self.rss_calls = 0
        self.precise_calls = 0

    @property
    def used(self):
        return self.rss_value

    @used.setter
    def used(self, value):  # no shared pages: rss and the measure move together
        self.rss_value = value
        self.private = None

    def rss(self):
        self.rss_calls += 1
        return self.rss_value

    def precise(self):
        self.precise_calls += 1
        self.now[0] += self.precise_cost
        return self.rss_value if self.private is None else self.private


def make_watch(used=0, limits=None, **kw):
    limits = limits or MemoryLimits(1000, 1250, jitter=0.1, min_lifetime=30.0)
    reader = FakeReader(used)
    opts = dict(clock=lambda: reader.now[0], check_interval=0.25, check_requests=32, rng_value=0.5)
    opts.update(kw)
    return MemoryWatch(limits, reader, **opts), reader


def test_watch_due_on_interval_or_requests():
    watch, _ = make_watch()
    assert not watch.due(100.0, 0)
    assert not watch.due(100.24, 31)
    assert watch.due(100.25, 0)
    assert watch.due(100.0, 32)
    watch.check(100.3, 40, lambda: (0, True))
    assert not watch.due(100.54, 71)
    assert watch.due(100.55, 0)
    assert watch.due(100.3, 72)


def test_watch_check_requests_zero_means_interval_only():
    watch, _ = make_watch(check_requests=0)
    assert not watch.due(100.1, 10**9)
    assert watch.due(100.25, 0)


def test_watch_check_passes_jittered_soft_and_decides():
    watch, reader = make_watch(used=10)
    assert watch.soft == 950
    assert watch.check(200.0, 0, lambda: (0, True)) == (Decision.OK, 10)  # baseline under the limit
    assert reader.precise_calls == 0  # rss < soft proves the measure under
    reader.used = 960
    assert watch.check(200.0, 0, lambda: (0, True)) == (Decision.RECYCLE, 960)
    assert reader.precise_calls == 1  # first time over: nothing known about shared pages yet
    assert watch.check(200.0, 0, lambda: (1, True)) == (Decision.WAIT_TURN, 960)
    reader.used = 1300
    assert watch.check(200.0, 0, lambda: (1, True)) == (Decision.RECYCLE_HARD, 1300)
    reader.used = 10
    assert watch.check(200.0, 0, lambda: (1, False)) == (Decision.OK, 10)
    assert reader.precise_calls == 1  # the estimate (rss - 0 shared) did the rest
    assert reader.rss_calls == 5  # the cheap read at every check


def test_watch_cheap_read_at_every_check_even_over_the_limit():
    # Over the limit with a slow precise read (20 ms): the RSS is still read at every check and
    # the request trigger is not pushed back (the old spacing let a fast leak run ~37 MiB past).
    watch, reader = make_watch(used=500)
    reader.precise_cost = 0.020
    reader.private = 400  # 560 shared: the estimate stays under, so precise reads are wanted
    watch.check(200.0, 0, lambda: (0, True))
    reader.rss_value = 960
    watch.check(200.01, 32, lambda: (0, True))
    assert reader.precise_calls == 1
    assert watch.due(200.011, 64)  # the next check is 32 requests later, not 1 s later
    assert not watch.due(200.011, 63)
    assert watch.due(200.26, 0)
    for i in range(2, 40):  # 32 requests every 10 ms
        watch.check(200.0 + i * 0.01, 32 * i, lambda: (0, True))
    assert reader.rss_calls == 40
    assert reader.precise_calls == 1  # 20 ms / 2% = the next precise read 1 s later
    watch.check(201.01, 32 * 100, lambda: (0, True))
    assert reader.precise_calls == 2


def test_watch_random_jitter_when_no_rng_value():
    watch, _ = make_watch(rng_value=None)
    assert 900 <= watch.soft <= 1000


def test_watch_baseline_warning_once():
    watch, reader = make_watch(used=960)
    assert not watch.baseline_warning_due()
    assert watch.check(110.0, 0, lambda: (0, True))[0] is Decision.TOO_YOUNG  # age 10 s < 30 s
    assert watch.baseline_warning_due()
    assert watch.baseline_warning_logged
    watch.check(111.0, 0, lambda: (0, True))
    assert not watch.baseline_warning_due()


def test_watch_no_baseline_warning_when_grown_past():
    # Changed with the rule: the warning is about the baseline, not about being young.
    watch, reader = make_watch(used=500)
    assert watch.check(100.1, 32, lambda: (0, True)) == (Decision.OK, 500)
    reader.used = 960
    assert watch.check(100.2, 64, lambda: (0, True)) == (
        Decision.RECYCLE,
        960,
    )  # 0.2 s old: recycles
    assert not watch.baseline_warning_due()


def test_watch_baseline_over_is_too_young_until_min_lifetime_then_recycles():
    watch, reader = make_watch(used=960)
    decisions = []
    warnings = 0
    for i in range(1, 130):  # a check every 0.25 s for 32 s
        now = 100.0 + i * 0.25
        decisions.append((now - watch.started, watch.check(now, 0, lambda: (0, True))[0]))
        warnings += watch.baseline_warning_due()
    assert warnings == 1
    assert all(d is Decision.TOO_YOUNG for age, d in decisions if age < 30.0)
    assert all(d is Decision.RECYCLE for age, d in decisions if age >= 30.0)
    assert reader.precise_calls == 1  # baseline measured once; the estimate proves it over since
    # Past the hard limit too: a baseline over the limit would make every replacement recycle.
    watch, reader = make_watch(used=960)
    watch.check(100.1, 0, lambda: (0, True))
    reader.used = 1250
    assert watch.check(100.2, 32, lambda: (1, True)) == (Decision.TOO_YOUNG, 1250)


# A worker growing 8 MiB per 32-request check (256 KiB per request, ~1500 requests/s: ~21 ms
# per check), soft 128 MiB (jittered to 124.8 MiB), hard 160 MiB, 30 s minimum lifetime.
LEAK = MemoryLimits.from_settings(128 * MiB, None, 0.05, 30.0)
STEP = 8 * MiB
CHECK_EVERY = 32 / 1500
SMAPS_COST_PER_MIB = 13e-6


def leak_watch(shared):
    watch, reader = make_watch(limits=LEAK)
    reader.now[0] = 100.0
    private = [40 * MiB]

    def advance(i):
        private[0] += STEP
        reader.private = private[0]
        reader.rss_value = private[0] + shared
        reader.precise_cost = SMAPS_COST_PER_MIB * reader.rss_value / MiB
        reader.now[0] = max(reader.now[0], 100.0 + i * CHECK_EVERY)
        return reader.now[0], private[0]

    return watch, reader, advance


@pytest.mark.parametrize("shared", [0, 12 * MiB])  # 12 MiB: libraries shared with the master
def test_fast_leak_recycles_at_the_first_check_past_soft(shared):
    watch, reader, advance = leak_watch(shared)
    assert LEAK.hard == 160 * MiB
    for i in range(1, 100):
        now, private = advance(i)
        decision, used = watch.check(now, 32 * i, lambda: (0, True))
        assert (used >= watch.soft) == (private >= watch.soft)  # the same side of the limit
        if used >= watch.soft:
            assert used <= private  # over the limit: never an over-estimate of private pages
        if private < watch.soft:
            assert decision is Decision.OK
            continue
        assert now - watch.started < 1.0  # far below the minimum lifetime, and still:
        assert decision is Decision.RECYCLE
        assert used >= watch.soft
        assert private < watch.soft + STEP
        break
    else:
        pytest.fail("never recycled")
    assert reader.precise_calls <= 2


def test_fast_leak_waiting_its_turn_stops_within_one_step_of_hard():
    watch, reader, advance = leak_watch(12 * MiB)
    seen = []
    for i in range(1, 100):
        now, private = advance(i)
        decision, used = watch.check(now, 32 * i, lambda: (1, True))  # another worker is recycling
        seen.append(decision)
        assert used < LEAK.hard + STEP
        if decision is Decision.RECYCLE_HARD:
            assert LEAK.hard <= used == private < LEAK.hard + STEP
            break
        assert decision in (Decision.OK, Decision.WAIT_TURN)
    else:
        pytest.fail("never recycled")
    assert Decision.WAIT_TURN in seen
    assert reader.precise_calls <= 2


def test_shared_pages_do_not_recycle_and_precise_reads_are_spaced():
    # preload_app: 400 MiB shared with the master, so rss >> soft from the start; the private
    # pages grow slowly and cross the soft limit only near the end.
    watch, reader = make_watch(limits=LEAK)
    shared = 400 * MiB
    start = reader.now[0] = 100.0
    crossed = None
    for i in range(1, 1001):
        private = 60 * MiB + i * 70 * 1024  # +70 KiB per check: 128.4 MiB after 1000 checks
        reader.private, reader.rss_value = private, private + shared
        reader.precise_cost = SMAPS_COST_PER_MIB * reader.rss_value / MiB  # ~6.5 ms
        reader.now[0] = max(reader.now[0], start + i * CHECK_EVERY)
        now = reader.now[0]
        before = reader.precise_calls
        decision, used = watch.check(now, 32 * i, lambda: (0, True))
        assert used <= private  # the estimate never over-states the private pages
        if private < watch.soft:
            assert decision is Decision.OK, (i, used)
        else:
            assert decision is Decision.RECYCLE
            assert reader.precise_calls == before  # the estimate proved it: no precise read
            crossed = i
            break
    assert crossed is not None and crossed > 900
    elapsed = reader.now[0] - start
    precise_time = reader.precise_calls * 6.5e-3
    assert reader.rss_calls == crossed  # a cheap read at every check
    assert 10 <= reader.precise_calls <= elapsed * 0.02 / 6e-3 + 1  # about every 0.33 s
    assert precise_time <= 0.02 * elapsed + 6.5e-3


def test_estimate_proves_over_limit_without_a_precise_read():
    watch, reader = make_watch(used=500)  # soft 950
    reader.precise_cost = 0.001
    watch.check(100.1, 32, lambda: (0, True))
    reader.rss_value, reader.private = 1400, 900  # 500 shared
    assert watch.check(100.2, 64, lambda: (0, True)) == (Decision.OK, 900)
    assert reader.precise_calls == 1
    reader.rss_value = 1460  # +60 private: estimate 960 >= 950 proves USS >= 960
    reader.private = 960
    assert watch.check(100.201, 96, lambda: (0, True)) == (Decision.RECYCLE, 960)
    assert reader.precise_calls == 1
    reader.rss_value = 1800  # estimate 1300 >= hard
    assert watch.check(100.202, 128, lambda: (5, True)) == (Decision.RECYCLE_HARD, 1300)
    assert reader.precise_calls == 1


def test_copy_on_write_is_caught_by_the_next_precise_read():
    # Shared pages turning private do not move the RSS, so the estimate lags (it under-states);
    # the next precise read, at most cost / READ_SHARE later, sees it.
    watch, reader = make_watch(used=500)
    reader.precise_cost = 0.004  # next precise read 0.2 s later
    reader.rss_value, reader.private = 1400, 900
    assert watch.check(100.1, 32, lambda: (0, True)) == (Decision.OK, 900)
    reader.private = 1000  # 100 shared pages written to: the RSS stays 1400
    assert watch.check(100.15, 64, lambda: (0, True)) == (
        Decision.OK,
        900,
    )  # estimate, rate-limited
    assert watch.check(100.31, 96, lambda: (0, True)) == (Decision.RECYCLE, 1000)
    assert reader.precise_calls == 2


def test_rss_measure_never_reads_precisely():
    reader = FakeReader(900)
    reader.measure = "rss"
    watch = MemoryWatch(LIMITS_1000, reader, clock=lambda: reader.now[0], rng_value=0.5)
    for i, rss in enumerate([900, 960, 1300]):
        reader.rss_value = rss
        watch.check(100.0 + i, 32 * i, lambda: (0, True))
    assert reader.precise_calls == 0
    assert watch.check(200.0, 0, lambda: (0, True)) == (Decision.RECYCLE_HARD, 1300)


def test_precise_read_failing_falls_back_to_rss():
    reader = FakeReader(960)
    calls = []
    reader.precise = lambda: calls.append(1)  # smaps_rollup turned unreadable: None
    watch = MemoryWatch(LIMITS_1000, reader, clock=lambda: reader.now[0], rng_value=0.5)
    assert watch.check(110.0, 0, lambda: (0, True)) == (Decision.TOO_YOUNG, 960)
    assert watch.check(131.0, 32, lambda: (0, True)) == (Decision.RECYCLE, 960)
    assert len(calls) == 1  # from then on the RSS is the estimate


LIMITS_1000 = MemoryLimits(1000, 1250, jitter=0.1, min_lifetime=30.0)


# --- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (int(131.2 * MiB), "131.2 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**4, "5.0 TiB"),
    ],
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
    # _memory.py may be imported by master-side config checks: it must not pull the servers in.
    import subprocess

    code = "import sys, hardened_worker._memory; print('gunicorn' in sys.modules or 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- MemoryReader (real /proc) ------------------------------------------------------------------


def test_reader_rejects_unknown_measure():
    with pytest.raises(ValueError, match="uss|pss|rss"):
        MemoryReader("vsz")


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


def test_reader_below_threshold_returns_rss_without_smaps():
    with MemoryReader("uss") as reader:
        rss = reader.rss()
        assert reader.read(rss + 512 * MiB) == pytest.approx(reader.rss(), abs=4 * MiB)
        assert reader.read(0) < reader.rss()  # USS leaves out the shared libraries


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


def test_reader_rss_is_exact_and_close_is_idempotent():
    reader = MemoryReader("rss")
    assert reader.exact
    assert reader.read(0) > 0
    reader.close()
    reader.close()


def test_reader_precise():
    with MemoryReader("uss") as uss, MemoryReader("pss") as pss, MemoryReader("rss") as rss:
        assert rss.precise() is None
        u, p, r = uss.precise(), pss.precise(), rss.rss()
        assert u is not None and p is not None
        assert 0 < u <= p <= r + 4 * MiB
        assert uss.read(0) == pytest.approx(u, abs=4 * MiB)


def test_reader_precise_bad_format_turns_inexact(monkeypatch):
    import hardened_worker._memory as memory

    with MemoryReader("uss") as reader:
        monkeypatch.setattr(memory, "_pread_all", lambda fd: b"garbage\n")
        assert reader.precise() is None
        assert reader.exact is False
        assert reader.precise() is None
        assert reader.read(0) == pytest.approx(reader.rss(), abs=4 * MiB)
