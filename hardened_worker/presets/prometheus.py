"""prometheus_client multiprocess mode, wired into the presets' hooks.

Active only when ``prometheus_client`` is installed *and* ``PROMETHEUS_MULTIPROC_DIR`` is set in
the master's environment (directly, or through ``raw_env``, which gunicorn applies before
``on_starting``). Then:

* ``on_starting`` creates the directory and removes the ``*.db`` files a previous run left
  (stale counters would be added to the new ones); not in a master re-executed by USR2, whose
  predecessor's workers still write there;
* ``child_exit`` calls ``prometheus_client.multiprocess.mark_process_dead(pid)``, so the live
  gauges of the dead worker disappear, and counts the exit in
  ``hardened_worker_worker_exits_total{reason="..."}`` (the reasons of
  :data:`hardened_worker.diagnostics.EXIT_REASONS`). The counter lives in the master; it reaches
  ``/metrics`` through the multiprocess collector like every worker's metrics.

prometheus_client decides at its own import whether it is in multiprocess mode, from the
environment: it is imported here lazily, in the master's hooks, after gunicorn applied ``raw_env``.
(The app must build its ``/metrics`` with ``MultiProcessCollector``; see
``gunicorn_conf_examples/prometheus``.)
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any, Optional

ENV = "PROMETHEUS_MULTIPROC_DIR"
METRIC = "hardened_worker_worker_exits"

_counter: Any = None


def available() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


def register(hooks: Any) -> None:
    """Add the integration to a preset's hooks, when prometheus_client is installed."""
    if available():
        hooks.on("on_starting")(prepare_directory)
        hooks.on("child_exit")(worker_exited)


def _directory() -> Optional[str]:
    return os.environ.get(ENV) or None


def prepare_directory(server: Any) -> None:
    path = _directory()
    if path is None:
        return
    os.makedirs(path, exist_ok=True)
    if getattr(server, "master_pid", 0):  # re-executed by USR2: the old master's files are live
        return
    stale = glob.glob(os.path.join(path, "*.db"))
    for name in stale:
        os.remove(name)
    server.log.info("hardened_worker: prometheus multiprocess directory %s ready (%d stale files "
                    "removed)", path, len(stale))


def worker_exited(server: Any, worker: Any) -> None:
    path = _directory()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, path)
    exits_counter(server.log).labels(reason=getattr(worker, "exit_reason", "unknown")).inc()


def exits_counter(log: Any) -> Any:
    global _counter
    if _counter is None:
        from prometheus_client import Counter, values

        if values.ValueClass is values.MutexValue:
            log.warning("hardened_worker: prometheus_client was imported in the master before %s "
                        "was set: worker exits are not counted in the shared directory", ENV)

        # registry=None: in multiprocess mode the collector reads the files, not a registry.
        _counter = Counter(METRIC, "Workers that exited, by hardened_worker exit reason",
                           ["reason"], registry=None)
    return _counter
