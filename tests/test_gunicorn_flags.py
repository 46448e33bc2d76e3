"""Every gunicorn setting either works or says why not (hardened_worker/_flags.py, and
docs/gunicorn-settings.md generated from it), each flag with what it does shown here."""

from __future__ import annotations

import socket
import subprocess
import time

from gunicorn.config import KNOWN_SETTINGS
from rig import ROOT, Background, Client, get, wait_for

from hardened_worker import _flags as flags

DOC = ROOT / "docs" / "gunicorn-settings.md"


def test_the_settings_page_is_the_table_and_covers_every_setting_of_this_gunicorn():
    table = flags.markdown_table(KNOWN_SETTINGS)
    assert table in DOC.read_text()
    names = {s.name for s in KNOWN_SETTINGS}
    assert set(flags.CHANGED) <= names and set(flags.IGNORED) <= names  # no stale entry
    assert not set(flags.CHANGED) & set(flags.IGNORED)


def test_threads_and_other_unused_settings_are_named_at_start(master):
    m = master(args=["--threads", "4", "--proxy-protocol"], workers=1)
    m.wait_log("gunicorn settings this worker does not use")
    [line] = [x for x in m.log().splitlines() if "gunicorn settings this worker does not use" in x]
    assert "--threads (one event loop per worker" in line and "--proxy-protocol" in line
    assert get(m.port, "/")[0] == 200


def established_by(port: int, pid: int) -> int:
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    ).stdout
    return sum(f"pid={pid}," in line for line in out.splitlines())


def test_worker_connections_caps_what_one_worker_holds(master):
    m = master(args=["--worker-connections", "10"], workers=1)
    [worker] = m.wait_workers(1)
    held = [Background(m.port, "/sleep?s=4", timeout=30) for _ in range(25)]
    wait_for(lambda: established_by(m.port, worker) >= 10, timeout=10)
    time.sleep(1)  # room for an eleventh accept, were there no cap
    assert established_by(m.port, worker) == 10
    assert [request.join(60) for request in held] == [(200, b"slept")] * 25  # the rest waited


def test_statsd_gets_request_metrics_without_an_access_log(master):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    m = master(args=["--statsd-host", f"127.0.0.1:{receiver.getsockname()[1]}"], workers=1)
    for _ in range(3):
        assert get(m.port, "/")[0] == 200
    seen = b""
    while seen.count(b"gunicorn.requests:1|c") < 3:
        seen += receiver.recv(4096) + b"\n"
    assert b"gunicorn.request.status.200:1|c" in seen


APP = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({{"type": "lifespan.startup.complete"}})
        return await send({{"type": "lifespan.shutdown.complete"}})
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{version}"}})
"""


def test_reload_recycles_every_worker_onto_the_new_code_without_a_lost_request(master, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "reloadable.py").write_text(APP.format(version="v1"))
    m = master(app="reloadable:app", args=["--reload", "--pythonpath", str(code)], workers=2)
    old = m.wait_workers(2)
    assert get(m.port, "/")[1] == b"v1"
    client = Client(m.port, concurrency=4).start()
    time.sleep(1)
    (code / "reloadable.py").write_text(APP.format(version="v2"))
    wait_for(lambda: not set(old) & set(m.workers()) and len(m.workers()) == 2, timeout=40)
    outcomes = client.stop()
    assert outcomes.failures == [] and len(outcomes) > 0
    assert get(m.port, "/")[1] == b"v2"
    assert m.log().count("changed (--reload); its successor starts first") == 2
