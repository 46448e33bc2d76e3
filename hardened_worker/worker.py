"""``hardened_worker.Worker``: the gunicorn worker class, a drop-in for ``UvicornWorker``.

The thin shell around the pure cores: the worker's fate is :class:`hardened_worker._lifecycle.Lifecycle`
(phases, events, actions); this module turns signals, timers, the shared table and the server's
ticks into its events, and carries out the actions it returns (``_do_<action>``). Signal handlers
only record (``self.signals``); the event loop's tick, or the boot code before the loop runs, turns
the records into events. gunicorn internals are in :mod:`hardened_worker._gunicorn`, uvicorn's in
:mod:`hardened_worker._server`.
"""

from __future__ import annotations

import asyncio
import collections
import faulthandler
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError
from uvicorn_worker import UvicornWorker

from hardened_worker import _accesslog as accesslog
from hardened_worker import _checks as checks
from hardened_worker import _diagnostics as diagnostics
from hardened_worker import _drain as drain
from hardened_worker import _flags as flags
from hardened_worker import _forwarded as forwarded
from hardened_worker import _gunicorn, config
from hardened_worker import _memory as memory
from hardened_worker import _metrics as metrics
from hardened_worker import _overload as overload
from hardened_worker import _readiness as readiness
from hardened_worker import _systemd as systemd
from hardened_worker._deadline import RequestGuard, skip_expected
from hardened_worker._health import HealthCheck, HealthMiddleware, WorkerStatus, load_check
from hardened_worker._lifecycle import Event, Lifecycle, Phase, Reason
from hardened_worker._readiness import Gate, State
from hardened_worker._recycling import Recycling, Surge
from hardened_worker._server import HardenedServer, request_cycle
from hardened_worker._status import StatusServer, master_report, verdict_of

__all__ = ["Worker"]

# A failed start with no older serving worker halts the master, as gunicorn does (no crash loop);
# with one, the worker leaves quietly so the old generation keeps serving.
FAILED_WITH_OLDER_LIVE = 1
CRASH_LOOP_WINDOW = 30.0
CRASH_LOOP_PAUSE = 5.0
READY_POLL = 0.25  # seconds between runs of the health check while a new worker waits for it
# How much later than its successors' own start deadline an old worker stops waiting for their
# verdict: room for a failed successor to record the rejection in the table and be seen.
VERDICT_MARGIN = 5.0


