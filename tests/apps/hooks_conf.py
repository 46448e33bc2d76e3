"""A gunicorn config whose hooks record what they saw, for the tests (HOOKS_FILE)."""

import os


def _record(line):
    with open(os.environ["HOOKS_FILE"], "a") as f:
        f.write(line + "\n")


def worker_exit(server, worker):
    _record(f"worker_exit {worker.pid} {worker.exit_reason}")


def child_exit(server, worker):
    _record(f"child_exit {worker.pid} {worker.exit_reason}")


def worker_abort(worker):
    _record(f"worker_abort {worker.pid}")
