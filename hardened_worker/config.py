"""Every ``HARDENED_*`` knob, declared once.

The ``SETTINGS`` table drives parsing, the one-line validation errors and the README table, so
the three can never disagree (the idea of gunicorn's ``config.py``). Everything here is pure:
strings in, values or :class:`ConfigError` out. It never imports gunicorn.

Grammar of the two value types that need one (case-insensitive units, optional space)::

    size     = number [unit]      ; number = 1*DIGIT ["." 1*DIGIT]
    unit     = "B" / "KB" / "MB" / "GB" / "KiB" / "MiB" / "GiB" / "K" / "M" / "G"
    duration = number [time-unit] ; a bare number means seconds
    time-unit = "ms" / "s" / "m" / "h"

``K``/``M``/``G`` alone mean binary units (what ``ps`` and ``top`` print); ``KB``/``MB``/``GB``
are decimal, as the SI says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

PREFIX = "HARDENED_"


class ConfigError(ValueError):
    """A bad ``HARDENED_*`` value; ``str()`` is the one line an operator sees."""


_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_SIZE_RE = re.compile(r"^\s*" + _NUMBER + r"\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_size(text: str) -> int:
    """``'512MiB'`` -> 536870912 bytes. Raises ValueError."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("is not a size")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(text: str) -> float:
    """``'250ms'`` -> 0.25 seconds. Raises ValueError."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError("is not a duration")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("is not a boolean")


def parse_count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("is not a whole number")
    return int(text)


def parse_percent(text: str) -> float:
    """``'10%'`` -> 0.10; between 0% and 50%."""
    match = re.match(r"^\s*" + _NUMBER + r"\s*%\s*$", text)
    if not match or float(match.group(1)) > 50:
        raise ValueError("is not a percentage from 0% to 50%")
    return float(match.group(1)) / 100


def parse_path(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
        raise ValueError("is not a URL path")
    return value


def parse_import(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", value):
        raise ValueError("is not a module:function reference")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("is not one of " + "|".join(choices))
        return value

    parse.__name__ = "parse_choice"
    return parse


@dataclass(frozen=True)
class Setting:
    """One knob: ``HARDENED_<name>``; ``attr`` is its field on :class:`Settings`."""

    name: str
    parse: Callable[[str], Any]
    default: str  # as the operator would write it, parsed like any value
    example: str
    meaning: str

    @property
    def env(self) -> str:
        return PREFIX + self.name

    @property
    def attr(self) -> str:
        return self.name.lower()


SETTINGS: tuple[Setting, ...] = (
    # Foundation
    Setting("STARTUP_TIMEOUT", parse_duration, "60s", "90s",
            "Longest a worker may spend importing the app and running lifespan startup; past it "
            "the worker logs where it was stuck and exits as a failed start."),
    # Drain
    Setting("DRAIN_DELAY", parse_duration, "0s", "5s",
            "After SIGTERM, keep serving normally this long before draining, so load balancers "
            "and Kubernetes endpoints stop routing first."),
    Setting("DRAIN_IDLE_WINDOW", parse_duration, "500ms", "1s",
            "While draining, an idle keep-alive connection is closed once it has been quiet this "
            "long and has no unread bytes."),
    Setting("HEALTH_PATH", parse_path, "", "/healthz",
            "Path the worker answers itself (200 ready, 503 booting or draining); off when empty."),
    Setting("HEALTH_CHECK", parse_import, "", "myapp.health:check",
            "Optional app-level check (sync or async callable) the health path also calls; a false "
            "result or an exception answers 503."),
    Setting("HEALTH_CHECK_TIMEOUT", parse_duration, "1s", "500ms",
            "Longest the app-level health check may take before the answer is 503."),
    Setting("HEALTH_ACCESS_LOG", parse_bool, "false", "true",
            "Write health-path requests to the access log."),
    # Diagnostics
    Setting("STALL_THRESHOLD", parse_duration, "1s", "250ms",
            "Warn, with the blocking stack and request, when the event loop is blocked this long; "
            "0 turns the watchdog off."),
    # Readiness
    Setting("READY_TIMEOUT", parse_duration, "", "30s",
            "Longest an old worker keeps serving while waiting for its successors to become ready "
            "on reload; empty means 80% of --graceful-timeout."),
    Setting("ROLLING", parse_bool, "false", "true",
            "On HUP, replace workers one at a time (each old worker leaves as one more successor "
            "is ready) so at most workers + 1 hold the app in memory; set HARDENED_READY_TIMEOUT "
            "to cover that many startups."),
    # Forwarded headers
    Setting("FORWARDED", _choice("x-forwarded", "forwarded", "off"), "x-forwarded", "forwarded",
            "Which header family carries the client address from trusted proxies "
            "(--forwarded-allow-ips): X-Forwarded-*, RFC 7239 Forwarded, or none."),
    Setting("FORWARDED_HOST", parse_bool, "false", "true",
            "Let a trusted proxy's X-Forwarded-Host / Forwarded host= set the Host the app sees."),
    Setting("FORWARDED_PORT", parse_bool, "false", "true",
            "Let a trusted proxy's X-Forwarded-Port set the server port the app sees."),
    Setting("FORWARDED_PREFIX", parse_bool, "false", "true",
            "Let a trusted proxy's X-Forwarded-Prefix set the app's root_path."),
    # Memory
    Setting("MEMORY_LIMIT", parse_size, "", "512MiB",
            "Soft per-worker memory ceiling: past it the worker drains and is replaced; off when "
            "empty."),
    Setting("MEMORY_HARD_LIMIT", parse_size, "", "640MiB",
            "Past this a worker recycles at once, without waiting its turn; empty means the soft "
            "limit plus 25%."),
    Setting("MEMORY_MEASURE", _choice("uss", "pss", "rss"), "uss", "rss",
            "What counts as a worker's memory: uss (private pages, not shared with the master), "
            "pss (shared pages split between sharers) or rss."),
    Setting("MEMORY_JITTER", parse_percent, "5%", "10%",
            "Per-worker random lowering of the soft limit, so workers do not all recycle at once."),
    Setting("MEMORY_CHECK_INTERVAL", parse_duration, "250ms", "1s",
            "How often a worker reads its memory."),
    Setting("MEMORY_CHECK_REQUESTS", parse_count, "16", "100",
            "Also read memory after this many requests since the last read (at 256 KiB leaked per "
            "request, 16 requests bound the overshoot to 4 MiB)."),
    Setting("MEMORY_MIN_LIFETIME", parse_duration, "30s", "2m",
            "A worker already over the soft limit at its first reading (the limit is below the "
            "app's baseline) recycles no sooner than this, so it cannot loop; one warning says so."),
    Setting("MEMORY_CGROUP", parse_bool, "false", "true",
            "Recycle the largest worker when all workers together approach the container's "
            "cgroup memory limit."),
    # Recycling by age (placeholder until the config work lands; same names)
    Setting("MAX_LIFETIME", parse_duration, "", "24h",
            "A worker older than this is replaced, its successor started first; off when empty."),
    Setting("MAX_LIFETIME_JITTER", parse_duration, "", "30m",
            "Random shortening of each worker's lifetime; empty means 10% of it."),
    Setting("CGROUP_ROOT", parse_path, "/sys/fs/cgroup", "/sys/fs/cgroup",
            "Where the cgroup filesystem is mounted (read for the memory and CPU limits)."),
)

_BY_ENV = {s.env: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Parsed values of every knob, defaults applied. Field names are ``Setting.attr``."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _error(setting_env: str, raw: str, reason: str, example: str) -> ConfigError:
    return ConfigError(
        f"hardened_worker: {setting_env}={raw!r} {reason}; use e.g. {example}"
    )


def _closest(name: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(_BY_ENV), n=1, cutoff=0.8)
    return match[0] if match else None


def load(environ: Mapping[str, str]) -> Settings:
    """Parse every ``HARDENED_*`` variable of ``environ``; raise ConfigError on the first bad one."""
    for key in sorted(environ):
        if key.startswith(PREFIX) and key not in _BY_ENV:
            hint = _closest(key)
            advice = f"did you mean {hint}?" if hint else "see the README table of HARDENED_* variables"
            raise ConfigError(f"hardened_worker: {key}={environ[key]!r} is not a known setting; {advice}")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        text = setting.default if raw is None else raw
        try:
            values[setting.attr] = setting.parse(text) if text.strip() else _empty(setting)
        except ValueError as exc:
            raise _error(setting.env, text, str(exc), setting.example) from None
    return Settings(values)


def _empty(setting: Setting) -> Any:
    """An empty value means "off" for optional knobs; for the others it is the default."""
    if setting.default.strip():
        return setting.parse(setting.default)
    return None


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| variable | meaning | default | example |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(off)"
        rows.append(f"| `{s.env}` | {s.meaning} | {default} | `{s.example}` |")
    return "\n".join(rows)
