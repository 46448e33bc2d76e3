"""The documentation site (mkdocs.yml, docs/): ``mkdocs build --strict`` into a temporary directory,
as CI builds it. Strict makes every warning fatal: a link to a missing page or anchor, a page not
in the navigation (mkdocs.yml's ``validation``). Then what the build step adds is checked in the
built pages: the generated tables, the benchmark report with its plots (docs/hooks.py) and the
links to repository files outside docs/, which lead to GitHub. (Not in tests/test_docs.py: the
sdist runs that file, and mkdocs.yml is not in the sdist.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import pytest
from rig import ROOT

from hardened_worker import config


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    # mkdocs and the material theme come with the test extra (pyproject.toml): `make test`.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def test_the_site_builds_strict_with_every_page(site):
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    built = [p for p in pages if p != "index" and not (site / p / "index.html").exists()]
    assert built == [] and (site / "index.html").exists()
    assert len(pages) >= 11


def test_the_generated_tables_are_in_the_built_pages(site):
    settings = page(site, "settings")
    assert [
        s.env for s in config.SETTINGS if f"<td><code>{s.env}</code></td>" not in settings
    ] == []
    assert "<td>booting</td>" in page(site, "how-it-works")
    assert "<td><code>threads</code></td>" in page(site, "gunicorn-settings")


def test_the_benchmark_report_and_its_plots_are_in_the_site(site):
    html = page(site, "benchmarks")
    report = (ROOT / "bench" / "REPORT.md").read_text()
    title = re.search(r"^# (.*)$", report, re.MULTILINE).group(1)
    assert html_escape(title, quote=False) in html.replace("&#39;", "'")
    plots = re.findall(r"\]\(report/([\w.-]+\.png)\)", report)
    assert plots
    for plot in plots:
        assert f'src="../bench/report/{plot}"' in html
        assert (site / "bench" / "report" / plot).read_bytes() == (
            ROOT / "bench" / "report" / plot
        ).read_bytes()


def test_links_to_repository_files_lead_to_github(site):
    html = page(site, "deployments")
    assert (
        'href="https://github.com/hardened-worker/hardened-worker/blob/main/gunicorn_conf_examples/kubernetes/Dockerfile"'
        in html
    )
    assert (
        'href="https://github.com/hardened-worker/hardened-worker/tree/main/gunicorn_conf_examples/vm"'
        in html
    )
    # no relative link climbs out of the site
    for built in site.glob("**/*.html"):
        climbing = [
            h
            for h in re.findall(r'(?:href|src)="([^"]+)"', built.read_text())
            if h.startswith("../")
            and not (built.parent / h.split("#")[0]).resolve().is_relative_to(site)
        ]
        assert climbing == []
