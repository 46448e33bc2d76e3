"""hardened_worker: a drop-in, safe-by-default gunicorn worker for ASGI apps.

``gunicorn app:app -k hardened_worker.Worker``. The worker class is imported lazily so the pure
modules (``config``, ``forwarded``, ``memory`` ...) can be used without gunicorn; importing it first
checks the installed gunicorn, uvicorn and uvicorn-worker against the supported ranges
(:mod:`hardened_worker._versions`), so an unsupported one stops gunicorn with one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Worker", "__version__"]

if TYPE_CHECKING:
    from hardened_worker.worker import Worker


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from hardened_worker import _versions

        _versions.check()
        from hardened_worker.worker import Worker

        return Worker
    raise AttributeError(f"module 'hardened_worker' has no attribute {name!r}")
