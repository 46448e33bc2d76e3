"""How many workers the master keeps, and which it stops: decided in one place, in the master.

gunicorn's ``Arbiter.manage_workers`` forks while it has fewer workers than ``num_workers`` and
SIGTERMs the oldest beyond it. A recycling worker needs one more worker for a while (its successor
starts first, the surge) and then one fewer (itself). Asking the master with SIGTTIN/SIGTTOU made
the pool size drift: ``Arbiter.reload`` resets ``num_workers`` from the configuration, so a TTOU
queued behind a HUP removed a worker for good, and SIGCONT discards pending TTIN/TTOU.

Here the workers only *publish* their state in the shared table (:mod:`hardened_worker._readiness`)
and the master decides from it on every pass of its loop (:func:`plan`, called from the patched
``manage_workers`` in :mod:`hardened_worker._gunicorn`). ``num_workers`` stays gunicorn's: the
configured ``--workers`` plus the operator's TTIN/TTOU, reset on HUP as gunicorn documents. So the
pool holds exactly ``num_workers`` serving workers, plus one per surge of the current generation,
whatever order HUP, TTIN/TTOU, surges and deaths come in (``tests/test_pool_model.py``).

Pure: a list of :class:`Member` in, a :class:`Plan` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hardened_worker._readiness import State

# On their way out: stopped first when the pool has one too many (a retiring worker whose successor
# is ready, a draining worker the master already signalled: gunicorn re-sends SIGTERM, harmless).
LEAVING = frozenset({State.RETIRING, State.STOPPING, State.FREE})


@dataclass(frozen=True)
class Member:
    """One worker the master has forked and not yet reaped, as its table slot describes it."""

    pid: int
    age: int  # gunicorn's spawn order
    generation: int  # configuration loads (1 + HUPs) when it was forked
    state: State


@dataclass(frozen=True)
class Plan:
    spawn: int  # workers to fork now
    stop: tuple[int, ...]  # pids to SIGTERM, in this order


def successor_ready(me: Member, peers: Sequence[Member], wanted: int) -> bool:
    """May surging worker ``me`` retire? Once the pool without it is at the master's size: as many
    ready workers of its generation or newer as the master wants. Not "the worker forked after my
    surge began": the master forks for several reasons (a death, the operator's TTIN), and a worker
    forked for one of them just before the surge is as good a successor."""
    return (
        sum(1 for p in peers if p.state is State.READY and p.generation >= me.generation) >= wanted
    )


def target(wanted: int, members: Sequence[Member], generation: int) -> int:
    """``wanted`` (gunicorn's ``num_workers``) plus one per surge of the current generation: a
    surging worker of an older one is being replaced by the reload already."""
    return wanted + sum(
        1 for m in members if m.state is State.SURGING and m.generation == generation
    )


def plan(wanted: int, members: Sequence[Member], generation: int) -> Plan:
    """What the master does on this pass.

    A retiring worker (its successor is ready) is stopped whatever the count, and does not count:
    had the pool been short meanwhile (a death, the operator's TTIN), its successor filled that
    place and the retiring worker would otherwise wait for a SIGTERM that never comes.

    A worker that failed to start (``FAILED``, still alive while it pauses before exiting) holds
    its place, so the master does not fork its replacement at once (no fork loop), and is not
    counted as serving, so it never makes the master stop a serving worker (a rejected reload's
    workers must not push the old generation out). Beyond the target the master stops leaving
    workers first, then the oldest, as gunicorn does.
    """
    goal = target(wanted, members, generation)
    retiring = [m for m in members if m.state is State.RETIRING]
    serving = [m for m in members if m.state not in (State.FAILED, State.RETIRING)]
    spawn = max(0, goal - (len(members) - len(retiring)))
    order = sorted(serving, key=lambda m: (m.state not in LEAVING, m.age))
    excess = max(0, len(serving) - goal)
    return Plan(spawn, tuple(m.pid for m in retiring + order[:excess]))
