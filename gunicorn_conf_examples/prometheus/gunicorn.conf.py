"""gunicorn configuration with the app's own Prometheus metrics beside the pool's (prometheus_client
multiprocess mode), all in one scrape of the worker's metrics path.

Needs ``pip install hardened-worker[prometheus]`` (prometheus_client). With PROMETHEUS_MULTIPROC_DIR
set, the presets' hooks create the directory at start, remove stale ``*.db`` files of a previous
run and call ``mark_process_dead(pid)`` when a worker exits (its live gauges disappear).

One endpoint: ``hardened_metrics_path`` below answers the pool's ``hardened_worker_*`` series
(docs/operations.md has the reference and the PromQL) followed by the app's metrics from the
directory. The app defines its metrics as usual and serves no /metrics route of its own::

    from prometheus_client import Counter
    ORDERS = Counter("myapp_orders", "Orders placed")   # names of its own, not hardened_worker_*

prometheus_client decides at import whether it runs in multiprocess mode: the variable must be set
before the app imports it (raw_env below does that: gunicorn applies it before forking workers).
Do not import prometheus_client in this file.
"""

import os
import sys

from hardened_worker.presets.kubernetes import *  # noqa: F401,F403

# The pool's series and the app's, for this host and HARDENED_METRICS_ALLOW (in a pod: the
# scraper's network, e.g. hardened_metrics_allow = "10.0.0.0/8"), on every bind or only on
# hardened_metrics_port (see ../kubernetes/gunicorn.conf.py).
hardened_metrics_path = "/metrics"

# The directory must be this service's alone: the presets remove its stale files at start, so two
# services sharing one (a fixed /tmp path) would wipe each other's metrics. In Kubernetes, set
# PROMETHEUS_MULTIPROC_DIR to an emptyDir mount (deployment.yaml does). Under systemd it defaults
# to "prometheus" in the unit's RuntimeDirectory= ($RUNTIME_DIRECTORY: tmpfs, private, removed
# when the service stops; app.service sets it).
_run_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ and _run_dir:
    raw_env = [*raw_env, f"PROMETHEUS_MULTIPROC_DIR={os.path.join(_run_dir, 'prometheus')}"]  # noqa: F405
elif "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    print(
        "hardened_worker: prometheus example: neither PROMETHEUS_MULTIPROC_DIR nor RUNTIME_DIRECTORY "
        "is set, so each worker keeps its own metrics; set PROMETHEUS_MULTIPROC_DIR",
        file=sys.stderr,
    )

# gunicorn's own statsd client is another option (no scrape): with statsd_host set it sends the
# worker count, the request rate, duration and status of every request, log-level counters and
# hardened_worker.worker_exits.<reason>:
# statsd_host = "statsd.monitoring:8125"
# statsd_prefix = "myapp"
