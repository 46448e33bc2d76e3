"""gunicorn configuration for a container with little memory: recycle workers before the OOM killer.

A leaking worker drains and is replaced when it passes its soft limit (HARDENED_MEMORY_LIMIT),
readiness-gated, so no request is lost; past the hard limit it recycles at once. The limits
below are derived from the container's cgroup memory limit shared by the workers, and apply only
when the environment does not set them already.

The budget: workers x soft limit, plus the master, plus one successor booting while a worker
recycles, must stay below the cgroup limit; 70% of the limit, shared by the workers, leaves that
room. HARDENED_MEMORY_CGROUP=true adds a last line: when all workers together approach the
cgroup limit, the largest one recycles.
"""

import os

from hardened_worker import cgroup
from hardened_worker.presets.base import cgroup_root
from hardened_worker.presets.kubernetes import *  # noqa: F401,F403

SHARE = 0.70                  # of the cgroup limit, for all workers together
FALLBACK = 512 * 1024**2      # per worker, when the container has no memory limit

_limit = cgroup.memory_limit(cgroup_root())
_soft = int(_limit * SHARE / workers) if _limit else FALLBACK  # noqa: F405 (workers: preset)

_memory = {
    "HARDENED_MEMORY_LIMIT": f"{_soft // 1024**2}MiB",
    # HARDENED_MEMORY_HARD_LIMIT defaults to the soft limit + 25%.
    "HARDENED_MEMORY_MEASURE": "uss",     # private pages: not the pages shared with the master
    "HARDENED_MEMORY_MIN_LIFETIME": "30s",  # an app whose baseline is over the limit: no loop
    "HARDENED_MEMORY_CGROUP": "true",
}
raw_env = [*raw_env, *(f"{k}={v}" for k, v in _memory.items() if k not in os.environ)]  # noqa: F405

# Fewer, bigger workers waste less memory than many small ones: the preset's one per CPU is right
# for an async worker. max_requests is not needed to contain leaks any more:
max_requests = 0

# preload_app = True   # imports the app once in the master: workers share those pages (USS does
#                      # not count them); but a HUP then re-forks the old code (deploy = restart).
