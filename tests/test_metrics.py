"""Pool metrics (hardened_worker/_metrics.py, the table's counters in _readiness.py).

The renderer is pure: table-driven from hand-built snapshots, parsed back with prometheus_client's
parser. Then the table itself (counters survive a worker's exit, folds are seen exactly once), who
may read the endpoint, and real masters scraped from both workers, across a HUP, a rejected reload
and a memory recycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from rig import APPS, ROOT, get, wait_for

from hardened_worker import _deadline as deadline
from hardened_worker import _metrics as metrics
from hardened_worker import _readiness as readiness
from hardened_worker._deadline import RequestGuard
from hardened_worker._drain import DrainSignal
from hardened_worker._lifecycle import Phase
from hardened_worker._readiness import (
    C_BUCKET0,
    C_DURATION_US,
    C_INFLIGHT,
    C_MEMORY,
    C_PHASE,
    C_REQUESTS,
    C_STALLS,
    C_STATUS0,
    COUNTERS,
    R_ACCEPTED,
    R_EXITS,
    R_REJECTED,
    R_TOTALS,
    RETIRED,
    Peer,
    Reloads,
    SlotView,
    Snapshot,
    State,
)

NOW = 1_000_000.0


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} of a Prometheus text answer."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def slot(
    pid, phase=Phase.READY, state=State.READY, alive=True, reason=0, generation=1, age=1, **counts
):
    row = [0] * COUNTERS
    row[C_PHASE] = metrics.phase_code(phase)
    for name, value in counts.items():
        row[
            C_BUCKET0 + int(name[1:])
            if name[0] == "b"
            # b0 .. b14: buckets
            else C_STATUS0 + int(name[0]) - 1
            if name.endswith("xx")
            # 2xx: a status class
            else {
                "requests": C_REQUESTS,
                "inflight": C_INFLIGHT,
                "duration_us": C_DURATION_US,
                "stalls": C_STALLS,
                "memory": C_MEMORY,
            }[name]
        ] = value
    return SlotView(Peer(pid, state, age, generation, NOW - 10, NOW - 1, reason), alive, tuple(row))


def retired(**fields):
    row = [0] * RETIRED
    for name, value in fields.items():
        if name.endswith("xx"):
            row[R_TOTALS + C_STATUS0 + int(name[1]) - 1] = (
                value  # x5xx: the 5xx of workers that left
            )
        elif name.startswith("exit_"):
            row[R_EXITS + int(name[5:])] = value
        else:
            row[
                {"accepted": R_ACCEPTED, "rejected": R_REJECTED, "requests": R_TOTALS + C_REQUESTS}[
                    name
                ]
            ] = value
    return tuple(row)


def reason_code(reason: str) -> int:
    from hardened_worker._diagnostics import EXIT_REASONS

    return EXIT_REASONS.index(reason) + 1


def L(**labels):
    return frozenset(labels.items())


CASES = [
    (
        "an empty pool",
        [],
        retired(),
        {
            ("hardened_worker_workers", L(state="ready")): 0,
            ("hardened_worker_requests_total", L()): 0,
            ("hardened_worker_request_duration_seconds_count", L()): 0,
            ("hardened_worker_reloads_total", L(result="accepted")): 0,
        },
    ),
    (
        "two ready workers: pool and per-pid series, under distinct names",
        [
            slot(11, requests=5, inflight=1, memory=1000, b0=5, duration_us=20_000),
            slot(12, age=2, requests=3, memory=2000, b5=2, b14=1, duration_us=11_000_000),
        ],
        retired(),
        {
            ("hardened_worker_workers", L(state="ready")): 2,
            ("hardened_worker_requests_total", L()): 8,
            ("hardened_worker_requests_total", L(pid="11")): None,
            ("hardened_worker_worker_requests_total", L(pid="11")): 5,
            ("hardened_worker_worker_requests_total", L(pid="12")): 3,
            ("hardened_worker_inflight_requests", L()): 1,
            ("hardened_worker_worker_inflight_requests", L(pid="12")): 0,
            ("hardened_worker_worker_memory_bytes", L(pid="12")): 2000,
            ("hardened_worker_request_duration_seconds_bucket", L(le="0.005")): 5,
            ("hardened_worker_request_duration_seconds_bucket", L(le="0.1")): 7,
            ("hardened_worker_request_duration_seconds_bucket", L(le="+Inf")): 8,
            ("hardened_worker_request_duration_seconds_sum", L()): 11.02,
            ("hardened_worker_request_duration_seconds_count", L()): 8,
        },
    ),
    (
        "phases map onto the four states",
        [
            slot(1, Phase.BOOTING, State.BOOTING),
            slot(2, Phase.WAITING, State.WAITING),
            slot(3, Phase.SURGING, State.SURGING),
            slot(4, Phase.DEFERRING),
            slot(5, Phase.STOPPING, State.STOPPING),
            slot(6, Phase.DRAINING, State.STOPPING),
            slot(7, Phase.SURGING, State.RETIRING),
        ],
        retired(),
        {
            ("hardened_worker_workers", L(state="booting")): 2,
            ("hardened_worker_workers", L(state="ready")): 1,
            ("hardened_worker_workers", L(state="stopping")): 2,
            ("hardened_worker_workers", L(state="draining")): 2,
        },
    ),
    (
        "a gone worker: counted in totals and exits, not as a worker",
        [
            slot(20, requests=2),
            slot(21, state=State.FREE, alive=False, reason=reason_code("memory"), requests=40),
        ],
        retired(
            requests=100,
            exit_0=1,
            **{f"exit_{reason_code('max-requests')}": 2, f"exit_{reason_code('crash')}": 3},
        ),
        {
            ("hardened_worker_workers", L(state="ready")): 1,
            ("hardened_worker_requests_total", L()): 142,
            ("hardened_worker_worker_exits_total", L(reason="memory")): 1,
            ("hardened_worker_worker_exits_total", L(reason="max-requests")): 2,
            ("hardened_worker_worker_exits_total", L(reason="crash")): 4,  # none recorded: SIGKILL
            ("hardened_worker_recycles_total", L(cause="memory")): 1,
            ("hardened_worker_recycles_total", L(cause="max-requests")): 2,
            ("hardened_worker_recycles_total", L(cause="max-lifetime")): 0,
        },
    ),
    (
        "a leaving worker (FREE, still alive) is no longer in the pool",
        [slot(30, state=State.FREE, requests=9)],
        retired(),
        {
            ("hardened_worker_workers", L(state="ready")): 0,
            ("hardened_worker_requests_total", L()): 9,
        },
    ),
    (
        "status classes: live rows plus workers that left",
        [
            slot(50, requests=10, **{"2xx": 6, "4xx": 3, "5xx": 1}),
            slot(51, requests=2, **{"3xx": 2}),
        ],
        retired(requests=5, x2xx=4, x5xx=1),
        {
            ("hardened_worker_requests_total", L()): 17,
            ("hardened_worker_responses_total", L(code="1xx")): 0,
            ("hardened_worker_responses_total", L(code="2xx")): 10,
            ("hardened_worker_responses_total", L(code="3xx")): 2,
            ("hardened_worker_responses_total", L(code="4xx")): 3,
            ("hardened_worker_responses_total", L(code="5xx")): 2,
        },
    ),
    (
        "reloads and stalls",
        [slot(40, stalls=3)],
        retired(accepted=2, rejected=1),
        {
            ("hardened_worker_reloads_total", L(result="accepted")): 2,
            ("hardened_worker_reloads_total", L(result="rejected")): 1,
            ("hardened_worker_event_loop_stalls_total", L()): 3,
        },
    ),
]


@pytest.mark.parametrize("name, slots, retired_row, expected", CASES, ids=[c[0] for c in CASES])
def test_render(name, slots, retired_row, expected):
    data = metrics.pool(Snapshot(tuple(slots), retired_row, Reloads(3)), NOW, backlog=4)
    found = samples(metrics.render(data))
    for key, value in expected.items():
        assert found.get(key) == (None if value is None else pytest.approx(value)), key
    assert found[("hardened_worker_listen_backlog", L())] == 4
    assert found[("hardened_worker_generation", L())] == 3


def test_the_request_layer_tallies_each_request_to_its_last_body_byte(monkeypatch):
    clock = [1.0]
    monkeypatch.setattr(deadline, "_monotonic", lambda: clock[0])
    tally = metrics.Tally()
    seen = []

    async def app(scope, receive, send):
        seen.append(tally.in_flight)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        clock[0] += 0.5
        await send({"type": "http.response.body", "body": b"ok"})
        clock[0] += 8.0  # after the response (a background task): not the request's time

    async def failing(scope, receive, send):
        clock[0] += 0.25
        raise RuntimeError("no response")

    async def main():
        async def send(message):
            pass

        for handler in (app, app, failing):
            guard = RequestGuard(handler, DrainSignal(), None, lambda line: None, tally=tally)
            with contextlib.suppress(RuntimeError):
                await guard({"type": "http", "method": "GET", "path": "/"}, None, send)

    asyncio.run(main())
    assert seen == [1, 1] and tally.in_flight == 0
    row = memoryview(bytearray(COUNTERS * 8)).cast("q")
    tally.publish(row)
    assert (row[C_REQUESTS], row[C_INFLIGHT], row[C_DURATION_US]) == (3, 0, 1_250_000)
    buckets = [row[C_BUCKET0 + i] for i in range(len(readiness.BUCKETS) + 1)]
    assert (
        buckets[readiness.BUCKETS.index(0.5)] == 2 and buckets[readiness.BUCKETS.index(0.25)] == 1
    )
    assert sum(buckets) == 3
    # Status classes: two 200s; the app that raised sent none, the server answers 500: 5xx.
    assert [row[C_STATUS0 + i] for i in range(5)] == [0, 2, 0, 0, 1]


@given(st.lists(st.lists(st.integers(0, 1200)), max_size=4))
def test_every_request_gets_one_status_class(batches):
    """Whatever the statuses (0: none sent; out of range), the classes add up to the requests."""
    tally = metrics.Tally()
    row = memoryview(bytearray(COUNTERS * 8)).cast("q")
    for batch in batches:
        tally.durations.extend([0.001] * len(batch))
        tally.statuses.extend(batch)
        tally.publish(row)
    everything = [status for batch in batches for status in batch]
    codes = [row[C_STATUS0 + i] for i in range(len(metrics.CODES))]
    assert sum(codes) == row[C_REQUESTS] == len(everything)
    assert codes[1] == sum(200 <= status < 300 for status in everything)
    assert codes[4] == sum(not 100 <= status < 500 for status in everything)


def test_the_naming_rule_no_name_at_two_levels():
    """Rendered families are the declared ones; a pid label only on ``worker_*`` families, and
    the pool's families sum to the pool: ``sum()`` over one name never counts twice."""
    data = metrics.pool(
        Snapshot(
            (slot(11, requests=5, **{"2xx": 5}), slot(12, requests=3, **{"5xx": 3})),
            retired(requests=2, x2xx=2),
            Reloads(1),
        ),
        NOW,
    )
    text = metrics.render(data)
    families = list(text_string_to_metric_families(text))
    declared = {f.name: f for f in metrics.FAMILIES}
    assert [f.name for f in families] == [
        metrics.PREFIX + f.name.removesuffix("_total") for f in metrics.FAMILIES
    ]
    for family in families:
        short = family.name.removeprefix(metrics.PREFIX)
        f = declared.get(short) or declared[short + "_total"]
        assert family.type == f.kind and family.documentation == f.help
        labels = {k for s in family.samples for k in s.labels}
        assert not family.samples or labels == set(f.labels), family.name
        if "pid" in labels:  # a live worker's series: worker_*, and its pool family has no pid
            assert short.startswith("worker_"), short
            pool_family = declared.get(short.removeprefix("worker_") + "_total") or declared.get(
                short.removeprefix("worker_")
            )
            assert pool_family is None or "pid" not in pool_family.labels
    found = samples(text)
    assert (
        sum(value(found, "responses_total", code=c) for c in metrics.CODES)
        == value(found, "requests_total")
        == 10
    )
    assert sum(value(found, "requests_total", pid=p) for p in ("11", "12")) == 8  # live only


