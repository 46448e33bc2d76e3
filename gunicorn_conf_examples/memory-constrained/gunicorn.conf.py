"""gunicorn configuration for a container with little memory: recycle workers before the OOM killer.

A leaking worker is replaced when it passes its soft limit (HARDENED_MEMORY_LIMIT); past the hard
limit (HARDENED_MEMORY_HARD_LIMIT) it drains at once. Its successor starts first only when the
container has room for it (cgroup limit minus working set covers the app's footprint plus a
margin); otherwise the worker drains first and the master replaces it after it exits: a short
dip in capacity instead of an OOM kill.

The limits are derived from what the master measures at start (the preset's docstring): the
cgroup limit, the master's own size, the app's footprint (imported once in a probe child) and
room for one successor:

    workers x hard limit + master + one app + margin <= cgroup limit

and logged at start ("hardened_worker: memory budget: ..."). Values the environment sets win.
HARDENED_MEMORY_CGROUP=true adds a last line: when the workers together approach the cgroup
limit, the largest one recycles.
"""

from hardened_worker.presets.memory_constrained import *  # noqa: F401,F403

# preload_app = True   # imports the app once in the master: workers share those pages (USS does
#                      # not count them); but a HUP then re-forks the old code (deploy = restart).
