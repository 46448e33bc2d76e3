"""The accept policy (hardened_worker/spread.py): which worker takes the next connection.

Table-driven for the rule itself; then a model of a pool under a burst of connections, the
workers' steps interleaved in every order hypothesis finds (accepts, wakes acted on late, ticks),
checking what the server relies on: the pool never stops accepting without a wake under way, and
the burst ends spread evenly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened_worker.spread import (CHURN_ACCEPTS, LISTENING, OFF, UNBALANCED, YIELDING, Sibling, churning,
                                    listens, margin, seen, to_wake)

L, Y, U = LISTENING, YIELDING, UNBALANCED


@pytest.mark.parametrize("mine,siblings,expected", [
    (0, [], True),                              # alone: always
    (5, [], True),
    (0, [Sibling(0, L)], True),                 # a tie: both listen
    (1, [Sibling(0, L)], False),                # a listening sibling holds fewer: yield to it
    (1, [Sibling(0, Y)], True),                 # it yields itself: never yield to a yielder
    (1, [Sibling(0, OFF)], True),               # at its bound or draining: not a taker
    (3, [Sibling(3, L), Sibling(2, Y)], True),
    (3, [Sibling(4, L), Sibling(2, L)], False),
    (2, [Sibling(2, Y), Sibling(2, L)], True),
    (8, [Sibling(7, L)], True),                 # within its margin (8 // 8 = 1)
    (8, [Sibling(6, L)], False),
    (32, [Sibling(28, L)], True),
    (32, [Sibling(27, L)], False),
])
def test_listens(mine, siblings, expected):
    assert listens(mine, siblings) is expected


@pytest.mark.parametrize("accepts,requests,expected", [
    (0, 0, False),                                # idle
    (CHURN_ACCEPTS - 1, 0, False),                # too few new connections to be worth saving
    (CHURN_ACCEPTS, CHURN_ACCEPTS, True),         # Connection: close: one request each
    (1000, 1500, True),
    (1000, 2000, False),                          # two requests each: keep-alive enough
    (64, 30000, False),                           # wrk opening its keep-alive connections
])
def test_churning(accepts, requests, expected):
    assert churning(accepts, requests) is expected


def test_a_churning_worker_is_neither_yielded_to_nor_woken():
    assert listens(1, [Sibling(0, U)])            # it takes what comes, it is not a taker to yield to
    assert to_wake(Sibling(0, L), [Sibling(5, U)]) == []


@pytest.mark.parametrize("me,siblings,expected", [
    (Sibling(1, L), [Sibling(1, Y)], [0]),              # no longer ahead of me: it listens again
    (Sibling(0, L), [Sibling(1, Y)], []),               # still ahead: let it yield
    (Sibling(0, L), [Sibling(1, L)], [0]),              # I listen with fewer: it should yield now
    (Sibling(2, Y), [Sibling(1, L)], []),
    (Sibling(0, OFF), [Sibling(3, Y), Sibling(1, OFF)], [0]),  # leaving: the yielder takes over
    (Sibling(0, L), [Sibling(2, Y), Sibling(2, Y)], []),
    (Sibling(2, L), [Sibling(2, Y), Sibling(3, Y), Sibling(1, L)], []),
])
def test_to_wake(me, siblings, expected):
    assert to_wake(me, siblings) == expected


def test_seen_counts_a_woken_yielder_as_listening_until_it_acts():
    rows = [Sibling(1, Y), Sibling(2, Y), Sibling(0, L)]
    assert seen(rows, [True, False, True]) == [Sibling(1, L), Sibling(2, Y), Sibling(0, L)]


@given(st.integers(0, 6), st.lists(st.tuples(st.integers(0, 6), st.sampled_from([OFF, L, Y])),
                                   max_size=6))
def test_the_least_loaded_listener_never_yields(mine, others):
    siblings = [Sibling(c, a) for c, a in others]
    listeners = [s.connections for s in siblings if s.accept == L]
    if not listeners or mine - margin(mine) <= min(listeners):
        assert listens(mine, siblings)


@dataclass
class Worker:
    count: int = 0  # connections it holds
    row: Sibling = Sibling(0, L)  # what it last published (C_CONNECTIONS, C_ACCEPT)
    woken: bool = False  # a wake datagram waiting in its socket
    promised: set = field(default_factory=set)  # siblings it woke to listen


class Pool:
    """The server's glue, minus sockets (server.HardenedServer._decide): decide from the
    siblings' published rows, publish, and wake the siblings whose answer that flips."""

    def __init__(self, workers: int) -> None:
        self.w = [Worker() for _ in range(workers)]

    def decide(self, i: int) -> None:
        me = self.w[i]
        ids = [j for j in range(len(self.w)) if j != i]
        rows = [self.w[j].row for j in ids]
        me.promised = {j for j in me.promised if self.w[j].row.accept == Y}
        state = L if listens(me.count, seen(rows, [j in me.promised for j in ids])) else Y
        if me.row == Sibling(me.count, state):
            return  # nothing new in its row: nobody to wake
        me.row = Sibling(me.count, state)
        for index in to_wake(me.row, rows):
            j = ids[index]
            self.w[j].woken = True
            if rows[index].accept == Y:
                me.promised.add(j)

    def accept(self, i: int) -> None:
        self.decide(i)  # _acceptable decides before it takes the connection
        if self.w[i].row.accept == L:
            self.w[i].count += 1
            self.decide(i)

    def act_on_wake(self, i: int) -> None:
        self.w[i].woken = False
        self.decide(i)

    def tick(self, i: int) -> None:
        self.w[i].promised.clear()
        self.decide(i)

    def accepting(self) -> bool:
        """Someone listens, or a wake is under way that will make someone listen."""
        return any(w.row.accept == L for w in self.w) or any(w.woken for w in self.w)

    def settle(self) -> int:
        steps = 0
        while any(w.woken for w in self.w):
            self.act_on_wake(next(i for i, w in enumerate(self.w) if w.woken))
            steps += 1
            assert steps < 100, "wakes that never end"
        return steps


