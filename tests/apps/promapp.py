"""An app with its own prometheus_client metrics (multiprocess mode: the master's environment
sets PROMETHEUS_MULTIPROC_DIR before the workers import this), served by the worker's metrics
path beside the pool's (tests/test_presets.py)."""

from prometheus_client import Counter
from testapp import app as _testapp

SEEN = Counter("promapp_requests", "Requests this app saw")


async def app(scope, receive, send):
    if scope["type"] == "http":
        SEEN.inc()
    return await _testapp(scope, receive, send)
