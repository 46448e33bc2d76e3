"""prometheus_client multiprocess mode for the app's own metrics, wired into the presets' hooks.

Active only when ``prometheus_client`` is installed *and* ``PROMETHEUS_MULTIPROC_DIR`` is set in
the master's environment (directly, or through ``raw_env``, which gunicorn applies before
``on_starting``). Then:

* ``on_starting`` creates the directory and removes the ``*.db`` files a previous run left
  (stale counters would be added to the new ones); not in a master re-executed by USR2, whose
  predecessor's workers still write there;
* ``child_exit`` calls ``prometheus_client.multiprocess.mark_process_dead(pid)``, so the live
  gauges of the dead worker disappear.

One metrics story: this module writes no metric of its own. The worker's and the pool's series
(``hardened_worker_*``, worker exits included) come from ``HARDENED_METRICS_PATH``, which also
appends the app's metrics from this directory to its answer (:func:`hardened_worker._metrics.
app_metrics`): one endpoint, one scrape, no name twice. (Before, this module counted exits in
the master as ``hardened_worker_worker_exits_total``, the name the endpoint uses too.)

prometheus_client decides at its own import whether it is in multiprocess mode, from the
environment: it is imported here lazily, in the master's hooks, after gunicorn applied ``raw_env``.
See ``gunicorn_conf_examples/prometheus``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"


def available() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


def register(hooks: Any) -> None:
    """Add the integration to a preset's hooks, when prometheus_client is installed."""
    if available():
        hooks.on("on_starting")(prepare_directory)
        hooks.on("child_exit")(worker_exited)


def _directory() -> str | None:
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
    server.log.info(
        "hardened_worker: prometheus multiprocess directory %s ready (%d stale files removed)",
        path,
        len(stale),
    )


def worker_exited(server: Any, worker: Any) -> None:
    path = _directory()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, path)
