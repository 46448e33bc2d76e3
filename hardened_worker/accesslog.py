"""gunicorn's access log for ASGI requests: ``--access-logfile`` and ``--access-logformat`` honoured.

uvicorn writes its own fixed-format line (no duration) and ignores ``--access-logformat``; gunicorn's
logger (``gunicorn/glogging.py``, ``Logger.access(resp, req, environ, request_time)``) builds its
atoms from WSGI objects. This middleware records what it needs while the request runs and, once the
response's last body byte has been written (a websocket: once it closed), hands that logger the
smallest WSGI-shaped adapter: a response with ``status``, ``sent`` and ``headers``, the request's
headers, an environ, and the duration. So every atom means what it means under gunicorn's sync
workers (``h l u t r m U q H s B b f a T D M L p``, ``{header}i``, ``{header}o``, ``{variable}e``),
a custom ``--logger-class`` (gunicorn's statsd logger) sees each request too, and the JSON preset
reads the atoms off the record.

What the atoms are filled from:

* ``h`` is ``scope["client"]`` once the app has run: the client *after* forwarded handling (the
  forwarded middleware rewrites the scope in place). The TCP peer is ``%({peer_addr}e)s`` (and
  ``%({peer_port}e)s``): environ ``PEER_ADDR``/``PEER_PORT``, the socket's other end.
* ``r`` is ``METHOD RAW_URI PROTOCOL`` with ``RAW_URI`` the path as received plus ``?query``.
* ``T D M L``: from the moment the app is called (uvicorn calls it as soon as the request head is
  parsed; nothing earlier is exposed by its protocols) to the moment the last body chunk was
  written to the transport. A websocket's run from the handshake to the close.
* ``s``: the status sent; 500 when the app raised or returned before starting a response (uvicorn
  then sends 500). A websocket: 101 once accepted, 403 when refused before the accept.
* ``b``/``B``: body bytes the app sent (a websocket: message bytes).

Nothing is built when the access log is off: the worker installs this middleware only when
gunicorn's ``access_log_enabled`` is true, and turns uvicorn's own access logging off in any case.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Iterable

Scope = dict
_TYPES = ("http", "websocket")


class Response:
    """What gunicorn's ``Logger.atoms`` reads of a WSGI response."""

    __slots__ = ("status", "sent", "headers")

    def __init__(self) -> None:
        self.status: Any = None
        self.sent = 0
        self.headers: list[tuple[str, str]] = []


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def environ_of(scope: Scope, peer: Any) -> dict[str, Any]:
    """A WSGI-shaped environ (PEP 3333 names) for ``scope``; ``peer`` is the socket peer."""
    query = scope.get("query_string", b"")
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    raw_uri = _text(raw_path) + ("?" + _text(query) if query else "")
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "RAW_URI": raw_uri,
        "SCRIPT_NAME": root,
        "PATH_INFO": path[len(root):] if root and path.startswith(root) else path,
        "QUERY_STRING": _text(query),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "wsgi.url_scheme": scope.get("scheme", "http"),
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    if peer:
        environ["PEER_ADDR"], environ["PEER_PORT"] = peer[0], str(peer[1])
    server = scope.get("server")
    if server:
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1]) if server[1] is not None else ""
    for name, value in scope.get("headers", ()):
        key = "HTTP_" + _text(name).upper().replace("-", "_")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            key = key[5:]
        environ[key] = f"{environ[key]},{_text(value)}" if key in environ else _text(value)
    return environ


def request_headers(scope: Scope) -> list[tuple[str, str]]:
    return [(_text(name), _text(value)) for name, value in scope.get("headers", ())]


class AccessLogMiddleware:
    """Writes one gunicorn access-log line per HTTP request and per websocket, through ``log``
    (the worker's gunicorn logger: ``log.access(resp, req, environ, request_time)``).

    ``skip`` is a set of paths not logged (the health path, unless ``HARDENED_HEALTH_ACCESS_LOG``).
    """

    def __init__(self, app: Any, log: Any, skip: Iterable[str] = (),
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.log = log
        self.skip = frozenset(skip)
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in _TYPES or (self.skip and scope.get("path") in self.skip):
            return await self.app(scope, receive, send)
        clock = self.clock
        start = clock()
        end = 0.0
        peer = scope.get("client")
        response = Response()

        async def logged_send(message: dict) -> None:
            nonlocal end
            kind = message["type"]
            if kind == "http.response.body":
                response.sent += len(message.get("body", b""))
                await send(message)
                if not message.get("more_body", False):
                    end = clock()  # the last body byte is written (to the transport)
                return
            if kind == "http.response.start":
                response.status = message["status"]
                response.headers = [(_text(k), _text(v)) for k, v in message.get("headers", ())]
            elif kind == "websocket.accept":
                response.status = 101
                response.headers = [(_text(k), _text(v)) for k, v in message.get("headers", ())]
            elif kind == "websocket.send":
                data = message.get("bytes")
                response.sent += len(data) if data is not None else len(
                    (message.get("text") or "").encode("utf-8"))
            elif kind == "websocket.close" and response.status is None:
                response.status = 403  # refused before the accept: uvicorn answers 403
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            if response.status is None:
                response.status = 500  # uvicorn sends 500 for an app that raised or sent nothing
            self.write(scope, peer, response, (end or clock()) - start)

    def write(self, scope: Scope, peer: Any, response: Response, seconds: float) -> None:
        try:
            self.log.access(response, request_headers(scope), environ_of(scope, peer),
                            datetime.timedelta(seconds=max(seconds, 0.0)))
        except Exception:  # a log line must never fail a request
            self.log.exception("hardened_worker: could not write the access log line")
