"""The settings every deployment of the hardened worker shares; ``vm`` and ``kubernetes`` build on it.

Use it as the whole configuration::

    gunicorn -c python:hardened_worker.presets.base app:app

or as the first line of your own ``gunicorn.conf.py``, then override any value::

    from hardened_worker.presets.base import *
    workers = 4

Hooks you define there run after the preset's (see :mod:`hardened_worker.presets._hooks`; say so
with ``@also``). Command-line options override both.

Environment, read when the configuration loads (so through the environment, not ``raw_env``,
which gunicorn applies later):

* ``HARDENED_LOG_FORMAT``: ``text`` (default) or ``json`` (one JSON object per line,
  :mod:`hardened_worker.presets._jsonlog`);
* ``HARDENED_ACCESS_LOG``: ``true`` turns the access log on (stdout); off by default, the proxy in
  front usually keeps one already;
* ``PROMETHEUS_MULTIPROC_DIR``: with ``prometheus_client`` installed, multiprocess bookkeeping
  (:mod:`hardened_worker.presets._prometheus`).

Importing a preset validates every ``HARDENED_*`` variable of the environment (the table of
:mod:`hardened_worker.config`): a bad one stops gunicorn with its one line, ``--check-config``
included, which runs none of the worker's own code.
"""

from __future__ import annotations

import logging
import os

from hardened_worker import _cgroup, _checks
from hardened_worker import config as _config
from hardened_worker.presets import _hooks, _jsonlog, _prometheus


def _load() -> _config.Settings:
    try:
        return _config.load(os.environ)
    except _config.ConfigError as exc:
        raise SystemExit(str(exc)) from None


# Once per process: gunicorn re-reads a configuration file at HUP, but the preset modules it
# imports stay imported, so a HUP never gets here (where SystemExit would stop the master).
settings = _load()


def cgroup_root() -> str | None:
    """``HARDENED_CGROUP_ROOT``, for the presets that size themselves from the cgroup."""
    return settings.cgroup_root


def worker_count(root: str | None) -> int:
    """:func:`hardened_worker._cgroup.worker_count`, with a bad ``WEB_CONCURRENCY`` as one line."""
    try:
        return _cgroup.worker_count(root)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


worker_class = "hardened_worker.Worker"

# --timeout is a heartbeat for this worker: a worker whose event loop has not ticked for 30 s is
# killed, with every thread's stack in the log. It does not bound a request's duration.
timeout = 30
# TERM -> every worker waits HARDENED_DRAIN_DELAY, drains, runs lifespan shutdown and exits 0,
# all within this; the master SIGKILLs what is left after it. A supervisor's own stop timeout
# (systemd TimeoutStopSec, Kubernetes terminationGracePeriodSeconds) must be longer.
graceful_timeout = 30
# Idle keep-alive connections are closed by the worker after 75 s. The proxy in front must close
# them first: nginx's upstream keepalive_timeout defaults to 60 s, AWS ALB's idle timeout to 60 s.
# When the server closes an idle connection at the moment the proxy reuses it, the request on it
# fails (the proxy retries an idempotent one, never a POST). Raise this above any proxy idle
# timeout that is longer (Google Cloud load balancers keep backend connections 600 s: use 620).
keepalive = 75

errorlog = "-"
loglevel = "info"
accesslog = "-" if settings.access_log else None
logconfig_dict = (
    _jsonlog.logconfig_dict(access=accesslog is not None) if settings.log_format == "json" else {}
)

HOOKS = _hooks.Hooks("base")

# A worker leaving for these reasons was asked to; the others deserve a look.
_EXPECTED_EXITS = frozenset({"shutdown", "reload", "quick-stop", "max-requests"})


@HOOKS.on("when_ready")
def _log_started(server) -> None:
    cfg = server.cfg
    server.log.info(
        "hardened_worker: master %s started: %d workers of %s booting; timeout %g s, "
        "graceful-timeout %g s, keep-alive %g s",
        server.pid,
        server.num_workers,
        cfg.worker_class_str,
        cfg.timeout,
        cfg.graceful_timeout,
        cfg.keepalive,
    )


@HOOKS.on("on_reload")
def _log_reload(server) -> None:
    server.log.info(
        "hardened_worker: master %s reloading (HUP): %d new workers boot; the old ones "
        "serve until those are ready",
        server.pid,
        server.cfg.workers,
    )


@HOOKS.on("when_ready")
@HOOKS.on("on_reload")
def _warn_lost_settings(server) -> None:
    for line in _checks.warnings(server.cfg):
        server.log.warning("%s", line)


@HOOKS.on("nworkers_changed")
def _log_worker_count(server, new_value, old_value) -> None:
    if old_value is not None and new_value != old_value:
        server.log.info("hardened_worker: worker count %s -> %s", old_value, new_value)


@HOOKS.on("child_exit")
def _log_exit(server, worker) -> None:
    reason = getattr(worker, "exit_reason", None) or "unknown"
    level = logging.INFO if reason in _EXPECTED_EXITS else logging.WARNING
    # With gunicorn's statsd_host, the extra fields also count the exit as a statsd counter.
    server.log.log(
        level,
        "hardened_worker: worker %s exited: reason %s",
        worker.pid,
        reason,
        extra={
            "metric": "hardened_worker.worker_exits." + reason.replace("-", "_"),
            "value": 1,
            "mtype": "counter",
        },
    )


@HOOKS.on("on_exit")
def _log_stopped(server) -> None:
    server.log.info("hardened_worker: master %s stopped", server.pid)


_prometheus.register(HOOKS)

__all__ = [
    "worker_class",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "errorlog",
    "loglevel",
    "accesslog",
    "logconfig_dict",
    *HOOKS.export(globals()),
]
