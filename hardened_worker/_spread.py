"""Even spread of connections across workers: which worker takes the next connection.

Why: every worker waits on the same listening socket and the kernel wakes them all; whoever calls
``accept`` first wins, and uvloop (libuv's ``uv__server_io``) accepts until ``EAGAIN`` in one
readiness event, before Python sees any of them. When a client opens its keep-alive connections
at once (wrk, a proxy's upstream pool), the first worker awake takes most of them and keeps them:
one worker served everything in the bench (``python -m bench spread``; uvicorn-worker #34,
gunicorn #1984, #2670, #3071). So the server accepts itself (:mod:`hardened_worker._server`), a
connection at a time, and asks :func:`listens` before each, as Puma's ``wait_for_less_busy_worker``
lets a busy worker leave the accept to an idle one.

The rule: a worker yields the accept while a sibling that takes connections (listening, or
yielding itself) holds fewer open connections than it by more than :func:`margin` (none up to 7
connections, then an eighth of its own). The least loaded taker never yields, so while any worker
takes connections one listens. A worker whose move may flip a sibling's answer wakes that sibling
(:func:`to_wake`, a datagram on the sibling's wake socket), so a yielding worker resumes as soon
as it is no longer ahead, not on a timer; the 100 ms tick re-reads the table as well, for a
sibling that died while others yielded to it. A sibling that yields counts as a taker because it
is one as soon as it acts on its wake: a worker that skipped it took the connection meant for it
(measured: 2/3/2/1 connections over 4 workers, one run in 12, where wakes were slow to be acted on).

A taker is waited for only while its loop runs: one whose loop has not ticked for
:data:`STALE_MS` (its beat, ``readiness.C_BEAT``) is blocked (a handler holding the loop, a
debugger) and counts as not accepting (:func:`weighed`), so a new connection waits at most that
long plus a tick for a blocked worker that holds fewer, never for the whole block (README, "What
still rests on timing").

Pure: counts in, decisions out. Each worker publishes its own ``C_CONNECTIONS`` and ``C_ACCEPT``
in the shared table (:mod:`hardened_worker._readiness`); the server reads its siblings' rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# C_ACCEPT: not accepting at all / listening / yielding / listening whatever the counts (churn:
# siblings neither yield to it nor wake it).
OFF, LISTENING, YIELDING, UNBALANCED = 0, 1, 2, 3
ACCEPT_NAMES = (
    "off",
    "listening",
    "yielding",
    "churn",
)  # as the metrics' JSON and the status show them
CHURN_ACCEPTS = 32  # connections a second: below it, the policy's cost is nothing to save
STALE_MS = 250  # a sibling whose loop has not ticked (every 100 ms) for this long is blocked


def churning(accepts: int, requests: int) -> bool:
    """Did a second with ``accepts`` new connections and ``requests`` answered look like clients
    (or a proxy) without keep-alive, about one request per connection? Then the kernel already
    gives each connection to a worker waiting in ``accept``, an idle one, and the policy would
    only cost: workers yield and wake each other on every connection (measured: 0.77x
    UvicornWorker's requests/s on ``Connection: close`` traffic with the policy, 1.07x without).
    Keep-alive traffic opens few connections, or many that each carry several requests."""
    return accepts >= CHURN_ACCEPTS and requests < 2 * accepts


@dataclass(frozen=True)
class Sibling:
    connections: int
    accept: int  # OFF, LISTENING, YIELDING or UNBALANCED


TAKERS = (
    LISTENING,
    YIELDING,
)  # siblings a worker leaves the next connection to when they hold fewer


def weighed(connections: int, accept: int, beat_ms: int, now_ms: int) -> Sibling:
    """A sibling's published row as the rule weighs it: one whose loop last ticked (``beat_ms``)
    more than :data:`STALE_MS` before ``now_ms`` cannot accept until its loop runs again, and
    counts as OFF."""
    return Sibling(connections, accept if now_ms - beat_ms <= STALE_MS else OFF)


def margin(mine: int) -> int:
    """How many connections more than a sibling a worker holding ``mine`` may hold and still
    accept. None for a few connections (8 over 2 or 4 workers end exactly even); an eighth
    beyond, so that with connections opened and closed all the time (clients without keep-alive)
    workers do not yield and wake each other on every connection: measured, a strict rule cost a
    quarter of the requests/s of `Connection: close` traffic."""
    return mine // 8


def listens(mine: int, siblings: Sequence[Sibling]) -> bool:
    """Should a worker holding ``mine`` open connections accept the next one? No while a sibling
    that takes connections holds fewer by more than :func:`margin` (it takes it instead)."""
    below = mine - margin(mine)
    return not any(s.accept in TAKERS and s.connections < below for s in siblings)


def to_wake(me: Sibling, siblings: Sequence[Sibling]) -> list[int]:
    """Indexes of the siblings whose own :func:`listens`, seen with ``me`` as it is now, differs
    from what they do: a yielding one that should listen again, a listening one that should yield.
    Siblings that do not accept at all (OFF) or accept whatever the counts (UNBALANCED) are left
    alone."""
    everyone = [me, *siblings]
    wake = []
    for index, s in enumerate(siblings):
        if s.accept in (OFF, UNBALANCED):
            continue
        others = [other for at, other in enumerate(everyone) if at != index + 1]
        if listens(s.connections, others) != (s.accept == LISTENING):
            wake.append(index)
    return wake
