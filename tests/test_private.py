"""Nothing private is reachable by strangers: the metrics path (issue 25, item 6).

Through a real nginx running the shipped site, no spelling of the metrics path is served to a
client; straight to the worker, the path is matched as received, a request a proxy relayed is not
let in as loopback, and a trusted proxy (``--forwarded-allow-ips``) is no reason to answer.
"""

from __future__ import annotations

import http.client

import pytest
from rig import Nginx
from test_metrics import scrape

METRICS = {"HARDENED_METRICS_PATH": "/metrics"}
OUTSIDE = "192.0.2.2"  # this host's non-loopback address in the test container (test_metrics)


def fetch(
    port: int, path: str, host: str = "127.0.0.1", headers: dict | None = None, source: str = ""
) -> tuple[int, str]:
    conn = http.client.HTTPConnection(
        host, port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


SPELLINGS = [
    "/metrics",
    "/metrics?format=json",
    "/%6detrics",
    "/%6Detrics?format=json",
    "//metrics",
    "/./metrics",
    "/x/../metrics",
    "/%2Fmetrics",
]


@pytest.fixture
def behind_nginx(master, tmp_path):
    m = master(env=METRICS)
    proxy = Nginx(tmp_path, m.port).start()
    yield m, proxy
    proxy.stop()


@pytest.mark.parametrize("path", SPELLINGS)
def test_no_spelling_of_the_metrics_path_is_served_through_the_shipped_nginx(behind_nginx, path):
    m, proxy = behind_nginx
    status, body = fetch(proxy.port, path)
    assert "hardened_worker_" not in body and '"workers"' not in body, (status, body[:200])
    assert status == 404 and "nginx" in body, (status, body[:200])  # nginx's own, not passed on
    assert fetch(proxy.port, "/")[0] == 200  # the site serves the app
    assert scrape(m.port)[0] == 200  # and the worker does answer its metrics on loopback


def test_the_path_is_matched_as_received(master):
    m = master(env=METRICS)
    assert scrape(m.port)[0] == 200
    status, body = fetch(m.port, "/%6detrics")
    assert status == 404 and "hardened_worker_" not in body  # the app's answer, not the metrics


def test_a_request_relayed_by_a_local_proxy_is_not_loopback(master):
    m = master(env=METRICS)
    for header in (
        {"X-Forwarded-For": "203.0.113.7"},
        {"Forwarded": "for=203.0.113.7"},
        {"X-Real-IP": "203.0.113.7"},
    ):
        status, body = fetch(m.port, "/metrics", headers=header)
        assert status == 403 and "hardened_worker_" not in body, header


def test_a_trusted_proxy_is_no_reason_to_answer(master):
    from rig import free_port

    port = free_port()
    master(env=METRICS, args=["-b", f"{OUTSIDE}:{port}", "--forwarded-allow-ips", OUTSIDE])
    status, body = fetch(port, "/metrics", host=OUTSIDE, source=OUTSIDE)
    assert status == 403 and "hardened_worker_" not in body
    assert fetch(port, "/", host=OUTSIDE, source=OUTSIDE)[0] == 200


def test_metrics_allow_still_admits_its_peers_through_a_proxy(master):
    from rig import free_port

    port = free_port()
    master(env={**METRICS, "HARDENED_METRICS_ALLOW": OUTSIDE}, args=["-b", f"{OUTSIDE}:{port}"])
    status, body = fetch(
        port, "/metrics", host=OUTSIDE, source=OUTSIDE, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert status == 200 and "hardened_worker_workers" in body
