"""The gunicorn, uvicorn and uvicorn-worker versions this worker supports, declared once.

The worker leans on internals of all three (gunicorn's in :mod:`hardened_worker._gunicorn`,
uvicorn's in :mod:`hardened_worker._server`'s docstring, uvicorn-worker's ``UvicornWorker`` that
:class:`hardened_worker.Worker` subclasses), so each range is what the test matrix
(``noxfile.py``) runs at both ends, no wider. ``pyproject.toml``'s dependencies state the same
ranges (``tests/test_versions.py`` holds them equal). Why each floor:

* gunicorn 25.2: ``Logger.access_log_enabled`` (read by :mod:`hardened_worker._accesslog`) first
  appears there; on gunicorn 23.0-25.1 every worker fails at boot with ``'Logger' object has no
  attribute 'access_log_enabled'`` and the master respawns it in a loop.
* uvicorn 0.53: its httptools protocol writes ``Connection: close`` on a response whose
  ``keep_alive`` is False only since 0.53; the drain sets it False on the responses in progress
  when it starts, so on 0.50-0.52 their clients keep using a connection the leaving worker closes
  and requests are dropped (on 0.52.4 the under-load TTOU/TTIN, max-requests and HUP tests lose
  18-30 requests each; none on 0.53.0 or 0.55.0). 0.40 and older fail at boot (no
  ``error_occurred``).
* uvicorn-worker 0.4: the only release with the ``UvicornWorker`` the worker subclasses as it is.

Each ceiling is the next release not proven yet (the newest proven: gunicorn 27.0.1, uvicorn
0.55.0, uvicorn-worker 0.4.0).

:func:`check` runs before the worker class is imported (``hardened_worker.Worker``, which is what
``gunicorn -k hardened_worker.Worker`` resolves, and :mod:`hardened_worker._gunicorn`, which the
worker module imports first): an unsupported version raises :class:`UnsupportedVersion`, whose
message is one line. It is an ``ImportError`` for importers and a ``RuntimeError`` so that
gunicorn's master prints it as ``Error: <the line>`` and exits 1, without a traceback
(``BaseApplication.run`` catches ``RuntimeError`` from building the arbiter, which resolves
``-k``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

Release = tuple[int, ...]


@dataclass(frozen=True)
class Supported:
    """``distribution`` (imported as ``module``) from ``lowest`` up to, not including, ``below``."""

    distribution: str
    module: str
    lowest: Release
    below: Release

    @property
    def specifier(self) -> str:
        """The range as pip writes it: ``>=25.2,<28``."""
        return f">={_dotted(self.lowest)},<{_dotted(self.below)}"

    def admits(self, version: str) -> bool:
        found = release(version)
        return found is not None and self.lowest <= found < self.below


SUPPORTED = (
    Supported("gunicorn", "gunicorn", (25, 2), (28,)),
    Supported("uvicorn", "uvicorn", (0, 53), (0, 56)),
    Supported("uvicorn-worker", "uvicorn_worker", (0, 4), (0, 5)),
)


class UnsupportedVersion(ImportError, RuntimeError):
    """An installed gunicorn, uvicorn or uvicorn-worker outside :data:`SUPPORTED`; the message is
    one line naming the installed versions and the supported ranges."""


def release(version: str) -> Release | None:
    """The release numbers a version starts with (``"25.2.0rc1"`` -> ``(25, 2, 0)``), trailing zeros
    dropped so ``27`` and ``27.0.0`` compare equal; None when it starts with no number."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if match is None:
        return None
    numbers = [int(part) for part in match.group().split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _dotted(numbers: Release) -> str:
    return ".".join(str(n) for n in numbers)


def problems(installed: Mapping[str, str | None]) -> list[str]:
    """One phrase per distribution of :data:`SUPPORTED` whose installed version (``installed`` maps
    distribution names to versions; None: not installed) is outside its range."""
    found = []
    for wanted in SUPPORTED:
        version = installed.get(wanted.distribution)
        if version is None:
            found.append(f"{wanted.distribution} is not installed (needs {wanted.specifier})")
        elif not wanted.admits(version):
            found.append(
                f"{wanted.distribution} {version} is not supported (needs {wanted.specifier})"
            )
    return found


def message(found: list[str]) -> str:
    """The one line :func:`check` raises with."""
    return (
        f"hardened_worker: {'; '.join(found)}; install the supported versions: "
        + "pip install "
        + " ".join(f"'{w.distribution}{w.specifier}'" for w in SUPPORTED)
    )


def installed_version(wanted: Supported) -> str | None:
    """The version of the module Python actually imports (its ``__version__``; the distribution's
    metadata when the module has none), None when it is not importable."""
    try:
        module = importlib.import_module(wanted.module)
    except ImportError:
        return None
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return metadata.version(wanted.distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def check() -> None:
    """Raise :class:`UnsupportedVersion` unless every installed version is in its range."""
    found = problems({wanted.distribution: installed_version(wanted) for wanted in SUPPORTED})
    if found:
        raise UnsupportedVersion(message(found))
