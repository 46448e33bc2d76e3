"""The shared table where the old one could not boot: workers after gunicorn's setuid, and no /proc.

Both run a real master as root (the test fails, with that reason, when it is not root), a HUP
under load, and count every failed request.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from rig import Master, under_load

NOBODY = 65534

# This machine's Python keeps its standard library under /root (0700): after setuid(nobody) a
# worker cannot import a module the master has not imported already, and uvicorn imports its
# protocol classes in the worker. The master imports them first; nothing of ours is involved.
PREIMPORT_CONF = """
from uvicorn.config import HTTP_PROTOCOLS, LIFESPAN, LOOP_FACTORIES, WS_PROTOCOLS
from uvicorn.importer import import_from_string

for table in (HTTP_PROTOCOLS, WS_PROTOCOLS, LIFESPAN, LOOP_FACTORIES):
    for target in filter(None, table.values()):
        try:
            import_from_string(target)
        except Exception:
            pass
"""


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _hup_under_load(m: Master) -> None:
    def reload() -> None:
        m.signal(signal.SIGHUP)
        m.wait_log(r"ready in [\d.]+ s \(generation 2\)", timeout=30, count=2)

    outcomes, load = under_load(m.port, reload, 8)
    assert len(outcomes) > 100 and outcomes.failures == []
    assert load.requests > 500 and load.socket_errors == 0 and load.non_2xx == 0


def test_workers_dropped_to_nobody_serve_and_survive_a_hup(master, tmp_path):
    assert os.getuid() == 0, "gunicorn drops privileges only when started as root"
    conf = tmp_path / "preimport_conf.py"
    conf.write_text(PREIMPORT_CONF)
    # TESTAPP_EVENTS off: pytest's directory is root's (0700), nobody cannot append there.
    m = master(
        env={"TESTAPP_EVENTS": ""}, args=["-c", str(conf), "--user", "nobody", "--group", "nogroup"]
    )
    workers = m.wait_workers(2)
    assert [_uid(pid) for pid in workers] == [NOBODY, NOBODY]
    _hup_under_load(m)
    assert [_uid(pid) for pid in m.wait_workers(2)] == [NOBODY, NOBODY]
    log = m.log()
    assert "PermissionError" not in log and "Traceback" not in log, log
    assert m.proc.poll() is None


# Each warning names what is off and what the worker does instead.
NO_PROC_WARNINGS = {
    "liveness": "/proc/PID/stat is unreadable: a worker's liveness is checked with kill(pid, 0)",
    "memory": "/proc/self/statm is unreadable (No such file or directory): memory is measured as "
    "the peak RSS",
    "precise memory": "/proc/self/smaps_rollup is unreadable; memory is measured as RSS",
}


def test_without_proc_the_pool_serves_and_reloads_with_one_warning_per_missing_capability(tmp_path):
    assert os.getuid() == 0, "hiding /proc needs a mount namespace: root"
    assert shutil.which("unshare"), "unshare (util-linux) hides /proc in a mount namespace"
    # A memory limit too, so the memory reader's /proc files are missed as well.
    m = Master(tmp_path, env={"HARDENED_MEMORY_LIMIT": "1GiB"})
    hide_proc = 'mount -t tmpfs none /proc && test ! -e /proc/self && exec "$@"'
    m.cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide_proc, "sh", *m.cmd]
    try:
        m.start()
        m.wait_workers(2)
        _hup_under_load(m)
        log = m.log()
        booted = log.count("Booting worker with pid")
        assert booted == 4  # two at start, two for the reload
        # Once for the pool (the master finds out first; its workers inherit that it was said),
        # the memory ones once per worker: each worker opens its own readers after fork.
        assert log.count(NO_PROC_WARNINGS["liveness"]) == 1, log
        assert log.count(NO_PROC_WARNINGS["memory"]) == booted, log
        assert log.count(NO_PROC_WARNINGS["precise memory"]) == booted, log
        assert "Traceback" not in log and "failed to boot" not in log, log
        assert m.proc.poll() is None
    finally:
        m.stop()
