"""The accept policy (hardened_worker/_spread.py): which worker takes the next connection.

Table-driven for the rule itself; then a model of a pool under a burst of connections, the
workers' steps interleaved in every order hypothesis finds (accepts, wakes acted on late, ticks),
checking what the server relies on: the pool never stops accepting without a wake under way, and
the burst ends spread evenly, whatever the order (exhaustively for 4 workers and 8 connections,
the bench's case).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened_worker._spread import (
    CHURN_ACCEPTS,
    LISTENING,
    OFF,
    STALE_MS,
    UNBALANCED,
    YIELDING,
    Sibling,
    churning,
    listens,
    margin,
    to_wake,
    weighed,
)

L, Y, U = LISTENING, YIELDING, UNBALANCED


@pytest.mark.parametrize(
    "mine,siblings,expected",
    [
        (0, [], True),  # alone: always
        (5, [], True),
        (0, [Sibling(0, L)], True),  # a tie: both listen
        (1, [Sibling(0, L)], False),  # a listening sibling holds fewer: yield to it
        (1, [Sibling(0, Y)], False),  # it yields now, but takes it once woken: leave it
        (1, [Sibling(1, Y), Sibling(0, Y)], False),
        (1, [Sibling(0, OFF)], True),  # at its bound or draining: not a taker
        (3, [Sibling(3, L), Sibling(2, Y)], False),
        (3, [Sibling(4, L), Sibling(2, L)], False),
        (2, [Sibling(2, Y), Sibling(2, L)], True),
        (8, [Sibling(7, L)], True),  # within its margin (8 // 8 = 1)
        (8, [Sibling(6, L)], False),
        (32, [Sibling(28, L)], True),
        (32, [Sibling(27, L)], False),
    ],
)
def test_listens(mine, siblings, expected):
    assert listens(mine, siblings) is expected


@pytest.mark.parametrize(
    "accepts,requests,expected",
    [
        (0, 0, False),  # idle
        (CHURN_ACCEPTS - 1, 0, False),  # too few new connections to be worth saving
        (CHURN_ACCEPTS, CHURN_ACCEPTS, True),  # Connection: close: one request each
        (1000, 1500, True),
        (1000, 2000, False),  # two requests each: keep-alive enough
        (64, 30000, False),  # wrk opening its keep-alive connections
    ],
)
def test_churning(accepts, requests, expected):
    assert churning(accepts, requests) is expected


def test_a_churning_worker_is_neither_yielded_to_nor_woken():
    assert listens(1, [Sibling(0, U)])  # it takes what comes, it is not a taker to yield to
    assert to_wake(Sibling(0, L), [Sibling(5, U)]) == []


@pytest.mark.parametrize(
    "me,siblings,expected",
    [
        (Sibling(1, L), [Sibling(1, Y)], [0]),  # no longer ahead of me: it listens again
        (Sibling(0, L), [Sibling(1, Y)], []),  # still ahead: let it yield
        (Sibling(0, L), [Sibling(1, L)], [0]),  # I listen with fewer: it should yield now
        (Sibling(2, Y), [Sibling(1, L)], []),
        (Sibling(0, OFF), [Sibling(3, Y), Sibling(1, OFF)], [0]),  # leaving: the yielder takes over
        (Sibling(0, L), [Sibling(2, Y), Sibling(2, Y)], []),
        (Sibling(2, L), [Sibling(2, Y), Sibling(3, Y), Sibling(1, L)], []),
    ],
)
def test_to_wake(me, siblings, expected):
    assert to_wake(me, siblings) == expected


@pytest.mark.parametrize("accept", [L, Y, U, OFF])
def test_a_sibling_whose_loop_has_not_ticked_lately_counts_as_not_accepting(accept):
    now = 1_000_000
    assert weighed(3, accept, now, now) == Sibling(3, accept)
    assert weighed(3, accept, now - STALE_MS, now) == Sibling(3, accept)  # ticks every 100 ms
    assert weighed(3, accept, now - STALE_MS - 1, now) == Sibling(3, OFF)  # blocked: not waited for
    assert weighed(3, accept, 0, now) == Sibling(3, OFF)  # never ticked yet


def test_a_blocked_sibling_with_fewer_is_not_waited_for():
    now = 1_000_000
    assert not listens(2, [weighed(1, L, now - 50, now)])
    assert listens(2, [weighed(1, L, now - 2000, now)])


@given(
    st.integers(0, 6),
    st.lists(st.tuples(st.integers(0, 6), st.sampled_from([OFF, L, Y, U])), max_size=6),
)
def test_the_least_loaded_taker_never_yields(mine, others):
    siblings = [Sibling(c, a) for c, a in others]
    takers = [s.connections for s in siblings if s.accept in (L, Y)]
    assert listens(mine, siblings) is (not takers or mine - margin(mine) <= min(takers))


@dataclass
class Worker:
    count: int = 0  # connections it holds
    row: Sibling = Sibling(0, L)  # what it last published (C_CONNECTIONS, C_ACCEPT)
    woken: bool = False  # a wake datagram waiting in its socket


class Pool:
    """The server's glue, minus sockets (server.HardenedServer._decide): decide from the
    siblings' published rows, publish, and wake the siblings whose answer that flips."""

    def __init__(self, workers: int) -> None:
        self.w = [Worker() for _ in range(workers)]

    def decide(self, i: int) -> None:
        me = self.w[i]
        ids = [j for j in range(len(self.w)) if j != i]
        rows = [self.w[j].row for j in ids]
        state = L if listens(me.count, rows) else Y
        if me.row == Sibling(me.count, state):
            return  # nothing new in its row: nobody to wake
        me.row = Sibling(me.count, state)
        for index in to_wake(me.row, rows):
            self.w[ids[index]].woken = True

    def accept(self, i: int) -> None:
        self.decide(i)  # _acceptable decides before it takes the connection
        if self.w[i].row.accept == L:
            self.w[i].count += 1
            self.decide(i)

    def act_on_wake(self, i: int) -> None:
        self.w[i].woken = False
        self.decide(i)

    def tick(self, i: int) -> None:
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
    """``ticks``: a worker's 100 ms tick may come in the middle of the burst (it decides again)."""
    pool = Pool(workers)
    left = burst
    while left:
        assert pool.accepting()
        listening = [i for i, w in enumerate(pool.w) if w.row.accept == L]
        woken = [i for i, w in enumerate(pool.w) if w.woken]
        step = data.draw(
            st.sampled_from(
                ["accept"] * bool(listening) + ["wake"] * bool(woken) + ["tick"] * ticks
            )
        )
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
    assert max(counts) - min(counts) <= 1 + margin(max(counts)), counts


def test_a_burst_of_8_over_4_workers_ends_2_2_2_2_in_every_order():
    """Every interleaving of accepts, wakes acted on and ticks (a depth-first walk of the states).
    With a yielding sibling not counted as a taker until it acted on its wake, a tick between the
    wake and the act let a worker ahead take its connection: 2/3/2/1, as measured once in 12 runs."""
    done, stack, seen_states = set(), [(Pool(4), 8)], set()
    while stack:
        pool, left = stack.pop()
        key = (left, tuple((w.count, w.row, w.woken) for w in pool.w))
        if key in seen_states:
            continue
        seen_states.add(key)
        assert pool.accepting()
        if not left:
            pool.settle()
            done.add(tuple(sorted(w.count for w in pool.w)))
            continue
        for i, w in enumerate(pool.w):
            for step in ["accept"] * (w.row.accept == L) + ["act_on_wake"] * w.woken + ["tick"]:
                after = copy.deepcopy(pool)
                getattr(after, step)(i)
                stack.append((after, left - (after.w[i].count - w.count)))
    assert done == {(2, 2, 2, 2)}


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
    fewest = min(counts)
    assert [w.row.accept for w in pool.w] == [L if c - margin(c) <= fewest else Y for c in counts]
