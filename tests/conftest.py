from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import Master  # noqa: E402


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
