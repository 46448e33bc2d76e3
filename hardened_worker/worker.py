"""``hardened_worker.Worker``: the gunicorn worker class, a drop-in for ``UvicornWorker``.

It ties the pure cores to gunicorn (signals, heartbeat, exit status, hooks) and to uvicorn (through
:mod:`hardened_worker.server`, the one module that touches uvicorn internals). The lifecycle:

``booting``: app import and lifespan startup, bounded by ``HARDENED_STARTUP_TIMEOUT`` (gunicorn
cannot time out a worker before its first heartbeat). ``ready``: serving. ``stopping``: after SIGTERM,
keep serving while successors boot (readiness gate), then for the drain delay. ``draining``, then
lifespan shutdown, then exit 0 so gunicorn runs ``worker_exit``.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, ClassVar, Optional

from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError
from uvicorn._compat import asyncio_run
from uvicorn_worker import UvicornWorker

from hardened_worker import checks, config, diagnostics, drain, forwarded, memory, readiness, systemd
from hardened_worker.health import HealthMiddleware, WorkerStatus, load_check
from hardened_worker.readiness import Gate, State
from hardened_worker.recycling import MemoryRecycling
from hardened_worker.server import HardenedServer

# A failed start with no older serving worker halts the master, as gunicorn does (no crash loop);
# with one, the worker leaves quietly so the old generation keeps serving.
FAILED_WITH_OLDER_LIVE = 1
CRASH_LOOP_WINDOW = 30.0
CRASH_LOOP_PAUSE = 5.0


class Worker(MemoryRecycling, UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto", "http": "auto", "lifespan": "on", "proxy_headers": False,
    }
    _settings: ClassVar[Optional[config.Settings]] = None
    _table: ClassVar[Optional[readiness.Table]] = None
    _generation: ClassVar[int] = 0

    # --- in the master ------------------------------------------------------------------

    @classmethod
    def setup(cls) -> None:
        # gunicorn calls this on every configuration load: once at start, once per HUP.
        cls._generation += 1
        if cls._table is not None:
            cls._table.set_generation(cls._generation)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        try:
            cls._settings = checks.validate(os.environ, cfg)
        except config.ConfigError as exc:
            log.error("%s", exc)
            if cfg.errorlog != "-":
                print(exc, file=sys.stderr, flush=True)
            sys.exit(1)
        cls._table = readiness.Table()
        cls._table.set_generation(cls._generation)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation = type(self)._generation
        self.settings = self._current_settings()
        self.table = type(self)._table or readiness.Table()
        if not self.log.access_log_enabled:
            logging.getLogger("uvicorn.access").handlers = []
        self.server: Optional[HardenedServer] = None
        self.status = WorkerStatus(lambda: self.server.server_state.total_requests if self.server else 0)
        self.stall = diagnostics.StallWatchdog(self.settings.stall_threshold, self.log, 0)
        self.stop_requested: Optional[float] = None  # monotonic, for durations
        self.stop_requested_at = 0.0  # wall clock, compared with other processes' records
        self.waited_for_successors = False
        self.rolled_back_for = 0
        self.plan: Optional[drain.DrainPlan] = None
        self.started_at = time.monotonic()
        self._exit_reason: Optional[str] = None

    def _current_settings(self) -> config.Settings:
        try:
            return checks.validate(os.environ, self.cfg)
        except config.ConfigError as exc:
            # Only a HUP can get here (start-up validated the same variables): keep serving with the
            # values that were valid, and say so.
            self.log.error("%s (keeping the previous HARDENED_* settings)", exc)
            return type(self)._settings or config.load({})

    @property
    def exit_reason(self) -> str:
        """Why this worker exited; also correct in the master's ``child_exit`` hook."""
        if self._exit_reason is not None:
            return self._exit_reason
        if os.getpid() != self.pid:
            index = self.table.reason_of(self.pid) if isinstance(self.pid, int) else None
            if index is not None:
                return diagnostics.EXIT_REASONS[index]
            return "timeout" if self.aborted else "crash"
        return "crash"

    @exit_reason.setter
    def exit_reason(self, reason: str) -> None:
        self._exit_reason = reason
        self.table.set_reason(diagnostics.EXIT_REASONS.index(reason))

    # --- booting ------------------------------------------------------------------------

    def init_process(self) -> None:
        self.started_at = time.monotonic()
        self.stall.pid = self.pid
        self.table.claim(self.age, self.generation)
        self.memory = self._memory_watch()
        super().init_process()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_quick)
        signal.signal(signal.SIGQUIT, self._on_quick)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        signal.siginterrupt(signal.SIGUSR1, False)
        diagnostics.arm_abort_dump(self.log, self._on_abort)
        logging.getLogger("uvicorn.error").addFilter(diagnostics.skip_worker_timeout)
        signal.signal(signal.SIGALRM, self._startup_timed_out)
        self._arm_startup_timers()

    def _arm_startup_timers(self) -> None:
        timeout = self.settings.startup_timeout
        signal.setitimer(signal.ITIMER_REAL, timeout)
        # A hang that holds the GIL never lets the alarm's Python handler run; this C-level timer
        # still dumps every stack and ends the process.
        faulthandler.dump_traceback_later(timeout + 10, exit=True,
                                          file=diagnostics.error_log_stream(self.log))

    def load_wsgi(self) -> None:
        self._wait_to_load()
        try:
            super().load_wsgi()
        except AppImportError as exc:
            self.log.exception("hardened_worker: worker %s could not import the app", self.pid)
            self.fail_start(f"app import failed: {exc}", Arbiter.APP_LOAD_ERROR)
        except Exception as exc:
            self.log.exception("hardened_worker: worker %s could not load the app", self.pid)
            self.fail_start(f"app load failed: {exc!r}", Arbiter.WORKER_BOOT_ERROR)

    def _wait_to_load(self) -> None:
        """HARDENED_ROLLING: a successor loads the app only when an old worker has made room."""
        if not self.settings.rolling or not readiness.has_older_live(self.age, self.table.peers()):
            return
        self.table.set_state(State.WAITING)
        if self.table.try_load(self.cfg.workers):
            return
        waited = time.monotonic()
        while not self.table.try_load(self.cfg.workers):
            time.sleep(0.05)  # SIGTERM meanwhile ends the process (see _on_term)
        self.log.info("hardened_worker: worker %s loading the app after waiting %.1f s for its "
                      "turn (HARDENED_ROLLING)", self.pid, time.monotonic() - waited)
        self._arm_startup_timers()  # the startup timeout counts from now

    def wrap_app(self, app: Any) -> Any:
        """Our ASGI layers around the app uvicorn loaded (after its ASGI2/WSGI adaptation)."""
        s = self.settings
        if s.forwarded != "off":
            # In place of uvicorn's proxy_headers (off in CONFIG_KWARGS), same trust list.
            trusted = forwarded.trusted_from_gunicorn(self.cfg.forwarded_allow_ips)
            app = forwarded.ForwardedMiddleware(app, trusted, s.forwarded, s.forwarded_host,
                                                s.forwarded_port, s.forwarded_prefix)
        if self.memory is not None and s.memory_check_requests:
            app = memory.EveryRequests(app, s.memory_check_requests, self.check_memory)
        path = self.settings.health_path
        if path:
            check = load_check(self.settings.health_check) if self.settings.health_check else None
            app = HealthMiddleware(app, path, self.status, check, self.settings.health_check_timeout)
            if not self.settings.health_access_log:
                logging.getLogger("uvicorn.access").addFilter(_SkipPath(path))
        return app

    def run(self) -> None:
        self.config.app = self.wsgi
        self.server = HardenedServer(self.config, self)
        serving = self.server.serve(sockets=self.sockets)
        try:
            asyncio_run(serving, loop_factory=self.config.get_loop_factory())
        finally:
            serving.close()  # a stop before the loop started it: no "never awaited" warning
        if not self.server.started:
            lifespan = self.server.lifespan
            reason = repr(lifespan.error) if lifespan.error else lifespan.failure
            self.fail_start(f"lifespan startup failed: {reason}" if reason else "lifespan startup failed",
                            Arbiter.WORKER_BOOT_ERROR)
        self.stall.stop()
        self.table.set_state(State.FREE)  # gone as far as the others are concerned (not yet reaped)
        self.log.info(
            "hardened_worker: worker %s exiting: reason %s, served %d requests, up %.1f s",
            self.pid, self.exit_reason, self.server.server_state.total_requests, self._uptime())
        if self.aborted:
            sys.exit(1)

    def _startup_timed_out(self, signum: int, frame: Optional[FrameType]) -> None:
        in_lifespan = self.server is not None
        where = "lifespan startup" if in_lifespan else "app import"
        stack = diagnostics.format_stack(frame)
        if self.server is not None:
            # A coroutine suspended in an await: the signal interrupted the idle loop, not the app.
            stack = self.server.lifespan.suspended_stack() or stack
        self.log.error(
            "hardened_worker: worker %s startup timed out after %.1f s in %s; stuck at:\n%s",
            self.pid, self.settings.startup_timeout, where, stack.rstrip())
        self.exit_reason = "startup-timeout"
        self.fail_start(f"startup timed out after {self.settings.startup_timeout:g} s in {where}",
                        Arbiter.WORKER_BOOT_ERROR)

    def fail_start(self, detail: str, cold_status: int) -> None:
        self._stop_startup_timers()
        if self._exit_reason is None:
            self.exit_reason = "startup-failed"
        self.table.set_state(State.FAILED)
        peers = self.table.peers()
        self.log.error("hardened_worker: worker %s failed to start: %s", self.pid, detail)
        if not readiness.has_older_live(self.age, peers):
            sys.exit(cold_status)
        serving = [p for p in peers if p.age < self.age and p.state in (State.READY, State.STOPPING)]
        reload = self.generation > min(p.generation for p in serving)
        if reload and self.table.reject(self.generation):
            self.log.error(
                "hardened_worker: reload rejected: generation %d cannot start (%s); %d workers of "
                "the previous generation keep serving", self.generation, detail, len(serving))
        if self.table.record_failure() < CRASH_LOOP_WINDOW:
            time.sleep(CRASH_LOOP_PAUSE)  # holds the slot, so the master does not respawn at once
        if reload:
            self.table.reject(self.generation)  # see readiness.REJECTION_WINDOW
        sys.exit(FAILED_WITH_OLDER_LIVE)

    def _stop_startup_timers(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()

    def on_ready(self) -> None:
        self._stop_startup_timers()
        self.table.set_state(State.READY)
        self.status.state = "ready"
        self.stall.start()
        self.log.info("hardened_worker: worker %s ready in %.2f s (generation %d)",
                      self.pid, self._uptime(), self.generation)
        systemd.notify_ready(self.ppid)

    # --- serving: called by the server every 100 ms --------------------------------------

    def tick(self) -> bool:
        """True when the server should stop serving and drain."""
        if os.getppid() != self.ppid:
            self.log.warning("hardened_worker: worker %s lost its master (parent %s); stopping",
                             self.pid, self.ppid)
            self.exit_reason = "parent-died"
            return True
        if self.stop_requested is not None:
            return self._tick_stopping()
        self.check_memory()
        self.check_cgroup()
        return False

    def _tick_stopping(self) -> bool:
        now = time.monotonic()
        if self.plan is None and not self._pass_gate(now):
            return False
        assert self.plan is not None
        if now < self.plan.drain_at:
            return False
        self.status.state = "draining"
        state = self.server.server_state if self.server else None
        self.log.info(
            "hardened_worker: worker %s draining: reason %s, %d connections open, %d requests in "
            "flight, served %d requests, up %.1f s", self.pid, self.exit_reason,
            len(state.connections) if state else 0, len(state.tasks) if state else 0,
            state.total_requests if state else 0, self._uptime())
        return True

    def _pass_gate(self, now: float) -> bool:
        """The readiness gate: may this worker start its drain delay now?"""
        assert self.stop_requested is not None
        peers = self.table.peers()
        me = self.table.me()
        rolling = self.cfg.workers if self.settings.rolling else 0
        gate = readiness.retirement_gate(me, peers, self.table.reloads(), self.stop_requested_at,
                                         rolling) if me is not None else Gate.RETIRE
        ready_timeout = self.settings.ready_timeout or 0.8 * self.cfg.graceful_timeout
        if gate is Gate.WAIT and now - self.stop_requested < ready_timeout:
            if not self.waited_for_successors:
                self.waited_for_successors = True
                self.log.info("hardened_worker: worker %s will stop once its successors are ready "
                              "(waiting up to %.1f s)", self.pid, ready_timeout)
            return False
        if gate is Gate.ROLLBACK:
            rejected = self.table.reloads().rejected
            if rejected != self.rolled_back_for:
                self.rolled_back_for = rejected
                self.log.warning("hardened_worker: worker %s keeps serving: generation %d failed to "
                                 "start", self.pid, rejected)
            self.stop_requested = None
            self.waited_for_successors = False
            return False
        if gate is Gate.WAIT:
            self.log.warning("hardened_worker: worker %s stopping although its successors are not "
                             "ready after %.1f s (HARDENED_READY_TIMEOUT)", self.pid, ready_timeout)
        if self._exit_reason is None:
            replaced = me is not None and any(
                p.generation > me.generation and p.state == State.READY for p in peers)
            self.exit_reason = "reload" if replaced else "shutdown"
        start = now if self.waited_for_successors else self.stop_requested
        self.plan = drain.plan(start, self.cfg.graceful_timeout, self.settings.drain_delay)
        self.table.set_state(State.STOPPING)
        if self.plan.drain_at > now:
            self.status.state = "stopping"
            self.log.info("hardened_worker: worker %s drains in %.1f s (HARDENED_DRAIN_DELAY); "
                          "health answers 503 meanwhile", self.pid, self.plan.drain_at - now)
        return True

    def drain_plan(self) -> drain.DrainPlan:
        if self.plan is None:  # max-requests, parent died, quick stop: no delay
            self.plan = drain.plan(time.monotonic(), self.cfg.graceful_timeout, 0.0)
            self.table.set_state(State.STOPPING)
            self.status.state = "draining"
        return self.plan

    def _uptime(self) -> float:
        return time.monotonic() - self.started_at

    # --- signals ------------------------------------------------------------------------

    def _booting(self) -> bool:
        return self.server is None or not self.server.started

    def _leave_while_booting(self, reason: str) -> None:
        # Nobody depends on this worker yet, and the workers it was to replace must not wait for it.
        self.table.set_state(State.STOPPING)
        self.table.abandon(self.generation)
        self.exit_reason = reason
        sys.exit(0)

    def _on_term(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._booting():
            replaced = self.table.reloads().generation > self.generation
            self._leave_while_booting("reload" if replaced else "shutdown")
        self.stop_requested_at = time.time()
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()

    def _on_quick(self, signum: int, frame: Optional[FrameType]) -> None:
        self.exit_reason = "quick-stop"  # before the hook, which may read it
        self.cfg.worker_int(self)
        if self._booting():
            self._leave_while_booting("quick-stop")
        self.server.force_exit = True
        self.server.should_exit = True

    def _on_abort(self, signum: int, frame: Optional[FrameType]) -> None:
        # faulthandler already wrote every thread's stack to the error log.
        self.exit_reason = "timeout"
        self.log.error("hardened_worker: worker %s timed out (SIGABRT from the master) serving %s; "
                       "stacks above", self.pid, diagnostics.request_in(frame) or "no request")
        self.cfg.worker_abort(self)
        self.aborted = True
        if self.server is not None:
            self.server.should_exit = self.server.force_exit = True
        # Interrupts the blocking call. Inside a request uvicorn turns it into a 500 for that request
        # (its traceback is kept out of the log: the stacks above say it all) and the loop winds
        # down through the quick stop; anywhere else it ends the process at once.
        raise diagnostics.WorkerTimeout(1)


class _SkipPath(logging.Filter):
    """Keeps health-probe requests out of the access log (uvicorn's record args: path third)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 2
                    and str(args[2]).split("?", 1)[0] == self.path)
