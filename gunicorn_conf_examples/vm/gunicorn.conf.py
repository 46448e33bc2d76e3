"""gunicorn configuration: a VM behind nginx on the same host, run by systemd.

Copy to /etc/myapp/gunicorn.conf.py; app.service starts gunicorn with it and nginx-site.conf
proxies to it. Everything comes from the preset (hardened_worker/presets/vm.py); override below.
Command-line options override this file; ``gunicorn --check-config -c this-file app:app`` checks it.
"""

from hardened_worker.presets.vm import *  # noqa: F401,F403

# --- where ---------------------------------------------------------------------------------
# bind = ["127.0.0.1:8000"]      # default ($HARDENED_BIND); nginx-site.conf's upstream must name it.
# A UNIX socket instead (then nginx: `server unix:/run/myapp/gunicorn.sock;`):
# bind = ["unix:/run/myapp/gunicorn.sock"]

# --- how many ----------------------------------------------------------------------------
# workers = 4                    # default: $WEB_CONCURRENCY, else one per CPU the unit may use.

# --- timeouts: these three must agree with nginx-site.conf and app.service ---------------------
# keepalive = 75                 # above nginx's upstream keepalive_timeout (60s): nginx closes first
# graceful_timeout = 30          # app.service's TimeoutStopSec (40s) must be longer
# timeout = 30                   # a worker whose event loop is blocked this long is killed

# --- the worker's own knobs (see docs/settings.md): here, lower case, or Environment= in
# app.service, which wins over this file. HARDENED_BIND/PIDFILE are read by the preset from the
# environment only: here, set bind and pidfile themselves.
# hardened_memory_limit = "512MiB"
# hardened_drain_delay = "2s"

# --- metrics through gunicorn's own statsd client ------------------------------------------
# The master then sends gunicorn.workers (gauge), gunicorn.log.<level> (counters) and, from the
# preset's child_exit hook, hardened_worker.worker_exits.<reason> (counters).
# statsd_host = "127.0.0.1:8125"
# statsd_prefix = "myapp"

# --- your own hooks run after the preset's; @also says so -----------------------------------
# @also
# def child_exit(server, worker):
#     ...
