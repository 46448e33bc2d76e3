"""A worker's fate as one state machine: phases, the events that move it, the actions that follow.

No I/O here (the model is h11's ``_state.py``): the worker posts an :class:`Event`, :meth:`Lifecycle.post`
looks the move up in :data:`TRANSITIONS` and returns the :class:`Action` values the worker then
carries out. An event the table does not list for the current phase raises
:class:`LifecycleError`, so a wrong assumption shows up as an error in a test, not as a flag nobody
reset. The exit reason and the health state are read off the machine, never kept beside it.

Phases::

    BOOTING    importing the app, lifespan startup (bounded by HARDENED_STARTUP_TIMEOUT)
    WAITING    rolling reload: forked, waiting for room to load the app (no startup timer)
    READY      serving
    SURGING    recycling: its successor is starting, this worker keeps serving until it is ready
    DEFERRING  told to stop: keeps serving until its successors are ready (the readiness gate)
    STOPPING   the drain delay: still serving, health answers 503 so load balancers move away
    DRAINING   no longer accepting; open requests finish, then lifespan shutdown
    EXITING    leaving the process

``README.md`` shows :func:`markdown_table`, generated from :data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    BOOTING = "booting"
    WAITING = "waiting"
    READY = "ready"
    SURGING = "surging"
    DEFERRING = "deferring"
    STOPPING = "stopping"
    DRAINING = "draining"
    EXITING = "exiting"


class Event(enum.Enum):
    # signals
    STOP = "stop"  # SIGTERM, no newer generation known
    SUPERSEDED = "superseded"  # SIGTERM while a newer generation exists (a reload)
    QUICK_STOP = "quick stop"  # SIGINT / SIGQUIT
    ABORT = "abort"  # SIGABRT: the master's --timeout
    # booting
    NEED_TURN = "need turn"  # rolling reload: no room to load the app yet
    TURN = "turn"  # rolling reload: room to load the app
    STARTUP_DONE = "startup done"  # lifespan startup completed and the health check passes
    STARTUP_FAILED = "startup failed"
    STARTUP_TIMED_OUT = "startup timed out"
    # the readiness gate, while deferring or surging
    SUCCESSORS_READY = "successors ready"
    NO_SUCCESSOR = "no successor"  # nothing to wait for: a plain shutdown, TTOU
    RELOAD_REJECTED = "reload rejected"  # the generation meant to replace this one cannot start
    # reasons to recycle
    MEMORY_SOFT = "memory soft"
    MEMORY_HARD = "memory hard"
    REQUEST_COUNT = "request count"  # gunicorn's --max-requests (+ jitter)
    LIFETIME = "lifetime"  # HARDENED_MAX_LIFETIME (- jitter)
    CODE_CHANGED = "code changed"  # gunicorn's --reload saw a file change
    PARENT_GONE = "parent gone"
    # timers and the drain
    DELAY_OVER = "delay over"  # HARDENED_DRAIN_DELAY elapsed
    DEADLINE = "deadline"  # the ready timeout while waiting for successors; the drain deadline
    DRAIN_DONE = "drain done"


class Reason(enum.Enum):
    """Why a worker left: in its last log line, the table (for ``child_exit``) and the metrics."""

    SHUTDOWN = "shutdown"  # SIGTERM from the master or an operator (TTOU, stop)
    RELOAD = "reload"  # retired on HUP once its successors were ready
    QUICK_STOP = "quick-stop"  # SIGINT / SIGQUIT
    MAX_REQUESTS = "max-requests"  # gunicorn's --max-requests
    MEMORY = "memory"  # HARDENED_MEMORY_LIMIT, HARDENED_MEMORY_CGROUP
    TIMEOUT = "timeout"  # SIGABRT from the master's --timeout
    STARTUP_FAILED = "startup-failed"  # app import, lifespan startup or the health check failed
    STARTUP_TIMEOUT = "startup-timeout"  # HARDENED_STARTUP_TIMEOUT passed
    PARENT_DIED = "parent-died"  # the master is gone
    CRASH = "crash"  # an unexpected exception
    MAX_LIFETIME = "max-lifetime"  # HARDENED_MAX_LIFETIME


class Action(enum.Enum):
    ARM_STARTUP_TIMER = "arm the startup timer"
    ANNOUNCE_READY = "stop the startup timer, log ready, notify systemd"
    START_SUCCESSOR = "publish SURGING: the master forks one more worker"
    RETIRE = "publish RETIRING: the master stops this worker first"
    CANCEL_SURGE = "stop surging: the master forks no successor for this worker"
    BEGIN_DRAIN = "stop accepting; Connection: close on every response"
    CLOSE_ALL = "close every connection, cancel every request"
    PLAN_DRAIN = "start the drain delay (health answers 503)"
    LOG_ROLLBACK = "log that the stop is cancelled"
    LOG_NOT_READY = "log that successors were not ready in time"
    EXIT = "leave the event loop (status 0) or the process (startup: 1, 3 or 4)"


class LifecycleError(RuntimeError):
    """An event the table does not allow in the current phase."""


@dataclass(frozen=True)
class Move:
    to: Phase
    actions: tuple[Action, ...] = ()
    reason: Reason | None = None  # set when the move decides why the worker leaves


_SIGNALS_WHILE_BOOTING = {
    Event.STOP: Move(Phase.EXITING, (Action.EXIT,), Reason.SHUTDOWN),
    Event.SUPERSEDED: Move(Phase.EXITING, (Action.EXIT,), Reason.RELOAD),
    Event.QUICK_STOP: Move(Phase.EXITING, (Action.EXIT,), Reason.QUICK_STOP),
    Event.ABORT: Move(Phase.EXITING, (Action.EXIT,), Reason.TIMEOUT),
    Event.PARENT_GONE: Move(Phase.EXITING, (Action.EXIT,), Reason.PARENT_DIED),
}

_QUICK = Move(Phase.DRAINING, (Action.BEGIN_DRAIN, Action.CLOSE_ALL), Reason.QUICK_STOP)
_ABORT = Move(Phase.EXITING, (Action.EXIT,), Reason.TIMEOUT)
_HARD = Move(Phase.DRAINING, (Action.BEGIN_DRAIN,), Reason.MEMORY)
_ORPHAN = Move(Phase.DRAINING, (Action.BEGIN_DRAIN,), Reason.PARENT_DIED)


def _stay(phase: Phase, *events: Event) -> dict[Event, Move]:
    """Events that change nothing in ``phase`` (a repeated SIGTERM, a second reason to leave)."""
    return {event: Move(phase) for event in events}


_LEAVING_ALREADY = (
    Event.STOP,
    Event.SUPERSEDED,
    Event.MEMORY_SOFT,
    Event.REQUEST_COUNT,
    Event.LIFETIME,
    Event.CODE_CHANGED,
)

TRANSITIONS: dict[Phase, dict[Event, Move]] = {
    Phase.BOOTING: {
        Event.NEED_TURN: Move(Phase.WAITING),
        Event.STARTUP_DONE: Move(Phase.READY, (Action.ANNOUNCE_READY,)),
        Event.STARTUP_FAILED: Move(Phase.EXITING, (Action.EXIT,), Reason.STARTUP_FAILED),
        Event.STARTUP_TIMED_OUT: Move(Phase.EXITING, (Action.EXIT,), Reason.STARTUP_TIMEOUT),
        **_SIGNALS_WHILE_BOOTING,
    },
    Phase.WAITING: {
        Event.TURN: Move(Phase.BOOTING, (Action.ARM_STARTUP_TIMER,)),
        **_SIGNALS_WHILE_BOOTING,
    },
    Phase.READY: {
        Event.STOP: Move(Phase.DEFERRING),
        Event.SUPERSEDED: Move(Phase.DEFERRING),
        Event.QUICK_STOP: _QUICK,
        Event.ABORT: _ABORT,
        Event.MEMORY_SOFT: Move(Phase.SURGING, (Action.START_SUCCESSOR,), Reason.MEMORY),
        Event.REQUEST_COUNT: Move(Phase.SURGING, (Action.START_SUCCESSOR,), Reason.MAX_REQUESTS),
        Event.LIFETIME: Move(Phase.SURGING, (Action.START_SUCCESSOR,), Reason.MAX_LIFETIME),
        Event.CODE_CHANGED: Move(Phase.SURGING, (Action.START_SUCCESSOR,), Reason.RELOAD),
        Event.MEMORY_HARD: _HARD,
        Event.PARENT_GONE: _ORPHAN,
    },
    Phase.SURGING: {
        Event.SUCCESSORS_READY: Move(Phase.DRAINING, (Action.RETIRE, Action.BEGIN_DRAIN)),
        Event.DEADLINE: Move(
            Phase.DRAINING, (Action.LOG_NOT_READY, Action.RETIRE, Action.BEGIN_DRAIN)
        ),
        Event.RELOAD_REJECTED: Move(Phase.READY, (Action.LOG_ROLLBACK, Action.CANCEL_SURGE)),
        Event.STOP: Move(Phase.DEFERRING, (Action.CANCEL_SURGE,)),
        Event.SUPERSEDED: Move(Phase.DEFERRING, (Action.CANCEL_SURGE,)),
        Event.QUICK_STOP: _QUICK,
        Event.ABORT: _ABORT,
        Event.MEMORY_HARD: Move(Phase.DRAINING, (Action.RETIRE, Action.BEGIN_DRAIN), Reason.MEMORY),
        Event.PARENT_GONE: _ORPHAN,
        **_stay(
            Phase.SURGING,
            Event.MEMORY_SOFT,
            Event.REQUEST_COUNT,
            Event.LIFETIME,
            Event.CODE_CHANGED,
        ),
    },
    Phase.DEFERRING: {
        Event.SUCCESSORS_READY: Move(Phase.STOPPING, (Action.PLAN_DRAIN,), Reason.RELOAD),
        Event.NO_SUCCESSOR: Move(Phase.STOPPING, (Action.PLAN_DRAIN,), Reason.SHUTDOWN),
        Event.DEADLINE: Move(
            Phase.STOPPING, (Action.LOG_NOT_READY, Action.PLAN_DRAIN), Reason.SHUTDOWN
        ),
        Event.RELOAD_REJECTED: Move(Phase.READY, (Action.LOG_ROLLBACK,)),
        Event.QUICK_STOP: _QUICK,
        Event.ABORT: _ABORT,
        Event.MEMORY_HARD: _HARD,
        Event.PARENT_GONE: _ORPHAN,
        **_stay(Phase.DEFERRING, *_LEAVING_ALREADY),
    },
    Phase.STOPPING: {
        Event.DELAY_OVER: Move(Phase.DRAINING, (Action.BEGIN_DRAIN,)),
        Event.QUICK_STOP: _QUICK,
        Event.ABORT: _ABORT,
        Event.MEMORY_HARD: Move(Phase.DRAINING, (Action.BEGIN_DRAIN,)),
        Event.PARENT_GONE: Move(Phase.DRAINING, (Action.BEGIN_DRAIN,)),
        **_stay(Phase.STOPPING, *_LEAVING_ALREADY),
    },
    Phase.DRAINING: {
        Event.DRAIN_DONE: Move(Phase.EXITING, (Action.EXIT,)),
        Event.DEADLINE: Move(Phase.DRAINING, (Action.CLOSE_ALL,)),
        Event.QUICK_STOP: Move(Phase.DRAINING, (Action.CLOSE_ALL,)),
        Event.ABORT: _ABORT,
        **_stay(Phase.DRAINING, *_LEAVING_ALREADY, Event.MEMORY_HARD, Event.PARENT_GONE),
    },
    # A timer or a signal that fires while the worker leaves changes nothing.
    Phase.EXITING: _stay(
        Phase.EXITING,
        *_LEAVING_ALREADY,
        Event.QUICK_STOP,
        Event.ABORT,
        Event.PARENT_GONE,
        Event.MEMORY_HARD,
        Event.DRAIN_DONE,
        Event.DEADLINE,
        Event.STARTUP_TIMED_OUT,
        Event.STARTUP_FAILED,
    ),
}

SERVING = frozenset({Phase.READY, Phase.SURGING, Phase.DEFERRING, Phase.STOPPING})


class Lifecycle:
    """One worker's phase and, once decided, why it leaves."""

    def __init__(self) -> None:
        self.phase = Phase.BOOTING
        self.reason: Reason | None = None

    def post(self, event: Event) -> tuple[Action, ...]:
        move = TRANSITIONS[self.phase].get(event)
        if move is None:
            raise LifecycleError(f"event {event.value!r} is not expected while {self.phase.value}")
        self.phase = move.to
        if move.reason is not None:
            self.reason = move.reason  # a later departure (quick stop, abort) says more
        if self.phase is Phase.READY:
            self.reason = None  # a cancelled stop or surge
        return move.actions

    def allows(self, event: Event) -> bool:
        return event in TRANSITIONS[self.phase]

    @property
    def serving(self) -> bool:
        return self.phase in SERVING

    @property
    def health(self) -> str:
        """What the health path reports: only ``ready`` answers 200."""
        if self.phase in (Phase.BOOTING, Phase.WAITING):
            return "booting"
        if self.phase in (Phase.READY, Phase.SURGING, Phase.DEFERRING):
            return "ready"
        return self.phase.value


def markdown_table() -> str:
    """The table of every move (docs/how-it-works.md), generated from :data:`TRANSITIONS`."""
    rows = ["| phase | event | next phase | actions | exit reason |", "|---|---|---|---|---|"]
    for phase, moves in TRANSITIONS.items():
        for event, move in moves.items():
            if move.to is phase and not move.actions:
                continue  # listed below as "ignored"
            actions = "; ".join(a.value for a in move.actions) or "-"
            reason = move.reason.value if move.reason else "-"
            rows.append(
                f"| {phase.value} | {event.value} | {move.to.value} | {actions} | {reason} |"
            )
    ignored = [
        f"{phase.value}: "
        + ", ".join(e.value for e, m in moves.items() if m.to is phase and not m.actions)
        for phase, moves in TRANSITIONS.items()
        if any(m.to is phase and not m.actions for m in moves.values())
    ]
    return "\n".join(rows) + "\n\nIgnored (no change): " + "; ".join(ignored) + ".\n"
