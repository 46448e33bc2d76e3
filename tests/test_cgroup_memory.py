"""hardened_worker._cgroup's memory figures for headroom: the working set and the OOM kill counter,
for both cgroup versions as the kernel lays their files out (fake trees in tmp_path), and the
same reads against this machine's real cgroup."""

from __future__ import annotations

import pytest

from hardened_worker import _cgroup as cgroup
from hardened_worker._cgroup import memory_working_set, oom_kills

MiB = 1024**2

V2_STAT = """anon 314572800
file 209715200
kernel 8388608
active_anon 300000000
inactive_anon 14572800
active_file 52428800
inactive_file 157286400
"""
V1_STAT = """cache 209715200
rss 314572800
inactive_file 10485760
active_file 52428800
hierarchical_memory_limit 734003200
total_cache 209715200
total_rss 314572800
total_inactive_file 157286400
total_active_file 52428800
"""
V1_OOM = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n"
V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"


def tree(tmp_path, files: dict[str, str]) -> str:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return str(tmp_path)


@pytest.mark.parametrize(
    "files, expected",
    [
        # v2: memory.current minus inactive_file
        ({"memory.current": str(600 * MiB), "memory.stat": V2_STAT}, 600 * MiB - 157286400),
        # v1: usage_in_bytes minus total_inactive_file (children included, as the usage is)
        (
            {"memory/memory.usage_in_bytes": str(600 * MiB), "memory/memory.stat": V1_STAT},
            600 * MiB - 157286400,
        ),
        # no stat file: the usage as it is (an over-estimate, never an under-estimate)
        ({"memory.current": str(600 * MiB)}, 600 * MiB),
        ({"memory.current": "100", "memory.stat": "inactive_file 5000\n"}, 0),  # never negative
        ({"memory.current": str(MiB), "memory.stat": "inactive_file lots\n"}, MiB),
        ({"memory.stat": V2_STAT}, None),  # no usage figure: unknown
        ({}, None),
    ],
)
def test_memory_working_set(tmp_path, files, expected):
    assert memory_working_set(tree(tmp_path, files)) == expected


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"memory.events": V2_EVENTS}, 2),
        ({"memory/memory.oom_control": V1_OOM}, 7),
        ({"memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n"}, None),  # before 4.13
        ({"memory.events": "oom_kill x\n"}, None),
        ({}, None),
    ],
)
def test_oom_kills(tmp_path, files, expected):
    assert oom_kills(tree(tmp_path, files)) == expected


def test_this_machines_cgroup_reads():
    """The real files of this process's own memory cgroup (v1 here): whatever they say, the
    working set is a count no larger than the usage, and the OOM counter is readable."""
    where = cgroup.own()
    assert where.memory or where.unified, "no memory cgroup found for this process"
    current = cgroup.memory_current()
    working = memory_working_set()
    assert current is not None and working is not None and 0 <= working <= current
    assert oom_kills() is not None
