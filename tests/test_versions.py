"""The supported ranges of gunicorn, uvicorn and uvicorn-worker: declared once
(``hardened_worker/_versions.py``), stated the same in ``pyproject.toml``, admitted for what this
environment runs, and an unsupported version stops gunicorn with one line naming it and the range.

The real-process half installs the release just below each floor (from the package index, through
pip's cache) into a directory put first on ``PYTHONPATH``: the real old gunicorn or uvicorn is what
the master imports, nothing is faked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rig import APPS, GUNICORN, ROOT, free_port

from hardened_worker import _versions
from hardened_worker._versions import SUPPORTED, UnsupportedVersion, problems, release

# The newest release below each floor, and why it is below (hardened_worker/_versions.py).
BELOW_FLOOR = {"gunicorn": "25.1.0", "uvicorn": "0.52.4"}


def test_release_numbers():
    assert release("27.0.1") == (27, 0, 1)
    assert release("25.2.0") == release("25.2") == (25, 2)
    assert release("0.56.0rc1") == (0, 56)
    assert release(" 28 ") == (28,)
    assert release("dev") is None


def test_the_ranges_admit_their_ends_only():
    gunicorn, uvicorn, worker = SUPPORTED
    assert [
        gunicorn.admits(v) for v in ("25.1.0", "25.2.0", "26.2.0", "27.0.1", "27.99", "28.0.0")
    ] == [False, True, True, True, True, False]
    assert [
        uvicorn.admits(v) for v in ("0.40.0", "0.52.4", "0.53.0", "0.55.0", "0.56.0", "1.0")
    ] == [False, False, True, True, False, False]
    assert [worker.admits(v) for v in ("0.3.0", "0.4.0", "0.4.9", "0.5.0", "unknown")] == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_problems_name_each_installed_version_and_its_range_on_one_line():
    fine = {"gunicorn": "27.0.1", "uvicorn": "0.55.0", "uvicorn-worker": "0.4.0"}
    assert problems(fine) == []
    found = problems({**fine, "gunicorn": "23.0.0", "uvicorn-worker": None})
    assert found == [
        "gunicorn 23.0.0 is not supported (needs >=25.2,<28)",
        "uvicorn-worker is not installed (needs >=0.4,<0.5)",
    ]
    line = _versions.message(found)
    assert "\n" not in line and line.startswith("hardened_worker: gunicorn 23.0.0 is not supported")
    assert line.endswith(
        "pip install 'gunicorn>=25.2,<28' 'uvicorn>=0.53,<0.56' 'uvicorn-worker>=0.4,<0.5'"
    )


def test_pyproject_states_the_same_ranges():
    text = (ROOT / "pyproject.toml").read_text()
    dependencies = text[text.index("\ndependencies = [") :]
    dependencies = dependencies[: dependencies.index("\n]")]
    stated = dict(re.findall(r'^\s*"([a-z-]+)([<>=!~][^";]*)"', dependencies, flags=re.MULTILINE))
    assert {w.distribution: stated.get(w.distribution) for w in SUPPORTED} == {
        w.distribution: w.specifier for w in SUPPORTED
    }


def test_this_environment_is_supported():
    _versions.check()  # raises with the one line otherwise
    assert all(_versions.installed_version(w) for w in SUPPORTED)


def test_the_exception_is_an_import_error_that_gunicorn_prints_as_one_line():
    # gunicorn's BaseApplication.run catches RuntimeError from building the arbiter (which resolves
    # -k) and prints "Error: <message>"; importers catch ImportError.
    assert issubclass(UnsupportedVersion, ImportError) and issubclass(
        UnsupportedVersion, RuntimeError
    )


# --- the real master, the real old releases ----------------------------------------------------


@pytest.fixture(scope="module")
def below_floor(tmp_path_factory) -> dict[str, Path]:
    """``{distribution: directory}``: each release of :data:`BELOW_FLOOR` installed alone
    (``--no-deps``: the rest comes from this environment) into its own directory."""
    found = {}
    for distribution, version in BELOW_FLOOR.items():
        target = tmp_path_factory.mktemp(distribution)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                f"{distribution}=={version}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        found[distribution] = target
    return found


def first_on_path(directory: Path) -> dict:
    """This environment with ``directory`` as the whole ``PYTHONPATH``: what is there shadows the
    installed distribution."""
    return {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PYTHONPATH": str(directory),
    }


@pytest.mark.parametrize("distribution", sorted(BELOW_FLOOR))
def test_an_unsupported_version_stops_gunicorn_with_one_line(below_floor, distribution, tmp_path):
    version = BELOW_FLOOR[distribution]
    wanted = next(w for w in SUPPORTED if w.distribution == distribution)
    done = subprocess.run(
        [
            *GUNICORN,
            "testapp:app",
            "-k",
            "hardened_worker.Worker",
            "--pythonpath",
            str(APPS),
            "-b",
            f"127.0.0.1:{free_port()}",
            "--no-control-socket",
        ],
        env=first_on_path(below_floor[distribution]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [
        f"Error: hardened_worker: {distribution} {version} is not supported "
        f"(needs {wanted.specifier}); install the supported versions: pip install "
        + " ".join(f"'{w.distribution}{w.specifier}'" for w in SUPPORTED)
    ]


def test_importing_the_worker_module_checks_too_and_the_pure_modules_do_not(below_floor, tmp_path):
    script = (
        "import hardened_worker.config, hardened_worker._forwarded\n"  # usable without the worker
        "try:\n"
        "    import hardened_worker.worker\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=first_on_path(below_floor["uvicorn"]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "UnsupportedVersion hardened_worker: uvicorn 0.52.4 is not supported"
    )
