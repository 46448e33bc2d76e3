"""The memory-constrained preset's measured budget, and headroom deciding a real worker's recycle
from a cgroup v2 file layout (``HARDENED_CGROUP_ROOT`` pointing at files in tmp_path)."""

from __future__ import annotations

import http.client
import re

from rig import APPS, ROOT, wait_for

from hardened_worker.presets import memory_constrained as preset

MiB = 1024 * 1024
EXAMPLE = ROOT / "gunicorn_conf_examples" / "memory-constrained" / "gunicorn.conf.py"


def test_command_line_is_read_with_gunicorns_parser():
    argv = [
        "ballast:app",
        "-k",
        "hardened_worker.Worker",
        "-w",
        "3",
        "--pythonpath",
        "/a,/b",
        "--chdir",
        "/srv",
        "-c",
        "conf.py",
    ]
    assert preset.command_line(argv) == ("ballast:app", ["/a", "/b"], "/srv", 3)
    assert preset.command_line(["-c", "conf.py"]) == (None, [], None, None)


def test_probe_measures_the_app_in_a_forked_child():
    size = preset.probe_app("ballast:app", [str(APPS)], None)
    assert size is not None and 60 * MiB <= size < 120 * MiB  # the 60 MiB ballast, written
    assert "ballast" not in __import__("sys").modules  # imported in the child only


def test_probe_of_an_app_that_cannot_be_imported_is_unknown():
    assert preset.probe_app("no_such_module_here:app", [], None) is None


def v2_cgroup(path, limit: int, current: int, inactive_file: int = 0):
    path.mkdir(exist_ok=True)
    (path / "memory.max").write_text(f"{limit}\n")
    (path / "memory.current").write_text(f"{current}\n")
    (path / "memory.stat").write_text(f"anon {current}\ninactive_file {inactive_file}\n")
    (path / "memory.events").write_text("oom 0\noom_kill 0\n")
    return path


def test_example_says_at_start_when_the_limit_cannot_hold_workers_plus_one(master, tmp_path):
    cg = v2_cgroup(tmp_path / "cg", 200 * MiB, 0)
    m = master(
        app="ballast:app",
        workers=3,
        args=["-c", str(EXAMPLE)],
        env={"HARDENED_CGROUP_ROOT": str(cg), "BALLAST_MIB": "60", "HARDENED_DRAIN_DELAY": "0s"},
    )
    [line] = m.wait_log(r"memory budget: .*")
    assert re.search(
        r"cgroup limit 200 MiB = master \d+ MiB \+ 3 workers x hard limit \d+ MiB", line
    )
    assert "too small for 3 + 1 apps" in line and "without surge" in line, line
    assert "one successor" not in line


def leak(port: int, requests: int, kib: int = 1024) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(requests):  # one keep-alive connection: one worker grows
        conn.request("GET", f"/leak?kib={kib}")
        response = conn.getresponse()
        assert response.read() == b"leaked"
        if response.will_close:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def test_headroom_decides_surge_or_drain_first_from_a_v2_cgroup(master, tmp_path):
    # 1 GiB limit: a worker over its soft limit while the container has 24 MiB left drains first
    # (its successor would not fit); with room, the next one surges.
    cg = v2_cgroup(tmp_path / "cg", 1024 * MiB, 1000 * MiB)
    env = {
        "HARDENED_MEMORY_LIMIT": "96MiB",
        "HARDENED_MEMORY_HARD_LIMIT": "1GiB",
        "HARDENED_CGROUP_ROOT": str(cg),
        "HARDENED_MEMORY_CHECK_INTERVAL": "100ms",
    }
    m = master(env=env)
    pids = m.wait_workers(2)
    leak(m.port, 100)
    [pid] = m.wait_log(
        r"worker (\d+) recycling: memory uss .* drains first and the master "
        r"replaces it: cgroup working set 1000 MiB of 1024 MiB leaves 24 MiB"
    )
    gone = int(pid)
    assert gone in pids
    wait_for(lambda: len(m.workers()) == 2 and gone not in m.workers(), 20)
    assert "its successor starts first" not in m.log()

    # Page cache the kernel can drop is room: the same usage, 600 MiB of it inactive files.
    v2_cgroup(cg, 1024 * MiB, 1000 * MiB, inactive_file=600 * MiB)
    m.wait_workers(2)
    leak(m.port, 100)
    m.wait_log(r"recycling: memory uss .*; its successor starts first")
    assert m.log().count("drains first") == 1
