from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import Master  # noqa: E402

# A test module that starts real processes (a gunicorn master, nginx, wrk, a subprocess) marks all
# its tests `real`; the others are the pure tests the version matrix runs everywhere (noxfile.py:
# `-m "not real"`). Each `real` test gets a timeout (pytest-timeout) unless it sets its own: a hung
# master fails its test with the stacks, never the whole run.
STARTS_PROCESSES = re.compile(
    r"\bmaster\(|\bMaster\(|\brun_gunicorn\(|\bsubprocess\b|\bPopen\b|\bnginx\b|\bwrk\b"
)
REAL_TIMEOUT = (
    600  # seconds: several times the slowest real-process test on a loaded 2-core machine
)


@cache
def starts_processes(module_path: str) -> bool:
    return bool(STARTS_PROCESSES.search(Path(module_path).read_text()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name != "conftest.py" and starts_processes(str(item.path)):
            item.add_marker(pytest.mark.real)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(REAL_TIMEOUT))


@pytest.fixture
def master(tmp_path: Path) -> Callable[..., Master]:
    """Start real gunicorn masters: ``master(env={...}, args=[...])``; all torn down after the test."""
    started: list[Master] = []

    def start(*, wait: bool = True, timeout: float = 30.0, **kwargs) -> Master:
        m = Master(tmp_path, **kwargs)
        started.append(m)
        return m.start(wait=wait, timeout=timeout)

    yield start
    for m in started:
        m.stop()
