"""Interleavings of claims, deaths (surging ones too) and folds killed half-way, on the real table
with real processes (hypothesis picks the order and where each crash lands): whatever happened,
the totals are what the workers counted, no exit counts twice, ``peers()`` is exactly the live
workers, and every slot no live worker holds can be claimed again.

A crash lands on one of the distinct lines the writer would run from the current state (found by
a dry run in another process), the first time it gets there, or right after the writer: one
dangerous store among a fold's ~100 line events is then one choice in ~40, not in ~100."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_table_crash import TRACED, _in_child

from hardened_worker import _metrics as metrics
from hardened_worker import _readiness as rd

AGES = st.integers(0, 3)  # few slots, so claims collide with dead workers' slots
WHERE = st.integers(0, 1000)  # which of the writer's lines a crash lands on, modulo (or after it)

Spawn = st.tuples(
    st.just("spawn"), AGES, st.integers(0, 50), st.booleans()
)  # age, requests, surges
Kill = st.tuples(st.just("kill"), st.integers(0, 20))  # the n-th live worker, modulo
CrashClaim = st.tuples(st.just("crash_claim"), AGES, WHERE)
OPS = st.lists(st.one_of(Spawn, Kill, CrashClaim), max_size=12)


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

    def crash(self, where: int, writer) -> None:
        before = bytes(self.table._map)  # the dry run writes too; the live workers are idle
        lines, _ = _in_child(lambda: _traced(writer, None))
        self.table._map[:] = before
        choice = where % (len(lines) + 1)
        target = lines[choice] if choice < len(lines) else AFTER
        _, status = _in_child(lambda: _traced(writer, target))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        self.crashed += 1

    def end(self) -> None:
        for pid in self.live:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


AFTER = "after"


def _traced(writer, kill_on) -> list:
    """Run ``writer``; SIGKILL this process the first time it reaches line ``kill_on`` ([file,
    line]) of the traced files, or once it returned (``AFTER``). Without ``kill_on``: the distinct
    lines it ran, in order."""
    lines: list = []

    def local(frame, event, arg):
        if event == "line":
            line = [frame.f_code.co_filename, frame.f_lineno]
            if line == kill_on:
                os.kill(os.getpid(), signal.SIGKILL)
            if line not in lines:
                lines.append(line)
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename in TRACED else None)
    try:
        writer()
    finally:
        sys.settrace(None)
    if kill_on is not None:  # AFTER, or a line this run did not reach
        os.kill(os.getpid(), signal.SIGKILL)
    return lines


def check(model: Model) -> None:
    table = model.table
    data = metrics.pool(table.snapshot(), time.time())
    assert data["requests"] == model.requests  # nothing lost, nothing counted twice
    exits = sum(data["exits"].values())
    assert model.killed <= exits <= model.killed + model.crashed  # a crashed claim may have a slot
    assert sorted(p.pid for p in table.peers()) == sorted(model.live)


def every_free_slot_is_claimable(model: Model) -> None:
    """Every slot no live worker holds is free for a claim."""
    table = model.table
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
            else:
                age, step = args
                model.crash(step, lambda: model.table.claim(age, 2))
            check(model)
        every_free_slot_is_claimable(model)
    finally:
        model.end()
