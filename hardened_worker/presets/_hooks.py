"""Preset hooks that run together with the user's own: never silently replaced.

gunicorn holds one function per server hook, and a configuration file is a module: a user's
``gunicorn.conf.py`` that does ``from hardened_worker.presets.kubernetes import *`` and then
``def child_exit(server, worker): ...`` rebinds the name, and gunicorn would call the user's
function alone. Python gives no way to notice that rebinding when it happens, so the composition
happens in two ways, an explicit one and a safety net:

1. **Explicit**: the preset exports ``also``; ``@also`` on the user's hook returns one function
   that runs the preset's hook first, then the user's::

       from hardened_worker.presets.kubernetes import *

       @also
       def child_exit(server, worker):
           ...

2. **Safety net**: every master-side hook the preset exports (``nworkers_changed``, which gunicorn
   calls on every configuration load before anything else, ``on_starting``, ``when_ready``,
   ``on_reload``, ``pre_fork``, ``child_exit``, ``on_exit``) first calls :meth:`Hooks.install`,
   which looks at every hook setting of the live configuration: one that is not the preset's, nor
   composed with it, is replaced by the composition (preset's first, then the user's) with
   ``cfg.set``, and one line is logged. Worker-side hooks (``post_fork``, ``worker_exit`` ...) are
   composed in the master before the first fork, so every worker inherits the composition. If
   the user replaced ``on_starting`` itself, the preset's ``on_starting`` part runs late, from
   ``when_ready`` or ``pre_fork``, with a warning (it could no longer do what it was for, e.g.
   hold back systemd's READY=1). Only a user who replaces *every* one of those hooks without
   ``@also`` gets no composition.

A user hook that calls the preset's hook itself (``base.child_exit(server, worker)``) is fine
too: inside a composed hook, the preset's part does not run a second time.

A preset declares its functions on its :class:`Hooks` (``@HOOKS.on("child_exit")``); a preset built
on another passes the parent's, and its chains run the parent's functions first.
:meth:`Hooks.export` binds the module-level hook names gunicorn reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

# Every server hook gunicorn 27 calls for an ASGI worker, with the arity its validator demands.
# (pre_request/post_request are never called by uvicorn's workers; ssl_context is not a hook.)
ARITY = {
    "on_starting": 1,
    "on_reload": 1,
    "when_ready": 1,
    "pre_fork": 2,
    "post_fork": 2,
    "post_worker_init": 1,
    "worker_int": 1,
    "worker_abort": 1,
    "pre_exec": 1,
    "child_exit": 2,
    "worker_exit": 2,
    "nworkers_changed": 3,
    "on_exit": 1,
}
# Called in the master with the Arbiter first: each of these installs the composition.
MASTER_HOOKS = frozenset(
    {
        "on_starting",
        "on_reload",
        "when_ready",
        "pre_fork",
        "pre_exec",
        "child_exit",
        "nworkers_changed",
        "on_exit",
    }
)
# Exported by every preset even with nothing of its own to run, so that they install.
INSTALL_POINTS = ("nworkers_changed", "on_starting", "when_ready", "on_reload", "pre_fork")
# on_starting has run by the time these are called: the place to catch up if it was replaced.
_CATCH_UP_FROM = frozenset({"when_ready", "pre_fork"})

_MARK = "_hardened_hooks"
_running_user_hook: set[str] = set()  # names whose composed user part is running (this process)

Hook = Callable[..., Any]


def _with_arity(arity: int, body: Callable[[tuple], Any]) -> Hook:
    # gunicorn checks a hook's positional arity exactly: no *args.
    if arity == 1:

        def hook1(a: Any) -> Any:
            return body((a,))

        return hook1
    if arity == 2:

        def hook2(a: Any, b: Any) -> Any:
            return body((a, b))

        return hook2

    def hook3(a: Any, b: Any, c: Any) -> Any:
        return body((a, b, c))

    return hook3


def _log(args: tuple) -> Any:
    # The Arbiter (server) and the worker both carry gunicorn's logger as ``.log``.
    return getattr(args[0], "log", None) or logging.getLogger("gunicorn.error")


class Hooks:
    """The hook functions of one preset, and of the presets it builds on."""

    def __init__(self, name: str, parent: Hooks | None = None) -> None:
        self.name = name
        self.parent = parent
        self._own: dict[str, list[Hook]] = {hook: [] for hook in ARITY}
        self._chains: dict[str, Hook] = {}
        self._on_starting_ran: int | None = None  # pid of the master in which it ran

    # --- declaring ------------------------------------------------------------------------

    def on(self, name: str) -> Callable[[Hook], Hook]:
        """Decorator: run ``fn`` as part of this preset's ``name`` hook."""
        if name not in ARITY:
            raise ValueError(f"hardened_worker: {name!r} is not a gunicorn server hook")

        def register(fn: Hook) -> Hook:
            if fn not in self._own[name]:
                self._own[name].append(fn)
            return fn

        return register

    def functions(self, name: str) -> list[Hook]:
        inherited = self.parent.functions(name) if self.parent else []
        return inherited + self._own[name]

    # --- what gunicorn sees -----------------------------------------------------------------

    def chain(self, name: str) -> Hook:
        """This preset's value for the ``name`` setting: runs each of its functions in order."""
        if name not in self._chains:
            hook = _with_arity(ARITY[name], lambda args: self.run(name, args))
            hook.__name__ = hook.__qualname__ = name
            hook.__doc__ = f"The {self.name} preset's {name} hook (hardened_worker.presets._hooks)."
            setattr(hook, _MARK, self)
            self._chains[name] = hook
        return self._chains[name]

    def export(self, namespace: dict) -> list[str]:
        """Bind the module-level hook settings (and ``also``) in a preset's namespace."""
        names = [n for n in ARITY if n in INSTALL_POINTS or self.functions(n)]
        for name in names:
            namespace[name] = self.chain(name)
        namespace["also"] = self.also
        return [*names, "also"]

    def also(self, target: Hook | str) -> Any:
        """Decorator for the user's hook: the preset's hook runs first, then this one.

        ``@also`` takes the hook from the function's name; ``@also("child_exit")`` names it.
        """
        if isinstance(target, str):
            return lambda fn: self.compose(target, fn)
        return self.compose(target.__name__, target)

    def compose(self, name: str, user: Hook) -> Hook:
        if name not in ARITY:
            raise ValueError(
                f"hardened_worker: {name!r} is not a gunicorn server hook; "
                f"name it: @also('child_exit')"
            )

        def body(args: tuple) -> Any:
            self.run(name, args)
            _running_user_hook.add(name)
            try:
                return user(*args)
            finally:
                _running_user_hook.discard(name)

        hook = _with_arity(ARITY[name], body)
        hook.__name__ = getattr(user, "__name__", name)
        hook.__qualname__ = getattr(user, "__qualname__", name)
        hook.__doc__ = getattr(user, "__doc__", None)
        hook.__wrapped__ = user  # type: ignore[attr-defined]
        setattr(hook, _MARK, self)
        return hook

    # --- running --------------------------------------------------------------------------

    def run(self, name: str, args: tuple) -> None:
        if name in _running_user_hook:
            return  # the user's composed hook calls the preset's hook itself: it already ran
        if name == "on_starting":
            self._on_starting_ran = os.getpid()
        if name in MASTER_HOOKS:
            self.install(args[0], catch_up=name in _CATCH_UP_FROM)
        self._call_each(name, args)

    def _call_each(self, name: str, args: tuple) -> None:
        for fn in self.functions(name):
            try:
                fn(*args)
            except Exception:
                # A preset's logging or bookkeeping must never take the master down.
                _log(args).exception(
                    "hardened_worker: the %s preset's %s hook (%s) failed",
                    self.name,
                    name,
                    getattr(fn, "__qualname__", fn),
                )

    def install(self, server: Any, catch_up: bool = False) -> None:
        """Compose every hook setting of ``server.cfg`` that the user replaced with the preset's."""
        cfg = getattr(server, "cfg", None)
        settings = getattr(cfg, "settings", None)
        if cfg is None or not settings:
            return
        log = _log((server,))
        for name in ARITY:
            if name not in settings or not self.functions(name):
                continue
            current = settings[name].get()
            if getattr(current, _MARK, None) is not None:
                continue
            cfg.set(name, self.compose(name, current))
            if current is not settings[name].default:
                log.info(
                    "hardened_worker: your %s hook runs after the %s preset's (say so with "
                    "@also on it)",
                    name,
                    self.name,
                )
        if catch_up and self._on_starting_ran != os.getpid() and self.functions("on_starting"):
            self._on_starting_ran = os.getpid()
            log.warning(
                "hardened_worker: your on_starting hook replaced the %s preset's, which "
                "runs late, now; decorate yours with @also",
                self.name,
            )
            self._call_each("on_starting", (server,))