@settings(max_examples=400)
@given(st.integers(2, 5), st.integers(1, 16), st.booleans(), st.data())
def test_a_burst_ends_even_and_the_pool_never_stops_accepting(workers, burst, ticks, data):
    """``ticks``: a worker's 100 ms tick may come in the middle of the burst, dropping what it
    counted on from a wake not yet acted on. The pool still always accepts; the burst ends even
    when every wake is acted on before the waker's next tick (the one timing assumption)."""
    pool = Pool(workers)
    left = burst
    while left:
        assert pool.accepting()
        listening = [i for i, w in enumerate(pool.w) if w.row.accept == L]
        woken = [i for i, w in enumerate(pool.w) if w.woken]
        step = data.draw(st.sampled_from(["accept"] * bool(listening) + ["wake"] * bool(woken)
                                         + ["tick"] * ticks))
        if step == "accept":
            i = data.draw(st.sampled_from(listening))
            before = pool.w[i].count
            pool.accept(i)
            left -= pool.w[i].count - before
        elif step == "wake":
            pool.act_on_wake(data.draw(st.sampled_from(woken)))
        else:
            pool.tick(data.draw(st.integers(0, workers - 1)))
    pool.settle()
    assert any(w.row.accept == L for w in pool.w)
    counts = [w.count for w in pool.w]
    if not ticks:
        assert max(counts) - min(counts) <= 1 + margin(max(counts)), counts


@given(st.lists(st.integers(0, 9), min_size=2, max_size=6), st.data())
def test_after_a_change_the_pool_settles_with_the_least_loaded_listening(counts, data):
    """Connections closed or held anywhere: once the wakes are acted on, the workers with the
    fewest connections listen, and so does every other within its margin of them."""
    pool = Pool(len(counts))
    for i, count in enumerate(counts):
        pool.w[i].count = count
    for i in data.draw(st.permutations(range(len(counts)))):
        pool.decide(i)
    pool.settle()
    for i in range(len(counts)):
        pool.tick(i)  # promises dropped: every row as it is
    pool.settle()
    fewest = min(counts)
    assert [w.row.accept for w in pool.w] == [L if c - margin(c) <= fewest else Y for c in counts]