def test_the_docs_reference_is_the_code():
    """docs/operations.md holds metrics.reference() between its markers, as generated."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    begin, end = "<!-- metrics reference: begin -->\n", "<!-- metrics reference: end -->"
    assert begin in doc and end in doc, "the markers are gone from docs/operations.md"
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == metrics.reference(), (
        "regenerate: python -c 'from hardened_worker import metrics; print(metrics.reference())'"
    )


def test_memory_is_published_in_the_limits_measure():
    """USS (private pages) as HARDENED_MEMORY_MEASURE's default says, not the RSS: in a forked
    child, which shares the parent's pages, the two differ by those pages."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(
            write, json.dumps([metrics.memory_bytes(m) for m in ("uss", "pss", "rss")]).encode()
        )
        os._exit(0)
    os.close(write)
    uss, pss, rss = json.loads(os.read(read, 4096))
    os.close(read)
    os.waitpid(pid, 0)
    assert 0 < uss < pss < rss


def test_status_classes_are_folded_with_a_departed_worker():
    table = readiness.Table()
    pid = os.fork()
    if pid == 0:
        table.claim(1, 1)
        row = table.counters()
        row[C_REQUESTS] += 4
        row[C_STATUS0 + 1] += 3  # 2xx
        row[C_STATUS0 + 4] += 1  # 5xx
        table.set_state(State.FREE)
        os._exit(0)
    os.waitpid(pid, 0)
    table.claim(1, 1)  # reuses the slot: folds
    data = metrics.pool(table.snapshot(), time.time())
    assert data["requests"] == 4 and data["codes"] == {
        "1xx": 0,
        "2xx": 3,
        "3xx": 0,
        "4xx": 0,
        "5xx": 1,
    }


