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

from hardened_worker.presets.kubernetes import *  # noqa: F401,F403

# In Kubernetes, an emptyDir volume (medium: Memory) mounted here; on a VM, a tmpfs directory.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    raw_env = [*raw_env, "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc"]  # noqa: F405

# gunicorn's own statsd client is another option (no app endpoint needed); it sends the worker
# count, log-level counters and hardened_worker.worker_exits.<reason>:
# statsd_host = "statsd.monitoring:8125"
# statsd_prefix = "myapp"
