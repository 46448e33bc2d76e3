"""The one thing pyproject.toml cannot say: the package's long description.

The package index shows README.md on its own, where a link relative to the repository leads
nowhere. So the description is README.md with each relative link made absolute: files to the
repository at ``main`` (``blob``), images to their bytes (``raw``); links within the page (``#...``)
and fenced code blocks are left as they are. README.md itself keeps relative links: they work on
GitHub and in a checkout, and ``tests/test_docs.py`` checks that each one resolves;
``tests/test_packaging.py`` checks the built description.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup

# pyproject.toml's [project.urls] Source (tests/test_packaging.py holds them equal).
REPOSITORY = "https://github.com/hardened-worker/hardened-worker"
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
LEFT_ALONE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)  # a scheme, or this page
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.DOTALL | re.MULTILINE)


def absolute_links(markdown: str) -> str:
    """``markdown`` with its repository-relative link and image targets made absolute."""

    def rewrite(link: re.Match) -> str:
        bang, label, target = link.groups()
        if LEFT_ALONE.match(target):
            return link.group(0)
        path = target[2:] if target.startswith("./") else target
        return f"{bang}[{label}]({REPOSITORY}/{'raw' if bang else 'blob'}/main/{path})"

    parts, end = [], 0
    for fence in FENCE.finditer(markdown):
        parts += [LINK.sub(rewrite, markdown[end : fence.start()]), fence.group(0)]
        end = fence.end()
    parts.append(LINK.sub(rewrite, markdown[end:]))
    return "".join(parts)


if __name__ == "__main__":
    setup(
        long_description=absolute_links(
            (Path(__file__).parent / "README.md").read_text(encoding="utf-8")
        ),
        long_description_content_type="text/markdown",
    )