@given(
    st.lists(
        st.lists(st.one_of(st.sampled_from(readiness.BUCKETS), st.floats(0, 20, allow_nan=False))),
        max_size=4,
    )
)
def test_publishing_in_batches_counts_as_one_request_at_a_time(batches):
    tally = metrics.Tally()
    row = memoryview(bytearray(COUNTERS * 8)).cast("q")
    expected = [0] * (len(readiness.BUCKETS) + 1)
    for batch in batches:
        tally.durations.extend(batch)
        tally.publish(row)
        for seconds in batch:  # Prometheus' le: a duration equal to a bound is in its bucket
            expected[
                next(
                    (i for i, bound in enumerate(readiness.BUCKETS) if seconds <= bound),
                    len(readiness.BUCKETS),
                )
            ] += 1
    everything = [seconds for batch in batches for seconds in batch]
    assert [row[C_BUCKET0 + i] for i in range(len(expected))] == expected
    assert row[C_REQUESTS] == len(everything) and not tally.durations
    assert abs(row[C_DURATION_US] - sum(everything) * 1e6) <= 1


def test_table_folds_a_departed_workers_counts_exactly_once():
    table = readiness.Table()
    pid = os.fork()
    if pid == 0:  # a worker: counts, records its reason, leaves
        table.claim(1, 1)
        row = table.counters()
        row[C_REQUESTS] += 7
        row[C_BUCKET0] += 7
        table.set_reason(3)
        table.set_state(State.FREE)
        os._exit(0)
    os.waitpid(pid, 0)
    before = metrics.pool(table.snapshot(), time.time())
    assert before["requests"] == 7 and before["workers"] == []
    assert before["exits"] == {metrics._reason(4): 1}
    table.claim(1, 1)  # reuses the dead worker's slot: folds its counts into the retired row
    after = metrics.pool(table.snapshot(), time.time())
    assert after["requests"] == 7 and after["exits"] == before["exits"]
    assert after["duration"]["count"] == 7
    assert [e["pid"] for e in after["last_exits"]] == [pid]


