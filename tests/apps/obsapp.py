"""The observability tests' app: testapp's endpoints plus ``/introspect``, what this worker built
(is uvicorn's access logger live, how many access-log middlewares exist)."""

import gc
import json
import logging

from testapp import _respond
from testapp import app as _testapp


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/introspect":
        from hardened_worker._accesslog import AccessLogMiddleware

        body = json.dumps(
            {
                "uvicorn_access_handlers": logging.getLogger("uvicorn.access").hasHandlers(),
                "access_middlewares": sum(
                    isinstance(o, AccessLogMiddleware) for o in gc.get_objects()
                ),
            }
        ).encode()
        return await _respond(send, body, content_type=b"application/json")
    return await _testapp(scope, receive, send)
