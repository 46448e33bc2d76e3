"""Memory headroom: whether the container can hold a recycling worker's successor (pure).

A surge (:mod:`hardened_worker._recycling`) holds one app more in memory while the successor
starts: the old worker keeps serving until the new one is ready. In a container with a memory
limit that is when the OOM killer strikes: the successor is forked at the moment the container
has the least room (its workers are at their limits), and the kernel then kills a process that is
serving. So a successor starts first only when the container has room for it; otherwise the worker
that must go drains first and the master replaces it after it exits. A short dip in capacity
(one worker of ``workers`` for about a second) loses no request; an OOM kill loses every request
in flight on the killed worker.

The rule (:func:`replacement`):

* No cgroup limit known: surge (nothing to overflow that we can see).
* The container cannot hold ``workers + 1`` apps next to the master at all: drain first, always
  (no moment of room lasts while the others grow back).
* No usage figure: surge.
* Otherwise: surge when ``limit - working set`` covers the app's startup footprint for the
  successor and for every worker already starting (forked but not ready, or not forked yet: their
  memory is not yet in the figure), plus :func:`margin`; else drain first.

"Working set" is the cgroup's usage minus its inactive file cache (what the kernel can drop
before it has to kill), as the kubelet computes it. The footprint is a worker's private memory
(USS) when it became ready, learned by each worker (and published in the shared table).

:class:`Budget` is the same arithmetic done once at start, for the per-worker limits of the
memory-constrained preset: ``workers x hard + master + one successor + margin <= limit``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hardened_worker._memory import HARD_LIMIT_FACTOR  # hard = soft x this, as the settings default

MiB = 1024**2
# What the margin keeps free beyond the successor: page cache the kernel cannot drop at once, socket
# buffers, page tables and the kernel's other charges, a successor's transient allocations while
# it starts. 3% was measured short: in a 700 MiB cgroup, three workers reaching their hard limits
# together while a successor started were OOM-killed once in four 30 s runs; 5% too, in two
# full-suite runs of the 64 KiB leak test (one OOM kill each, peak 700 MiB).
MARGIN_SHARE = 0.08
MARGIN_MIN = 16 * MiB


class Replacement(enum.Enum):
    SURGE = "surge"  # the successor starts first; this worker serves until it is ready
    DRAIN_FIRST = "drain first"  # no room: this worker leaves, the master replaces it after

    def explain(self, room: Room) -> str:
        """The tail of the recycle log line: what happens and why."""
        if self is Replacement.SURGE:
            return "its successor starts first"
        return (
            "no room for a successor, it drains first and the master replaces it: "
            + room.describe()
        )


@dataclass(frozen=True)
class Room:
    """What the decision saw (bytes); ``limit`` or ``used`` None: unknown."""

    limit: int | None
    used: int | None  # the cgroup's working set
    footprint: int  # one app's private memory when ready
    starting: int = 0  # workers starting besides the successor asked for
    workers: int = 1  # configured workers (the successor comes on top)
    master: int = 0  # the master's resident memory

    @property
    def margin(self) -> int:
        return margin(self.limit) if self.limit is not None else 0

    def fits_workers_plus_one(self) -> bool:
        """Could the container hold ``workers + 1`` apps next to the master at all?"""
        return (
            self.limit is None
            or self.master + (self.workers + 1) * self.footprint + self.margin <= self.limit
        )

    def needed(self) -> int:
        return self.footprint * (self.starting + 1) + self.margin

    def describe(self) -> str:
        if self.limit is None:
            return "no cgroup memory limit known"
        if not self.fits_workers_plus_one():
            return (
                f"the cgroup limit {_mib(self.limit)} cannot hold {self.workers} + 1 apps of "
                f"{_mib(self.footprint)} next to the master ({_mib(self.master)}) and a "
                f"{_mib(self.margin)} margin"
            )
        if self.used is None:
            return f"cgroup limit {_mib(self.limit)}, its usage unknown"
        return (
            f"cgroup working set {_mib(self.used)} of {_mib(self.limit)} leaves "
            f"{_mib(self.limit - self.used)}, {_mib(self.needed())} needed ({self.starting + 1} "
            f"x {_mib(self.footprint)} app + {_mib(self.margin)} margin)"
        )


def margin(limit: int) -> int:
    """Bytes kept free beyond the apps: 5% of the limit, at least 16 MiB."""
    return max(MARGIN_MIN, int(limit * MARGIN_SHARE))


def replacement(room: Room) -> Replacement:
    """The rule of the module docstring."""
    if room.limit is None:
        return Replacement.SURGE
    if not room.fits_workers_plus_one():
        return Replacement.DRAIN_FIRST
    if room.used is None:
        return Replacement.SURGE
    return Replacement.SURGE if room.limit - room.used >= room.needed() else Replacement.DRAIN_FIRST


def starting(workers: int, peers_alive: int, peers_booting: int) -> int:
    """Workers whose memory is still to come: those booting, and those the master will fork
    because the pool is short (a worker that left and is not replaced yet). ``peers_alive`` counts
    every live worker but the caller (a draining one still holds its memory: counted)."""
    return peers_booting + max(0, workers - 1 - peers_alive)


@dataclass(frozen=True)
class Budget:
    """Per-worker limits for a container of ``limit`` bytes, from what was measured at start:
    ``master`` (its resident memory), ``app`` (a worker's private memory once the app is
    imported) and ``workers``. Every worker at its hard limit plus one successor starting fit:
    ``workers x hard + master + app + margin <= limit``. When even ``workers + 1`` apps do not
    fit, there is no room for a successor: the limits then leave room for none (``surge`` False)
    and every recycle drains first."""

    limit: int
    master: int
    app: int
    workers: int

    @property
    def margin(self) -> int:
        return margin(self.limit)

    @property
    def surge(self) -> bool:
        return Room(self.limit, 0, self.app, 0, self.workers, self.master).fits_workers_plus_one()

    @property
    def hard(self) -> int:
        successor = self.app if self.surge else 0
        return max(0, (self.limit - self.master - successor - self.margin) // max(1, self.workers))

    @property
    def soft(self) -> int:
        return int(self.hard / HARD_LIMIT_FACTOR)

    @property
    def fits(self) -> bool:
        """Is the soft limit above the app's own size (else every worker would recycle at once)?"""
        return self.soft > self.app

    def describe(self) -> str:
        """One log line: the budget and where each figure came from."""
        line = (
            f"memory budget: cgroup limit {_mib(self.limit)} = master {_mib(self.master)} + "
            f"{self.workers} workers x hard limit {_mib(self.hard)} (soft {_mib(self.soft)})"
        )
        if self.surge:
            line += f" + one successor {_mib(self.app)} (app footprint measured)"
        line += f" + margin {_mib(self.margin)}"
        if not self.surge:
            line += (
                f"; too small for {self.workers} + 1 apps of {_mib(self.app)}: recycling "
                f"runs without surge (a worker drains first, then is replaced)"
            )
        if not self.fits:
            line += (
                f"; the soft limit is below the app's footprint {_mib(self.app)}: use fewer "
                f"workers or a larger limit"
            )
        return line


def _mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"
