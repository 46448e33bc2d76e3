"""A real worker on a UNIX socket and on TCP at once: which peers it believes (issue 13 item 2).

uvicorn gives a UNIX-socket connection ``server`` (path, None) and ``client`` None; the middleware
trusts such a peer as it trusts loopback, and only there: on TCP, a peer needs an address.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest

CLIENT_HOST = "127.0.0.5"  # any 127/8 address is this host; this one is not in the trust list
SPOOF = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def seen_by_app(conn: http.client.HTTPConnection) -> dict:
    try:
        conn.request("GET", "/client", headers=SPOOF)
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "trust, unix_client, unix_scheme",
    [
        ([], ["203.0.113.7", 0], "https"),  # gunicorn's default 127.0.0.1,::1: as local as loopback
        (["--forwarded-allow-ips", "10.0.0.1"], None, "http"),  # no loopback: nobody over UNIX
    ],
)
def test_unix_peers_are_trusted_like_loopback_tcp_peers_by_their_address(
    master, tmp_path, trust, unix_client, unix_scheme
):
    path = str(tmp_path / "app.sock")
    m = master(workers=1, args=["-b", f"unix:{path}", *trust])
    over_unix = seen_by_app(UnixConnection(path))
    assert over_unix["server"] == [path, None]
    assert over_unix["client"] == unix_client and over_unix["scheme"] == unix_scheme
    over_tcp = seen_by_app(
        http.client.HTTPConnection("127.0.0.1", m.port, timeout=5, source_address=(CLIENT_HOST, 0))
    )
    assert over_tcp["client"][0] == CLIENT_HOST and over_tcp["scheme"] == "http"
