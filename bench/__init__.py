"""Benchmarks of hardened_worker.Worker against uvicorn_worker.UvicornWorker and gunicorn's -k asgi.

Run ``python -m bench <scenario>`` from the repository root; see bench/README.md.
"""
