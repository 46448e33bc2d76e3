"""gunicorn configuration for a container in a Kubernetes pod (see deployment.yaml, Dockerfile).

Everything comes from the preset (hardened_worker/presets/kubernetes.py): bind 0.0.0.0:$PORT,
workers from the container's CPU limit (or its CPU request), graceful timeout from $HARDENED_TERMINATION_GRACE_PERIOD,
health path /healthz and a 5 s drain delay (unless the pod's env sets them), logs to stdout.
Override below; command-line options override this file.
"""

from hardened_worker.presets.kubernetes import *  # noqa: F401,F403

# workers = 2                      # default: $WEB_CONCURRENCY, else ceil(CPU limit), else
#                                  # ceil($HARDENED_CPU_REQUEST), else 1
# keepalive = 75                   # above your ingress / load balancer idle timeout (ingress-nginx
#                                  # and AWS ALB: 60 s; Google Cloud load balancers: 600 s -> 620)

# Trust X-Forwarded-For from the ingress controller's pods only (their CIDR), e.g.:
# forwarded_allow_ips = "10.244.0.0/16"

# Metrics for the whole pool on a port of their own (deployment.yaml's prometheus.io annotations
# and "metrics" port): 9100 answers /metrics and nothing else, the app's port never does.
# HARDENED_METRICS_ALLOW (the pod's env) names the scraper's network.
hardened_metrics_path = "/metrics"
hardened_metrics_port = "9100"
bind = [*bind, "0.0.0.0:9100"]  # noqa: F405

# The read-only root filesystem has no $HOME/.gunicorn for gunicorn's control socket (25.1+):
# put it on the /tmp emptyDir (kubectl exec POD -- gunicornc -s /tmp/gunicorn.ctl -c "show
# workers"), or turn it off with control_socket_disable = True (--no-control-socket).
control_socket = "/tmp/gunicorn.ctl"

# More worker settings (docs/settings.md): here, lower case, or in the pod's env, which wins over this
# file (and this file over the preset's defaults):
# hardened_memory_limit = "400MiB"
# hardened_drain_delay = "3s"
