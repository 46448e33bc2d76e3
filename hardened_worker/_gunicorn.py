"""What hardened_worker relies on in gunicorn's arbiter: the one module that leans on its internals.

Supported: gunicorn 27 (pinned ``>=27.0,<28`` in pyproject.toml); each point is exercised by the
real-process tests (``tests/test_surge.py``, ``tests/test_readiness.py``).

* ``Arbiter.spawn_worker`` builds the worker object in the master (``Worker.__init__``) before it
  forks, passing the arbiter's current ``cfg``; ``Arbiter.reload`` (HUP) replaces ``cfg`` with a new
  object. So a new ``cfg`` object seen in ``__init__`` *is* a new configuration load: the
  generation is counted there, a fact about what the master forked, not a guess from ``setup()``
  calls (gunicorn calls ``setup()`` on every ``cfg.worker_class`` access).
* ``Arbiter.handle_ttin`` adds one to ``num_workers`` and forks at once; ``handle_ttou`` subtracts
  one (never below 1) and ``manage_workers`` then SIGTERMs the workers beyond the count, lowest
  ``worker.age`` first. A recycling worker asks for its successor with TTIN and, once the successor
  is ready, for one fewer with TTOU; the worker objects' ``age`` (read in the master) reports a
  worker that published :attr:`~hardened_worker.readiness.State.RETIRING` as the oldest, so that
  TTOU stops the worker that asked, whichever its age.
* ``Arbiter.reload`` waits for ``min(w.age for w in WORKERS)`` to pass the age of the last old
  worker: a retiring worker (reported as age 0) keeps that wait going until it has left.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from hardened_worker.readiness import State, Table

RETIRING_AGE = 0  # below every real age: gunicorn numbers workers from 1


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


class MasterAge:
    """The ``age`` attribute of a worker object, as the master's ``manage_workers`` sorts by it."""

    table: Optional[Table] = None
    pid: Any
    _age = 0

    @property
    def age(self) -> int:
        table = self.table
        if table is not None and isinstance(self.pid, int) and self.pid != os.getpid() \
                and table.state_of(self.pid, self._age) is State.RETIRING:
            return RETIRING_AGE
        return self._age

    @age.setter
    def age(self, value: int) -> None:
        self._age = value


def ask_for_successor(master_pid: int) -> None:
    os.kill(master_pid, signal.SIGTTIN)


def ask_for_one_fewer(master_pid: int) -> None:
    os.kill(master_pid, signal.SIGTTOU)