class Worker(Recycling, UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "lifespan": "on",
        "proxy_headers": False,
        # --max-requests is ours: recycled with its successor started first (_check_recycling).
        "limit_max_requests": None,
    }
    _settings: ClassVar[config.Settings | None] = None
    _table: ClassVar[readiness.Table | None] = None
    _generations: ClassVar[_gunicorn.Generations] = _gunicorn.Generations()

    # --- in the master ------------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        try:
            cls._settings = checks.validate(os.environ, cfg)
        except config.ConfigError as exc:
            log.error("%s", exc)
            if cfg.errorlog != "-":
                print(exc, file=sys.stderr, flush=True)
            sys.exit(1)
        cls._log_once(log, cls._settings.notes)
        trust = forwarded.trust_warning(forwarded.trusted_from_gunicorn(cfg.forwarded_allow_ips))
        if trust and cls._settings.forwarded != "off":
            log.warning("%s", trust)
        unused = flags.warning(cfg)
        if unused:
            log.warning("%s", unused)
        if cfg.reuse_port:
            warning = checks.reuse_port_warning(_read(checks.TCP_MIGRATE_REQ))
            if warning:
                log.warning("%s", warning)
        cls._table = readiness.Table()
        _gunicorn.install_pool_owner(cls, lambda: cls._table, cls._generations)
        # python -m hardened_worker status / reload --wait, found from the master's pid.
        StatusServer(lambda: master_report(cls._table), log).start()
        watchdog = systemd.Watchdog.from_environ(lambda: None, log)
        if watchdog is not None:  # WatchdogSec=: pings from the master while the pool is healthy
            watchdog.healthy = metrics.health_check(cls._table, watchdog.interval)
            watchdog.start()
            log.info(
                "hardened_worker: systemd watchdog: WATCHDOG=1 every %.1f s while a ready "
                "worker's event loop runs",
                watchdog.interval,
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = type(self)._table or readiness.Table()
        # In the master, before each fork and so after a HUP's new log handlers: a full log disk
        # must not end the master when logrotate's USR1 makes gunicorn reopen (close) its files.
        diagnostics.tolerate_log_failures(self.log, f"master {os.getpid()}")
        # asyncio reports an exception in a loop callback, or a task's that nobody retrieved, on
        # its own logger, which has no handler: logging's last resort printed it bare to stderr (no
        # time, no pid; a traceback per event, on a pipe that may not be drained). In the error
        # log it is a line an operator can grep, as uvicorn-worker does for ``uvicorn.error``.
        loop_log = logging.getLogger("asyncio")
        loop_log.handlers = self.log.error_log.handlers
        loop_log.setLevel(logging.WARNING)
        loop_log.propagate = False
        # In the master, before the fork: what it forks, for which configuration load.
        self.generation = type(self)._generations.of(self.cfg)
        reloading = self.generation > max(1, self.table.reloads().generation)
        self.table.record_spawn(self.generation)
        if reloading:  # the first worker of a HUP's new generation
            systemd.notify_reloading(self.generation, self.log)
        self.settings = self._current_settings()
        # uvicorn builds no access record at all: gunicorn's access log is ours (_accesslog.py).
        logging.getLogger("uvicorn.access").handlers = []
        self.server: HardenedServer | None = None
        self.lifecycle = Lifecycle()
        self.status = WorkerStatus(lambda: self.server.stats().requests if self.server else 0)
        self.stall = diagnostics.StallWatchdog(self.settings.stall_threshold, self.log, 0)
        # What the signal handlers record (appended, never acted on, there): (event, monotonic, wall).
        self.signals: collections.deque[tuple[Event, float, float]] = collections.deque()
        self._interruptible = False  # while booting a stop signal also interrupts the boot
        self._reopen_logs = False  # SIGUSR1
        self._timed_out_at = ""  # where the startup timer found the worker
        self._abort_frame: FrameType | None = None
        self.stop: StopRequest | None = None
        self.plan: drain.DrainPlan | None = None
        self.surge: Surge | None = None
        self.started_at = self.ready_at = time.monotonic()
        self.request_limit: int | None = None
        self.lifetime_limit: float | None = None
        self._waiting_logged: str | None = None
        self._next_memory_publish = 0.0
        self.tally: metrics.Tally | None = None  # HARDENED_METRICS_PATH: this worker's counts

    def _current_settings(self) -> config.Settings:
        """In the master before each fork; after a HUP, the re-read environment and file."""
        try:
            settings = checks.validate(os.environ, self.cfg)
        except config.ConfigError as exc:
            # Only a HUP can get here (start-up validated the same variables): keep serving with the
            # values that were valid, and say so, once per reload, not once per worker forked.
            self._log_once(
                self.log,
                [f"{exc} (keeping the previous HARDENED_* settings)"],
                self.log.error,
                self.generation,
            )
            return type(self)._settings or config.load({})
        type(self)._settings = settings  # the previous settings for the next HUP
        self._log_once(self.log, settings.notes)
        return settings

    _logged: ClassVar[set] = set()

    @classmethod
    def _log_once(cls, log: Any, lines: Any, level: Any = None, key: Any = None) -> None:
        """Configuration warnings once per master (``key``: once per reload), not once per fork."""
        for line in lines:
            if (key, line) not in cls._logged:
                cls._logged.add((key, line))
                (level or log.warning)("%s", line)

    @property
    def exit_reason(self) -> str:
        """Why this worker exited; also correct in the master's ``child_exit`` hook."""
        if os.getpid() != self.pid:  # the master: what the worker recorded in the table
            index = self.table.reason_of(self.pid) if isinstance(self.pid, int) else None
            if index is not None:
                return diagnostics.EXIT_REASONS[index]
            return Reason.TIMEOUT.value if self.aborted else Reason.CRASH.value
        reason = self.lifecycle.reason
        return reason.value if reason else Reason.CRASH.value

    # --- booting ------------------------------------------------------------------------

    def init_process(self) -> None:
        self.started_at = time.monotonic()
        self.stall.pid = self.pid
        self.memory = self._memory_watch()
        if self.cfg.max_requests > 0:
            self.request_limit = self.max_requests  # gunicorn added its jitter
        try:
            super().init_process()
        except BootInterrupted:
            self._boot_interrupted()
        except Exception as exc:
            if self.booted:  # before it, the start failed: fail_start and gunicorn's exit 3 decide
                self._crashed(exc)
            raise  # gunicorn logs the traceback and exits 255; the master replaces the worker

    def _crashed(self, exc: Exception) -> None:
        """An exception escaped the serving loop. The replacement will run the app's lifespan
        startup again at once; when crashes (or failed starts) follow each other within
        CRASH_LOOP_WINDOW, pause first, holding this worker's place in the pool (FAILED: the
        master neither forks its replacement nor counts it as serving) instead of looping."""
        self.table.set_reason(diagnostics.EXIT_REASONS.index(Reason.CRASH.value))
        self.table.set_state(State.FAILED)
        served = self.server.stats().requests if self.server is not None else 0
        self.log.error(
            "hardened_worker: worker %s crashed: %r; served %d requests, up %.1f s",
            self.pid,
            exc,
            served,
            self._uptime(),
            extra=self._facts(detail=repr(exc), requests=served),
        )
        if self.table.record_failure() < CRASH_LOOP_WINDOW:
            self.log.error(
                "hardened_worker: worker %s pausing %.0f s before exiting: the pool's "
                "previous crash or failed start was less than %.0f s ago (crash loop)",
                self.pid,
                CRASH_LOOP_PAUSE,
                CRASH_LOOP_WINDOW,
                extra=self._facts(),
            )
            time.sleep(CRASH_LOOP_PAUSE)

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, lambda signum, frame: self._record(Event.STOP))
        signal.signal(signal.SIGINT, lambda signum, frame: self._record(Event.QUICK_STOP))
        signal.signal(signal.SIGQUIT, lambda signum, frame: self._record(Event.QUICK_STOP))
        signal.signal(signal.SIGUSR1, self.handle_usr1)  # recorded; the tick reopens the logs
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        signal.siginterrupt(signal.SIGUSR1, False)
        diagnostics.arm_abort_dump(self.log, self._on_abort)
        logging.getLogger("uvicorn.error").addFilter(diagnostics.skip_worker_timeout)
        logging.getLogger("uvicorn.error").addFilter(skip_expected)  # requests ended by a deadline
        signal.signal(signal.SIGALRM, self._on_startup_timer)
        self._interruptible = True

    # The signal handlers: each records what happened and returns. The one exception is the boot
    # (nothing serves yet, so nothing is lost): there the handler also interrupts the app's import
    # or lifespan startup, which may block for good, and the boot code decides (_boot_interrupted).

    def _record(self, event: Event) -> None:
        self.signals.append((event, time.monotonic(), time.time()))
        if self._interruptible:
            raise BootInterrupted()

    def _on_startup_timer(self, signum: int, frame: FrameType | None) -> None:
        # Where it was stuck, taken now: a coroutine suspended in an await (the signal interrupted
        # the idle loop) is cancelled, and its stack gone, once the boot is interrupted.
        lifespan = self.server.lifespan if self.server is not None else None
        self._timed_out_at = (
            lifespan.suspended_stack() if lifespan else ""
        ) or diagnostics.format_stack(frame)
        self._record(Event.STARTUP_TIMED_OUT)

    def _on_abort(self, signum: int, frame: FrameType | None) -> None:
        # faulthandler already wrote every thread's stack to the error log. Raising interrupts the
        # blocking call: inside a request uvicorn turns it into a 500 for that request (its
        # traceback kept out of the log), and the next tick handles the recorded event.
        self._abort_frame = frame
        self.signals.append((Event.ABORT, time.monotonic(), time.time()))
        raise diagnostics.WorkerTimeout(1)

    def _arm_startup_timers(self) -> None:
        timeout = self.settings.startup_timeout
        signal.setitimer(signal.ITIMER_REAL, timeout)
        # A hang that holds the GIL never lets the alarm's Python handler run; this C-level timer
        # still dumps every stack and ends the process.
        faulthandler.dump_traceback_later(
            timeout + 10, exit=True, file=diagnostics.error_log_stream(self.log)
        )

    def _stop_startup_timers(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()

    def load_wsgi(self) -> None:
        # After init_signals: until then a SIGTERM goes to the handler inherited from the master.
        self.table.claim(self.age, self.generation)
        if self.reloader is not None:  # --reload: a change recycles this worker (_recycling.py)
            _gunicorn.redirect_reloader(self.reloader, self._code_changed)
        self._wait_to_load()
        self._arm_startup_timers()  # counts from the moment this worker starts loading the app
        try:
            super().load_wsgi()
        except AppImportError as exc:
            self.log.exception("hardened_worker: worker %s could not import the app", self.pid)
            self.fail_start(f"app import failed: {exc}", Arbiter.APP_LOAD_ERROR)
        except Exception as exc:
            self.log.exception("hardened_worker: worker %s could not load the app", self.pid)
            self.fail_start(f"app load failed: {exc!r}", Arbiter.WORKER_BOOT_ERROR)

    def _code_changed(self, filename: str) -> None:
        # In gunicorn's reloader thread: record only; the tick recycles (successor first).
        self.changed_file = filename

    def _wait_to_load(self) -> None:
        """HARDENED_ROLLING: a successor loads the app only when an old worker has made room."""
        if not self.settings.rolling or not readiness.has_older_live(self.age, self.table.peers()):
            return
        self.table.set_state(State.WAITING)
        if self.table.try_load(self.cfg.workers):
            return
        self._post(Event.NEED_TURN)
        waited = time.monotonic()
        while not self.table.try_load(self.cfg.workers):
            time.sleep(0.05)  # a stop signal meanwhile interrupts the sleep (BootInterrupted)
        self.log.info(
            "hardened_worker: worker %s loading the app after waiting %.1f s for its "
            "turn (HARDENED_ROLLING)",
            self.pid,
            time.monotonic() - waited,
        )
        self._post(Event.TURN)

    def _boot_interrupted(self) -> None:
        """A signal or the startup timer ended the boot: leave, for the first reason recorded."""
        self._interruptible = False
        self._stop_startup_timers()
        self._handle_signals()
        reason = self.lifecycle.reason
        if reason is Reason.STARTUP_TIMEOUT:
            where = "lifespan startup" if self.server is not None else "app import"
            self.log.error(
                "hardened_worker: worker %s startup timed out after %.1f s in %s; stuck at:\n%s",
                self.pid,
                self.settings.startup_timeout,
                where,
                self._timed_out_at.rstrip(),
            )
            self.fail_start(
                f"startup timed out after {self.settings.startup_timeout:g} s in {where}",
                Arbiter.WORKER_BOOT_ERROR,
            )
        # Nobody depends on this worker yet, and the workers it was to replace must not wait for it.
        self.table.set_state(State.STOPPING)
        self.table.abandon(self.generation)
        self.log.info(
            "hardened_worker: worker %s exiting while booting: reason %s, up %.1f s",
            self.pid,
            self.exit_reason,
            self._uptime(),
            extra=self._facts(up_s=round(self._uptime(), 3)),
        )
        sys.exit(1 if reason is Reason.TIMEOUT else 0)

    def wrap_app(self, app: Any) -> Any:
        """Our ASGI layers around the app uvicorn loaded (after its ASGI2/WSGI adaptation)."""
        s = self.settings
        # One check, shared by the readiness gate (until_ready) and the health path.
        self.health_check = (
            HealthCheck(load_check(s.health_check), s.health_check_timeout)
            if s.health_check
            else None
        )
        if s.forwarded != "off":
            # In place of uvicorn's proxy_headers (off in CONFIG_KWARGS), same trust list.
            trusted = forwarded.trusted_from_gunicorn(self.cfg.forwarded_allow_ips)
            app = forwarded.ForwardedMiddleware(
                app, trusted, s.forwarded, s.forwarded_host, s.forwarded_port, s.forwarded_prefix
            )
        assert self.server is not None
        every = (
            memory.EveryRequests(s.memory_check_requests, self.check_memory_counted).count
            if self.memory is not None and s.memory_check_requests
            else None
        )  # no layer of its own
        self.tally = metrics.Tally() if s.metrics_path else None
        app = RequestGuard(
            app,
            self.server.drain_signal,
            s.request_timeout,
            lambda line: self.log.warning("hardened_worker: worker %s %s", self.pid, line),
            counted=every,
            tally=self.tally,
            cycle_of=request_cycle,
        )
        if s.max_queue_time is not None:  # outside the forwarded layer: it trusts the socket peer
            self.shedder = overload.ShedMiddleware(
                app,
                s.max_queue_time,
                forwarded.trusted_from_gunicorn(self.cfg.forwarded_allow_ips),
                self.server.first_request_accepted_at,
                log=lambda line: self.log.warning("hardened_worker: worker %s %s", self.pid, line),
                counted=self._count_shed,
                fails_health=s.shed_fails_health,
            )
            app = self.shedder
            self.status.shedding = self.shedder.shedding  # reported by the health path
            self.status.shed_fails_health = s.shed_fails_health  # and a 503 only if asked for
        # The health body names the code that answers and the pool's last reload.
        self.status.generation = self.generation
        self.status.reload = lambda: verdict_of(self.table.snapshot())
        path = self.settings.health_path
        if path:
            app = HealthMiddleware(app, path, self.status, self.health_check)
        if s.metrics_path:  # outside the forwarded middleware: access goes by the socket peer
            self.stall.log = metrics.StallCounting(self.stall.log, self.table)
            app = metrics.MetricsMiddleware(
                app,
                self.table,
                s.metrics_path,
                metrics.Access(self.cfg.forwarded_allow_ips, s.metrics_allow),
                self.tally,
                lambda: metrics.backlog_of(self.sockets),
                s.metrics_port,
            ).asgi
        if accesslog.configured(
            self.log
        ):  # outermost: sees the client forwarded handling settled on
            skip = () if s.health_access_log or not path else (path,)
            app = accesslog.AccessLogMiddleware(app, self.log, skip)
        return app

    def _count_shed(self) -> None:
        self.table.counters()[readiness.C_SHED] += 1  # this worker's row: the metrics read it

    def run(self) -> None:
        self.config.app = self.wsgi
        self.server = HardenedServer(self.config, self)
        try:
            self.server.run_loop(self.sockets)
        except diagnostics.WorkerTimeout:
            pass  # raised outside a request: handled below like one inside
        self._handle_signals()
        if not self.server.stats().started and self.lifecycle.phase is Phase.BOOTING:
            self.fail_start(self.server.startup_failure, Arbiter.WORKER_BOOT_ERROR)
        if self.lifecycle.allows(Event.DRAIN_DONE):
            self._post(Event.DRAIN_DONE)
        if self.surge is not None and not self.surge.retired:
            # Leaving mid-surge (a timeout, a quick stop): no longer a reason for one more worker.
            self.table.set_state(State.RETIRING)
        self.stall.stop()
        self._publish()  # the last counts: what the table keeps of this worker once it is gone
        self.table.set_state(State.FREE)  # gone as far as the others are concerned (not yet reaped)
        self.log.info(
            "hardened_worker: worker %s exiting: reason %s, served %d requests, up %.1f s",
            self.pid,
            self.exit_reason,
            self.server.stats().requests,
            self._uptime(),
            extra=self._facts(requests=self.server.stats().requests, up_s=round(self._uptime(), 3)),
        )
        if self.aborted:
            sys.exit(1)

    def fail_start(self, detail: str, cold_status: int) -> None:
        self._interruptible = False
        self._stop_startup_timers()
        if self.lifecycle.allows(Event.STARTUP_FAILED):
            self._post(Event.STARTUP_FAILED)
        self.table.set_reason(diagnostics.EXIT_REASONS.index(self.exit_reason))
        self.table.set_state(State.FAILED)
        peers = self.table.peers()
        self.log.error(
            "hardened_worker: worker %s failed to start: %s",
            self.pid,
            detail,
            extra=self._facts(detail=detail),
        )
        if not readiness.has_older_live(self.age, peers):
            sys.exit(cold_status)
        serving = [p for p in peers if p.age < self.age and p.state in readiness.SERVING]
        reload = self.generation > min(p.generation for p in serving)
        if reload and self.table.reject(self.generation):
            self.log.error(
                "hardened_worker: reload rejected: generation %d cannot start (%s); %d workers of "
                "the previous generation keep serving",
                self.generation,
                detail,
                len(serving),
                extra=self._facts(detail=detail, serving=len(serving)),
            )
            systemd.notify_reload_rejected(self.ppid, self.generation, detail, self.log)
        if self.table.record_failure() < CRASH_LOOP_WINDOW:
            time.sleep(CRASH_LOOP_PAUSE)  # holds the slot, so the master does not respawn at once
        if reload:
            self.table.reject(self.generation)  # rejected_at = now: see readiness.retirement_gate
        sys.exit(FAILED_WITH_OLDER_LIVE)

    async def until_ready(self) -> str:
        """After lifespan startup, before accepting: "" once the app says it is ready (its
        HARDENED_HEALTH_CHECK passes), else the check's last answer after HARDENED_READY_TIMEOUT,
        which fails the start (a reload is then rejected, with that answer)."""
        if self.health_check is None:
            return ""
        deadline = time.monotonic() + self._ready_timeout()
        while True:
            ok, answer = await self.health_check.run()
            if ok:
                return ""
            if time.monotonic() >= deadline:
                return f"health check not passing after {self._ready_timeout():g} s: {answer}"
            await asyncio.sleep(READY_POLL)

    def on_ready(self) -> None:
        self._stop_startup_timers()  # no startup alarm can arrive once the worker is ready
        if self.signals:
            # A stop or the startup timer interrupted the boot inside a task: the loop finishes its
            # current iteration before the exception leaves it, and may get this far. Not ready.
            raise BootInterrupted()
        self._interruptible = False
        self._post(Event.STARTUP_DONE)

    # --- the lifecycle: events in, actions out --------------------------------------------

    def _post(self, event: Event) -> None:
        before = self.lifecycle.phase
        actions = self.lifecycle.post(event)
        self.status.state = self.lifecycle.health
        if self.lifecycle.phase is not before:
            self.table.set_state(_PUBLISHED[self.lifecycle.phase])
            self.table.counters()[readiness.C_PHASE] = metrics.phase_code(self.lifecycle.phase)
            if self.lifecycle.reason is not None:
                self.table.set_reason(diagnostics.EXIT_REASONS.index(self.lifecycle.reason.value))
        for action in actions:
            getattr(self, "_do_" + action.name.lower())(event)

    def handle_usr1(self, signum: int, frame: FrameType | None) -> None:
        # gunicorn's handler reopens the log files right there, taking logging's locks.
        self._reopen_logs = True

    def _handle_signals(self) -> None:
        """What the handlers recorded, in order, as lifecycle events (on the loop or boot thread)."""
        if self._reopen_logs:
            self._reopen_logs = False
            self.log.reopen_files()
        while self.signals:
            event, at, at_wall = self.signals.popleft()
            if event is Event.STOP and self.table.reloads().generation > self.generation:
                event = Event.SUPERSEDED
            if event is Event.QUICK_STOP:
                self.cfg.worker_int(self)
            if event is Event.ABORT:
                self.log.error(
                    "hardened_worker: worker %s timed out (SIGABRT from the master) "
                    "serving %s; stacks above",
                    self.pid,
                    diagnostics.request_in(self._abort_frame) or "no request",
                )
                self.cfg.worker_abort(self)
                self.aborted = True
            if event in (Event.STOP, Event.SUPERSEDED) and self.surge and self.surge.retired:
                self.surge.acknowledged = True
            elif event in (Event.STOP, Event.SUPERSEDED):
                if self.stop is None or self.lifecycle.phase is not Phase.DEFERRING:
                    self.stop = StopRequest(at, at_wall)
                else:
                    self.stop.at_wall = at_wall  # the master re-sends SIGTERM: see the gate
            self._post(event)

    def _do_arm_startup_timer(self, event: Event) -> None:
        self._arm_startup_timers()

    def _do_announce_ready(self, event: Event) -> None:
        self._stop_startup_timers()
        self.ready_at = time.monotonic()
        lifetime = self.settings.max_lifetime
        if lifetime:
            jitter = self.settings.max_lifetime_jitter
            jitter = 0.1 * lifetime if jitter is None else min(jitter, lifetime)
            self.lifetime_limit = lifetime - random.uniform(0, jitter)
        self.stall.start()
        self.check_memory(now_due=True)
        self.log.info(
            "hardened_worker: worker %s ready in %.2f s (generation %d)",
            self.pid,
            self._uptime(),
            self.generation,
            extra=self._facts(up_s=round(self._uptime(), 3)),
        )
        if self.table.count_accepted(self.generation):
            self.log.info(
                "hardened_worker: reload accepted: generation %d serves",
                self.generation,
                extra=self._facts(),
            )
            systemd.notify_reloaded(self.ppid, self.generation, self.log)
        systemd.notify_ready(self.ppid)

    def _do_plan_drain(self, event: Event) -> None:
        assert self.stop is not None
        now = time.monotonic()
        start = now if self.stop.waited else self.stop.at
        self.plan = drain.plan(start, self.cfg.graceful_timeout, self.settings.drain_delay)
        if self.plan.drain_at > now:
            self.log.info(
                "hardened_worker: worker %s drains in %.1f s (HARDENED_DRAIN_DELAY); "
                "health answers 503 meanwhile",
                self.pid,
                self.plan.drain_at - now,
            )

    def _do_begin_drain(self, event: Event) -> None:
        server = self.server
        assert server is not None
        stats = server.stats()
        self.log.info(
            "hardened_worker: worker %s draining: reason %s, %d connections open, %d requests in "
            "flight, served %d requests, up %.1f s",
            self.pid,
            self.exit_reason,
            stats.connections,
            stats.in_flight,
            stats.requests,
            self._uptime(),
            extra=self._facts(
                connections=stats.connections,
                in_flight=stats.in_flight,
                requests=stats.requests,
                up_s=round(self._uptime(), 3),
            ),
        )
        self.drain_plan()
        server.begin_drain()  # at once, not at the next tick: a fast leak grows with every request
        server.request_stop(force=False)

    def _do_close_all(self, event: Event) -> None:
        assert self.server is not None
        self.server.request_stop(force=True)

    def _do_log_rollback(self, event: Event) -> None:
        if self.surge is not None:
            self.log.warning(
                "hardened_worker: worker %s keeps serving: its successor cannot start "
                "(generation %d is rejected)",
                self.pid,
                self.generation,
                extra=self._facts(),
            )
        else:
            self.log.warning(
                "hardened_worker: worker %s keeps serving: generation %d failed to start",
                self.pid,
                self.table.reloads().rejected,
                extra=self._facts(rejected=self.table.reloads().rejected),
            )
        self.stop = None

    def _do_log_not_ready(self, event: Event) -> None:
        self.log.warning(
            "hardened_worker: worker %s %s although its successor%s not ready after "
            "%.1f s (their start deadline has passed)",
            self.pid,
            "recycling" if self.surge else "stopping",
            " is" if self.surge else "s are",
            self.verdict_timeout(),
            extra=self._facts(),
        )

    def _do_exit(self, event: Event) -> None:
        if self.server is not None and self.lifecycle.reason is Reason.TIMEOUT:
            self.server.request_stop(force=True)

    # --- serving: called by the server every 100 ms --------------------------------------

    def on_tick(self) -> bool:
        """True when the server should stop serving and drain."""
        self._handle_signals()
        self._publish()
        if os.getppid() != self.ppid and self.lifecycle.allows(Event.PARENT_GONE):
            if self.lifecycle.serving:
                self.log.warning(
                    "hardened_worker: worker %s lost its master (parent %s); stopping",
                    self.pid,
                    self.ppid,
                )
            self._post(Event.PARENT_GONE)
        phase = self.lifecycle.phase
        if phase is Phase.READY:
            self._check_recycling()
        elif phase is Phase.SURGING:
            self.check_memory()  # the hard limit still goes at once
            self._check_successor()
        elif phase is Phase.DEFERRING:
            self._check_gate()
        elif (
            phase is Phase.STOPPING
            and self.plan is not None
            and time.monotonic() >= self.plan.drain_at
        ):
            self._post(Event.DELAY_OVER)
        return self.lifecycle.phase in (Phase.DRAINING, Phase.EXITING)

    def on_drain_tick(self) -> None:
        self._handle_signals()

    def holding(self) -> bool:
        """A retiring worker stays until the master's SIGTERM says it picked this worker."""
        return self.surge is not None and self.surge.retired and not self.surge.acknowledged

    def heartbeat(self) -> None:
        self.notify()

    def _check_gate(self) -> None:
        """The readiness gate: may this worker, told to stop, start its drain delay now?"""
        assert self.stop is not None
        now = time.monotonic()
        peers = self.table.peers()
        me = self.table.me()
        rolling = self.cfg.workers if self.settings.rolling else 0
        gate = (
            readiness.retirement_gate(me, peers, self.table.reloads(), self.stop.at_wall, rolling)
            if me is not None
            else Gate.RETIRE
        )
        if gate is Gate.WAIT:
            if now - self.stop.at < self.verdict_timeout():
                if not self.stop.waited:
                    self.stop.waited = True
                    self.log.info(
                        "hardened_worker: worker %s will stop once its successors are "
                        "ready (waiting up to %.1f s)",
                        self.pid,
                        self.verdict_timeout(),
                    )
                return
            self._post(Event.DEADLINE)
        elif gate is Gate.ROLLBACK:
            self._post(Event.RELOAD_REJECTED)
        elif me is not None and any(
            p.generation > me.generation and p.state == State.READY for p in peers
        ):
            self._post(Event.SUCCESSORS_READY)
        else:
            self._post(Event.NO_SUCCESSOR)

    def _ready_timeout(self) -> float:
        """How long a new worker's HARDENED_HEALTH_CHECK may fail after lifespan startup."""
        return self.settings.ready_timeout or 0.8 * self.cfg.graceful_timeout

    def verdict_timeout(self) -> float:
        """How long a worker waits for its successors' verdict (ready, or failed to start),
        counted from the SIGTERM (reload) or the surge, both of which come after the successors
        were forked. Strictly later than the successors' own deadline, so that an old worker never
        leaves before it: a successor gets HARDENED_STARTUP_TIMEOUT for the import and lifespan
        startup, then HARDENED_READY_TIMEOUT for its health check; with HARDENED_ROLLING each
        successor waits for the one before it."""
        one = self.settings.startup_timeout + (
            self._ready_timeout() if self.settings.health_check else 0.0
        )
        turns = self.cfg.workers if self.settings.rolling else 1
        return one * turns + VERDICT_MARGIN

    def drain_plan(self) -> drain.DrainPlan:
        if self.plan is None:  # recycling, parent died, quick stop: no delay
            self.plan = drain.plan(time.monotonic(), self.cfg.graceful_timeout, 0.0)
        return self.plan

    def _uptime(self) -> float:
        return time.monotonic() - self.started_at

    def _facts(self, **figures: Any) -> dict[str, Any]:
        """The lifecycle facts of a log line as fields (``extra=``; the JSON log shows them)."""
        reason = self.lifecycle.reason
        return {
            "hardened_worker": {
                "pid": self.pid,
                "generation": self.generation,
                "reason": reason.value if reason else None,
                "phase": self.lifecycle.phase.value,
                **figures,
            }
        }

    def _publish(self) -> None:
        """On the tick: this worker's beat (the systemd watchdog reads it) in its row; with
        HARDENED_METRICS_PATH its request counts too, and its memory once a second (in
        HARDENED_MEMORY_MEASURE, what the limits compare)."""
        now = time.monotonic()
        row = self.table.counters()
        row[readiness.C_BEAT] = readiness.monotonic_ms()
        if self.tally is not None:
            self.tally.publish(row)
        if self.settings.metrics_path and now >= self._next_memory_publish:
            self._next_memory_publish = now + 1.0
            row[readiness.C_MEMORY] = metrics.memory_bytes(self.settings.memory_measure)


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


class BootInterrupted(SystemExit):
    """Raised by a signal handler into the app's import or lifespan startup (see ``_record``).

    A ``SystemExit`` so that asyncio and uvicorn let it through as they do a stop, never treat
    it as an app error; :meth:`Worker.init_process` catches it.
    """


@dataclass
class StopRequest:
    at: float  # monotonic: when the first SIGTERM arrived (durations)
    at_wall: float  # time.time() of the latest SIGTERM (compared with other processes' records)
    waited: bool = False  # the gate held this worker back: the drain delay counts from the gate


# What the shared table tells the other workers (and the master) about each phase.
_PUBLISHED = {
    Phase.BOOTING: State.BOOTING,
    Phase.WAITING: State.WAITING,
    Phase.READY: State.READY,
    Phase.SURGING: State.SURGING,
    Phase.DEFERRING: State.READY,
    Phase.STOPPING: State.STOPPING,
    Phase.DRAINING: State.STOPPING,
    Phase.EXITING: State.STOPPING,
}
