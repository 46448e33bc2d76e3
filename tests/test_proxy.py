"""Through real proxies: the client the app sees, and nothing lost on reloads behind nginx."""

from __future__ import annotations

import http.client
import json
import signal
import time

import pytest
from rig import POST_LUA, Nginx, get, under_load

CLIENT_HOST = "127.0.0.5"  # any 127/8 address is this host; this one is not in the trust list


def seen_by_app(port: int, headers: dict, source: str = CLIENT_HOST) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/client", headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "env,headers,client,scheme",
    [
        (
            {},
            {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
            "203.0.113.7",
            "https",
        ),
        ({}, {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}, "203.0.113.7", "http"),  # rightmost wins
        ({}, {"X-Forwarded-For": "not-an-ip"}, "127.0.0.1", "http"),  # the peer stands
        ({}, {"X-Forwarded-For": "[2001:db8::1]:443"}, "2001:db8::1", "http"),
        ({}, {"X-Forwarded-Proto": "HTTPS"}, "127.0.0.1", "https"),
        (
            {},
            {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'},
            "127.0.0.1",
            "http",
        ),  # family off
        (
            {"HARDENED_FORWARDED": "forwarded"},
            {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'},
            "2001:db8::7",
            "https",
        ),
        (
            {"HARDENED_FORWARDED": "forwarded"},
            {"X-Forwarded-For": "203.0.113.7"},
            "127.0.0.1",
            "http",
        ),
        ({"HARDENED_FORWARDED": "off"}, {"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1", "http"),
    ],
)
def test_client_and_scheme_from_a_trusted_peer(master, env, headers, client, scheme):
    m = master(workers=1, env=env)
    seen = seen_by_app(m.port, headers, source="127.0.0.1")
    assert seen["client"][0] == client and seen["scheme"] == scheme


def test_untrusted_peer_cannot_choose_its_address(master):
    m = master(workers=1, args=["--forwarded-allow-ips", "127.0.0.1"])
    seen = seen_by_app(m.port, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert seen["client"][0] == CLIENT_HOST and seen["scheme"] == "http"


def test_opt_in_host_and_prefix(master):
    m = master(workers=1, env={"HARDENED_FORWARDED_HOST": "1", "HARDENED_FORWARDED_PREFIX": "1"})
    seen = seen_by_app(
        m.port,
        {"X-Forwarded-Host": "shop.example.com", "X-Forwarded-Prefix": "/shop"},
        source="127.0.0.1",
    )
    assert seen["host"] == "shop.example.com"
    assert seen["root_path"] == "/shop" and seen["path"] == "/shop/client"


def test_invalid_trust_list_entry_is_a_startup_error(tmp_path):
    from test_config import run_gunicorn

    done = run_gunicorn({"FORWARDED_ALLOW_IPS": "127.0.0.1,10.0.0.1/33"}, tmp_path)
    assert done.returncode != 0
    assert "Booting worker" not in done.stderr


def test_through_nginx_the_app_sees_the_address_nginx_saw_never_the_spoofed_one(master, tmp_path):
    # nginx connects from 127.0.0.1 (trusted); the client from 127.0.0.5 (not trusted) and writes
    # its own X-Forwarded-For, to which nginx appends the address it saw.
    m = master(workers=1, args=["--forwarded-allow-ips", "127.0.0.1"])
    nginx = Nginx(tmp_path, m.port).start()
    try:
        seen = seen_by_app(nginx.port, {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    finally:
        nginx.stop()
    assert seen["client"][0] == CLIENT_HOST
    assert seen["scheme"] == "http"  # nginx sets X-Forwarded-Proto to its own $scheme


def _post_script(tmp_path):
    script = tmp_path / "post.lua"
    script.write_text(POST_LUA)
    return script


def test_hup_reloads_behind_nginx_keepalive_lose_nothing(master, tmp_path):
    m = master(env={"TESTAPP_STARTUP_DELAY": "1"})
    nginx = Nginx(tmp_path, m.port).start()

    def reloads():
        for _ in range(3):
            time.sleep(3)
            m.signal(signal.SIGHUP)

    try:
        outcomes, load = under_load(nginx.port, reloads, 12, _post_script(tmp_path))
    finally:
        nginx.stop()
    assert len(outcomes) > 200 and outcomes.failures == []
    assert load.requests > 1000 and load.non_2xx == 0 and load.socket_errors == 0
    assert nginx.upstream_failures() == []
    assert m.log().count("reason reload") >= 4


def test_ttou_ttin_and_max_requests_behind_nginx_lose_nothing(master, tmp_path):
    m = master(workers=3, args=["--max-requests", "2000", "--max-requests-jitter", "200"])
    nginx = Nginx(tmp_path, m.port).start()

    def cycle():
        end = time.monotonic() + 7
        while time.monotonic() < end:
            m.signal(signal.SIGTTOU)
            time.sleep(0.75)
            m.signal(signal.SIGTTIN)
            time.sleep(0.75)

    try:
        outcomes, load = under_load(nginx.port, cycle, 8, _post_script(tmp_path))
    finally:
        nginx.stop()
    assert len(outcomes) > 200 and outcomes.failures == []
    assert load.requests > 1000 and load.non_2xx == 0 and load.socket_errors == 0
    assert nginx.upstream_failures() == []
    log = m.log()
    assert log.count("reason shutdown") >= 2 and log.count("reason max-requests") >= 2


def test_health_path_through_nginx(master, tmp_path):
    m = master(workers=1, env={"HARDENED_HEALTH_PATH": "/healthz"})
    nginx = Nginx(tmp_path, m.port).start()
    try:
        status, body = get(nginx.port, "/healthz")
    finally:
        nginx.stop()
    assert status == 200 and json.loads(body)["state"] == "ready"