def test_an_accepted_reload_is_counted_once_per_generation():
    table = readiness.Table()
    assert not table.count_accepted(1)  # the first generation is no reload
    assert table.count_accepted(2)
    assert not table.count_accepted(2)
    assert table.reject(3)
    data = metrics.pool(table.snapshot(), time.time())
    assert data["reloads"] == {"accepted": 1, "rejected": 1}


@pytest.mark.parametrize(
    "client, server, allow_ips, allow, expected",
    [
        (("127.0.0.1", 1), ("127.0.0.1", 80), [], None, True),
        (("::1", 1), ("::1", 80), [], None, True),
        (None, ("/run/app.sock", None), [], None, True),  # a UNIX socket peer is local
        (("10.1.2.3", 1), ("10.0.0.1", 80), [], None, False),
        (
            ("10.1.2.3", 1),
            ("10.0.0.1", 80),
            ["10.1.2.3"],
            None,
            False,
        ),  # a trusted proxy: no reason
        (("10.1.2.3", 1), ("10.0.0.1", 80), [], "10.0.0.0/8", True),
        (("192.0.2.9", 1), ("10.0.0.1", 80), [], "10.0.0.0/8", False),
        (("192.0.2.9", 1), ("10.0.0.1", 80), [], "*", True),
    ],
)
def test_access(client, server, allow_ips, allow, expected):
    access = metrics.Access(allow_ips, allow)
    assert access.allows({"client": client, "server": server}) is expected


