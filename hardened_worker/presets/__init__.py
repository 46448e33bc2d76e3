"""Ready-made gunicorn configurations for the hardened worker.

* :mod:`~.base`: worker class, consistent timeouts, logging, lifecycle and exit-reason log lines;
* :mod:`~.vm`: behind nginx on the same host, under systemd (``Type=notify`` readiness);
* :mod:`~.kubernetes`: in a pod: port, workers from the CPU limit, grace period, drain, health;
* :mod:`~.memory_constrained`: kubernetes, plus memory limits measured against the pod's limit.

Each is a gunicorn configuration module: ``gunicorn -c python:hardened_worker.presets.vm app:app``,
or ``from hardened_worker.presets.vm import *`` at the top of a ``gunicorn.conf.py`` that then
overrides what it needs. Hooks defined there run after the preset's
(:mod:`~._hooks`). Copyable examples: ``gunicorn_conf_examples/``.
"""

# preset name -> the raw_env entries it exports as defaults ({name: value}), registered at its import;
# hardened_worker._checks.warnings says so when the final configuration dropped some.
__all__ = ["base", "kubernetes", "memory_constrained", "vm"]

RAW_ENV_DEFAULTS: dict[str, dict[str, str]] = {}
