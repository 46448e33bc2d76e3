"""Interleavings of claims, deaths, orphaned surges and folds killed half-way, on the real table
with real processes (hypothesis picks the order and where each crash lands): whatever happened,
the totals are what the workers counted, no exit counts twice, ``peers()`` is exactly the live
workers, and every slot no live worker holds can be claimed again."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardened_worker import metrics, readiness as rd
from test_table_crash import TRACED, _in_child, _killed_at

AGES = st.integers(0, 3)  # few slots, so claims collide with dead workers' slots
STEPS = st.integers(1, 110)  # the line event a crashing process dies at (past the end: after it)

Spawn = st.tuples(st.just("spawn"), AGES, st.integers(0, 50), st.booleans())  # age, requests, surges
Kill = st.tuples(st.just("kill"), st.integers(0, 20))  # the n-th live worker, modulo
CrashClaim = st.tuples(st.just("crash_claim"), AGES, STEPS)
CrashAdopt = st.tuples(st.just("crash_adopt"), STEPS)
OPS = st.lists(st.one_of(Spawn, Kill, CrashClaim, CrashAdopt), max_size=12)


@dataclass
class Model:
    table: rd.Table = field(default_factory=rd.Table)
    live: list = field(default_factory=list)  # pids of live workers
    requests: int = 0  # everything any worker counted
    killed: int = 0  # workers that had a slot and died
    crashed: int = 0  # processes killed in the middle of a claim (a slot or not)

    def spawn(self, age: int, requests: int, surges: bool) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            self.table.claim(age, 1)
            self.table.counters()[rd.C_REQUESTS] += requests
            self.table.set_state(rd.State.READY)
            if surges:
                self.table.take_surge_turn(3)
            os.write(w, b"claimed" if self.table._slot is not None else b"no slot")
            while True:
                time.sleep(60)
        os.close(w)
        assert os.read(r, 16) == b"claimed"
        os.close(r)
        self.live.append(pid)
        self.requests += requests

    def kill(self, index: int) -> None:
        if self.live:
            pid = self.live.pop(index % len(self.live))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.killed += 1

    def crash(self, step: int, writer) -> None:
        _, status = _in_child(lambda: _killed_at(step, TRACED, writer))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        self.crashed += 1

    def end(self) -> None:
        for pid in self.live:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def check(model: Model) -> None:
    table = model.table
    data = metrics.pool(table.snapshot(), time.time())
    assert data["requests"] == model.requests  # nothing lost, nothing counted twice
    exits = sum(data["exits"].values())
    assert model.killed <= exits <= model.killed + model.crashed  # a crashed claim may have a slot
    assert sorted(p.pid for p in table.peers()) == sorted(model.live)


def every_free_slot_is_claimable(model: Model) -> None:
    """What the pool's ticks and claims would do: adopt the orphans, then count the slots."""
    table = model.table
    while table.adopt_orphaned_surge() is not None:
        pass
    held = sum(1 for index in range(rd.SLOTS) if not table._reusable(index))
    assert held == len(model.live)
    assert metrics.pool(table.snapshot(), time.time())["requests"] == model.requests


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_any_interleaving_conserves_the_totals_and_the_slots(ops):
    model = Model()
    try:
        for op in ops:
            kind, *args = op
            if kind == "spawn":
                model.spawn(*args)
            elif kind == "kill":
                model.kill(*args)
            elif kind == "crash_claim":
                age, step = args
                model.crash(step, lambda: model.table.claim(age, 2))
            else:
                model.crash(args[0], model.table.adopt_orphaned_surge)
            check(model)
        every_free_slot_is_claimable(model)
    finally:
        model.end()
