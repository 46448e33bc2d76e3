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
* ``T D M L``: from the moment the event loop woke up to read the request's head (the loop's time
  when the app is called: uvicorn calls it in the same loop iteration that parsed the head, and
  exposes nothing earlier) to the moment the last body chunk was written to the transport. With
  uvloop the loop's time is cached per iteration, so this is earlier than the app call by the
  parsing (and, at most, the clock's coarseness); it is also the base of the app's own
  ``asyncio.sleep``, so a handler that sleeps 200 ms never logs less. A websocket's run from the
  handshake to the close.
* ``s``: the status sent; 500 when the app raised or returned before starting a response (uvicorn
  then sends 500). A websocket: 101 once accepted, 403 when refused before the accept.
* ``b``/``B``: body bytes the app sent (a websocket: message bytes).

The request id: an HTTP request's ``X-Request-ID`` is kept when well-formed (1-200 of
``A-Z a-z 0-9 + / = - _ . :``: Heroku's rule, any length from 1, plus ``_ . :``), else a new one
(32 hex digits, like nginx's ``$request_id``) replaces it in the request's headers, so the app
(propagating it), ``%({x-request-id}i)s`` and the JSON log's ``request_id`` all see one id; the
response carries it as ``X-Request-ID`` unless the app set its own. With the access log only.

Nothing is built when the access log is off: the worker installs this middleware only when
gunicorn's ``access_log_enabled`` is true, and turns uvicorn's own access logging off in any case.

Cost. gunicorn's ``Logger.atoms`` builds every atom of every request (all request and response
headers, the whole environ, ``strftime``) and ``SafeAtoms`` copies them once more, whatever the
format uses: about twice uvicorn's per-request cost. With gunicorn's own ``Logger`` (the default
``--logger-class``, atoms and wrapper not overridden) the middleware therefore hands gunicorn's
access logger, exactly as ``Logger.access`` does (``access_log.info(cfg.access_log_format,
atoms)``), an :class:`Atoms` mapping that computes only the atoms the format asks for, with
``SafeAtoms``' rules (quotes escaped, unknown atoms ``-``, ``{header}`` names case-insensitive).
The format is read once per worker (a HUP forks new workers with the new one), and the atoms it
names are looked up once (:func:`getters_of`). When ``gunicorn.access`` holds only gunicorn's
own handlers (``--access-logfile``: a ``FileHandler`` or, for ``-``, a ``StreamHandler``, each
with the ``%(message)s`` formatter; no filter, no propagation: :func:`plain_handlers`), the line
is formatted once and written to them directly (:func:`write_plain`): the bytes that
``access_log.info`` would write, without the record it builds per line (the caller's frame
lookup, a ``LogRecord``, the formatter's copy of the message: more than half of the cost).
Anything else (``--log-config``, the JSON preset, syslog, a filter) gets
the record, with the :class:`Atoms` as its args (the JSON formatter reads them).
Any other logger class gets the WSGI-shaped adapter and its own ``access()``. What this relies on
in ``gunicorn/glogging.py`` (gunicorn 27): ``Logger.access``/``atoms``/``atoms_wrapper_class``,
``access_log``, ``cfg.access_log_format``, ``now()``, ``_get_user()``, and the handlers
``_set_handler`` makes (marked ``_gunicorn``, formatter ``Logger.access_fmt``).

Per-request cost, measured in-process (one small request through the layer, gunicorn's default
format to a file, on the 2-core bench machine): uvicorn's own access line 10.6 us; this
middleware 23.8 us through ``access_log.info``, 9.9 us with the plain path.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

Scope = dict
_TYPES = ("http", "websocket")
REQUEST_ID = b"x-request-id"
_WELL_FORMED_ID = re.compile(rb"[A-Za-z0-9+/=_.:-]{1,200}")


class Response:
    """What gunicorn's ``Logger.atoms`` reads of a WSGI response (``raw``: the ASGI headers)."""

    __slots__ = ("status", "sent", "raw")

    def __init__(self) -> None:
        self.status: Any = None
        self.sent = 0
        self.raw: Any = ()

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(_text(k), _text(v)) for k, v in self.raw]


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def environ_of(scope: Scope, peer: Any) -> dict[str, Any]:
    """A WSGI-shaped environ (PEP 3333 names) for ``scope``; ``peer`` is the socket peer."""
    query = scope.get("query_string", b"")
    raw_uri = _raw_uri(scope)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "RAW_URI": raw_uri,
        "SCRIPT_NAME": scope.get("root_path", ""),
        "PATH_INFO": _path_info(scope),
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


def request_id(scope: Scope) -> bytes:
    """The request's id (module docstring): its ``X-Request-ID`` (the last one) when well-formed,
    else a new one, which then replaces every ``X-Request-ID`` in ``scope["headers"]``."""
    headers = scope.get("headers") or []
    found = None
    for name, value in headers:
        if name == REQUEST_ID:  # ASGI servers lowercase header names
            found = value
    if found is not None and _WELL_FORMED_ID.fullmatch(found):
        return found
    new = os.urandom(16).hex().encode()
    scope["headers"] = [h for h in headers if h[0] != REQUEST_ID] + [(REQUEST_ID, new)]
    return new


def _with_request_id(message: dict, rid: bytes) -> dict:
    """An ``http.response.start`` with ``X-Request-ID: rid`` unless the app set one."""
    headers = message.get("headers") or []
    if any(name.lower() == REQUEST_ID for name, _ in headers):
        return message
    return {**message, "headers": [*headers, (REQUEST_ID, rid)]}


def loop_iteration_start(clock: Callable[[], float] = time.perf_counter) -> float:
    """``clock()`` at the moment the running loop's current iteration began (see ``T D M L``)."""
    stale = time.monotonic() - asyncio.get_running_loop().time()
    return clock() - stale if stale > 0 else clock()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    found = None
    for key, value in headers:  # the last one wins, as in gunicorn's dict of headers
        if key.lower() == name:
            found = value
    return None if found is None else _text(found)


class Atoms(dict):
    """gunicorn's atoms for one request, with ``SafeAtoms``' rules, computed only as asked for:
    the atoms ``keys`` names (those of the format) at once, into the dict itself, so ``%``
    formatting reads them at C speed; any other (``get``, as the JSON formatter does, or a key
    the format did not name) on demand. Never empty (``p``): logging takes a lone mapping
    argument as the record's args only when it is a non-empty mapping.
    """

    __slots__ = ("_scope", "_peer", "_response", "_seconds", "_log", "_environ", "_headers")

    def __init__(
        self,
        scope: Scope,
        peer: Any,
        response: Response,
        seconds: float,
        log: Any,
        getters: Iterable[tuple[str, Callable[[Atoms], Any]]] = (),
        pid: str = "",
    ) -> None:
        self["p"] = pid or f"<{os.getpid()}>"
        self._scope, self._peer, self._response, self._log = scope, peer, response, log
        self._seconds = seconds if seconds > 0.0 else 0.0
        self._environ: dict | None = None
        self._headers: dict | None = None
        for key, getter in getters:  # __missing__, inlined: this is the per-request cost
            value = getter(self)
            if value is None:
                value = "-"
            elif value.__class__ is str and '"' in value:
                value = value.replace('"', '\\"')
            self[key] = value

    def __missing__(self, key: str) -> Any:
        value = self._atom(key)
        if value is None:
            return "-"
        return value.replace('"', '\\"') if isinstance(value, str) else value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._atom(key)
        return default if value is None else value

    def _header(self, name: str) -> str | None:
        if self._headers is None:  # one pass; the last of repeated headers wins, as in gunicorn
            # ASGI servers send header names lowercased (the spec requires it; uvicorn's
            # protocols do): no decoding or lowering per name.
            self._headers = dict(self._scope.get("headers", ()))
        value = self._headers.get(name.encode("latin-1", "replace"))
        return None if value is None else _text(value)

    def _micros(self) -> int:
        return int(round(self._seconds * 1_000_000))

    def _atom(self, key: str) -> Any:
        if key[:1] == "{" and len(key) > 3:
            name, kind = key[1:-2].lower(), key[-1]
            if kind == "i":
                return self._header(name)
            if kind == "o":
                return _header(self._response.raw, name.encode("latin-1", "replace"))
            if kind == "e":
                if name in ("raw_uri", "peer_addr", "peer_port"):  # the JSON log's: no environ
                    return (
                        _raw_uri(self._scope)
                        if name == "raw_uri"
                        else (str(self._peer[name == "peer_port"]) if self._peer else None)
                    )
                if self._environ is None:
                    self._environ = {
                        k.lower(): v for k, v in environ_of(self._scope, self._peer).items()
                    }
                return self._environ.get(name)
            return None
        getter = _ATOMS.get(key)
        return getter(self) if getter is not None else (dict.get(self, "p") if key == "p" else None)


_clock: list = [0, ""]  # (second, gunicorn's now() for it)


def _now(log: Any) -> str:
    """gunicorn's ``now()`` (``strftime``, a second's resolution), computed once a second."""
    second = int(time.time())
    if _clock[0] != second:
        _clock[0], _clock[1] = second, log.now()
    return _clock[1]


def _user(atoms: Atoms) -> str:
    auth = atoms._header("authorization")
    return (atoms._log._get_user({"HTTP_AUTHORIZATION": auth}) if auth else None) or "-"


def _request_line(atoms: Atoms) -> str:
    scope = atoms._scope
    return f"{scope.get('method', 'GET')} {_raw_uri(scope)} HTTP/{scope.get('http_version', '1.1')}"


def _seconds_text(atoms: Atoms) -> str:
    micros = atoms._micros()
    return "%d.%06d" % (micros // 1_000_000, micros % 1_000_000)


# gunicorn's atoms (glogging.Logger.atoms), one getter each.
_ATOMS: dict[str, Callable[[Atoms], Any]] = {
    "h": lambda a: a._scope["client"][0] if a._scope.get("client") else None,
    "l": lambda a: "-",
    "u": _user,
    "t": lambda a: _now(a._log),
    "r": _request_line,
    "s": lambda a: a._response.status,
    "m": lambda a: a._scope.get("method", "GET"),
    "U": lambda a: _path_info(a._scope),
    "q": lambda a: _text(a._scope.get("query_string", b"")),
    "H": lambda a: "HTTP/" + a._scope.get("http_version", "1.1"),
    "b": lambda a: str(a._response.sent),
    "B": lambda a: a._response.sent,
    "f": lambda a: a._header("referer"),
    "a": lambda a: a._header("user-agent"),
    "T": lambda a: int(a._seconds),
    "D": lambda a: a._micros(),
    "M": lambda a: a._micros() // 1000,
    "L": _seconds_text,
}


def format_keys(fmt: str) -> tuple[str, ...]:
    """The atoms a ``--access-logformat`` names, each once."""
    return tuple(dict.fromkeys(re.findall(r"%\(([^)]*)\)", fmt)))


def getters_of(keys: Iterable[str]) -> tuple[tuple[str, Callable[[Atoms], Any]], ...]:
    """Each atom of ``keys`` with the function that computes it, looked up once per format."""
    return tuple((key, _ATOMS.get(key) or _generic(key)) for key in keys)


def _generic(key: str) -> Callable[[Atoms], Any]:
    """An atom without a getter of its own: gunicorn's lookup by name."""
    return lambda atoms: atoms._atom(key)


def _raw_uri(scope: Scope) -> str:
    query = scope.get("query_string", b"")
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    return _text(raw_path) + ("?" + _text(query) if query else "")


def _path_info(scope: Scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def configured(log: Any) -> bool:
    """Would an access record go anywhere (a line, or gunicorn's statsd metrics)? gunicorn's ``access_log_enabled`` is also true for any
    logging configuration (the JSON preset's sends ``gunicorn.access`` to a ``NullHandler`` when
    the access log is off): then nothing is built either."""
    if getattr(log.cfg, "statsd_host", None):
        return True  # gunicorn's statsd logger counts requests in its access(), log or no log
    if not log.access_log_enabled:
        return False
    logger = log.access_log
    if not logger.isEnabledFor(logging.INFO):
        return False
    while logger is not None:
        if any(
            not isinstance(h, logging.NullHandler) and h.level <= logging.INFO
            for h in logger.handlers
        ):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def gunicorns_own(log: Any) -> bool:
    """Is ``log`` gunicorn's ``Logger`` as to access lines (so :class:`Atoms` may stand in)?"""
    from gunicorn import glogging

    kind = type(log)
    return (
        getattr(kind, "access", None) is glogging.Logger.access
        and getattr(kind, "atoms", None) is glogging.Logger.atoms
        and getattr(log, "atoms_wrapper_class", None) is glogging.SafeAtoms
    )


def plain_handlers(logger: logging.Logger) -> list | None:
    """gunicorn's own access handlers (``Logger._set_handler``: a ``FileHandler`` for a path, a
    ``StreamHandler`` for ``-``, each with the ``%(message)s`` formatter of ``access_fmt``), when
    they are all the line goes to: no filters, no other handler, no propagation. For those the
    record gunicorn's ``access_log.info`` builds per line (caller lookup, ``LogRecord``, the
    formatter's copy of the message) ends as ``stream.write(line + terminator)`` and ``flush()``
    under the handler's lock, which :func:`write_plain` does directly. None otherwise (syslog,
    a ``--log-config``, a filter someone added): those get the full record."""
    handlers = logger.handlers
    if not handlers or logger.filters or logger.propagate or logger.disabled:
        return None
    for handler in handlers:
        formatter = handler.formatter
        if (
            type(handler) not in (logging.FileHandler, logging.StreamHandler)
            or not getattr(handler, "_gunicorn", False)
            or handler.filters
            or handler.level > logging.INFO
            or type(formatter) is not logging.Formatter
            or type(formatter._style) is not logging.PercentStyle
            or formatter._fmt != "%(message)s"
        ):
            return None
    return list(handlers)


def write_plain(logger: logging.Logger, handlers: list, line: str) -> None:
    """What ``handler.handle(record)`` does for each of :func:`plain_handlers` with a record whose
    message is ``line``: the same bytes, the same lock (a USR1 reopens the file under it)."""
    for handler in handlers:
        handler.acquire()
        try:
            stream = handler.stream
            if stream is None:  # closed (FileHandler.emit would reopen it): the full path
                handler.handle(
                    logging.makeLogRecord(
                        {
                            "name": logger.name,
                            "msg": line,
                            "levelno": logging.INFO,
                            "levelname": "INFO",
                        }
                    )
                )
                continue
            stream.write(line + handler.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # as Handler.emit: logging's own error report, never the request's
            handler.handleError(logging.makeLogRecord({"name": logger.name, "msg": line}))
        finally:
            handler.release()


class AccessLogMiddleware:
    """Writes one gunicorn access-log line per HTTP request and per websocket, through ``log``
    (the worker's gunicorn logger: ``log.access(resp, req, environ, request_time)``).

    ``skip`` is a set of paths not logged (the health path, unless ``HARDENED_HEALTH_ACCESS_LOG``).
    """

    def __init__(
        self,
        app: Any,
        log: Any,
        skip: Iterable[str] = (),
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.log = log
        self.skip = frozenset(skip)
        self.clock = clock
        self.fast = gunicorns_own(log)
        # A worker's cfg is the one it was forked with (a HUP forks new workers): read once.
        self.format = log.cfg.access_log_format if self.fast else ""
        self.getters = getters_of(format_keys(self.format))
        self.pid = f"<{os.getpid()}>"  # after the fork: the middleware is built in the worker
        self.plain = plain_handlers(log.access_log) if self.fast else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in _TYPES or (self.skip and scope.get("path") in self.skip):
            return await self.app(scope, receive, send)
        clock = self.clock
        start = loop_iteration_start(clock)
        end = 0.0
        peer = scope.get("client")
        response = Response()
        rid = request_id(scope) if kind == "http" else None

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
                if rid is not None:
                    message = _with_request_id(message, rid)
                response.status = message["status"]
                response.raw = message.get("headers", ())
            elif kind == "websocket.accept":
                response.status = 101
                response.raw = message.get("headers", ())
            elif kind == "websocket.send":
                data = message.get("bytes")
                response.sent += (
                    len(data)
                    if data is not None
                    else len((message.get("text") or "").encode("utf-8"))
                )
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
        log = self.log
        try:
            plain, logger = self.plain, log.access_log
            if (
                plain is not None
                and logger.handlers == plain
                and not logger.disabled
                and logger.isEnabledFor(logging.INFO)
            ):  # as Logger.info and .handle check
                # The line formatted once, straight to gunicorn's own handlers.
                write_plain(
                    logger,
                    plain,
                    self.format
                    % Atoms(scope, peer, response, seconds, log, self.getters, self.pid),
                )
            elif self.fast:  # what Logger.access does, with only the atoms the format uses
                logger.info(
                    self.format, Atoms(scope, peer, response, seconds, log, self.getters, self.pid)
                )
            else:
                log.access(
                    response,
                    request_headers(scope),
                    environ_of(scope, peer),
                    datetime.timedelta(seconds=max(seconds, 0.0)),
                )
        except Exception:  # a log line must never fail a request
            log.error(
                "hardened_worker: could not write the access log line\n%s", traceback.format_exc()
            )
