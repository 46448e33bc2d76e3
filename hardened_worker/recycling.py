"""The worker's memory glue: when to read, what to do past a limit (the policy is :mod:`.memory`).

A mixin of :class:`hardened_worker.worker.Worker`, kept apart so the worker module reads as the
lifecycle; it uses the worker's ``settings``, ``table``, ``server`` and ``log``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from hardened_worker import cgroup, diagnostics
from hardened_worker import memory as policy  # not `memory`: the attribute below has that name
from hardened_worker.lifecycle import Event, Phase
from hardened_worker.readiness import State

MEMORY = diagnostics.EXIT_REASONS.index("memory")


class MemoryRecycling:
    settings: Any
    table: Any
    server: Any
    log: Any
    pid: Any
    _uptime: Any  # the worker's
    lifecycle: Any
    _post: Any
    _recycle: Any
    memory: Optional[policy.MemoryWatch] = None
    memory_reader: Optional[policy.MemoryReader] = None
    _memory_decision = policy.Decision.OK
    _next_cgroup_check = 0.0

    def _memory_watch(self) -> Optional[policy.MemoryWatch]:
        s = self.settings
        if not (s.memory_limit or s.memory_cgroup):
            return None
        # Opened here, after fork: /proc/self opened in the master would read the master.
        self.memory_reader = policy.MemoryReader(s.memory_measure)
        if not self.memory_reader.exact:
            self.log.warning("hardened_worker: /proc/self/smaps_rollup is unreadable; memory is "
                             "measured as RSS (an over-estimate)")
        if not s.memory_limit:
            return None
        limits = policy.MemoryLimits.from_settings(
            s.memory_limit, s.memory_hard_limit, s.memory_jitter, s.memory_min_lifetime)
        return policy.MemoryWatch(limits, self.memory_reader, check_interval=s.memory_check_interval,
                                  check_requests=s.memory_check_requests)

    def check_memory(self, now_due: bool = False) -> None:
        """On the tick and every ``HARDENED_MEMORY_CHECK_REQUESTS`` requests; cheap unless due.
        ``now_due``: at ready, so the baseline is the ready worker's, whatever comes next."""
        watch, server = self.memory, self.server
        if watch is None or server is None or self.lifecycle.phase not in (Phase.READY, Phase.SURGING):
            return
        now = time.monotonic()
        total = server.stats().requests
        if not (now_due or watch.due(now, total)):
            return
        decision, used = watch.check(now, total, lambda: (self.table.recycling(), self._replaceable()))
        if decision.recycles:
            hard = decision is policy.Decision.RECYCLE_HARD
            limit = watch.limits.hard if hard else watch.soft
            if hard:
                self.log.warning("%s", policy.recycle_message(
                    self.pid, used, limit, self.settings.memory_measure, total, self._uptime(), hard))
                self._post(Event.MEMORY_HARD)
            elif self.lifecycle.phase is Phase.READY and not self._recycle(
                    Event.MEMORY_SOFT, policy.recycle_cause(used, limit, self.settings.memory_measure,
                                                            total, self._uptime(), hard),
                    logging.WARNING):
                decision = policy.Decision.WAIT_TURN
        elif decision is not self._memory_decision and decision is policy.Decision.BLOCKED_NO_REPLACEMENT:
            self.log.warning("hardened_worker: worker %s memory %s %s over its limit %s; not "
                             "recycling yet: no replacement can start (the last reload was "
                             "rejected)", self.pid, self.settings.memory_measure,
                             policy.format_size(used), policy.format_size(watch.soft))
        self._memory_decision = decision
        if watch.baseline_warning_due():
            self.log.warning("%s", policy.baseline_message(
                self.pid, used, watch.soft, self.settings.memory_measure, now - watch.started,
                watch.limits.min_lifetime))

    def check_cgroup(self) -> None:
        """HARDENED_MEMORY_CGROUP: the largest worker leaves before the kernel's OOM killer acts."""
        reader, server = self.memory_reader, self.server
        now = time.monotonic()
        if (reader is None or server is None or self.lifecycle.phase is not Phase.READY
                or not self.settings.memory_cgroup or now < self._next_cgroup_check):
            return
        self._next_cgroup_check = now + self.settings.memory_check_interval
        rss = reader.rss()
        self.table.set_memory(rss)  # RSS: what the workers publish to rank themselves
        root = self.settings.cgroup_root
        current, limit = cgroup.memory_current(root), cgroup.memory_limit(root)
        if not policy.cgroup_pressure(current, limit) or self._uptime() < self.settings.memory_min_lifetime:
            return
        peers = self.table.peers()
        recent = time.time() - self.settings.memory_min_lifetime
        # After a recycle the container's figure needs time to settle: wait until the replacement
        # is older than the minimum lifetime, so one pressure reading cannot empty the pool.
        settling = any(p.started > recent for p in peers) or self.table.left_since(MEMORY, recent)
        if settling or any(p.memory > rss for p in peers if p.state == State.READY) \
                or not self._replaceable():
            return
        assert current is not None and limit is not None
        self._recycle(Event.MEMORY_SOFT,
                      f"container memory {policy.format_size(current)} is {current / limit:.0%} of "
                      f"the cgroup limit {policy.format_size(limit)} and this worker is the largest "
                      f"(rss {policy.format_size(rss)}), {server.stats().requests} requests served, "
                      f"up {policy.format_duration(self._uptime())}", logging.WARNING)

    def _replaceable(self) -> bool:
        reloads = self.table.reloads()
        return reloads.rejected < reloads.generation  # the current code can start
