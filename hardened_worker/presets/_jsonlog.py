"""One JSON object per log line for log collectors (``HARDENED_LOG_FORMAT=json``); stdlib only.

Each line has ``time`` (UTC, RFC 3339 with milliseconds), ``level``, ``logger``, ``pid`` and
``message``; ``exception`` / ``stack`` when the record carries them (multi-line stacks stay inside
one line, so a collector never splits them). Access records (gunicorn's, written by
:mod:`hardened_worker._accesslog`) also get ``client`` (after forwarded handling), ``peer`` (the TCP
peer), ``method``, ``path``, ``http_version``, ``status_code``, ``bytes``, ``duration_ms``,
``user_agent`` and ``request_id`` (:func:`hardened_worker._accesslog.request_id`); the worker's
lifecycle lines get their facts as fields (``pid``, ``generation``, ``reason``, ``phase`` and the
figures of the line: ``requests``, ``up_s``, ...).

:func:`logconfig_dict` is a gunicorn ``logconfig_dict`` value: gunicorn merges it over its own
defaults key by key (``loggers``, ``handlers`` ... are replaced whole), after it installed its own
``errorlog`` handler, which ``dictConfig`` then removes: with JSON on, error lines go to stderr and
access lines to stdout, as gunicorn's ``-`` would. The ``gunicorn.error`` level is left to
``loglevel``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

# ``status_code``, not ``status``: Datadog's status remapper reads ``status`` as the line's
# severity (a reserved attribute), so the HTTP status overwrote the log level. A flat name like the other fields (not
# Datadog's nested ``http.status_code``, which would leave the schema half in its namespace); a
# Datadog pipeline maps it with one remapper, Loki and jq read it as is.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status_code")


def _access_fields(atoms: Mapping) -> dict[str, Any]:
    """gunicorn's access atoms (``hardened_worker._accesslog``: its record's args) as fields."""
    protocol = str(atoms.get("H") or "")
    status = atoms.get("s")
    return {
        "client": atoms.get("h"),
        "peer": atoms.get("{peer_addr}e"),
        "method": atoms.get("m"),
        "path": atoms.get("{raw_uri}e"),
        "http_version": protocol[5:] if protocol.startswith("HTTP/") else protocol,
        "status_code": int(str(status)) if str(status).isdigit() else status,
        "bytes": atoms.get("B") or 0,
        "duration_ms": (atoms.get("D") or 0) / 1000,
        "user_agent": atoms.get("a"),
        "request_id": atoms.get("{x-request-id}i"),
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            doc.update(zip(_ACCESS_FIELDS, args))
        elif record.name == "gunicorn.access" and isinstance(args, Mapping):
            doc.update(_access_fields(args))
        facts = getattr(record, "hardened_worker", None)  # the worker's lifecycle lines (extra=)
        if isinstance(facts, Mapping):
            doc.update(facts)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def logconfig_dict(access: bool = False) -> dict:
    """JSON lines: errors (and the app's own loggers, through the root) to stderr, access to stdout."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "hardened_worker.presets._jsonlog.JsonFormatter"}},
        "handlers": {
            "json_stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "json_stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
            "discard": {"class": "logging.NullHandler"},
        },
        "root": {"level": "INFO", "handlers": ["json_stderr"]},
        "loggers": {
            "gunicorn.error": {"handlers": ["json_stderr"], "propagate": False},
            "gunicorn.access": {
                "level": "INFO",
                "handlers": ["json_stdout" if access else "discard"],
                "propagate": False,
            },
        },
    }