@pytest.mark.parametrize(
    "client, allow, expected",
    [
        (("127.0.0.1", 1), None, False),  # a proxy on this host relays a stranger
        (("10.1.2.3", 1), "10.0.0.0/8", True),  # an allowed peer, whatever it relays
    ],
)
def test_access_of_a_relayed_request(client, allow, expected):
    scope = {
        "client": client,
        "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"x"), (b"x-forwarded-for", b"203.0.113.7")],
    }
    assert metrics.Access(None, allow).allows(scope) is expected


# --- real masters -------------------------------------------------------------------------------


def scrape(port: int, host: str = "127.0.0.1", path: str = "/metrics") -> tuple[int, int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return (
            response.status,
            int(response.getheader("x-hardened-worker-pid") or 0),
            response.read().decode(),
        )
    finally:
        conn.close()


def scrape_from_each(port: int, pids: list[int]) -> dict[int, dict]:
    """A scrape answered by each of ``pids`` (fresh connections land on either worker)."""
    answers: dict[int, dict] = {}

    def both() -> bool:
        status, pid, text = scrape(port)
        assert status == 200
        if pid in pids:
            answers[pid] = samples(text)
        return set(answers) == set(pids)

    wait_for(both, 30, interval=0.01)
    return answers


def settled(port: int, pids: list[int]) -> dict[int, dict]:
    """A scrape answered by each of ``pids`` once they agree on every worker's request count.
    A worker publishes its counts on its tick (every 100 ms) and before it answers: a sibling's
    last requests show within one tick, so agreement means none is unpublished (no request is
    in progress: a scrape is not counted)."""

    def agreed() -> dict[int, dict] | None:
        answers = scrape_from_each(port, pids)
        counts = {
            tuple(value(found, "requests_total", pid=str(p)) for p in pids)
            for found in answers.values()
        }
        return answers if len(counts) == 1 else None

    return wait_for(agreed, 10, interval=0.01)


def value(found: dict, name: str, **labels) -> float:
    """A sample's value (0 when absent). With a ``pid`` label, of the per-worker family: the
    naming rule (metrics.FAMILIES) puts every pid series under ``worker_<name>``."""
    if "pid" in labels and not name.startswith("worker_"):
        name = "worker_" + name
    return found.get(("hardened_worker_" + name, L(**labels)), 0)


def test_two_workers_either_one_describes_the_pool_across_reloads(master, tmp_path):
    env_file = tmp_path / "env.json"
    env_file.write_text("{}")
    m = master(
        args=["-c", str(APPS / "reload_conf.py")],
        env={"RELOAD_ENV_FILE": str(env_file), "HARDENED_METRICS_PATH": "/metrics"},
    )
    old = m.wait_workers(2)
    wait_for(lambda: value(samples(scrape(m.port)[2]), "workers", state="ready") == 2, 15)
    for _ in range(50):
        assert get(m.port, "/")[0] == 200
    for pid, found in settled(m.port, old).items():
        assert value(found, "workers", state="ready") == 2
        assert value(found, "requests_total") >= 50
        assert sum(value(found, "requests_total", pid=str(p)) for p in old) == value(
            found, "requests_total"
        )
        assert value(found, "request_duration_seconds_count") == value(found, "requests_total")
        assert value(found, "responses_total", code="2xx") == value(found, "requests_total")
        assert sum(value(found, "responses_total", code=c) for c in metrics.CODES) == value(
            found, "requests_total"
        )
        assert all(value(found, "worker_memory_bytes", pid=str(p)) > 0 for p in old)
        assert all(("hardened_worker_worker_open_connections", L(pid=str(p))) in found for p in old)
        assert value(found, "open_connections", pid=str(pid)) >= 1  # the scrape's own, at least
        assert value(found, "reloads_total", result="accepted") == 0

    m.signal(signal.SIGHUP)  # the same code: accepted
    new = wait_for(lambda: (w := m.workers()) and not set(w) & set(old) and len(w) == 2 and w, 30)
    # An exit counts once the master has reaped the process (a zombie's pid still exists).
    found = samples(
        wait_for(
            lambda: (
                (t := scrape(m.port)[2])
                and value(samples(t), "workers", state="ready") == 2
                and value(samples(t), "worker_exits_total", reason="reload") == 2
                and t
            ),
            15,
        )
    )
    assert value(found, "reloads_total", result="accepted") == 1
    assert value(found, "requests_total") >= 50  # the old generation's requests stay counted
    assert value(found, "generation") == 2

    env_file.write_text(json.dumps({"TESTAPP_STARTUP_FAIL": "1"}))
    m.signal(signal.SIGHUP)  # a bad deploy: rejected, the generation-2 workers keep serving
    m.wait_log("reload rejected", timeout=20)
    found = samples(
        wait_for(
            lambda: (
                (t := scrape(m.port)[2])
                and value(samples(t), "reloads_total", result="rejected") == 1
                and t
            ),
            15,
        )
    )
    assert value(found, "reloads_total", result="accepted") == 1
    assert all(("hardened_worker_worker_requests_total", L(pid=str(p))) in found for p in new)
    assert all(pid in m.workers() for pid in new)


def test_a_recycled_workers_requests_stay_counted(master):
    m = master(
        env={
            "HARDENED_METRICS_PATH": "/metrics",
            "HARDENED_MEMORY_LIMIT": "64MiB",
            "HARDENED_MEMORY_HARD_LIMIT": "1GiB",
        },
        workers=1,
    )
    [first] = m.wait_workers(1)
    for _ in range(20):
        assert get(m.port, "/")[0] == 200
    counted = value(samples(scrape(m.port)[2]), "requests_total", pid=str(first))
    assert counted >= 20
    for _ in range(8):  # 64 MiB leaked: past the soft limit from any baseline
        assert get(m.port, "/leak?kib=8192")[0] == 200
    m.wait_log(rf"worker {first} exiting: reason memory", timeout=30)
    found = samples(
        wait_for(
            lambda: (
                (t := scrape(m.port)[2])
                and value(samples(t), "worker_exits_total", reason="memory") == 1
                and t
            ),
            15,
        )
    )
    assert value(found, "requests_total", pid=str(first)) == 0  # no longer a worker
    assert value(found, "requests_total") >= counted + 8
    assert value(found, "recycles_total", cause="memory") == 1
    assert value(found, "worker_exits_total", reason="memory") == 1
    assert value(found, "workers", state="ready") == 1


def test_a_peer_outside_the_allowed_set_gets_403(master):
    outside = "192.0.2.2"  # this host's non-loopback address in the test container
    try:
        import socket

        socket.create_connection((outside, 9), timeout=0.2).close()
    except ConnectionRefusedError:
        pass  # reachable (refused is an answer)
    except OSError:
        pytest.fail(f"{outside} is not an address of this host; adjust the test")
    from rig import free_port

    port = free_port()
    m = master(env={"HARDENED_METRICS_PATH": "/metrics"}, args=["-b", f"{outside}:{port}"])
    status, _, body = scrape(port, host=outside)
    assert status == 403 and "hardened_worker_" not in body
    assert get(m.port, "/")[0] == 200
    assert scrape(m.port)[0] == 200  # loopback still may


def test_metrics_allow_widens_access(master):
    from rig import free_port

    port = free_port()
    master(
        env={"HARDENED_METRICS_PATH": "/metrics", "HARDENED_METRICS_ALLOW": "192.0.2.0/24"},
        args=["-b", f"192.0.2.2:{port}"],
    )
    status, _, body = scrape(port, host="192.0.2.2")
    assert status == 200 and "hardened_worker_workers" in body


def test_metrics_port_serves_the_metrics_there_and_nothing_else(master):
    from rig import free_port

    port = free_port()
    m = master(
        env={"HARDENED_METRICS_PATH": "/metrics", "HARDENED_METRICS_PORT": str(port)},
        args=["-b", f"127.0.0.1:{port}"],
    )
    status, _, body = scrape(port)
    assert status == 200 and "hardened_worker_workers" in body
    assert get(port, "/")[0] == 404  # not the app
    assert get(m.port, "/metrics") == (404, b"not found")  # the app's own 404 on the main bind
    assert get(m.port, "/")[0] == 200
