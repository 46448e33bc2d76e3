"""What users install: the wheel and the sdist, built as a release would build them, and the wheel
pip-installed into a fresh virtualenv holding only FastAPI and gunicorn (the package's own
dependencies), serving a FastAPI app under a preset, as in an existing FastAPI image."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from rig import ROOT, Master, get
from test_examples import MASTER_BUDGET, healthcheck_command

APP = """
import hardened_worker
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def where():
    return {"hardened_worker": hardened_worker.__file__}
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """``{"wheel": ..., "sdist": ...}``, built by ``python -m build`` (sdist, then the wheel from it)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel], [sdist] = out.glob("*.whl"), out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_holds_the_package_and_its_data_only(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = wheel.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(wheel.read(metadata).decode())
    assert "hardened_worker/py.typed" in names
    assert {"hardened_worker/worker.py", "hardened_worker/presets/kubernetes.py"} <= set(names)
    # Nothing else at the top: no tests/, bench/ or examples/.
    assert {n.split("/")[0] for n in names} == {"hardened_worker", metadata.split("/")[0]}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "MIT"
    assert "prometheus" in meta.get_all("Provides-Extra")
    assert any(
        r.startswith("prometheus-client") and 'extra == "prometheus"' in r
        for r in meta.get_all("Requires-Dist")
    )


def test_sdist_builds_the_same_package(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "LICENSE", "hardened_worker/py.typed"} <= names
    # what its tests need to run: the rig, the apps, the docs the doc tests read
    assert {
        "tests/conftest.py",
        "tests/rig.py",
        "tests/apps/testapp.py",
        "tests/test_lifecycle_core.py",
        "docs/operations.md",
        "noxfile.py",
        "setup.py",
    } <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith("bench/results/")]


def test_metadata_classifiers_urls_keywords_and_the_supported_ranges(dist):
    import trove_classifiers

    from hardened_worker._versions import SUPPORTED

    meta = wheel_metadata(dist["wheel"])
    classifiers = meta.get_all("Classifier")
    assert (
        set(classifiers) <= trove_classifiers.classifiers
    )  # the package index refuses unknown ones
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12, 13)} <= set(
        classifiers
    )
    assert "Framework :: FastAPI" in classifiers
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert urls["Source"] == setup_py().REPOSITORY and {"Homepage", "Issues", "Changelog"} <= set(
        urls
    )
    assert {"gunicorn", "uvicorn", "asgi"} <= set(meta["Keywords"].split(","))
    requires = {
        r.name: r.specifier
        for r in map(Requirement, meta.get_all("Requires-Dist"))
        if r.marker is None
    }
    assert {w.distribution: requires[w.distribution] for w in SUPPORTED} == {
        w.distribution: SpecifierSet(w.specifier) for w in SUPPORTED
    }


def test_the_package_index_description_links_only_to_absolute_addresses_that_exist(dist):
    # The index shows the description on its own: a relative link there leads nowhere. setup.py
    # makes README.md's relative links absolute; each must name a file of this repository.
    meta = wheel_metadata(dist["wheel"])
    description = meta.get_payload()
    assert description.startswith("# hardened_worker")
    repository = setup_py().REPOSITORY
    targets = re.findall(
        r"!?\[[^\]]*\]\(([^)\s]+)\)",
        re.sub(r"^```.*?^```", "", description, flags=re.DOTALL | re.MULTILINE),
    )
    ours = [t for t in targets if t.startswith(repository + "/")]
    assert len(ours) >= 10
    assert [t for t in targets if not re.match(r"^(https://|#)", t)] == []
    missing = [
        t
        for t in ours
        if not (
            ROOT / re.sub(r"^(blob|raw)/main/", "", t[len(repository) + 1 :]).split("#")[0]
        ).exists()
    ]
    assert missing == []
    assert all("/raw/main/" in t for t in ours if t.endswith(".png"))


def test_the_sdist_runs_its_own_tests(dist, tmp_path):
    with tarfile.open(dist["sdist"]) as sdist:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+
            sdist.extractall(tmp_path, filter="data")
        else:
            sdist.extractall(tmp_path)
    [unpacked] = tmp_path.iterdir()
    env = {**outside(), "PYTHONPATH": str(unpacked)}  # the unpacked package, not this checkout's
    where = subprocess.run(
        [sys.executable, "-c", "import hardened_worker; print(hardened_worker.__file__)"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(unpacked / "hardened_worker" / "__init__.py"), where.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_lifecycle_core.py",
            "tests/test_docs.py",
        ],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b\d{2,} passed", done.stdout) and "failed" not in done.stdout


def test_wheel_in_a_fresh_virtualenv_serves_fastapi_under_a_preset(dist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # This venv's pip installs into the fresh one (--python), from PyPI through pip's cache.
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            str(dist["wheel"]),
            "fastapi",
        ],
        env=outside(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    (tmp_path / "main.py").write_text(APP)

    m = Master(
        tmp_path,
        app="main:app",
        env={"HARDENED_DRAIN_DELAY": "0.5s"},
        args=["-c", "python:hardened_worker.presets.kubernetes"],
    )
    m.cmd[0] = str(env_dir / "bin" / "gunicorn")
    at = m.cmd.index("--pythonpath")
    del m.cmd[at : at + 2]  # nothing from this checkout: the app's directory (cwd) only
    m.env.pop("PYTHONPATH", None)
    try:
        m.start()
        status, body = get(m.port, "/")
        assert status == 200 and json.loads(body)["hardened_worker"].startswith(str(env_dir))
        assert (
            get(m.port, "/healthz")[0] == 200
        )  # answered by the worker itself (the preset's path)
        assert healthcheck(python, m.port).returncode == 0  # the Dockerfile's, as the image runs it
        rss = (
            int(
                next(
                    line.split()[1]
                    for line in Path(f"/proc/{m.pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS:")
                )
            )
            * 1024
        )
        assert rss < MASTER_BUDGET  # what deployment.yaml's memory sum allows the master
        m.signal(signal.SIGTERM)
        assert m.wait_exit(30) == 0
        assert "reason shutdown" in m.log()
    finally:
        m.stop()
    assert healthcheck(python, m.port).returncode != 0  # nothing listens any more


def wheel_metadata(wheel_path: Path):
    with zipfile.ZipFile(wheel_path) as wheel:
        [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(wheel.read(metadata).decode())


def setup_py():
    """The checkout's setup.py as a module (it only calls setup() when run)."""
    spec = importlib.util.spec_from_file_location("hardened_worker_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outside() -> dict:
    """This environment without a PYTHONPATH that could show the checkout to the fresh venv."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def healthcheck(python: Path, port: int) -> subprocess.CompletedProcess:
    """The Dockerfile's HEALTHCHECK command, run by ``python`` against ``port``."""
    return subprocess.run(
        [str(python), *healthcheck_command()[1:]],
        env={**outside(), "PORT": str(port)},
        capture_output=True,
        timeout=30,
    )
