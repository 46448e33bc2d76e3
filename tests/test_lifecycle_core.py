"""The pure lifecycle core: every phase x event pair, and random event sequences (no processes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened_worker._lifecycle import (
    SERVING,
    TRANSITIONS,
    Action,
    Event,
    Lifecycle,
    LifecycleError,
    Phase,
    Reason,
    markdown_table,
)

P, E, A, R = Phase, Event, Action, Reason
_ = None  # illegal: the event cannot happen in that phase

# The expected move of every pair, written out by hand (not read from TRANSITIONS): next phase,
# or "=" for "no change", or _ for illegal. Columns follow EVENTS.
EVENTS = [
    E.STOP,
    E.SUPERSEDED,
    E.QUICK_STOP,
    E.ABORT,
    E.NEED_TURN,
    E.TURN,
    E.STARTUP_DONE,
    E.STARTUP_FAILED,
    E.STARTUP_TIMED_OUT,
    E.SUCCESSORS_READY,
    E.NO_SUCCESSOR,
    E.RELOAD_REJECTED,
    E.MEMORY_SOFT,
    E.MEMORY_HARD,
    E.REQUEST_COUNT,
    E.LIFETIME,
    E.CODE_CHANGED,
    E.PARENT_GONE,
    E.DELAY_OVER,
    E.DEADLINE,
    E.DRAIN_DONE,
]
X, D = P.EXITING, P.DRAINING
EXPECTED = {
    #            STOP        SUPER       QUICK ABORT NEED       TURN       DONE     FAIL TIMEOUT SUCC   NOSUCC     REJECT   SOFT       HARD PAGES      LIFE       CODE       PARENT DELAY DEADLINE   DRAINED
    P.BOOTING: [X, X, X, X, P.WAITING, _, P.READY, X, X, _, _, _, _, _, _, _, _, X, _, _, _],
    P.WAITING: [X, X, X, X, _, P.BOOTING, _, _, _, _, _, _, _, _, _, _, _, X, _, _, _],
    P.READY: [
        P.DEFERRING,
        P.DEFERRING,
        D,
        X,
        _,
        _,
        _,
        _,
        _,
        _,
        _,
        _,
        P.SURGING,
        D,
        P.SURGING,
        P.SURGING,
        P.SURGING,
        D,
        _,
        _,
        _,
    ],
    P.SURGING: [
        P.DEFERRING,
        P.DEFERRING,
        D,
        X,
        _,
        _,
        _,
        _,
        _,
        D,
        _,
        P.READY,
        "=",
        D,
        "=",
        "=",
        "=",
        D,
        _,
        D,
        _,
    ],
    P.DEFERRING: [
        "=",
        "=",
        D,
        X,
        _,
        _,
        _,
        _,
        _,
        P.STOPPING,
        P.STOPPING,
        P.READY,
        "=",
        D,
        "=",
        "=",
        "=",
        D,
        _,
        P.STOPPING,
        _,
    ],
    P.STOPPING: ["=", "=", D, X, _, _, _, _, _, _, _, _, "=", D, "=", "=", "=", D, D, _, _],
    P.DRAINING: ["=", "=", "=", X, _, _, _, _, _, _, _, _, "=", "=", "=", "=", "=", "=", _, "=", X],
    P.EXITING: [
        "=",
        "=",
        "=",
        "=",
        _,
        _,
        _,
        "=",
        "=",
        _,
        _,
        _,
        "=",
        "=",
        "=",
        "=",
        "=",
        "=",
        _,
        "=",
        "=",
    ],
}
PAIRS = [
    (phase, event, row[i]) for phase, row in EXPECTED.items() for i, event in enumerate(EVENTS)
]


def machine_in(phase: Phase) -> Lifecycle:
    machine = Lifecycle()
    machine.phase = phase
    return machine


def test_every_event_and_phase_is_in_the_expectations():
    assert set(EVENTS) == set(Event) and len(EVENTS) == len(Event)
    assert set(EXPECTED) == set(Phase) and set(TRANSITIONS) == set(Phase)


@pytest.mark.parametrize(
    "phase,event,expected", PAIRS, ids=[f"{p.value}-{e.value}" for p, e, _ in PAIRS]
)
def test_every_phase_event_pair(phase, event, expected):
    machine = machine_in(phase)
    if expected is _:
        with pytest.raises(LifecycleError, match=event.value):
            machine.post(event)
        assert machine.phase is phase  # an illegal event changes nothing
        return
    machine.post(event)
    assert machine.phase is (phase if expected == "=" else expected)


@pytest.mark.parametrize(
    "phase,event,actions,reason",
    [
        (P.BOOTING, E.STARTUP_DONE, (A.ANNOUNCE_READY,), None),
        (P.BOOTING, E.STOP, (A.EXIT,), R.SHUTDOWN),
        (P.BOOTING, E.SUPERSEDED, (A.EXIT,), R.RELOAD),
        (P.BOOTING, E.STARTUP_TIMED_OUT, (A.EXIT,), R.STARTUP_TIMEOUT),
        (P.WAITING, E.TURN, (A.ARM_STARTUP_TIMER,), None),  # the startup timer starts only now
        (P.READY, E.REQUEST_COUNT, (A.START_SUCCESSOR,), R.MAX_REQUESTS),
        (P.READY, E.LIFETIME, (A.START_SUCCESSOR,), R.MAX_LIFETIME),
        (P.READY, E.CODE_CHANGED, (A.START_SUCCESSOR,), R.RELOAD),  # --reload, successor first
        (P.READY, E.MEMORY_SOFT, (A.START_SUCCESSOR,), R.MEMORY),
        (P.READY, E.MEMORY_HARD, (A.BEGIN_DRAIN,), R.MEMORY),  # no successor first: at once
        (P.READY, E.QUICK_STOP, (A.BEGIN_DRAIN, A.CLOSE_ALL), R.QUICK_STOP),
        (P.SURGING, E.SUCCESSORS_READY, (A.RETIRE, A.BEGIN_DRAIN), None),
        (P.SURGING, E.RELOAD_REJECTED, (A.LOG_ROLLBACK, A.CANCEL_SURGE), None),
        (P.SURGING, E.MEMORY_HARD, (A.RETIRE, A.BEGIN_DRAIN), R.MEMORY),
        (P.DEFERRING, E.SUCCESSORS_READY, (A.PLAN_DRAIN,), R.RELOAD),
        (P.DEFERRING, E.NO_SUCCESSOR, (A.PLAN_DRAIN,), R.SHUTDOWN),
        (P.DEFERRING, E.DEADLINE, (A.LOG_NOT_READY, A.PLAN_DRAIN), R.SHUTDOWN),
        (P.DEFERRING, E.RELOAD_REJECTED, (A.LOG_ROLLBACK,), None),
        (P.STOPPING, E.DELAY_OVER, (A.BEGIN_DRAIN,), None),
        (P.DRAINING, E.DRAIN_DONE, (A.EXIT,), None),
    ],
)
def test_actions_and_reasons(phase, event, actions, reason):
    machine = machine_in(phase)
    assert machine.post(event) == actions
    assert machine.reason is reason


def test_the_exit_reason_and_health_are_read_off_the_machine():
    machine = Lifecycle()
    assert machine.health == "booting" and not machine.serving
    machine.post(E.STARTUP_DONE)
    assert machine.health == "ready" and machine.serving
    machine.post(E.STOP)
    assert machine.health == "ready" and machine.reason is None  # still serving, nothing decided
    machine.post(E.RELOAD_REJECTED)
    assert machine.phase is P.READY and machine.reason is None  # the stop was cancelled
    machine.post(E.REQUEST_COUNT)
    assert machine.reason is R.MAX_REQUESTS and machine.health == "ready"
    machine.post(E.STOP)  # a shutdown during the surge: a stop like any other
    machine.post(E.NO_SUCCESSOR)
    assert machine.reason is R.SHUTDOWN and machine.health == "stopping"
    machine.post(E.DELAY_OVER)
    machine.post(E.QUICK_STOP)
    assert machine.reason is R.SHUTDOWN and machine.health == "draining"
    machine.post(E.DRAIN_DONE)
    assert machine.phase is P.EXITING


# What the worker's shell can end every phase with: the signals and timers that always come.
ENDINGS = [E.QUICK_STOP, E.DRAIN_DONE]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_random_event_sequences_never_leave_a_worker_that_neither_serves_nor_exits(events):
    machine = Lifecycle()
    for event in events:
        if machine.allows(event):
            machine.post(event)
        else:
            with pytest.raises(LifecycleError):
                machine.post(event)
        # A worker that does not serve is booting (on its way to) or leaving, with a reason.
        if machine.phase not in SERVING and machine.phase not in (P.BOOTING, P.WAITING):
            assert machine.reason is not None, machine.phase
    # Whatever happened, a quick stop and the end of the drain take the worker out.
    for event in ENDINGS:
        if machine.allows(event):
            machine.post(event)
    assert machine.phase is P.EXITING and machine.reason is not None


def test_markdown_table_lists_every_move():
    table = markdown_table()
    for phase, moves in TRANSITIONS.items():
        for event, move in moves.items():
            if move.to is not phase or move.actions:
                assert f"| {phase.value} | {event.value} | {move.to.value} |" in table


def test_the_how_it_works_page_shows_the_table_generated_from_the_code():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "how-it-works.md").read_text()
    start, end = (
        "<!-- generated: lifecycle (python docs/generate.py) -->\n",
        "<!-- /generated: lifecycle -->",
    )
    assert page[page.index(start) + len(start) : page.index(end)] == markdown_table()
