"""``python -m hardened_worker status``: the running pool, the same as the metrics scrape."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from rig import ROOT, get, wait_for
from test_metrics import samples, scrape, settled, value


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hardened_worker", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_status_shows_the_pool_and_its_json_matches_the_scrape(master):
    m = master(env={"HARDENED_METRICS_PATH": "/metrics"})
    pids = m.wait_workers(2)
    wait_for(lambda: value(samples(scrape(m.port)[2]), "workers", state="ready") == 2, 15)
    for _ in range(30):
        assert get(m.port, "/")[0] == 200
    settled(m.port, pids)
    url = f"http://127.0.0.1:{m.port}/metrics"
    done = status("--json", url)  # neither the scrape nor this command counts as a request
    assert done.returncode == 0, done.stderr
    pool = json.loads(done.stdout)
    found = samples(scrape(m.port)[2])
    assert sorted(w["pid"] for w in pool["workers"]) == sorted(pids)
    assert pool["requests"] == value(found, "requests_total") >= 30
    for w in pool["workers"]:
        assert w["state"] == "ready" and w["generation"] == 1
        assert w["requests"] == value(found, "requests_total", pid=str(w["pid"]))
        assert w["memory_bytes"] > 0
        assert (
            w["accept"] in ("listening", "yielding") and 0 <= w["connections"] <= 1
        )  # the scrape's

    m.signal(signal.SIGHUP)
    wait_for(lambda: not set(m.workers()) & set(pids) and len(m.workers()) == 2, 30)
    wait_for(lambda: len(json.loads(status("--json", url).stdout)["last_exits"]) == 2, 15)
    done = status(url)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "generation 2" in text and "reloads: 1 accepted, 0 rejected" in text
    assert "CONNECTIONS  ACCEPT" in text
    for pid in m.workers():
        assert f"\n{pid} " in text
    for pid in pids:
        assert f"{pid} reload (" in text  # the last exits, with their reasons


def test_status_without_a_service_says_so_in_one_line():
    from rig import free_port

    done = status(f"http://127.0.0.1:{free_port()}/metrics")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("hardened_worker: status:")


def test_status_of_a_service_without_metrics_says_what_to_set(master):
    m = master()
    done = status(f"http://127.0.0.1:{m.port}/metrics")
    assert done.returncode == 1 and "HARDENED_METRICS_PATH" in done.stderr
