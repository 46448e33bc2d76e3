"""gunicorn configuration with Prometheus metrics from every worker (prometheus_client multiprocess).

Needs ``pip install hardened-worker[prometheus]`` (prometheus_client); without it this is the
plain Kubernetes preset. With PROMETHEUS_MULTIPROC_DIR set, the presets' hooks:

* create the directory at start and remove stale ``*.db`` files of a previous run;
* call ``mark_process_dead(pid)`` when a worker exits (its live gauges disappear);
* count worker exits in ``hardened_worker_worker_exits_total{reason="..."}``.

The app serves the metrics of all workers, e.g. with FastAPI::

    from prometheus_client import CollectorRegistry, generate_latest, multiprocess, CONTENT_TYPE_LATEST

    @app.get("/metrics")
    def metrics():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

prometheus_client decides at import whether it runs in multiprocess mode: the variable must be set
before the app imports it (raw_env below does that: gunicorn applies it before forking workers).
Do not import prometheus_client in this file.
"""

import os
import sys

from hardened_worker.presets.kubernetes import *  # noqa: F401,F403

# The directory must be this service's alone: the presets remove its stale files at start, so two
# services sharing one (a fixed /tmp path) would wipe each other's metrics. In Kubernetes, set
# PROMETHEUS_MULTIPROC_DIR to an emptyDir mount (deployment.yaml does). Under systemd it defaults
# to "prometheus" in the unit's RuntimeDirectory= ($RUNTIME_DIRECTORY: tmpfs, private, removed
# when the service stops; app.service sets it).
_run_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ and _run_dir:
    raw_env = [*raw_env, f"PROMETHEUS_MULTIPROC_DIR={os.path.join(_run_dir, 'prometheus')}"]  # noqa: F405
elif "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    print("hardened_worker: prometheus example: neither PROMETHEUS_MULTIPROC_DIR nor RUNTIME_DIRECTORY "
          "is set, so each worker keeps its own metrics; set PROMETHEUS_MULTIPROC_DIR", file=sys.stderr)

# gunicorn's own statsd client is another option (no app endpoint needed); it sends the worker
# count, log-level counters and hardened_worker.worker_exits.<reason>:
# statsd_host = "statsd.monitoring:8125"
# statsd_prefix = "myapp"
