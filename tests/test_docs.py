"""The documentation: no link leaves the repository, every link and anchor resolves, the generated
parts of the pages are what the code says now (docs/generate.py), and every ``hardened_worker:``
line the code can write is explained in docs/troubleshooting.md. The site's own build:
tests/test_docs_site.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from rig import ROOT

README = ROOT / "README.md"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("**/*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`(\.\.?/[^`\s]*)`")  # a path written as code: ./x, ../x
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose(path: Path) -> str:
    """The file's text without fenced code blocks (commands, log excerpts)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", prose(path), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(doc: Path, text: str | None = None) -> list[str]:
    """What is wrong with each link of ``doc`` (or of ``text``, as if it were ``doc``'s)."""
    text = prose(doc) if text is None else text
    found = []
    for target in LINK.findall(text) + CODE_PATH.findall(text):
        if SCHEME.match(target):
            found.append(f"{target}: leaves the repository")
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.is_relative_to(ROOT):
            found.append(f"{target}: outside the repository")
        elif not resolved.exists():
            found.append(f"{target}: missing")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            found.append(f"{target}: no such heading")
    return found


def test_no_doc_link_leaves_the_repository_and_every_one_resolves():
    assert {doc.name: broken_links(doc) for doc in DOCS} == {doc.name: [] for doc in DOCS}


def test_the_link_checker_catches_what_it_must():
    text = (
        "[a](https://example.com) [b](../../elsewhere.md) `../outside/file.md` [c](#nowhere) "
        "[d](missing.md) [e](#stop) [f](../LICENSE) `../tests/rig.py` [g](../docs/operations.md#scaling)"
    )
    assert [line.split(":")[0] for line in broken_links(ROOT / "docs" / "operations.md", text)] == [
        "https",
        "../../elsewhere.md",
        "#nowhere",
        "missing.md",
        "../outside/file.md",
    ]


# --- every log line explained ------------------------------------------------------------------


def log_lines() -> dict[str, str]:
    """``{where: the first words of the line's longest literal part}`` for every "hardened_worker:
    ..." string the package (and the shipped configurations) can write; placeholders split parts."""
    sources = [
        *sorted((ROOT / "hardened_worker").glob("**/*.py")),
        *sorted((ROOT / "gunicorn_conf_examples").glob("*/gunicorn.conf.py")),
    ]
    found = {}
    for source in sources:
        tree = ast.parse(source.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and ast.get_docstring(n) is not None
        }
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else "\0" for v in node.values
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = re.sub(r"%[-#0-9.]*[sdgfr]", "\0", node.value)
            else:
                continue
            if text.startswith("hardened_worker: "):
                longest = max(text[len("hardened_worker: ") :].split("\0"), key=len)
                found[f"{source.relative_to(ROOT)}:{node.lineno}"] = " ".join(
                    longest.split()[:4]
                ).strip(" ;:,.(")
    return found


def troubleshooting() -> str:
    return " ".join(TROUBLESHOOTING.read_text().replace("`", "").split())


def test_every_log_line_is_in_the_troubleshooting_page():
    lines, explained = log_lines(), troubleshooting()
    assert len(lines) > 40
    assert {where: words for where, words in lines.items() if words not in explained} == {}


# --- generated parts of the pages ---------------------------------------------------------------


def generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# gunicorn-settings: from the installed gunicorn's settings, so current for the newest gunicorn of
# the range only (tests/test_gunicorn_flags.py checks it, in the matrix's newest sessions).
@pytest.mark.parametrize("name", ["settings", "lifecycle"])
def test_each_generated_part_of_the_pages_is_current(name):
    assert generator().stale([name]) == []


def test_the_generator_finds_and_rewrites_a_stale_part():
    generate = generator()
    start, end = generate.markers("settings")
    text = f"# Page\n\n{start}| an old table |\n{end}\n\nAfter.\n"
    new = generate.rendered(text, "settings", "| new |\n|---|")
    assert new == f"# Page\n\n{start}| new |\n|---|\n{end}\n\nAfter.\n"
    assert generate.rendered(new, "settings", "| new |\n|---|") == new
    with pytest.raises(ValueError):
        generate.rendered("no markers", "settings", "| new |")
