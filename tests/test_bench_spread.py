"""The spread bench's pure parts (``bench/spread.py``): where wrk and the pool run, and how wrk's
Lua output becomes requests per worker. No measurement runs here."""

from __future__ import annotations

import pytest

from bench import spread


@pytest.mark.parametrize("cpus, expected", [
    ({0}, None),                              # one CPU: nothing to separate, both share it
    ({0, 1}, ({0}, {1})),
    ({3, 1}, ({1}, {3})),                      # the CPUs this process may use, not 0..n-1
    ({0, 1, 2}, ({0}, {1, 2})),                # an odd CPU goes to the pool
    ({0, 1, 2, 3}, ({0, 1}, {2, 3})),
])
def test_placement_splits_client_from_pool(cpus, expected):
    assert spread.placement(cpus) == expected


def test_placement_never_shares_a_cpu():
    for n in range(2, 17):
        client, pool = spread.placement(set(range(n)))
        assert client and pool and not client & pool and client | pool == set(range(n))


def test_per_pid_counts_by_wrk_thread():
    raw = "Running 6s test\nserved-by 1 101 40\nserved-by 2 101 60\nserved-by 2 102 7\nserved-by 1 103 5\n"
    assert spread.per_pid(raw) == {101: [40, 60], 102: [0, 7], 103: [5]}
