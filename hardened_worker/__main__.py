"""``python -m hardened_worker check-config|print-config [gunicorn options] [APP_MODULE]``, and
``python -m hardened_worker status|reload ...`` (the running pool, a HUP that reports its verdict:
see :mod:`hardened_worker._status`).

gunicorn 27's own ``--check-config`` loads the configuration, imports the app and exits: it never
builds the Arbiter, so the worker class is not even imported and none of its checks run
(``Worker.setup`` and ``Worker.check_config`` are called by the Arbiter at start). A configuration
that imports a preset is the exception: the preset validates the environment's ``HARDENED_*``
variables at its import. These commands take the same options as ``gunicorn`` and load the
configuration with gunicorn's own code (command line, ``GUNICORN_CMD_ARGS``, configuration file,
``-e``/``raw_env``), then:

* ``check-config``: every start-up check of the worker (:func:`hardened_worker._checks.validate`,
  with ``raw_env`` applied as gunicorn applies it), its warnings, then gunicorn's own
  ``--check-config`` (the app import; ``--pythonpath`` applied first). Exit status 0 when all
  pass, 1 with the one line.
* ``print-config``: every ``HARDENED_*`` value in effect, as written and as parsed, and where it
  came from (the environment, ``raw_env``, the configuration file's ``hardened_x`` names, a
  preset's ``raw_env`` defaults, or the default), like ``gunicorn --print-config``; the app may be
  omitted and is not imported.
"""

from __future__ import annotations

import os
import sys

from gunicorn.app.base import Application
from gunicorn.app.wsgiapp import WSGIApplication

from hardened_worker import _checks as checks
from hardened_worker import config

__all__ = ["main"]

COMMANDS = ("check-config", "print-config", "status", "reload")
USAGE = (
    "python -m hardened_worker {check-config|print-config} [gunicorn options] [APP_MODULE]\n"
    "       python -m hardened_worker status [--json] [--pid PID | --pidfile FILE | METRICS_URL]\n"
    "       python -m hardened_worker reload [--wait] [--pid PID | --pidfile FILE] [--timeout S]"
)


class _Configuration(WSGIApplication):
    """gunicorn's loading of its command line and configuration, without serving anything."""

    def __init__(self, prog: str, need_app: bool) -> None:
        self.need_app = need_app
        super().__init__(USAGE, prog=prog)  # exits 1 with gunicorn's own message on a bad option

    def load_config(self) -> None:
        if self.need_app:
            super().load_config()
        else:
            Application.load_config(self)  # all of it but WSGIApplication's demand for an app


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    command = args[0]
    if command in ("status", "reload"):  # the running pool (hardened_worker._status)
        from hardened_worker import _status as status

        return status.main(args[1:]) if command == "status" else status.reload_main(args[1:])
    sys.argv = [f"python -m hardened_worker {command}", *args[1:]]  # what gunicorn's parser reads
    app = _Configuration(sys.argv[0], need_app=command == "check-config")
    cfg = app.cfg
    try:
        settings = checks.validate({**os.environ, **cfg.env}, cfg)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if command == "print-config":
        print("\n".join(config.explain(settings)), flush=True)
    for line in [*settings.notes, *checks.warnings(cfg)]:
        print(line, file=sys.stderr)
    if command == "check-config":
        for path in filter(None, (cfg.pythonpath or "").split(",")):
            sys.path.insert(0, os.path.abspath(path))
        cfg.set("check_config", True)
        app.run()  # gunicorn's --check-config: imports the app, exits 0, or 1 with its traceback
    return 0


if __name__ == "__main__":
    sys.exit(main())
