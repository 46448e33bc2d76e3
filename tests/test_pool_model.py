"""The pool decision (hardened_worker/_pool.py) under every interleaving: a model of gunicorn's arbiter.

The model mirrors gunicorn 27's ``Arbiter`` where it touches the pool size (``num_workers``,
``manage_workers``, ``reload``/``setup``, ``handle_ttin``/``handle_ttou``, ``reap_workers``), with
:func:`hardened_worker._pool.plan` deciding as the patched ``manage_workers`` does, and models the
workers by the states they publish. Hypothesis draws sequences of HUPs, operator TTIN/TTOU,
surges, successors coming up, drains finishing, SIGKILLs and SIGSTOP/SIGCONT of the master; once
the events stop and every worker finishes what it was doing, the pool must hold exactly
``--workers`` plus the operator's TTIN/TTOU since the last HUP (gunicorn resets them on HUP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from hardened_worker import _pool as pool
from hardened_worker._readiness import SERVING, State


@dataclass
class ModelWorker:
    pid: int
    age: int
    generation: int
    state: State = State.BOOTING
    fails: bool = False  # a rejected generation: its workers fail to start
    signalled: bool = False  # got SIGTERM from the master


@dataclass
class Arbiter:
    configured: int
    num_workers: int = 0
    generation: int = 1
    workers: dict[int, ModelWorker] = field(default_factory=dict)
    next_pid: int = 100
    age: int = 0
    stopped: bool = False  # SIGSTOP: no signal is handled, TTIN/TTOU sent meanwhile are lost
    rejected: set[int] = field(default_factory=set)  # generations whose code cannot start
    halted: bool = False
    known_rejected: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.num_workers = self.configured
        self.manage()

    def spawn(self) -> None:
        self.age += 1
        self.next_pid += 1
        self.workers[self.next_pid] = ModelWorker(
            self.next_pid, self.age, self.generation, fails=self.generation in self.rejected
        )

    def manage(self) -> None:
        members = [pool.Member(w.pid, w.age, w.generation, w.state) for w in self.workers.values()]
        decided = pool.plan(self.num_workers, members, self.generation)
        for _ in range(decided.spawn):
            self.spawn()
        for pid in decided.stop:
            self.workers[pid].signalled = True

    # --- what the master does --------------------------------------------------------------

    def hup(self, broken: bool) -> None:
        self.generation += 1
        if broken:
            self.rejected.add(self.generation)
        self.num_workers = self.configured  # setup(): from the configuration
        for _ in range(self.configured):
            self.spawn()
        self.manage()

    def ttin(self) -> None:
        self.num_workers += 1
        self.manage()

    def ttou(self) -> None:
        if self.num_workers > 1:
            self.num_workers -= 1
            self.manage()

    def reap(self, pid: int) -> None:
        del self.workers[pid]

    # --- what the workers do (hardened_worker/worker.py, _recycling.py) -----------------------

    def serving(self) -> list[ModelWorker]:
        return [w for w in self.workers.values() if w.state in (State.READY, State.SURGING)]

    def step(self, pid: int) -> None:
        """Worker ``pid`` takes its next step, as the real one does on its tick."""
        w = self.workers.get(pid)
        if w is None:
            return
        newer_ready = any(
            o.generation > w.generation and o.state is State.READY for o in self.workers.values()
        )
        if w.state is State.BOOTING and w.signalled:
            self.reap(pid)  # a stop while booting: it leaves at once (its generation abandoned)
        elif w.state is State.BOOTING:
            w.state = State.FAILED if w.fails else State.READY
            if w.fails:
                self.known_rejected.add(w.generation)  # the table's "rejected" (Table.reject)
            if w.fails and not any(
                o.age < w.age and o.state in SERVING for o in self.workers.values()
            ):
                self.halted = True  # a cold start of broken code stops gunicorn, as gunicorn does
        elif w.state is State.FAILED:
            self.reap(pid)  # exits after its pause
        elif w.state is State.SURGING:
            me = pool.Member(w.pid, w.age, w.generation, w.state)
            others = [
                pool.Member(o.pid, o.age, o.generation, o.state)
                for o in self.workers.values()
                if o is not w
            ]
            successor = pool.successor_ready(me, others, self.num_workers)
            if w.signalled:  # a reload's SIGTERM: the surge is cancelled
                w.state = State.STOPPING if newer_ready else State.READY
            elif successor:
                w.state = State.RETIRING
        elif w.signalled and w.state in (State.READY, State.RETIRING):
            # The readiness gate (readiness.retirement_gate): a reload's old worker waits while a
            # successor boots and cancels the stop while a failed one is still there (the master
            # re-sends SIGTERM meanwhile); any other SIGTERM is a real stop.
            newer = [o for o in self.workers.values() if o.generation > w.generation]
            rejected = [
                o
                for o in newer
                if o.generation in self.known_rejected and o.state in (State.FAILED, State.BOOTING)
            ]
            if w.state is State.RETIRING or newer_ready:
                w.state = State.STOPPING
            elif rejected:
                w.signalled = False  # rolled back (readiness._rolled_back)
            elif any(o.state is State.BOOTING for o in newer):
                pass  # deferring
            else:
                w.state = State.STOPPING
        elif w.state is State.STOPPING:
            self.reap(pid)  # drained and exited

    def surge(self, pid: int) -> None:
        w = self.workers.get(pid)
        if (
            w is not None
            and w.state is State.READY
            and not w.signalled
            and w.generation == self.generation
            and self.generation not in self.rejected
            and not any(o.state in (State.SURGING, State.RETIRING) for o in self.workers.values())
        ):
            w.state = State.SURGING
            self.manage()  # the worker wakes the master

    def kill(self, pid: int) -> None:
        if pid in self.workers:
            self.reap(pid)  # SIGKILL (an OOM kill): gone, reaped on the master's next pass

    def settled(self) -> bool:
        # Workers of a rejected generation keep failing (the master forks them again, paced by the
        # crash-loop pause in the real worker): they are not a pool that failed to settle.
        steady = [w for w in self.workers.values() if not w.fails]
        return bool(steady) and all(w.state is State.READY and not w.signalled for w in steady)

    def settle(self) -> None:
        """No more events: every worker finishes what it started, the master keeps managing."""
        for _ in range(200):
            self.manage()
            for pid in list(self.workers):
                self.step(pid)
            if self.halted:
                return
            if self.settled():
                self.manage()
                if self.settled():
                    return
        raise AssertionError(f"the pool never settled: {self.workers}")


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("hup"), st.booleans()),
        st.tuples(st.just("ttin"), st.just(0)),
        st.tuples(st.just("ttou"), st.just(0)),
        st.tuples(st.just("surge"), st.integers(0, 7)),
        st.tuples(st.just("step"), st.integers(0, 7)),
        st.tuples(st.just("kill"), st.integers(0, 7)),
        st.tuples(st.just("tick"), st.just(0)),
        st.tuples(st.just("sigstop"), st.just(0)),
        st.tuples(st.just("sigcont"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=1000, deadline=None)
@given(configured=st.integers(1, 4), events=EVENTS)
def test_any_interleaving_ends_at_the_configured_size_plus_the_operators_changes(
    configured, events
):
    master = Arbiter(configured)
    expected = configured
    for kind, arg in events:
        if master.halted:
            return  # nothing served before the broken code: exit 3, no pool left to count
        pids = sorted(master.workers)
        pick = pids[arg % len(pids)] if pids else None
        if kind in ("hup", "ttin", "ttou", "tick") and master.stopped:
            continue  # a stopped master handles nothing; SIGCONT discards pending TTIN/TTOU
        if kind == "hup":
            master.hup(broken=arg)
            expected = configured
        elif kind == "ttin":
            master.ttin()
            expected += 1
        elif kind == "ttou":
            master.ttou()
            expected = max(1, expected - 1)
        elif kind == "tick":
            master.manage()
        elif kind == "sigstop":
            master.stopped = True
        elif kind == "sigcont":
            master.stopped = False
        elif pick is not None and kind == "surge":
            master.surge(pick)
        elif pick is not None and kind == "step":
            master.step(pick)
        elif pick is not None and kind == "kill":
            master.kill(pick)
    master.stopped = False
    master.settle()
    if master.halted:
        return
    assert master.num_workers == expected
    serving = [w for w in master.workers.values() if not w.fails]
    if master.generation in master.rejected:
        # The current code cannot start: the old workers keep serving, never more than wanted,
        # never none (a rejected deploy is not an outage).
        assert 1 <= len(serving) <= expected, master.workers
    else:
        assert len(serving) == len(master.workers) == expected, master.workers


# --- the plan itself, table-driven ----------------------------------------------------------

R, B, S, T, X, F = (
    State.READY,
    State.BOOTING,
    State.SURGING,
    State.RETIRING,
    State.STOPPING,
    State.FAILED,
)


def members(*states: State, generation: int = 1) -> list[pool.Member]:
    return [pool.Member(100 + i, 1 + i, generation, s) for i, s in enumerate(states)]


PLANS = [
    # (wanted, states, expected plan)
    (2, (R, R), pool.Plan(0, ())),
    (2, (R,), pool.Plan(1, ())),  # a worker died: replace it
    (2, (R, S), pool.Plan(1, ())),  # a surge: one more
    (2, (R, S, B), pool.Plan(0, ())),  # its successor boots
    (2, (R, T, R), pool.Plan(0, (101,))),  # the retiring worker goes first, whatever its age
    (2, (R, X, R), pool.Plan(0, (101,))),  # it drains: gunicorn re-sends SIGTERM, harmless
    (2, (R, S, F), pool.Plan(0, ())),  # the successor failed: no fork loop, nobody stopped
    (2, (R, R, F, F), pool.Plan(0, ())),  # a rejected reload's workers push nobody out
    (2, (R, R, R), pool.Plan(0, (100,))),  # operator TTOU: the oldest goes
    (1, (S, B), pool.Plan(0, ())),
]


def test_the_plan_table():
    for wanted, states, expected in PLANS:
        assert pool.plan(wanted, members(*states), 1) == expected, (wanted, states)


def test_a_surge_of_an_older_generation_adds_no_worker():
    # A reload replaces the surging worker anyway: its surge must not keep an extra one.
    old = members(R, S, generation=1)
    new = [pool.Member(200, 10, 2, B), pool.Member(201, 11, 2, B)]
    assert pool.plan(2, old + new, 2) == pool.Plan(0, (100, 101))
