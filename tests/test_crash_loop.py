"""A worker that crashes after boot, again and again, is not respawned in a tight loop."""

from __future__ import annotations

import re
import time

from rig import alive, get, wait_for


def test_crashes_after_boot_pause_instead_of_looping(master):
    m = master(worker="crashing_worker.CrashingWorker", workers=1)
    started = time.monotonic()
    deadline = started + 14
    while time.monotonic() < deadline:  # every request makes the serving worker crash
        try:
            get(m.port, "/", timeout=1)
        except OSError:
            pass
        time.sleep(0.05)
    log = m.log()
    boots = log.count("Booting worker")
    crashes = re.findall(r"hardened_worker: worker (\d+) crashed: RuntimeError", log)
    pauses = re.findall(r"worker (\d+) pausing 5 s before exiting: .*\(crash loop\)", log)
    # Without the pause the master forks a worker every ~100 ms while requests come: dozens.
    assert boots <= 2 + (time.monotonic() - started) / 5, boots
    assert len(crashes) >= 2 and len(pauses) >= 1
    assert alive(m.pid)
    wait_for(lambda: len(m.workers()) == 1, timeout=10)
