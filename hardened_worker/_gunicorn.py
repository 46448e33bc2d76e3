"""What hardened_worker relies on in gunicorn's arbiter: the one module that leans on its internals.

Supported: the gunicorn range of :mod:`hardened_worker._versions` (checked first, at import); each
point is exercised by the real-process tests (``tests/test_surge.py``, ``tests/test_pool.py``,
``tests/test_readiness.py``) and checked at import (:func:`_check_arbiter`).

* ``Arbiter.spawn_worker`` builds the worker object in the master (``Worker.__init__``) before it
  forks, passing the arbiter's current ``cfg``; ``Arbiter.reload`` (HUP) replaces ``cfg`` with a new
  object. So a new ``cfg`` object seen in ``__init__`` *is* a new configuration load: the
  generation is counted there, a fact about what the master forked, not a guess from ``setup()``
  calls (gunicorn calls ``setup()`` on every ``cfg.worker_class`` access).
* ``Arbiter.manage_workers`` (called on every pass of the master's loop, by ``reload`` and by
  ``handle_ttin``/``handle_ttou``) is replaced for this worker class by :func:`manage_workers`,
  which takes the pool decision from :func:`hardened_worker._pool.plan` and carries it out with the
  arbiter's own ``spawn_worker`` and ``kill_worker``. It reads ``Arbiter.WORKERS`` (pid -> worker
  object), ``num_workers`` and ``worker_class``; it leaves ``num_workers`` alone (gunicorn's: the
  configuration plus the operator's TTIN/TTOU, reset on HUP). The original still runs afterwards,
  with nothing left to spawn or stop, for gunicorn's own worker-count and backlog metrics.
* ``--reload``: gunicorn's ``Worker.init_process`` builds ``self.reloader`` (a thread) before
  ``load_wsgi`` and starts it after; its callback ends only its own thread under an asyncio
  worker (it sets ``alive``, which uvicorn never reads). :func:`redirect_reloader` replaces the
  callback (``ReloaderBase._callback``, also the inotify reloader's) before the thread starts.
* A worker wakes the master with SIGCHLD (:func:`wake_master`): the master's loop otherwise sleeps up
  to a second on its signal queue; its SIGCHLD handler only reaps exited children (``reap_workers``,
  ``WNOHANG``), harmless when none has exited.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from gunicorn.arbiter import Arbiter

from hardened_worker import _pool as pool
from hardened_worker import _versions
from hardened_worker._readiness import State, Table

_versions.check()  # an unsupported gunicorn, uvicorn or uvicorn-worker: one line, before anything moved

_ARBITER_ATTRIBUTES = ("WORKERS", "manage_workers", "spawn_worker", "kill_worker", "reap_workers")


def _check_arbiter() -> None:
    """Fail at import, naming what moved, rather than misbehave in a running master."""
    missing = [name for name in _ARBITER_ATTRIBUTES if not hasattr(Arbiter, name)]
    if missing:
        raise ImportError(
            "hardened_worker: this gunicorn's Arbiter lacks "
            + ", ".join(missing)
            + "; supported: gunicorn "
            + _versions.SUPPORTED[0].specifier
        )


_check_arbiter()


class Generations:
    """Counts the master's configuration loads by the identity of the ``cfg`` it spawns with."""

    def __init__(self) -> None:
        self._cfg: Any = None
        self.current = 0

    def of(self, cfg: Any) -> int:
        if cfg is not self._cfg:
            self._cfg = cfg
            self.current += 1
        return self.current


def members(arbiter: Any, table: Table) -> list[pool.Member]:
    """The master's workers as their slots describe them. ``FREE`` means two things there: not yet
    claimed (just forked: booting) or left (exited, not yet reaped: leaving); the master's worker
    object remembers whether its worker ever published a state, which tells them apart."""
    found = []
    for pid, worker in list(arbiter.WORKERS.items()):
        state = table.state_of(pid, worker.age)
        if state is not State.FREE:
            worker.hardened_published = True
        elif not getattr(worker, "hardened_published", False):
            state = State.BOOTING
        found.append(pool.Member(pid, worker.age, getattr(worker, "generation", 0), state))
    return found


def install_pool_owner(
    worker_class: type, table: Callable[[], Table | None], generations: Generations
) -> None:
    """Replace ``Arbiter.manage_workers`` (in the master, once) by one that follows
    :func:`hardened_worker._pool.plan` while ``worker_class`` serves."""
    original = Arbiter.manage_workers
    if getattr(original, "hardened_worker", False):
        return

    def manage_workers(arbiter: Any) -> None:
        shared = table()
        if shared is None or not issubclass(arbiter.worker_class, worker_class):
            return original(arbiter)  # a HUP switched to another worker class
        shared.record_wanted(arbiter.num_workers)  # what a surging worker waits for (_pool.py)
        decided = pool.plan(arbiter.num_workers, members(arbiter, shared), generations.current)
        for _ in range(decided.spawn):
            arbiter.spawn_worker()
            time.sleep(0.1 * random.random())  # as gunicorn's spawn_workers spreads its forks
        for pid in decided.stop:
            arbiter.kill_worker(pid, signal.SIGTERM)
        configured = arbiter.num_workers
        arbiter.num_workers = len(arbiter.WORKERS)  # nothing left for the original to spawn or stop
        try:
            original(arbiter)
        finally:
            arbiter.num_workers = configured

    manage_workers.hardened_worker = True  # type: ignore[attr-defined]
    Arbiter.manage_workers = manage_workers


def wake_master(master_pid: int) -> None:
    """The master reads the table on its next pass; SIGCHLD makes that pass now."""
    try:
        os.kill(master_pid, signal.SIGCHLD)
    except OSError:
        pass  # the master is gone: the worker's parent check handles that


def redirect_reloader(reloader: Any, changed: Callable[[str], None]) -> None:
    """Make gunicorn's --reload call ``changed(filename)`` (from the reloader's thread)."""
    if not hasattr(reloader, "_callback"):
        raise RuntimeError(
            "hardened_worker: gunicorn's reloader has no _callback; "
            "supported: gunicorn " + _versions.SUPPORTED[0].specifier
        )
    reloader._callback = changed
