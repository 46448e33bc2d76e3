"""The rig's own judgement: which nginx error-log lines are requests lost upstream."""

from __future__ import annotations

import pytest
from rig import upstream_failures

TAIL = ', client: 127.0.0.1, server: _, request: "POST / HTTP/1.1", upstream: "http://127.0.0.1:50667/"'


@pytest.mark.parametrize(
    "line,lost",
    [
        (
            "[error] 1#1: *7 upstream prematurely closed connection while reading response header from upstream",
            True,
        ),
        (
            "[error] 1#1: *7 recv() failed (104: Connection reset by peer) while reading response header from upstream",
            True,
        ),
        (
            "[error] 1#1: *7 connect() failed (111: Connection refused) while connecting to upstream",
            True,
        ),
        (
            "[error] 1#1: *7 writev() failed (32: Broken pipe) while sending request to upstream",
            True,
        ),
        (
            "[error] 1#1: *7 upstream timed out (110: Connection timed out) while reading response header from upstream",
            True,
        ),
        ("[error] 1#1: *7 no live upstreams while connecting to upstream", True),
        # the client's side: wrk resetting its sockets at the end of a run, a client hanging up
        (
            "[info] 1#1: *7 recv() failed (104: Connection reset by peer) while sending to client",
            False,
        ),
        ("[info] 1#1: *7 writev() failed (32: Broken pipe) while sending to client", False),
        ("[info] 1#1: *7 client prematurely closed connection while reading upstream", False),
        ("[info] 1#1: *7 client closed keepalive connection", False),
    ],
)
def test_only_losses_on_the_upstream_side_count(line, lost):
    text = f"2026/12/02 04:16:43 {line}{TAIL}\n"
    assert upstream_failures(text) == ([text.strip()] if lost else [])
