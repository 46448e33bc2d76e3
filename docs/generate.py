"""The generated parts of the documentation pages, each between two markers in its page:

    <!-- generated: settings (python docs/generate.py) -->
    | variable | meaning | default | example |
    ...
    <!-- /generated: settings -->

Each is a table the code already holds, so the page cannot disagree with it: the ``HARDENED_*``
settings (``hardened_worker/config.py``), the worker's lifecycle (``hardened_worker/_lifecycle.py``)
and what the worker does with each of the installed gunicorn's settings
(``hardened_worker/_flags.py``). ``python docs/generate.py`` rewrites them; ``--check`` writes
nothing and exits 1 naming each stale one (``tests/test_docs.py`` fails the same way).

The benchmark report is not copied: the site includes ``bench/REPORT.md`` as ``make bench`` last
wrote it, at build time (``docs/hooks.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def _settings() -> str:
    from hardened_worker import config

    return config.markdown_table()


def _lifecycle() -> str:
    from hardened_worker import _lifecycle as lifecycle

    return lifecycle.markdown_table()


def _gunicorn_settings() -> str:
    from gunicorn.config import KNOWN_SETTINGS

    from hardened_worker import _flags as flags

    return flags.markdown_table(KNOWN_SETTINGS)


# name: (page under docs/, what fills it)
SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "settings": ("settings.md", _settings),
    "lifecycle": ("how-it-works.md", _lifecycle),
    # From the installed gunicorn's settings: current for the newest gunicorn of the supported
    # range only (tests/test_gunicorn_flags.py checks it there).
    "gunicorn-settings": ("gunicorn-settings.md", _gunicorn_settings),
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- generated: {name} (python docs/generate.py) -->\n", f"<!-- /generated: {name} -->"


def section(text: str, name: str) -> str:
    """What stands between ``name``'s markers in ``text`` (ValueError without them)."""
    start, end = markers(name)
    return text[text.index(start) + len(start) : text.index(end)]


def rendered(text: str, name: str, body: str) -> str:
    """``text`` with ``name``'s section replaced by ``body``."""
    start, end = markers(name)
    head, tail = text[: text.index(start) + len(start)], text[text.index(end) :]
    return head + body.strip("\n") + "\n" + tail


def stale(names: list[str] | None = None) -> list[str]:
    """``"page: name"`` for each generated section that differs from what the code says now."""
    found = []
    for name in names or list(SECTIONS):
        page, make = SECTIONS[name]
        text = (DOCS / page).read_text()
        if rendered(text, name, make()) != text:
            found.append(f"docs/{page}: {name}")
    return found


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        found = stale()
        for line in found:
            print(f"stale: {line} (run python docs/generate.py)")
        return 1 if found else 0
    if argv:
        print("usage: python docs/generate.py [--check]", file=sys.stderr)
        return 2
    for name, (page, make) in SECTIONS.items():
        path = DOCS / page
        text = path.read_text()
        new = rendered(text, name, make())
        if new != text:
            path.write_text(new)
            print(f"wrote docs/{page}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
