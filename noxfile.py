"""The version matrix: ``nox`` runs it all (``.ci/run`` does, after ``make test``).

* ``suite``: the whole test suite on the interpreter nox runs with, the newest gunicorn, uvicorn
  and uvicorn-worker of the supported ranges.
* ``matrix(python=..., end=..., real=...)``: on the other Pythons, the pure tests (``-m "not
  real"``) and, on the oldest and the newest Python, :data:`REAL_SET`, the real-process tests that
  exercise the gunicorn and uvicorn internals the worker leans on; with the lowest or the highest
  release of each supported range (``hardened_worker/_versions.py``, read here so the two can
  never disagree). "Lowest" is the lowest minor release, at its newest patch (``gunicorn==25.2.*``),
  and takes the lowest uvloop and httptools minors ``pyproject.toml`` allows too.

``nox -s suite``, ``nox -s matrix``, ``nox -l`` to list. Interpreters are found on ``PATH`` and in
pyenv's versions (``$PYENV_ROOT/versions/*/bin``); a missing one is an error, never a skip. The
virtualenvs live outside the checkout (``$HARDENED_NOX_ENVDIR``, default
``$TMPDIR/hardened-worker-nox``) and are reused between runs.
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.sessions = ["suite", "matrix"]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "yes"
nox.options.envdir = os.environ.get(
    "HARDENED_NOX_ENVDIR", str(Path(tempfile.gettempdir()) / "hardened-worker-nox")
)

# pyenv's interpreters, when it is installed (`python3.10` is then found without `pyenv shell`).
_pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
if _pyenv.is_dir():
    os.environ["PATH"] = os.pathsep.join(
        [os.environ.get("PATH", ""), *sorted(str(v / "bin") for v in _pyenv.iterdir())]
    )

# The real-process tests the matrix runs at both ends of the ranges, chosen to cover the gunicorn and
# uvicorn internals the worker leans on within the CI budget (about 2 minutes on 2 cores): the
# drain and its keep-alive answers (uvicorn's protocols, Server.shutdown), a rejected and then a
# good deploy (readiness-gated HUP: the arbiter's reload, spawn_worker, kill_worker, reap_workers
# under our manage_workers), recycling and a HUP at the pool's size (max-requests), lifespan and
# signals, the crash loop (the exit statuses the arbiter halts on), request-head limits (the
# protocols we subclass), gunicorn's flags (--reload's reloader, --worker-connections), the access
# log (gunicorn's Logger), the version check itself. The rest of the real-process tests runs in
# `make test` (`suite`).
REAL_SET = [
    "tests/test_versions.py",
    "tests/test_drain.py",
    "tests/test_readiness.py::test_bad_deploy_is_rejected_and_a_good_one_then_succeeds[TESTAPP_STARTUP_FAIL]",
    "tests/test_pool.py::test_max_requests_recycling_and_a_hup_leave_the_configured_size",
    "tests/test_lifecycle.py",
    "tests/test_crash_loop.py",
    "tests/test_hostile_heads.py",
    "tests/test_gunicorn_flags.py",
    "tests/test_accesslog.py",
]
# At the highest end the libraries are the whole suite's (`make test`): only the interpreter
# differs, so the real-process tests that depend on it are enough there: boots and signals, fork
# with the master's threads (a thread created before fork crashed CPython 3.13.0), the crash-loop
# pause, a drain under load.
INTERPRETER_SET = [
    "tests/test_lifecycle.py",
    "tests/test_crash_loop.py",
    "tests/test_drain.py::test_ttou_ttin_cycles_under_load_lose_nothing",
    "tests/test_readiness.py::test_bad_deploy_is_rejected_and_a_good_one_then_succeeds[TESTAPP_STARTUP_FAIL]",
]
# Tests about the newest gunicorn of the range only: docs/gunicorn-settings.md is generated from
# its settings (and says which gunicorn), so an older gunicorn's list differs by design.
NEWEST_ONLY = [
    "tests/test_gunicorn_flags.py::test_the_settings_page_is_the_table_and_covers_every_setting_of_this_gunicorn"
]

# (Python, end of the ranges, with the real-process set): the oldest Python with the lowest
# releases, the newest with the highest, the one between with the highest and the pure tests only
# (the default interpreter, CI's 3.11, runs the whole suite: `suite`, `make test`).
MATRIX = [("3.10", "lowest", True), ("3.12", "highest", False), ("3.13", "highest", True)]
# The lowest releases of the other runtime dependencies pyproject.toml allows (Python 3.10 wheels).
LOWEST_EXTRA = ["uvloop==0.19.*", "httptools==0.6.*"]


def supported() -> list[tuple[str, str, str]]:
    """``[(distribution, lowest, below)]`` from hardened_worker/_versions.py, read without importing
    the package (nox's own interpreter need not have its dependencies)."""
    tree = ast.parse((ROOT / "hardened_worker" / "_versions.py").read_text())
    [value] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "SUPPORTED" for t in node.targets)
    ]
    found = []
    for call in value.elts:
        distribution, _module, lowest, below = (ast.literal_eval(arg) for arg in call.args)
        found.append((distribution, ".".join(map(str, lowest)), ".".join(map(str, below))))
    return found


def pins(end: str) -> list[str]:
    """The lowest release (``==25.2.*``: its newest patch) or the highest of each supported range."""
    if end == "lowest":
        return [f"{d}=={low}.*" for d, low, _ in supported()] + LOWEST_EXTRA
    return [f"{d}>={low},<{below}" for d, low, below in supported()]


def install(session: nox.Session, end: str) -> None:
    session.install("-e", ".[test]", *pins(end))
    session.run(
        "python",
        "-c",
        "import gunicorn, uvicorn, uvicorn_worker, sys; print("
        "'python', sys.version.split()[0], 'gunicorn', gunicorn.__version__, 'uvicorn', "
        "uvicorn.__version__, 'uvicorn-worker', uvicorn_worker.__version__)",
    )


@nox.session
def suite(session: nox.Session) -> None:
    """The whole suite, on the interpreter nox runs with, the highest releases."""
    install(session, "highest")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
@nox.parametrize(("python", "end", "real"), MATRIX)
def matrix(session: nox.Session, end: str, real: bool) -> None:
    """The pure tests (and the real-process set), on one Python, at one end of the ranges."""
    install(session, end)
    pytest = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if end == "lowest":
        pytest += [f"--deselect={test}" for test in NEWEST_ONLY]
    session.run(*pytest, "-m", "not real", *session.posargs)
    if real:
        chosen = REAL_SET if end == "lowest" else INTERPRETER_SET
        session.run(*pytest, *chosen, *session.posargs)
