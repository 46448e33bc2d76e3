"""A container in a Kubernetes pod (or any orchestrator that sends SIGTERM and waits a grace period).

``gunicorn -c python:hardened_worker.presets.kubernetes app:app``, or ``from
hardened_worker.presets.kubernetes import *`` at the top of your ``gunicorn.conf.py``. Everything
of :mod:`~.base`, plus:

* ``bind``: ``0.0.0.0:$PORT`` (default 8000).
* ``workers``: ``$WEB_CONCURRENCY``, else ``ceil`` of the container's CPU limit (cgroup v2
  ``cpu.max``, v1 ``cpu.cfs_quota_us``, under ``HARDENED_CGROUP_ROOT``), at least 1 and at most the
  CPUs available (:func:`hardened_worker._cgroup.worker_count`); with no limit, ``ceil`` of
  ``$HARDENED_CPU_REQUEST`` (the pod's ``requests.cpu`` through the downward API), else one worker,
  and the start-up line says so. Not one per CPU of the node: many clusters omit CPU limits on
  purpose, and 64 apps in a 1 GiB pod on a 64-core node is no default.
* ``graceful_timeout``: ``$HARDENED_TERMINATION_GRACE_PERIOD`` (default 30s, keep it equal to the
  pod's ``terminationGracePeriodSeconds``) minus a 5 s margin, in whole seconds, so the master's
  SIGKILL of late workers comes before the kubelet's SIGKILL of the whole container, and the exit
  is logged.
* ``raw_env`` defaults, each only when the environment does not set it already:
  ``HARDENED_HEALTH_PATH=/healthz`` (point the readiness probe at it) and
  ``HARDENED_DRAIN_DELAY=5s`` (keep serving after SIGTERM while the endpoint removal reaches
  every kube-proxy and ingress; health answers 503 meanwhile, so no ``preStop`` sleep is needed).
  The delay is counted inside ``graceful_timeout``; with a short grace period it shrinks to half
  of what is left after the 1 s minimum drain. Extend ``raw_env`` in your own configuration
  (``raw_env = [*raw_env, ...]``); one that replaces it loses these, and a warning says so.
* ``worker_tmp_dir = "/dev/shm"`` when it exists: the heartbeat file off the container's overlay
  filesystem, whose writes can stall.
* Logs to stdout/stderr (from :mod:`~.base`); ``HARDENED_LOG_FORMAT=json`` for JSON lines.
"""

from __future__ import annotations

import math
import os

from hardened_worker import _cgroup
from hardened_worker import presets as _presets
from hardened_worker.presets import _hooks
from hardened_worker.presets import base as _base
from hardened_worker.presets.base import *  # noqa: F401,F403

MARGIN = 5  # seconds between gunicorn's graceful timeout and the kubelet's SIGKILL
MAX_DRAIN_DELAY = 5.0


def _whole(name: str, default: str) -> int:
    raw = os.environ.get(name, default)
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise SystemExit(
            f"hardened_worker: {name}={raw!r} is not a positive whole number; "
            f"use e.g. {name}={default}"
        )
    return int(text)


def graceful_timeout_for(grace_period: float) -> int:
    """``--graceful-timeout`` (whole seconds) that ends ``MARGIN`` s before the kubelet's SIGKILL."""
    return max(1, int(grace_period) - MARGIN)


def drain_delay_for(graceful: float) -> float:
    """The default drain delay: 5 s, or less when the graceful timeout cannot hold it.

    The worker needs the delay plus at least 1 s of drain within the graceful timeout
    (:func:`hardened_worker._drain.check_budget`); a short budget is shared half and half.
    """
    return min(MAX_DRAIN_DELAY, max(0.0, (graceful - 1.0) / 2))


def workers_without_limit(cpu_request: float | None, cpus: int | None) -> int:
    """Workers for a container with no CPU limit: ``ceil(request)``, at most ``cpus``; one with no
    request (the node's CPU count says nothing about what the pod may use)."""
    if not cpu_request:
        return 1
    wanted = max(1, math.ceil(cpu_request - 1e-9))  # float noise: 2.0000000001 stays 2
    return min(wanted, cpus) if cpus else wanted


def _workers_source(root: str | None) -> str:
    if os.environ.get("WEB_CONCURRENCY"):
        return "WEB_CONCURRENCY"
    quota = _cgroup.cpu_quota(root)
    if quota is not None:
        return f"CPU limit {quota:g}"
    if _base.settings.cpu_request:
        return f"no CPU limit, CPU request {_base.settings.cpu_request:g} (HARDENED_CPU_REQUEST)"
    return (
        "no CPU limit and no CPU request: one worker; set the pod's CPU limit, "
        "HARDENED_CPU_REQUEST from requests.cpu (downward API) or WEB_CONCURRENCY"
    )


def _workers(root: str | None) -> int:
    if os.environ.get("WEB_CONCURRENCY") or _cgroup.cpu_quota(root) is not None:
        return _base.worker_count(root)
    return workers_without_limit(_base.settings.cpu_request, _cpus())


def _cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


_port = _whole("PORT", "8000")
bind = [f"0.0.0.0:{_port}"]
_root = _base.cgroup_root()
workers = _workers(_root)
if "TERMINATION_GRACE_PERIOD_SECONDS" in os.environ:  # its old name: never ignored silently
    raise SystemExit(
        "hardened_worker: TERMINATION_GRACE_PERIOD_SECONDS is now called "
        "HARDENED_TERMINATION_GRACE_PERIOD; use e.g. HARDENED_TERMINATION_GRACE_PERIOD=30s"
    )
_grace = _base.settings.termination_grace_period
graceful_timeout = graceful_timeout_for(_grace)
_extra = ["bind", "workers", "graceful_timeout", "raw_env"]
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
    _extra.append("worker_tmp_dir")

_ENV_DEFAULTS = {
    "HARDENED_HEALTH_PATH": "/healthz",
    "HARDENED_DRAIN_DELAY": f"{drain_delay_for(graceful_timeout):g}s",
}
# Defaults only: a value the environment already has (the pod spec's env) wins.
_presets.RAW_ENV_DEFAULTS["kubernetes"] = _defaults = {
    k: v for k, v in _ENV_DEFAULTS.items() if k not in os.environ
}
raw_env = [f"{k}={v}" for k, v in _defaults.items()]

HOOKS = _hooks.Hooks("kubernetes", parent=_base.HOOKS)


@HOOKS.on("when_ready")
def _log_budget(server) -> None:
    cfg = server.cfg
    source = _workers_source(_root)
    count = (
        f"{workers} from {source}"
        if cfg.workers == workers
        else f"{cfg.workers}, set explicitly ({source} would give {workers})"
    )
    server.log.info(
        "hardened_worker: kubernetes preset: workers %s; graceful-timeout %g s for "
        "terminationGracePeriodSeconds %g; drain delay %s",
        count,
        cfg.graceful_timeout,
        _grace,
        os.environ.get("HARDENED_DRAIN_DELAY", "0s"),
    )


__all__ = [*_base.__all__, *(n for n in _extra if n not in _base.__all__)]
__all__ += [n for n in HOOKS.export(globals()) if n not in __all__]
