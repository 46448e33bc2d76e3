"""The hardened worker on uvicorn's h11 protocol: ``-k h11_worker.H11Worker`` (with ``--pythonpath
tests/apps``). gunicorn has no setting for uvicorn's ``--http``; ``CONFIG_KWARGS`` is how
uvicorn-worker documents choosing it (its own ``UvicornH11Worker`` does the same)."""

from hardened_worker import Worker


class H11Worker(Worker):
    CONFIG_KWARGS = {**Worker.CONFIG_KWARGS, "http": "h11"}
