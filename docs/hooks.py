"""mkdocs hooks (``hooks:`` in mkdocs.yml): what the site needs from outside ``docs/``.

- **The benchmark report.** A line ``<!-- include: ../bench/REPORT.md -->`` in a page becomes that
  file's text, headings one level down, as ``make bench`` last wrote it (nothing to keep in step),
  and the plots in ``bench/report/`` are copied into the site. Its table is wide: that page
  gives it the navigation sidebar's width.
- **Links to the repository.** The pages link to files outside ``docs/`` (the example
  configurations, the tests that prove a claim, ``bench/README.md``), which read well on GitHub
  but are not part of the site: in the built site such a link leads to the file on GitHub
  (``repo_url``), as ``setup.py`` does for the package index. ``tests/test_docs.py`` checks that
  each file exists; ``mkdocs build --strict`` checks every link between pages and its anchor.

Fenced code blocks are left as they are.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

PLOTS = "bench/report"
INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.MULTILINE)
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
FENCE = re.compile(r"(^```.*?^```)", re.MULTILINE | re.DOTALL)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    root = _root(config)
    for plot in sorted((root / PLOTS).glob("*.png")):
        files.append(
            File(f"{PLOTS}/{plot.name}", str(root), config.site_dir, config.use_directory_urls)
        )
    return files


def _outside_fences(text: str, change) -> str:
    return "".join(part if FENCE.fullmatch(part) else change(part) for part in FENCE.split(text))


def _relink(text: str, base: Path, page_uri: str, config, files) -> str:
    """``text``'s links, written relative to the directory ``base``, made right for the page
    ``page_uri``: a page or file of the site relative to the page, any other file of the
    repository on GitHub."""
    root, docs = _root(config), Path(config.docs_dir).resolve()
    here = posixpath.dirname(page_uri) or "."

    def one(match: re.Match) -> str:
        target = match.group(2)
        if SCHEME.match(target) or target.startswith("#"):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if resolved.is_relative_to(docs):
            uri = resolved.relative_to(docs).as_posix()
        elif resolved.is_relative_to(root) and files.get_file_from_path(
            resolved.relative_to(root).as_posix()
        ):
            uri = resolved.relative_to(root).as_posix()
        elif resolved.is_relative_to(root):
            kind = (
                "tree" if resolved.is_dir() else "raw" if match.group(1).startswith("!") else "blob"
            )
            url = (
                f"{config.repo_url.rstrip('/')}/{kind}/main/{resolved.relative_to(root).as_posix()}"
            )
            return f"{match.group(1)}{url}{hash_}{anchor}{match.group(3)}"
        else:
            return match.group(0)  # outside the repository: mkdocs reports it
        return f"{match.group(1)}{posixpath.relpath(uri, here)}{hash_}{anchor}{match.group(3)}"

    return _outside_fences(text, lambda part: LINK.sub(one, part))


def on_page_markdown(markdown, page, config, files):
    page_dir = (Path(config.docs_dir) / page.file.src_uri).resolve().parent
    uri = page.file.src_uri

    def include(match: re.Match) -> str:
        path = (page_dir / match.group(1)).resolve()
        text = _outside_fences(
            path.read_text(), lambda part: re.sub(r"^(#+) ", r"#\1 ", part, flags=re.MULTILINE)
        )
        return _relink(text, path.parent, uri, config, files)

    markdown = _relink(markdown, page_dir, uri, config, files)
    if INCLUDE.search(markdown):
        page.meta.setdefault("hide", []).append("navigation")
    return INCLUDE.sub(include, markdown)
