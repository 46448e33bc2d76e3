"""Every ``HARDENED_*`` knob, declared once.

The table is the body of :class:`Settings`: each knob is declared there once, as a typed
:class:`Setting` attribute (``memory_limit = Setting(parse_optional_size, ...)``), and drives
parsing, the one-line validation errors, the settings page and what mypy sees of a loaded value,
so none of them can disagree (the idea of gunicorn's ``config.py``); ``SETTINGS`` lists them in
order. Values come from :class:`Source` s, strongest first (:func:`hardened_worker._checks.sources` orders them): the
environment as ``HARDENED_X``, a gunicorn configuration file as ``hardened_x = <Python value>``
(:func:`file_source`, spelled for the same parser by :func:`file_text`), a preset's defaults. Everything here is pure:
strings in, values or :class:`ConfigError` out. It never imports gunicorn, and no value, however
long or odd, raises anything else.

Grammar of the values that need one. Only ASCII: digits ``0-9``, letters, and space or tab
around the parts (a value such as ``'５s'`` or ``'1\\xa0s'`` is refused)::

    number    = 1*DIGIT ["." *DIGIT] / "." 1*DIGIT
    size      = "0" / number (exponent / [*SP] unit)  ; Kubernetes' resource.Quantity, bytes
    exponent  = ("e" / "E") 1*2DIGIT               ; 129e6
    unit      = binary / decimal / "B"
    binary    = ("Ki" / "Mi" / "Gi" / "Ti" / "Pi" / "Ei") ["B"]   ; powers of 1024
    decimal   = ("k" / "M" / "G" / "T" / "P" / "E") ["B"]         ; powers of 1000
    duration  = number [*SP time-unit]             ; a bare number is seconds
    time-unit = "ms" / "s" / "m" / "h"

Sizes mean what Kubernetes means (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/):
``400M`` is 400,000,000 bytes, ``400Mi`` 400 x 1024^2; a fraction of a byte rounds up, as
Kubernetes does. A unit is required (Kubernetes reads a bare ``512`` as bytes, which is never what
``HARDENED_MEMORY_LIMIT=512`` meant); ``0`` needs none. Units are case-insensitive, but a lone ``m`` is refused: Kubernetes reads it as
milli (``400m`` is 0.4 bytes there, a classic slip). Every size is at most ``MAX_SIZE`` and every
duration at most ``MAX_DURATION``, so no value overflows where it is used (``setitimer``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar, overload

__all__ = ["SETTINGS", "ConfigError", "Setting", "Settings", "load"]

PREFIX = "HARDENED_"
_SPACE = " \t"  # the only blanks a value may have around it

MAX_SIZE = 1024**5  # 1Pi
MAX_DURATION = 30 * 24 * 3600.0  # 720h
MAX_COUNT = 10**9


T = TypeVar("T")
Number = TypeVar("Number", int, float)


class ConfigError(ValueError):
    """A bad ``HARDENED_*`` value; ``str()`` is the one line an operator sees."""


# Numbers are read as Decimal, not float: exact, and a number of any length is just large
# (float("9" * 400) is inf, and int(inf) raised OverflowError). _NUMBER admits nothing Decimal refuses.
_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SIZE_RE = re.compile(_NUMBER + r"(?:[eE]([0-9]{1,2})|[ \t]*([A-Za-z]*))")
_DURATION_RE = re.compile(_NUMBER + r"[ \t]*([A-Za-z]*)")
_PERCENT_RE = re.compile(_NUMBER + r"[ \t]*%")
_SIZE_UNITS: dict[str, int | Decimal] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    _SIZE_UNITS.update(
        {
            _letter: 1000**_power,
            _letter + "b": 1000**_power,
            _letter + "i": 1024**_power,
            _letter + "ib": 1024**_power,
        }
    )
_DURATION_UNITS: dict[str, int | Decimal] = {
    "": 1,
    "s": 1,
    "ms": Decimal("0.001"),
    "m": 60,
    "h": 3600,
}


def _bounded(value: Decimal, largest: float, shown: str) -> Decimal:
    if value > largest:
        raise ValueError(f"is more than {shown}, the largest accepted")
    return value


def parse_size(text: str) -> int:
    """``'512Mi'`` -> 536870912 bytes, ``'512M'`` -> 512000000 (Kubernetes' units); a bare number
    other than 0 is refused. ValueError."""
    match = _SIZE_RE.fullmatch(text.strip(_SPACE))
    if not match:
        raise ValueError("is not a size")
    number, exponent, unit = match.groups()
    if exponent is None and not unit and Decimal(number) != 0:
        # A bare number is bytes to Kubernetes, but HARDENED_MEMORY_LIMIT=512 meant 512Mi, not 512
        # bytes that recycle every worker at once: the unit must be written (B for bytes).
        raise ValueError("is not a size (no unit: write B for bytes, Mi for 2^20)")
    if unit == "m":
        raise ValueError("is not a size (m is Kubernetes' milli: write M for 10^6 or Mi for 2^20)")
    if unit and unit.lower() not in _SIZE_UNITS:
        raise ValueError("is not a size")
    if exponent is not None:
        value = Decimal(number).scaleb(int(exponent))
    else:
        value = Decimal(number) * _SIZE_UNITS[(unit or "").lower()]
    return math.ceil(_bounded(value, MAX_SIZE, "1Pi"))


def parse_duration(text: str) -> float:
    """``'250ms'`` -> 0.25 seconds. Raises ValueError."""
    match = _DURATION_RE.fullmatch(text.strip(_SPACE))
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError("is not a duration")
    value = Decimal(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    return float(_bounded(value, MAX_DURATION, "720h"))


def parse_count(text: str) -> int:
    value = text.strip(_SPACE)
    if not re.fullmatch("[0-9]+", value):
        raise ValueError("is not a whole number")
    return int(_bounded(Decimal(value), MAX_COUNT, str(MAX_COUNT)))


def _positive(parse: Callable[[str], Number]) -> Callable[[str], Number]:
    """``parse``, refusing 0 (for knobs where zero would mean nothing sensible)."""

    def positive(text: str) -> Number:
        value = parse(text)
        if value == 0:
            raise ValueError("must be more than 0")
        return value

    positive.__name__ = parse.__name__.replace("parse_", "parse_positive_")
    return positive


parse_positive_size = _positive(parse_size)
parse_positive_duration = _positive(parse_duration)


def _unset_when_blank(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """``parse``, with a blank value meaning unset (None): for knobs whose default is computed
    where they are used (``HARDENED_READY_TIMEOUT`` blank follows ``--graceful-timeout``)."""

    def or_unset(text: str) -> T | None:
        return parse(text) if text.strip(_SPACE) else None

    or_unset.__name__ = parse.__name__
    return or_unset


def _zero_is_off(parse: Callable[[str], Number]) -> Callable[[str], Number | None]:
    """``parse``, with 0 meaning off (None) like a blank value: for knobs that can be off.

    The rule for every duration and size: 0 is off where the knob has an off, and refused
    (:func:`_positive`) where it has none, never a third meaning."""

    def or_off(text: str) -> Number | None:
        value = parse(text) if text.strip(_SPACE) else 0
        return None if value == 0 else value

    or_off.__name__ = parse.__name__ + "_or_off"
    return or_off


parse_optional_size = _zero_is_off(parse_size)
parse_optional_duration = _zero_is_off(parse_duration)


def parse_cpu(text: str) -> float | None:
    """A Kubernetes CPU quantity in cores: ``'2'``, ``'1.5'``, ``'500m'`` (millicores); what the
    downward API's ``requests.cpu`` gives (divisor 1: whole cores, rounded up). 0 is no request."""
    value = text.strip(_SPACE)
    if not value:
        return None
    match = re.fullmatch(_NUMBER + "(m?)", value)
    if not match:
        raise ValueError("is not a CPU quantity")
    cores = Decimal(match.group(1)) / (1000 if match.group(2) else 1)
    return float(_bounded(cores, 10**6, "1000000")) or None


def parse_bool(text: str) -> bool:
    value = text.strip(_SPACE).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("is not a boolean")


def parse_percent(text: str) -> float:
    """``'10%'`` -> 0.10; between 0% and 50%."""
    match = _PERCENT_RE.fullmatch(text.strip(_SPACE))
    if not match or Decimal(match.group(1)) > 50:
        raise ValueError("is not a percentage from 0% to 50%")
    return float(Decimal(match.group(1)) / 100)


def parse_path(text: str) -> str | None:
    value = text.strip(_SPACE)
    if not value:
        return None
    if not value.startswith("/") or any(
        c.isspace() or not c.isprintable() or c in "?#" for c in value
    ):
        raise ValueError("is not a URL path")
    return value


def parse_file(text: str) -> str | None:
    """A file name (absolute, or relative to gunicorn's --chdir); empty means none."""
    value = text.strip(_SPACE)
    if value and not value.isprintable():
        raise ValueError("is not a file name")
    return value or None


def parse_port(text: str) -> int | None:
    """A TCP port, 1 to 65535; empty means none."""
    value = text.strip(_SPACE)
    if not value:
        return None
    if not re.fullmatch("[0-9]{1,5}", value) or not 0 < int(value) < 65536:
        raise ValueError("is not a TCP port (1 to 65535)")
    return int(value)


def parse_allow(text: str) -> str | None:
    """Comma-separated IP addresses, CIDR networks, ``*`` or ``unix`` (the trust-list grammar of
    :func:`hardened_worker._forwarded.parse_trusted`); empty means none."""
    from hardened_worker._forwarded import parse_trusted  # pure too: no gunicorn

    value = text.strip(_SPACE)
    if not value:
        return None
    try:
        parse_trusted(value)
    except ValueError:
        raise ValueError("is not a list of IP addresses, CIDR networks, '*' or 'unix'") from None
    return value


def parse_binds(text: str) -> list[str]:
    """gunicorn ``bind`` addresses, comma-separated: ``'127.0.0.1:8000,unix:/run/app.sock'``."""
    binds = [b.strip(_SPACE) for b in text.split(",") if b.strip(_SPACE)]
    if not binds or any(not b.isprintable() or " " in b for b in binds):
        raise ValueError("is not a comma-separated list of addresses")
    return binds


def parse_import(text: str) -> str | None:
    value = text.strip(_SPACE)
    if not value:
        return None
    if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", value):
        raise ValueError("is not a module:function reference")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip(_SPACE).lower()
        if value not in choices:
            raise ValueError("is not one of " + "|".join(choices))
        return value

    parse.__name__ = "parse_choice"
    return parse


class Setting(Generic[T]):
    """One knob, ``HARDENED_<ATTR>``, declared as an attribute of :class:`Settings`; reading it on
    a loaded ``Settings`` gives the parsed value, typed by ``parse``. A blank value means
    ``default``; a knob whose default is blank can be unset, so its ``parse`` maps blank to None."""

    attr: str  # the attribute's name on Settings, given by __set_name__

    def __init__(
        self,
        parse: Callable[[str], T],
        default: str,  # as the operator would write it, parsed like any value
        example: str,
        meaning: str,
        preset: str | None = None,  # the preset that reads it when the configuration loads
    ) -> None:
        self.parse = parse
        self.default = default
        self.example = example
        self.meaning = meaning
        self.preset = preset

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    @overload
    def __get__(self, settings: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, settings: Settings, owner: type) -> T: ...
    def __get__(self, settings: Settings | None, owner: type) -> Setting[T] | T:
        if settings is None:
            return self
        value: T = settings.values[self.attr]
        return value

    @property
    def name(self) -> str:
        return self.attr.upper()

    @property
    def env(self) -> str:
        return PREFIX + self.name


@dataclass(frozen=True)
class Settings:
    """Parsed values of every knob, defaults applied: one typed attribute per :class:`Setting`,
    declared below (``settings.memory_limit`` is ``int | None``). The declarations are the table.

    ``texts`` and ``origin`` say what was written and where (a source's label, or ``default``);
    ``notes`` are the warnings of the load (reserved names, see :data:`RESERVED`)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    texts: Mapping[str, str] = field(default_factory=dict)
    origin: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    # Foundation
    startup_timeout = Setting(
        parse_positive_duration,
        "60s",
        "90s",
        "Longest a worker may spend importing the app and running lifespan startup; past it "
        "the worker logs where it was stuck and exits as a failed start.",
    )
    # Drain
    drain_delay = Setting(
        parse_duration,
        "0s",
        "5s",
        "After SIGTERM, keep serving normally this long before draining, so load balancers "
        "and Kubernetes endpoints stop routing first; 0 drains at once.",
    )
    drain_idle_window = Setting(
        parse_duration,
        "500ms",
        "1s",
        "While draining, an idle keep-alive connection is closed once it has been quiet this "
        "long and has no unread bytes; 0 closes it as soon as it is idle.",
    )
    health_path = Setting(
        parse_path,
        "",
        "/healthz",
        "Path the worker answers itself (200 ready, 503 booting or draining); off when empty.",
    )
    health_check = Setting(
        parse_import,
        "",
        "myapp.health:check",
        "Optional app-level check (sync or async callable) the health path also calls; a false "
        "result or an exception answers 503.",
    )
    health_check_timeout = Setting(
        parse_positive_duration,
        "1s",
        "500ms",
        "Longest the app-level health check may take before the answer is 503.",
    )
    health_access_log = Setting(
        parse_bool,
        "false",
        "true",
        "Write health-path requests to the access log.",
    )
    # Diagnostics
    stall_threshold = Setting(
        parse_duration,
        "1s",
        "250ms",
        "Warn, with the blocking stack and request, when the event loop is blocked this long; "
        "0 turns the watchdog off.",
    )
    # Requests
    request_timeout = Setting(
        parse_optional_duration,
        "",
        "30s",
        "An HTTP request still running this long is cancelled: 504 with Connection: close if "
        "no response started, else its connection is closed (an event stream gets its final "
        "chunk); websockets and the health path are exempt; off when empty or 0.",
    )
    header_timeout = Setting(
        parse_duration,
        "10s",
        "5s",
        "Slowloris: a connection that has not sent a complete request head this long after it "
        "opened (on keep-alive, after the next request's first byte; the wait before that byte "
        "is --keep-alive's) is closed; 0 turns it off. gunicorn's --limit-request-line, "
        "--limit-request-fields and --limit-request-field_size hold too: 414/431 at once.",
    )
    body_timeout = Setting(
        parse_duration,
        "60s",
        "30s",
        "A request body that stops arriving: its connection is closed after this long without "
        "a new body byte while the app waits for more (nginx's client_body_timeout); a body "
        "that trickles steadily is bounded by HARDENED_REQUEST_TIMEOUT, which covers the "
        "whole request, body included; 0 turns it off.",
    )
    max_inflight = Setting(
        _unset_when_blank(parse_count),
        "",
        "64",
        "Backpressure: with this many requests in flight (open websockets count) a worker stops "
        "accepting connections, so the kernel hands new ones to a sibling; requests on the "
        "connections it holds are still served; off when empty or 0.",
    )
    spread = Setting(
        parse_bool,
        "true",
        "false",
        "Even connections across workers: a worker that holds more open connections than a "
        "sibling that accepts leaves the next connection to that sibling (decided before each "
        "accept, counts in the shared table).",
    )
    max_queue_time = Setting(
        parse_optional_duration,
        "",
        "2s",
        "Load shedding: a request that already waited longer than this before the app would "
        "run (X-Request-Start from a trusted proxy, else since its connection was accepted) "
        "gets a fast 503 with Retry-After; the health path reports it and still answers 200 "
        "unless HARDENED_SHED_FAILS_HEALTH; off when empty or 0.",
    )
    shed_fails_health = Setting(
        parse_bool,
        "false",
        "true",
        "While a worker sheds (HARDENED_MAX_QUEUE_TIME), its health path answers 503, so a "
        "readiness probe takes it out of rotation. Off by default: under a fleet-wide "
        "overload every pod would go NotReady in turn and the rest take all the load.",
    )
    # Readiness
    ready_timeout = Setting(
        _unset_when_blank(parse_positive_duration),
        "",
        "30s",
        "Longest a new worker's HARDENED_HEALTH_CHECK may keep failing after lifespan startup "
        "before its start fails (a reload is then rejected); empty means 80% of "
        "--graceful-timeout. An old worker waits for its successors' verdict up to "
        "HARDENED_STARTUP_TIMEOUT + this (with a check) + 5 s, so it never gives up first.",
    )
    rolling = Setting(
        parse_bool,
        "false",
        "true",
        "On HUP, replace workers one at a time (each old worker leaves as one more successor "
        "is ready) so at most workers + 1 hold the app in memory; an old worker waits for "
        "as many successor start deadlines.",
    )
    # Forwarded headers
    forwarded = Setting(
        _choice("x-forwarded", "forwarded", "off"),
        "x-forwarded",
        "forwarded",
        "Which header family carries the client address from trusted proxies "
        "(--forwarded-allow-ips): X-Forwarded-*, RFC 7239 Forwarded, or none.",
    )
    forwarded_host = Setting(
        parse_bool,
        "false",
        "true",
        "Let a trusted proxy's X-Forwarded-Host / Forwarded host= set the Host the app sees.",
    )
    forwarded_port = Setting(
        parse_bool,
        "false",
        "true",
        "Let a trusted proxy's X-Forwarded-Port set the server port the app sees.",
    )
    forwarded_prefix = Setting(
        parse_bool,
        "false",
        "true",
        "Let a trusted proxy's X-Forwarded-Prefix set the app's root_path.",
    )
    # Memory
    memory_limit = Setting(
        parse_optional_size,
        "",
        "512Mi",
        "Soft per-worker memory ceiling: past it the worker drains and is replaced; off when "
        "empty or 0.",
    )
    memory_hard_limit = Setting(
        _unset_when_blank(parse_positive_size),
        "",
        "640Mi",
        "Past this a worker recycles at once, without waiting its turn; empty means the soft "
        "limit plus 25%.",
    )
    memory_measure = Setting(
        _choice("uss", "pss", "rss"),
        "uss",
        "rss",
        "What counts as a worker's memory: uss (private pages, not shared with the master), "
        "pss (shared pages split between sharers) or rss.",
    )
    memory_jitter = Setting(
        parse_percent,
        "5%",
        "10%",
        "Per-worker random lowering of the soft limit, so workers do not all recycle at once; "
        "0% lowers none.",
    )
    memory_check_interval = Setting(
        parse_positive_duration,
        "250ms",
        "1s",
        "How often a worker reads its memory.",
    )
    memory_check_requests = Setting(
        parse_count,
        "16",
        "100",
        "Also read memory after this many requests since the last read (at 256 KiB leaked per "
        "request, 16 requests bound the overshoot to 4 MiB); 0 reads on the interval only.",
    )
    memory_min_lifetime = Setting(
        parse_duration,
        "30s",
        "2m",
        "A worker already over the soft limit at its first reading (the limit is below the "
        "app's baseline) recycles no sooner than this, so it cannot loop; one warning says so. "
        "0 sets no minimum.",
    )
    memory_cgroup = Setting(
        parse_bool,
        "false",
        "true",
        "Recycle the largest worker when all workers together approach the container's "
        "cgroup memory limit.",
    )
    # Recycling by age
    max_lifetime = Setting(
        parse_optional_duration,
        "",
        "24h",
        "A worker older than this is replaced, its successor started first; off when empty or 0.",
    )
    max_lifetime_jitter = Setting(
        _unset_when_blank(parse_duration),
        "",
        "30m",
        "Each worker's lifetime is shortened by a random amount up to this, so workers do not "
        "recycle together; empty means 10% of HARDENED_MAX_LIFETIME, 0 none. Must be shorter "
        "than HARDENED_MAX_LIFETIME.",
    )
    cgroup_root = Setting(
        parse_path,
        "",
        "/sys/fs/cgroup",
        "The cgroup directory whose memory and CPU limits are read (cgroup v1: the one holding "
        "the controller directories); empty means this process's own cgroup, found from "
        "/proc/self/cgroup and /proc/self/mountinfo (a systemd service's, a container's).",
    )
    # Observability
    metrics_path = Setting(
        parse_path,
        "",
        "/metrics",
        "Path the worker answers itself with Prometheus metrics for the whole pool (every "
        "worker, from whichever answers; ?format=json for the status command); off when empty.",
    )
    metrics_allow = Setting(
        parse_allow,
        "",
        "10.0.0.0/8,192.168.1.7",
        "Peers allowed to read the metrics path besides this host (loopback or unix, for "
        "requests no proxy relayed; --forwarded-allow-ips admits nobody): IP addresses, CIDR "
        "networks, * (anyone) or unix; others get 403.",
    )
    metrics_port = Setting(
        parse_port,
        "",
        "9100",
        "Answer the metrics path only on connections to this local port (a second --bind, "
        "e.g. 0.0.0.0:9100, a Kubernetes scrape port), where every other path gets 404; "
        "empty: on every bind.",
    )
    # Read by the presets (hardened_worker.presets) when gunicorn loads the configuration
    log_format = Setting(
        _choice("text", "json"),
        "text",
        "json",
        "text, or json: one JSON object per line, errors on stderr and access on stdout.",
        preset="base",
    )
    access_log = Setting(
        parse_bool,
        "false",
        "true",
        "Write gunicorn's access log to stdout (off: the proxy in front usually keeps one).",
        preset="base",
    )
    bind = Setting(
        parse_binds,
        "127.0.0.1:8000",
        "127.0.0.1:8000,unix:/run/app/app.sock",
        "Comma-separated gunicorn bind addresses (host:port, unix:path).",
        preset="vm",
    )
    pidfile = Setting(
        parse_file,
        "",
        "/run/app/gunicorn.pid",
        "gunicorn's pid file; empty means gunicorn.pid in systemd's $RUNTIME_DIRECTORY when "
        "the unit has RuntimeDirectory=, else none.",
        preset="vm",
    )
    termination_grace_period = Setting(
        parse_positive_duration,
        "30s",
        "60s",
        "The pod's terminationGracePeriodSeconds: --graceful-timeout becomes this minus 5 s "
        "(whole seconds, at least 1), and the default drain delay fits within it.",
        preset="kubernetes",
    )
    cpu_request = Setting(
        parse_cpu,
        "",
        "2",
        "The container's CPU request, from the downward API (resourceFieldRef requests.cpu): "
        "with no CPU limit the preset runs ceil(request) workers, at most the CPUs available; "
        "without a limit or a request it runs one worker (not one per CPU of the node) and "
        "says so. 0 or empty: no request. WEB_CONCURRENCY and a CPU limit win.",
        preset="kubernetes",
    )


SETTINGS: tuple[Setting[Any], ...] = tuple(
    s for s in vars(Settings).values() if isinstance(s, Setting)
)

_BY_ENV = {s.env: s for s in SETTINGS}

# Names a newer release of this package reads. With one of them set, this release warns and goes
# on instead of refusing to start, so rolling an image back while the deployment still carries the
# newer knob does not crash-loop. A name goes here once the release that adds it is decided.
RESERVED: tuple[str, ...] = (
    "HARDENED_REQUEST_ID_HEADER",  # issue 27: JSON access logs carry no request id yet
)

ENVIRONMENT = "environment"
DEFAULT = "default"


@dataclass(frozen=True)
class Source:
    """One place ``HARDENED_*`` values come from, keyed by ``Setting.env``; ``label`` is what
    ``print-config`` shows. A configuration file's (``in_file``) names are spelled ``hardened_x``
    and its values are Python objects (``"512Mi"``, ``5``, ``True``, ``["a", "b"]``)."""

    label: str
    values: Mapping[str, Any]
    in_file: bool = False

    def spelled(self, env: str) -> str:
        return env.lower() if self.in_file else env

    def quoted(self, env: str, raw: Any) -> str:
        """The name and value as the operator wrote them, for a one-line message."""
        if self.in_file:
            return f"{env.lower()} in {self.label} = {_shown(raw)}"
        return f"{env}={_shown(raw)}"


def file_source(namespace: Mapping[str, Any], label: str) -> Source:
    """The ``hardened_x = ...`` names of an executed gunicorn configuration file (``vars()`` of its
    module). gunicorn ignores names it does not know; these are ours. A module or a function is not a
    setting (``import hardened_worker`` binds such a name)."""
    import types

    values = {
        name.upper(): value
        for name, value in namespace.items()
        if name.lower().startswith(PREFIX.lower())
        and not isinstance(value, types.ModuleType)
        and not callable(value)
    }
    return Source(label, values, in_file=True)


def file_text(value: Any) -> str:
    """A configuration file's Python value spelled as the environment would spell it, so one parser
    reads both: ``None`` is empty, booleans are ``true``/``false``, a number is its digits (a size
    still needs its unit, as a string), a list is comma-separated (``hardened_bind``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ValueError("is not a string, number, boolean or list of strings")


def _shown(raw: Any) -> str:
    """The value as the error line quotes it: a very long one is cut, so the line stays one line."""
    text = raw if isinstance(raw, str) else repr(raw)
    if len(text) <= 60:
        return repr(raw)
    return f"{text[:40]!r}... ({len(text)} characters)"


def _closest(name: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(_BY_ENV), n=1, cutoff=0.8)
    return match[0] if match else None


def _unknown_names(sources: Sequence[Source]) -> list[str]:
    """The warnings for reserved names; raises ConfigError on the first name nobody knows."""
    notes = []
    for source in sources:
        for env in sorted(k for k in source.values if k.startswith(PREFIX) and k not in _BY_ENV):
            where = source.quoted(env, source.values[env])
            if env in RESERVED:
                notes.append(
                    f"hardened_worker: {where} is a setting of a newer hardened_worker; "
                    "this release ignores it"
                )
                continue
            hint = _closest(env)
            advice = (
                f"did you mean {source.spelled(hint)}?"
                if hint
                else "see docs/settings.md for the HARDENED_* variables"
            )
            raise ConfigError(f"hardened_worker: {where} is not a known setting; {advice}")
    return notes


def load_sources(sources: Sequence[Source]) -> Settings:
    """Parse every ``HARDENED_*`` value of ``sources``, the first source that sets a name winning;
    raise ConfigError on the first unknown name or bad value, naming where it was written."""
    notes = _unknown_names(sources)
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    origin: dict[str, str] = {}
    for setting in SETTINGS:
        source = next((src for src in sources if setting.env in src.values), None)
        raw = setting.default if source is None else source.values[setting.env]
        where = (
            f"{setting.env}={_shown(raw)}" if source is None else source.quoted(setting.env, raw)
        )
        try:
            text = file_text(raw) if source is not None and source.in_file else raw
            values[setting.attr] = setting.parse(text if text.strip(_SPACE) else setting.default)
        except ValueError as exc:
            raise ConfigError(
                f"hardened_worker: {where} {exc}; use e.g. {setting.example}"
            ) from None
        texts[setting.attr] = text
        origin[setting.attr] = DEFAULT if source is None else source.label
    return Settings(values, texts, origin, tuple(notes))


def load(environ: Mapping[str, str], file: Source | None = None) -> Settings:
    """Parse the ``HARDENED_*`` variables of ``environ``, then a configuration file's ``hardened_x``
    names (the environment wins); raise ConfigError on the first bad one."""
    return load_sources([Source(ENVIRONMENT, environ), *([file] if file else [])])


def explain(settings: Settings) -> list[str]:
    """What ``python -m hardened_worker print-config`` shows: every setting's effective value, as
    written and as parsed, and where it came from."""
    width = max(len(s.env) for s in SETTINGS)
    return [
        f"{s.env:<{width}} = {settings.texts[s.attr]:<16} # {settings.origin[s.attr]}: "
        f"{settings.values[s.attr]!r}"
        for s in SETTINGS
    ]


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| variable | meaning | default | example |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        meaning = f"*{s.preset} preset:* {s.meaning}" if s.preset else s.meaning
        rows.append(f"| `{s.env}` | {meaning} | {default} | `{s.example}` |")
    return "\n".join(rows)
