"""hardened_worker._cgroup against fake cgroup trees in tmp_path."""

from __future__ import annotations

import pytest

from hardened_worker import config
from hardened_worker._cgroup import (
    Location,
    cpu_quota,
    find,
    memory_current,
    memory_limit,
    own,
    worker_count,
)

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
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            3.0,
        ),
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


# --- which cgroup: this process's own, from /proc/self/cgroup and /proc/self/mountinfo -----------

V2_MOUNT = (
    "31 23 0:26 / {mnt} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
)
V1_MOUNTS = (
    "25 23 0:22 / {mnt} ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:23 / {mnt}/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw\n"
    "30 25 0:27 / {mnt}/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory\n"
    "31 25 0:28 / {mnt}/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup "
    "rw,cpu,cpuacct\n"
)
SERVICE = "/system.slice/myapp.service"
V1_CGROUP = (
    f"12:memory:{SERVICE}\n4:cpu,cpuacct:{SERVICE}\n1:name=systemd:{SERVICE}\n0::{SERVICE}\n"
)


def test_v2_service_on_a_vm_gets_its_own_quota_and_memory_max(tmp_path):
    # CPUQuota=200%, MemoryMax=1G on a 32-CPU host: the limits are in the service's directory of
    # the host's cgroup mount, none at its root. 2 workers and the 1 GiB limit.
    mnt = tree(
        tmp_path,
        {
            f"{SERVICE[1:]}/cpu.max": "200000 100000\n",
            f"{SERVICE[1:]}/memory.max": "1073741824\n",
            f"{SERVICE[1:]}/memory.current": "4096\n",
        },
    )
    where = find(f"0::{SERVICE}\n", V2_MOUNT.format(mnt=mnt))
    assert where.unified == f"{mnt}{SERVICE}"
    assert worker_count(where, {}, 32) == 2
    assert (memory_limit(where), memory_current(where)) == (GiB, 4096)
    # The old default, the mount point itself, is the host's root cgroup: nothing there.
    assert (worker_count(mnt, {}, 32), memory_limit(mnt)) == (32, None)


def test_v1_service_reads_each_controller_in_its_own_hierarchy(tmp_path):
    mnt = tree(
        tmp_path,
        {
            f"memory{SERVICE}/memory.limit_in_bytes": "536870912\n",
            f"cpu,cpuacct{SERVICE}/cpu.cfs_quota_us": "300000\n",
            f"cpu,cpuacct{SERVICE}/cpu.cfs_period_us": "100000\n",
        },
    )
    where = find(V1_CGROUP, V1_MOUNTS.format(mnt=mnt))
    assert where == Location(
        f"{mnt}/unified{SERVICE}", f"{mnt}/memory{SERVICE}", (f"{mnt}/cpu,cpuacct{SERVICE}",)
    )
    assert (memory_limit(where), cpu_quota(where), worker_count(where, {}, 32)) == (
        GiB // 2,
        3.0,
        3,
    )


@pytest.mark.parametrize(
    "proc_cgroup, mountinfo, expected",
    [
        # a container with a cgroup namespace: its cgroup is the mount's root
        ("0::/\n", V2_MOUNT.format(mnt="/sys/fs/cgroup"), Location("/sys/fs/cgroup")),
        # Docker on cgroup v1 without a namespace: the container's cgroup is bind-mounted
        (
            "9:memory:/docker/abc\n",
            "40 30 0:33 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
            Location(memory="/sys/fs/cgroup/memory"),
        ),
        # the process's cgroup is outside what the mount shows: unknown, never another cgroup
        (
            "0::/elsewhere\n",
            "31 23 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            Location(),
        ),
        # the first mount that shows the cgroup wins
        (
            "0::/a/b\n",
            "1 0 0:1 /x /mnt/x rw - cgroup2 cgroup2 rw\n2 0 0:1 /a /mnt/a rw - cgroup2 cgroup2 rw\n",
            Location("/mnt/a/b"),
        ),
        # mountinfo escapes a space as \040
        (
            "0::/my app.service\n",
            "31 23 0:26 / /c\\040g rw - cgroup2 cgroup2 rw\n",
            Location("/c g/my app.service"),
        ),
        # no cgroup mounted at all, or a hierarchy missing from /proc/self/cgroup
        ("0::/\n", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", Location()),
        ("", V2_MOUNT.format(mnt="/sys/fs/cgroup"), Location()),
        # garbage in either file
        ("garbage\n0:x\n::\n0::relative\n", "x\n1 2 3\n- - -\n1 2 3 4 5 6 - cgroup2\n", Location()),
        ("", "", Location()),
    ],
)
def test_find_own_cgroup(proc_cgroup, mountinfo, expected):
    assert find(proc_cgroup, mountinfo) == expected


def test_unknown_location_reads_as_unknown():
    assert (memory_limit(Location()), memory_current(Location()), cpu_quota(Location())) == (
        None,
        None,
        None,
    )


def test_default_is_this_process_own_cgroup():
    # On this machine too: whatever it is, the default reads what own() locates, and never raises.
    assert own() == find(open("/proc/self/cgroup").read(), open("/proc/self/mountinfo").read())
    assert memory_limit() == memory_limit(own()) and cpu_quota() == cpu_quota(own())
    assert config.load({}).cgroup_root is None  # no HARDENED_CGROUP_ROOT: the worker reads own()
