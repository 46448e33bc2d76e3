"""Planned replacements: when a worker recycles (requests, age, memory) and the surge that starts
its successor first (the memory policy itself is :mod:`.memory`; the master's side, which forks
the successor and stops the retiring worker, is :mod:`.pool`).

A mixin of :class:`hardened_worker.worker.Worker`, kept apart so the worker module reads as the
lifecycle; it posts lifecycle events and carries out the surge's actions (``_do_*``), using the
worker's ``settings``, ``table``, ``server``, ``lifecycle`` and ``log``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from hardened_worker import _cgroup as cgroup
from hardened_worker import _diagnostics as diagnostics
from hardened_worker import _gunicorn, config
from hardened_worker import _headroom as headroom
from hardened_worker import _memory as policy  # not `memory`: the attribute below has that name
from hardened_worker import _pool as pool
from hardened_worker._lifecycle import Event, Phase, Reason
from hardened_worker._readiness import State

MEMORY = diagnostics.EXIT_REASONS.index("memory")


class Recycling:
    settings: config.Settings
    table: Any
    server: Any
    log: Any
    pid: Any
    _uptime: Any  # the worker's
    lifecycle: Any
    _post: Any
    _facts: Any
    verdict_timeout: Any
    cfg: Any
    ppid: Any
    generation: Any
    exit_reason: Any
    request_limit: int | None
    lifetime_limit: float | None
    ready_at: float
    surge: Surge | None
    _waiting_logged: str | None
    memory: policy.MemoryWatch | None = None
    memory_reader: policy.MemoryReader | None = None
    _memory_decision = policy.Decision.OK
    _next_cgroup_check = 0.0
    changed_file: str | None = None
    age: int  # gunicorn's spawn order (the worker's)  # --reload: set by gunicorn's reloader thread
    footprint: int | None = None  # this worker's private memory at ready: what a successor costs

    def _memory_watch(self) -> policy.MemoryWatch | None:
        s = self.settings
        if not (s.memory_limit or s.memory_cgroup):
            return None
        # Opened here, after fork: /proc/self opened in the master would read the master.
        self.memory_reader = policy.MemoryReader(s.memory_measure)
        if not self.memory_reader.exact:
            self.log.warning(
                "hardened_worker: /proc/self/smaps_rollup is unreadable; memory is "
                "measured as RSS (an over-estimate)"
            )
        if not s.memory_limit:
            return None
        limits = policy.MemoryLimits.from_settings(
            s.memory_limit, s.memory_hard_limit, s.memory_jitter, s.memory_min_lifetime
        )
        return policy.MemoryWatch(
            limits,
            self.memory_reader,
            check_interval=s.memory_check_interval,
            check_requests=s.memory_check_requests,
        )

    def check_memory(self, now_due: bool = False) -> None:
        """On the tick and every ``HARDENED_MEMORY_CHECK_REQUESTS`` requests; cheap unless due.
        ``now_due``: at ready, so the baseline is the ready worker's, whatever comes next."""
        watch, server = self.memory, self.server
        if (
            self.footprint is None
            and self.memory_reader is not None
            and server is not None
            and self.lifecycle.phase is Phase.READY
        ):
            self._learn_footprint(self.memory_reader)
        if (
            watch is None
            or server is None
            or self.lifecycle.phase not in (Phase.READY, Phase.SURGING)
        ):
            return
        now = time.monotonic()
        stats = server.stats()
        total = stats.requests
        if not (now_due or watch.due(now, total)):
            return
        decision, used = watch.check(
            now, total, lambda: (self.table.recycling(), self._replaceable()), stats.connections
        )
        if decision.recycles:
            hard = decision is policy.Decision.RECYCLE_HARD
            limit = watch.limits.hard if hard else watch.soft
            if hard:
                self.log.warning(
                    "%s",
                    policy.recycle_message(
                        self.pid,
                        used,
                        limit,
                        self.settings.memory_measure,
                        total,
                        self._uptime(),
                        hard,
                        watch.drain_growth,
                    ),
                )
                self._post(Event.MEMORY_HARD)
            elif self.lifecycle.phase is Phase.READY and not self._recycle(
                Event.MEMORY_SOFT,
                policy.recycle_cause(
                    used, limit, self.settings.memory_measure, total, self._uptime(), hard
                ),
                logging.WARNING,
            ):
                decision = policy.Decision.WAIT_TURN
        elif (
            decision is not self._memory_decision
            and decision is policy.Decision.BLOCKED_NO_REPLACEMENT
        ):
            self.log.warning(
                "hardened_worker: worker %s memory %s %s over its limit %s; not "
                "recycling yet: no replacement can start (the last reload was "
                "rejected)",
                self.pid,
                self.settings.memory_measure,
                policy.format_size(used),
                policy.format_size(watch.soft),
            )
        self._memory_decision = decision
        if watch.baseline_warning_due():
            self.log.warning(
                "%s",
                policy.baseline_message(
                    self.pid,
                    used,
                    watch.soft,
                    self.settings.memory_measure,
                    now - watch.started,
                    watch.limits.min_lifetime,
                ),
            )

    def _learn_footprint(self, reader: policy.MemoryReader) -> None:
        """At ready: this worker's private memory, read precisely once (about 1 ms), is what the
        app costs a container to start; published in the table for the other workers' view."""
        self.footprint = reader.precise() or reader.rss()
        self.table.set_memory(self.footprint)
        if self.memory is not None:  # what leaving will copy of the master's pages, at most
            self.memory.exit_growth = reader.shared_dirty()

    def check_memory_counted(self) -> None:
        """Every ``HARDENED_MEMORY_CHECK_REQUESTS`` requests: the whole check only when the RSS
        does not already prove the worker under its soft limit and, with what a drain may still
        add, under its hard limit (measured: the whole check every 16 requests cost 10 % of a
        bare app's requests/s, this costs about nothing)."""
        watch = self.memory
        if watch is not None and not watch.surely_under():
            self.check_memory(now_due=True)

    def check_cgroup(self) -> None:
        """HARDENED_MEMORY_CGROUP: the largest worker leaves before the kernel's OOM killer acts."""
        reader, server = self.memory_reader, self.server
        now = time.monotonic()
        if (
            reader is None
            or server is None
            or self.lifecycle.phase is not Phase.READY
            or not self.settings.memory_cgroup
            or now < self._next_cgroup_check
        ):
            return
        self._next_cgroup_check = now + self.settings.memory_check_interval
        rss = reader.rss()
        self.table.set_memory(rss)  # RSS: what the workers publish to rank themselves
        root = self.settings.cgroup_root
        # The working set, not the usage: page cache the kernel drops before any OOM kill is no
        # pressure (a container that writes logs would otherwise recycle for its cache).
        current, limit = cgroup.memory_working_set(root), cgroup.memory_limit(root)
        if (
            not policy.cgroup_pressure(current, limit)
            or self._uptime() < self.settings.memory_min_lifetime
        ):
            return
        peers = self.table.peers()
        recent = time.time() - self.settings.memory_min_lifetime
        # After a recycle the container's figure needs time to settle: wait until the replacement
        # is older than the minimum lifetime, so one pressure reading cannot empty the pool.
        settling = any(p.started > recent for p in peers) or self.table.left_since(MEMORY, recent)
        if (
            settling
            or any(p.memory > rss for p in peers if p.state == State.READY)
            or not self._replaceable()
        ):
            return
        assert current is not None and limit is not None
        self._recycle(
            Event.MEMORY_SOFT,
            f"container memory {policy.format_size(current)} is {current / limit:.0%} of "
            f"the cgroup limit {policy.format_size(limit)} and this worker is the largest "
            f"(rss {policy.format_size(rss)}), {server.stats().requests} requests served, "
            f"up {policy.format_duration(self._uptime())}",
            logging.WARNING,
        )

    def _replaceable(self) -> bool:
        reloads = self.table.reloads()
        return reloads.rejected < reloads.generation  # the current code can start

    # --- the surge: the successor first ----------------------------------------------------

    def _do_start_successor(self, event: Event) -> None:
        # The table already says SURGING (take_surge_turn): one recycle at a time across the pool;
        # the master forks one worker more while it does (pool.plan).
        self.surge = Surge(time.monotonic())
        _gunicorn.wake_master(self.ppid)

    def _do_retire(self, event: Event) -> None:
        assert self.surge is not None
        self.table.set_state(State.RETIRING)
        self.surge.retired = True
        _gunicorn.wake_master(self.ppid)  # one worker too many: the master stops this one first
        self.log.info(
            "hardened_worker: worker %s retiring: reason %s, its successor %s after %.2f s",
            self.pid,
            self.exit_reason,
            "is ready" if event is Event.SUCCESSORS_READY else "is not ready",
            time.monotonic() - self.surge.started,
            extra=self._facts(successor_ready=event is Event.SUCCESSORS_READY),
        )

    def _do_cancel_surge(self, event: Event) -> None:
        self.surge = None  # no longer SURGING in the table: the master stops adding a worker

    def _check_recycling(self) -> None:
        """Planned replacements: each starts its successor first (Phase.SURGING)."""
        self.check_memory()
        self.check_cgroup()
        if self.lifecycle.phase is not Phase.READY or self.server is None:
            return
        if self.request_limit is not None and self.server.stats().requests >= self.request_limit:
            self._recycle(
                Event.REQUEST_COUNT,
                f"{self.server.stats().requests} requests served "
                f"(--max-requests {self.cfg.max_requests} + jitter)",
            )
        elif self.changed_file is not None:
            self._recycle(Event.CODE_CHANGED, f"{self.changed_file} changed (--reload)")
        elif (
            self.lifetime_limit is not None
            and time.monotonic() - self.ready_at >= self.lifetime_limit
        ):
            self._recycle(
                Event.LIFETIME,
                f"up {self._uptime():.1f} s (HARDENED_MAX_LIFETIME "
                f"{self.settings.max_lifetime:g} s - jitter)",
            )

    def _recycle(self, event: Event, why: str, level: int = logging.INFO) -> bool:
        """Recycle: the successor first when the container has room for it
        (:func:`headroom.replacement`) and no other worker is surging (one surge at a time across
        the pool); else, for memory in a container with a limit, this worker drains first and the
        master replaces it once it has exited. False while it waits (another worker is draining,
        or no room for a reason that can wait)."""
        reason = _RECYCLE_REASONS[event]
        room = self._room()
        way = headroom.replacement(room)
        # Decided before taking the turn: a SURGING state, even for an instant, makes the master
        # fork a successor (pool.plan), the very thing there may be no room for.
        if way is headroom.Replacement.SURGE:
            if self.table.take_surge_turn(diagnostics.EXIT_REASONS.index(reason.value)):
                self.log.log(
                    level,
                    "hardened_worker: worker %s recycling: %s; its successor starts first",
                    self.pid,
                    why,
                    extra=self._facts(recycle=reason.value, why=why, replacement=way.value),
                )
                self._post(event)
                return True
            if event is not Event.MEMORY_SOFT or room.limit is None:
                return self._wait(why, "another worker is recycling")
        elif event is not Event.MEMORY_SOFT:
            return self._wait(why, "no room for a successor: " + room.describe())
        # Memory under a container limit, and no successor now: waiting would let this worker
        # grow to its hard limit meanwhile (measured: under a fast leak the workers waiting their
        # turn all reached it together, and three draining at their hard limits next to a
        # successor already serving were OOM-killed). Leaving at the soft limit frees the most,
        # one drain at a time.
        if any(p.state == State.STOPPING for p in self.table.peers()):
            return self._wait(why, "another worker is draining")
        self.log.log(
            level,
            "hardened_worker: worker %s recycling: %s; %s",
            self.pid,
            why,
            way.explain(room)
            if way is headroom.Replacement.DRAIN_FIRST
            else "another worker is recycling: it drains first and the master replaces it",
            extra=self._facts(
                recycle=reason.value, why=why, replacement=headroom.Replacement.DRAIN_FIRST.value
            ),
        )
        self._post(Event.MEMORY_HARD)  # the drain at once, without a successor
        return True

    def _wait(self, why: str, because: str) -> bool:
        if self._waiting_logged != because:  # once per cause, not per reading
            self._waiting_logged = because
            self.log.info(
                "hardened_worker: worker %s would recycle (%s); waiting: %s", self.pid, why, because
            )
        return False

    def _room(self) -> headroom.Room:
        """The container as a recycle sees it: the cgroup's limit and working set, one app's
        footprint (this worker's at ready; before it is known, its size now: more, never less),
        the workers still to come and the master's size."""
        root = self.settings.cgroup_root
        limit = cgroup.memory_limit(root)
        if limit is None:
            return headroom.Room(None, None, 0)
        peers = self.table.peers()
        booting = sum(1 for p in peers if p.state in (State.BOOTING, State.WAITING))
        footprint = self.footprint or policy.process_rss(self.pid) or 0
        return headroom.Room(
            limit,
            cgroup.memory_working_set(root),
            footprint,
            headroom.starting(self.cfg.workers, len(peers), booting),
            self.cfg.workers,
            policy.process_rss(self.ppid) or 0,
        )

    def _check_successor(self) -> None:
        assert self.surge is not None
        peers = self.table.peers()
        me = pool.Member(self.pid, self.age, self.generation, State.SURGING)
        others = [pool.Member(p.pid, p.age, p.generation, p.state) for p in peers]
        if pool.successor_ready(me, others, self.table.wanted()):
            self._post(Event.SUCCESSORS_READY)
        elif not self._replaceable():
            self._post(Event.RELOAD_REJECTED)
        elif time.monotonic() - self.surge.started >= self.verdict_timeout():
            self._post(Event.DEADLINE)


@dataclass
class Surge:
    started: float  # monotonic: when this worker asked the master for its successor
    retired: bool = False  # RETIRING published: the master's SIGTERM for this worker is on its way
    acknowledged: bool = False  # that SIGTERM arrived


_RECYCLE_REASONS = {
    Event.MEMORY_SOFT: Reason.MEMORY,
    Event.REQUEST_COUNT: Reason.MAX_REQUESTS,
    Event.LIFETIME: Reason.MAX_LIFETIME,
    Event.CODE_CHANGED: Reason.RELOAD,
}
