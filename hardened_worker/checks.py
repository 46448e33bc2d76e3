"""Start-up checks: the ``HARDENED_*`` table, then how its values fit gunicorn's own settings.

Pure apart from reading ``cfg`` attributes: a bad value is a :class:`config.ConfigError` whose text is
the one line an operator sees.
"""

from __future__ import annotations

from typing import Any

from hardened_worker import config, drain, forwarded


def validate(environ: Any, cfg: Any) -> config.Settings:
    """All start-up checks: the HARDENED_* table, then how the values fit gunicorn's settings."""
    settings = config.load(environ)
    problem = drain.check_budget(cfg.graceful_timeout, settings.drain_delay)
    if problem:
        raise config.ConfigError(f"hardened_worker: {problem}")
    if settings.ready_timeout is not None and settings.ready_timeout > cfg.graceful_timeout:
        raise config.ConfigError(
            f"hardened_worker: HARDENED_READY_TIMEOUT={settings.ready_timeout:g}s is longer than "
            f"--graceful-timeout {cfg.graceful_timeout:g}s; use e.g. {cfg.graceful_timeout * 0.8:g}s")
    try:
        forwarded.trusted_from_gunicorn(cfg.forwarded_allow_ips)
    except ValueError as exc:
        raise config.ConfigError(
            f"hardened_worker: --forwarded-allow-ips/FORWARDED_ALLOW_IPS entry {exc}; "
            "use e.g. 127.0.0.1,::1,10.0.0.0/8") from None
    if settings.memory_limit and settings.memory_hard_limit is not None \
            and settings.memory_hard_limit < settings.memory_limit:
        raise config.ConfigError(
            "hardened_worker: HARDENED_MEMORY_HARD_LIMIT is below HARDENED_MEMORY_LIMIT; "
            "use e.g. a hard limit 25% above the soft one")
    return settings
