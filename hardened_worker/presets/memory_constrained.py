"""A container with a memory limit: per-worker memory limits from a budget measured at start.

Everything of :mod:`~.kubernetes`, plus ``raw_env`` defaults (each only when the environment does
not set it already) for ``HARDENED_MEMORY_LIMIT`` / ``HARDENED_MEMORY_HARD_LIMIT`` derived from
what the master measures when the configuration loads (:class:`hardened_worker._headroom.Budget`):

* the cgroup's memory limit (``HARDENED_CGROUP_ROOT``, else the master's own cgroup);
* the master's resident memory, after importing what a master holds (the worker class);
* the app's footprint: a child forked from the master imports the app (the command line's
  ``module:app``, with ``--chdir`` and ``--pythonpath``), loads uvicorn's configuration for it and
  reports its private memory (USS): what every worker the master forks costs once ready, within a
  MiB or two;
* one successor: a recycling worker's successor starts while the worker still serves.

So ``workers x hard + master + app + margin <= limit``, and the master logs that budget at start.
When the limit cannot hold ``workers + 1`` apps, that line says so and the limits leave no room
for a successor; the workers then never surge (:func:`hardened_worker._headroom.replacement` finds
no room at run time either): a recycling worker drains first and is replaced after it exits.
Without a cgroup limit: 512 MiB per worker. The app is imported once more at start (in the
probe child): an app whose import has side effects should set ``HARDENED_MEMORY_LIMIT`` itself.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys
import time
from typing import Any

from hardened_worker import _cgroup, _headroom, _memory
from hardened_worker import presets as _presets
from hardened_worker.presets import _hooks
from hardened_worker.presets import base as _base
from hardened_worker.presets import kubernetes as _kubernetes
from hardened_worker.presets.kubernetes import *  # noqa: F401,F403

FALLBACK = 512 * 1024**2  # per worker, when the container has no memory limit
PROBE_TIMEOUT = 60.0  # seconds an app import may take in the probe


def command_line(argv: list[str]) -> tuple[str | None, list[str], str | None, int | None]:
    """``(module:app, --pythonpath entries, --chdir, --workers)`` from a gunicorn command line,
    parsed by gunicorn's own parser (the configuration file cannot see what gunicorn parsed;
    the command line's ``--workers`` wins over this file's)."""
    from gunicorn.config import Config

    try:
        args = Config().parser().parse_args(argv)
    except SystemExit:
        return None, [], None, None
    paths = [p for p in (args.pythonpath or "").split(",") if p]
    return (args.args[0] if args.args else None), paths, args.chdir, args.workers


def probe_app(uri: str, paths: list[str], chdir: str | None) -> int | None:
    """A forked child imports ``uri``'s module and reports its USS; None when that failed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import, measure, report, leave without running anything else
        status = 1
        try:
            os.close(read)
            if chdir:
                os.chdir(chdir)
            sys.path[:0] = [*paths, os.getcwd()]
            module, _, name = uri.partition(":")
            app = getattr(importlib.import_module(module), name or "application", None)
            _build_server(app)
            with _memory.MemoryReader("uss") as reader:
                os.write(write, str(reader.precise() or reader.rss()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], PROBE_TIMEOUT)
        text = os.read(read, 64) if ready else b""
    finally:
        os.close(read)
        if not text:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    return int(text) if text.isdigit() else None


def _build_server(app: Any) -> None:
    """What a worker adds to the imported app before it is ready: uvicorn's protocol and loop
    modules and an event loop (measured: 62 MiB after the import alone, 69 MiB with these, 70 MiB
    for a worker at ready). Best effort: the import alone is still a figure."""
    try:
        import uvicorn

        config = uvicorn.Config(app, log_config=None)
        config.load()
        factory = config.get_loop_factory()
        if factory is not None:
            factory().close()
    except Exception:
        pass


def _master_rss() -> int:
    import hardened_worker.worker  # noqa: F401  what the master holds once the worker class loads

    with _memory.MemoryReader("rss") as reader:
        return reader.rss()


def _measure() -> tuple[_headroom.Budget | None, str]:
    limit = _cgroup.memory_limit(_base.cgroup_root())
    if limit is None:
        return None, "no cgroup memory limit"
    uri, paths, chdir, cli_workers = command_line(sys.argv[1:])
    count = cli_workers or _kubernetes.workers
    started = time.monotonic()
    app = probe_app(uri, paths, chdir) if uri else None
    if app is None:
        # Unknown: reserve no share for a successor here; at run time each recycle still checks
        # the room with the footprint the workers measure at ready.
        return _headroom.Budget(
            limit, _master_rss(), 0, count
        ), f"app footprint not measured (importing {uri!r} did not work)"
    return _headroom.Budget(
        limit, _master_rss(), app, count
    ), f"app {uri} measured in {time.monotonic() - started:.1f} s"


# Once per process: a HUP re-reads the configuration file, not this module.
budget, _source = _measure()
_soft = budget.soft if budget else FALLBACK
_hard = budget.hard if budget else int(FALLBACK * _memory.HARD_LIMIT_FACTOR)

_ENV_DEFAULTS = {
    "HARDENED_MEMORY_LIMIT": f"{max(1, _soft // 1024**2)}MiB",
    "HARDENED_MEMORY_HARD_LIMIT": f"{max(1, _hard // 1024**2)}MiB",
    "HARDENED_MEMORY_MEASURE": "uss",  # private pages: not the pages shared with the master
    "HARDENED_MEMORY_MIN_LIFETIME": "30s",  # an app whose baseline is over the limit: no loop
    "HARDENED_MEMORY_CGROUP": "true",
}
_presets.RAW_ENV_DEFAULTS["memory_constrained"] = _defaults = {
    k: v for k, v in _ENV_DEFAULTS.items() if k not in os.environ
}
raw_env = [*_kubernetes.raw_env, *(f"{k}={v}" for k, v in _defaults.items())]

# Fewer, bigger workers waste less memory than many small ones; max_requests is not needed to
# contain leaks.
max_requests = 0

HOOKS = _hooks.Hooks("memory_constrained", parent=_kubernetes.HOOKS)


@HOOKS.on("when_ready")
def _log_memory_budget(server) -> None:
    if budget is None:
        server.log.info(
            "hardened_worker: memory budget: %s; %s per worker",
            _source,
            os.environ.get("HARDENED_MEMORY_LIMIT", "512MiB"),
        )
        return
    if server.cfg.workers != budget.workers:
        server.log.warning(
            "hardened_worker: memory budget made for %d workers but %d run; set "
            "WEB_CONCURRENCY rather than --workers",
            budget.workers,
            server.cfg.workers,
        )
    # Not os.environ: gunicorn has applied raw_env to it by now.
    overridden = [
        k for k in ("HARDENED_MEMORY_LIMIT", "HARDENED_MEMORY_HARD_LIMIT") if k not in _defaults
    ]
    server.log.info(
        "hardened_worker: %s; %s%s",
        budget.describe(),
        _source,
        f"; {' and '.join(overridden)} set by the environment" if overridden else "",
    )


__all__ = [*_kubernetes.__all__, "max_requests"]
__all__ += [n for n in HOOKS.export(globals()) if n not in __all__]
