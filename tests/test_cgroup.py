"""hardened_worker.cgroup against fake cgroup trees in tmp_path."""

from __future__ import annotations

import pytest

from hardened_worker.cgroup import cpu_quota, memory_current, memory_limit, worker_count

GiB = 1024**3
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 prints for "no limit" on 64-bit


def tree(tmp_path, files: dict[str, str]) -> str:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return str(tmp_path)


@pytest.mark.parametrize(
    "files, limit",
    [
        ({"memory.max": "max\n"}, None),
        ({"memory.max": "1073741824\n"}, GiB),
        ({"memory/memory.limit_in_bytes": "536870912\n"}, GiB // 2),
        ({"memory/memory.limit_in_bytes": V1_UNLIMITED + "\n"}, None),
        ({"memory.max": "lots\n"}, None),
        ({"memory.max": ""}, None),
        ({"memory.max": "-1"}, None),
        ({"memory.max": "\x00\xff\n"}, None),
        ({"memory.max": "²"}, None),
        ({"memory.max": "max", "memory/memory.limit_in_bytes": "1024"}, None),  # v2 decides
        ({}, None),
    ],
)
def test_memory_limit(tmp_path, files, limit):
    assert memory_limit(tree(tmp_path, files)) == limit


@pytest.mark.parametrize(
    "files, current",
    [
        ({"memory.current": "123456\n"}, 123456),
        ({"memory/memory.usage_in_bytes": "4096\n"}, 4096),
        ({"memory.current": "garbage"}, None),
        ({}, None),
    ],
)
def test_memory_current(tmp_path, files, current):
    assert memory_current(tree(tmp_path, files)) == current


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "50000\n"}, None),  # no period
        ({"cpu.max": "50000 0"}, None),
        ({"cpu.max": "0 100000"}, None),
        ({"cpu.max": "half"}, None),
        ({"cpu.max": "1 2 3"}, None),
        ({"cpu.max": "x y"}, None),
        ({"cpu.max": ""}, None),
        ({}, None),
    ],
)
def test_cpu_quota(tmp_path, files, quota):
    assert cpu_quota(tree(tmp_path, files)) == quota


def test_cgroup_root_is_a_directory_of_garbage_files(tmp_path):
    # A directory where a file is expected reads as unknown too.
    (tmp_path / "memory.max").mkdir()
    (tmp_path / "cpu.max").mkdir()
    assert memory_limit(str(tmp_path)) is None
    assert cpu_quota(str(tmp_path)) is None


@pytest.mark.parametrize(
    "files, cpus, workers",
    [
        ({"cpu.max": "50000 100000"}, 8, 1),
        ({"cpu.max": "200000 100000"}, 8, 2),
        ({"cpu.max": "150000 100000"}, 8, 2),
        ({"cpu.max": "max 100000"}, 8, 8),
        ({"cpu.max": "1600000 100000"}, 4, 4),  # quota above the CPUs there are
        ({"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}, 8, 3),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 6, 6),
        ({"cpu.max": "garbage"}, 3, 3),
        ({}, 2, 2),
        ({}, None, None),  # unknown CPU count: whatever this machine has, at least 1
    ],
)
def test_worker_count_from_cgroup(tmp_path, files, cpus, workers):
    count = worker_count(tree(tmp_path, files), {}, cpus)
    if workers is None:
        assert count >= 1
    else:
        assert count == workers


@pytest.mark.parametrize("value, workers", [("4", 4), (" 12 ", 12), ("1", 1)])
def test_web_concurrency_overrides_cgroup(tmp_path, value, workers):
    root = tree(tmp_path, {"cpu.max": "50000 100000"})
    assert worker_count(root, {"WEB_CONCURRENCY": value}, 8) == workers


@pytest.mark.parametrize("value", ["0", "-2", "two", "", "2.5", "²"])
def test_web_concurrency_must_be_positive_whole_number(tmp_path, value):
    with pytest.raises(ValueError, match=r"WEB_CONCURRENCY=.* is not a positive whole number"):
        worker_count(str(tmp_path), {"WEB_CONCURRENCY": value}, 8)
