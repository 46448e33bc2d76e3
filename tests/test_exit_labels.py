"""Exit reason labels match the documentation (issue 25, item 8): a SIGKILLed worker (the OOM
killer's way) is a ``crash`` in the metrics, as in ``child_exit`` and docs/operations.md."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from rig import wait_for
from test_metrics import samples, scrape, value

DOCUMENTED = set(
    re.findall(
        r"^\| `([a-z-]+)` \|",
        (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text(),
        re.M,
    )
)


def test_a_sigkilled_worker_is_a_crash_in_the_metrics(master):
    m = master(workers=1, env={"HARDENED_METRICS_PATH": "/metrics"})
    [pid] = m.wait_workers(1)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (w := m.workers()) and w != [pid], 30)

    def counted() -> dict:
        status, _, text = scrape(m.port)
        found = samples(text) if status == 200 else {}
        return found if value(found, "worker_exits_total", reason="crash") else None

    found = wait_for(counted, 30)
    assert value(found, "worker_exits_total", reason="crash") == 1
    reasons = {
        dict(labels)["reason"]
        for name, labels in found
        if name == "hardened_worker_worker_exits_total"
    }
    assert reasons <= DOCUMENTED, reasons - DOCUMENTED
