"""Start-up checks: the ``HARDENED_*`` table, then how its values fit gunicorn's own settings.

Pure apart from reading ``cfg`` attributes and ``sys.modules`` (the configuration file gunicorn
executed, the presets it imported): a bad value is a :class:`config.ConfigError` whose text is
the one line an operator sees. :func:`warnings` lists what is legal but surely not meant.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from hardened_worker import _drain as drain
from hardened_worker import _forwarded as forwarded
from hardened_worker import config, presets

PRESETS_PACKAGE = "hardened_worker.presets."


def config_file(cfg: Any) -> config.Source | None:
    """The ``hardened_x = ...`` names of the configuration file gunicorn executed for ``cfg``.

    gunicorn runs a file as the module ``__config__``, registered in ``sys.modules`` and run again
    at every HUP, and keeps the names it knows (``get_config_from_filename`` in gunicorn/app/base.py);
    a ``python:`` location is an imported module (imported once: a HUP does not re-read it)."""
    location = getattr(cfg, "config", None) or ""
    if location.startswith("python:"):
        module = sys.modules.get(location[len("python:") :])
    else:
        module = sys.modules.get("__config__")
        location = location.removeprefix("file:").removeprefix("./")
    if module is None or not location:
        return None
    return config.file_source(vars(module), location)


def sources(environ: Mapping[str, str], cfg: Any) -> list[config.Source]:
    """Where the master's ``HARDENED_*`` values come from, strongest first.

    The environment wins over the configuration file, as gunicorn's own ``GUNICORN_CMD_ARGS`` and
    command line win over its file: one image's file holds the defaults, each deployment overrides
    them without editing it. ``raw_env``/``-e`` count as the environment (gunicorn applies them
    over it). The defaults a preset put in ``raw_env`` (``presets.RAW_ENV_DEFAULTS``, still at their
    value) rank below the file: ``hardened_drain_delay = "2s"`` beside the Kubernetes preset means 2s.
    """
    by_preset = {
        name: {k: v for k, v in defaults.items() if environ.get(k) == v}
        for name, defaults in presets.RAW_ENV_DEFAULTS.items()
    }
    from_presets = {k for defaults in by_preset.values() for k in defaults}
    raw_env = getattr(cfg, "env", None) or {}
    mine = {
        k: v for k, v in environ.items() if k.startswith(config.PREFIX) and k not in from_presets
    }
    file = config_file(cfg)
    return [
        config.Source("raw_env", {k: v for k, v in mine.items() if k in raw_env}),
        config.Source(config.ENVIRONMENT, {k: v for k, v in mine.items() if k not in raw_env}),
        *([file] if file else []),
        *(config.Source(f"{name} preset", values) for name, values in by_preset.items()),
    ]


def preset_warnings(settings: config.Settings, loaded: Iterable[str]) -> list[str]:
    """One line for each preset-only knob that does nothing: its preset (one of ``loaded``, module
    names) was not imported, or it was written in the file, which a preset never reads (it read the
    environment at its import, above the file's own lines)."""
    lines = []
    for s in config.SETTINGS:
        origin = settings.origin[s.attr]
        if not s.preset or origin == config.DEFAULT:
            continue
        if PRESETS_PACKAGE + s.preset not in loaded:
            lines.append(
                f"hardened_worker: {s.env} has no effect: only the {s.preset} preset reads "
                f"it, and this configuration does not use it"
            )
        elif origin not in ("raw_env", config.ENVIRONMENT) and not origin.endswith(" preset"):
            lines.append(
                f"hardened_worker: {s.env.lower()} in {origin} has no effect: the "
                f"{s.preset} preset reads {s.env} from the environment when it is imported"
            )
    return lines


def validate(environ: Any, cfg: Any) -> config.Settings:
    """All start-up checks: the HARDENED_* table (environment, configuration file), then how the
    values fit gunicorn's settings. The load's warnings are in ``notes``."""
    settings = config.load_sources(sources(environ, cfg))
    notes = settings.notes + tuple(preset_warnings(settings, sys.modules))
    settings = dataclasses.replace(settings, notes=notes)
    problem = drain.check_budget(cfg.graceful_timeout, settings.drain_delay)
    if problem:
        raise config.ConfigError(f"hardened_worker: {problem}")
    if settings.ready_timeout is not None and settings.ready_timeout > cfg.graceful_timeout:
        raise config.ConfigError(
            f"hardened_worker: HARDENED_READY_TIMEOUT={settings.ready_timeout:g}s is longer than "
            f"--graceful-timeout {cfg.graceful_timeout:g}s; use e.g. {cfg.graceful_timeout * 0.8:g}s"
        )
    try:
        forwarded.trusted_from_gunicorn(cfg.forwarded_allow_ips)
    except ValueError as exc:
        raise config.ConfigError(
            f"hardened_worker: --forwarded-allow-ips/FORWARDED_ALLOW_IPS entry {exc}; "
            "use e.g. 127.0.0.1,::1,10.0.0.0/8"
        ) from None
    if (
        settings.memory_limit
        and settings.memory_hard_limit is not None
        and settings.memory_hard_limit < settings.memory_limit
    ):
        raise config.ConfigError(
            "hardened_worker: HARDENED_MEMORY_HARD_LIMIT is below HARDENED_MEMORY_LIMIT; "
            "use e.g. a hard limit 25% above the soft one"
        )
    jitter, lifetime = settings.max_lifetime_jitter, settings.max_lifetime
    if jitter and (lifetime is None or jitter >= lifetime):  # 0 is no jitter, with or without one
        raise config.ConfigError(
            f"hardened_worker: HARDENED_MAX_LIFETIME_JITTER={jitter:g}s needs a longer "
            f"HARDENED_MAX_LIFETIME (now {'off' if lifetime is None else f'{lifetime:g}s'}); "
            "use e.g. HARDENED_MAX_LIFETIME=24h with HARDENED_MAX_LIFETIME_JITTER=30m"
        )
    return settings


def warnings(cfg: Any) -> list[str]:
    """One line each for settings that the final gunicorn configuration ``cfg`` silently loses.

    * A preset's ``raw_env`` defaults that a configuration replaced instead of extending (the
      Kubernetes preset's ``HARDENED_HEALTH_PATH``: the probe then gets the app's 404).
    * A preset-read ``HARDENED_*`` setting given through ``raw_env``/``-e``: gunicorn applies those
      after the configuration is loaded, too late for the preset, which has already read it.
    """
    lines = []
    for preset, defaults in presets.RAW_ENV_DEFAULTS.items():
        lost = [f"{k}={v}" for k, v in defaults.items() if k not in cfg.env]
        if lost:
            lines.append(
                f"hardened_worker: the configuration replaced the {preset} preset's raw_env and "
                f"lost {', '.join(lost)}; extend it instead: raw_env = [*raw_env, ...] (a -e "
                "option replaces it too)"
            )
    for s in config.SETTINGS:
        if s.preset and s.env in cfg.env and cfg.env[s.env] != cfg.env_orig.get(s.env):
            lines.append(
                f"hardened_worker: {s.env} in raw_env has no effect: the {s.preset} preset reads it "
                f"from the environment when the configuration loads; set it there"
            )
    return lines


TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def reuse_port_warning(migrate_req: str | None) -> str | None:
    """--reuse-port gives each worker its own listening socket. A leaving worker takes the
    connections already queued on it (_server.py), but a handshake still in flight when it closes
    is reset unless the kernel migrates it to a sibling (``net.ipv4.tcp_migrate_req``, Linux 5.14)."""
    if migrate_req is not None and migrate_req.strip() == "1":
        return None
    now = "unreadable" if migrate_req is None else migrate_req.strip()
    return (
        "hardened_worker: --reuse-port: a worker that leaves resets the handshakes still in "
        f"flight on its own socket (net.ipv4.tcp_migrate_req is {now}); set "
        "net.ipv4.tcp_migrate_req=1 so the kernel hands them to a sibling"
    )
