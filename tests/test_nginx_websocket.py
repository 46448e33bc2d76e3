"""WebSockets through the shipped nginx site (gunicorn_conf_examples/vm/nginx-site.conf), run by a
real nginx in front of a real gunicorn: the upgrade passes, a draining worker's 1001 close frame
reaches the client, and plain requests keep their upstream keep-alive connection."""

from __future__ import annotations

import json
import signal

from rig import Nginx, get, websocket_close_codes

GOING_AWAY = 1001


def test_websockets_through_nginx_get_1001_on_reload_and_on_stop(master, tmp_path):
    m = master(workers=1)
    [old] = m.wait_workers(1)
    nginx = Nginx(tmp_path, m.port).start()
    try:
        # HUP: the old worker drains once its successor is ready; its sockets get 1001.
        assert (
            websocket_close_codes(nginx.port, lambda: m.signal(signal.SIGHUP)) == [GOING_AWAY] * 4
        )
        m.wait_log(rf"worker {old} exiting")
        # The successor serves websockets through nginx too, and TERM to the master closes them alike.
        assert (
            websocket_close_codes(nginx.port, lambda: m.signal(signal.SIGTERM)) == [GOING_AWAY] * 4
        )
        assert m.wait_exit(30) == 0
    finally:
        nginx.stop()
    assert nginx.upstream_failures() == []


def test_plain_requests_through_nginx_keep_one_upstream_connection(master, tmp_path):
    # nginx is not trusted here, so the app sees nginx's own address and port: one port for every
    # request means one kept-alive upstream connection (a "Connection: close" would show 20).
    m = master(workers=1, args=["--forwarded-allow-ips", "127.0.0.2"])
    nginx = Nginx(tmp_path, m.port).start()
    try:
        seen = [json.loads(get(nginx.port, "/client")[1])["client"] for _ in range(20)]
    finally:
        nginx.stop()
    assert {host for host, _ in seen} == {"127.0.0.1"}
    assert len({port for _, port in seen}) == 1
