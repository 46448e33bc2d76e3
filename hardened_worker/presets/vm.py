"""A VM or bare-metal host: behind nginx on the same machine, run by systemd (``Type=notify``).

``gunicorn -c python:hardened_worker.presets.vm app:app``, or ``from hardened_worker.presets.vm
import *`` at the top of your ``gunicorn.conf.py``. Everything of :mod:`~.base`, plus:

* ``bind``: ``$HARDENED_BIND`` (comma-separated for several), default ``127.0.0.1:8000``: only nginx on
  this host reaches it, and the default ``forwarded_allow_ips`` (127.0.0.1, ::1, or
  ``$FORWARDED_ALLOW_IPS``) trusts exactly that nginx. (A ``unix:`` bind works too; note that
  gunicorn's ``forwarded_allow_ips`` validator does not accept the word ``unix``.)
* ``workers``: ``$WEB_CONCURRENCY``, else one per CPU this service may use (a systemd
  ``CPUQuota=`` seen through ``HARDENED_CGROUP_ROOT``, else the CPUs of its affinity mask). An
  async worker keeps one CPU busy; more only add memory.
* with systemd's ``RuntimeDirectory=`` (``$RUNTIME_DIRECTORY``): the pid file and gunicorn's
  control socket live there, one per service instead of one per user; ``$HARDENED_PIDFILE``
  overrides.
* systemd readiness: ``on_starting`` holds back gunicorn's early ``READY=1`` and the first worker
  whose lifespan startup completed sends it (:mod:`hardened_worker._systemd`); the unit needs
  ``Type=notify`` and ``NotifyAccess=all``. See ``gunicorn_conf_examples/vm/app.service``.
"""

from __future__ import annotations

import os

from hardened_worker import _systemd
from hardened_worker.presets import _hooks
from hardened_worker.presets import base as _base
from hardened_worker.presets.base import *  # noqa: F401,F403

bind = _base.settings.bind
workers = _base.worker_count(_base.cgroup_root())

_run_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
pidfile = _base.settings.pidfile or (os.path.join(_run_dir, "gunicorn.pid") if _run_dir else None)
_extra = ["bind", "workers", "pidfile"]
if _run_dir:
    control_socket = os.path.join(_run_dir, "gunicorn.ctl")
    _extra.append("control_socket")

HOOKS = _hooks.Hooks("vm", parent=_base.HOOKS)


@HOOKS.on("on_starting")
def _defer_systemd_ready(server) -> None:
    from hardened_worker.worker import Worker

    # Only our worker sends READY=1 itself; with any other, gunicorn's own early one must stay.
    if not (isinstance(server.worker_class, type) and issubclass(server.worker_class, Worker)):
        return
    if _systemd.defer_ready():
        server.log.info(
            "hardened_worker: systemd READY=1 waits for the first ready worker "
            "(the unit needs NotifyAccess=all)"
        )


__all__ = [*_base.__all__, *(n for n in _extra if n not in _base.__all__)]
__all__ += [n for n in HOOKS.export(globals()) if n not in __all__]
