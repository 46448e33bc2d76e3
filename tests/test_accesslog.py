"""gunicorn's access log, written by the hardened worker (hardened_worker/_accesslog.py).

Real masters with ``--access-logfile``: gunicorn's own logger and ``--access-logformat``; one line
per request with the duration from the app call to the last body byte; ``h`` after forwarded
handling, the TCP peer as ``{peer_addr}e``; one line per websocket at its close; nothing built at
all without an access log; the JSON preset's fields. Plus the pure environ builder.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import signal

import pytest
from rig import get, wait_for

from hardened_worker import _accesslog as accesslog
from hardened_worker._accesslog import environ_of

FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(D)s "%({user-agent}i)s" peer=%({peer_addr}e)s'
LINE = re.compile(r'^(\S+) "([^"]*)" (\d+) (\S+) (\d+) "([^"]*)" peer=(\S+)$')


def access_lines(path, request: str = "") -> list[re.Match]:
    """The access log's lines (those for ``request``, e.g. ``GET /x HTTP/1.1``, if given)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [m for m in map(LINE.match, text.splitlines()) if m and m.group(2).startswith(request)]


def wait_lines(path, request: str) -> list[re.Match]:
    return wait_for(lambda: access_lines(path, request), 10)


@pytest.fixture
def logged(master, tmp_path):
    access = tmp_path / "access.log"
    m = master(
        app="obsapp:app", args=["--access-logfile", str(access), "--access-logformat", FORMAT]
    )
    m.access = access
    return m


def test_one_line_per_request_with_duration_status_size_and_user_agent(logged):
    status, body = get(logged.port, "/sleep?s=0.2", headers={"User-Agent": "probe/1.0"})
    assert (status, body) == (200, b"slept")
    lines = wait_lines(logged.access, "GET /sleep")
    assert get(logged.port, "/?after")[0] == 200
    wait_lines(logged.access, "GET /?after")  # written after the first: no second line for it
    assert len(access_lines(logged.access, "GET /sleep")) == 1
    h, request, status, size, micros, agent, peer = lines[0].groups()
    assert request == "GET /sleep?s=0.2 HTTP/1.1"
    assert (status, size, agent) == ("200", "5", "probe/1.0")
    assert int(micros) >= 200_000
    assert h == peer == "127.0.0.1"


def test_h_is_the_forwarded_client_and_the_peer_stays_available(logged):
    # 127.0.0.1 is in gunicorn's default --forwarded-allow-ips: a trusted proxy.
    assert get(logged.port, "/?fwd", headers={"X-Forwarded-For": "203.0.113.7"})[0] == 200
    [line] = wait_lines(logged.access, "GET /?fwd")
    assert line.group(1) == "203.0.113.7"
    assert line.group(7) == "127.0.0.1"


def test_a_websocket_logs_one_line_when_it_closes(logged):
    import websockets

    async def session() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{logged.port}/ws", open_timeout=10) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            assert access_lines(logged.access, "GET /ws") == []  # nothing while it is open

    asyncio.run(session())
    lines = wait_lines(logged.access, "GET /ws")
    assert get(logged.port, "/?after")[0] == 200
    wait_lines(logged.access, "GET /?after")
    assert len(access_lines(logged.access, "GET /ws")) == 1
    assert lines[0].group(2) == "GET /ws HTTP/1.1" and lines[0].group(3) == "101"
    assert lines[0].group(4) == "5"  # the echoed message


def test_without_an_access_log_no_record_is_built(master):
    m = master(app="obsapp:app")
    status, body = get(m.port, "/introspect")
    assert status == 200
    assert json.loads(body) == {"uvicorn_access_handlers": False, "access_middlewares": 0}


def test_with_an_access_log_uvicorn_builds_none_of_its_own(logged):
    status, body = get(logged.port, "/introspect")
    assert json.loads(body) == {"uvicorn_access_handlers": False, "access_middlewares": 1}


def test_json_access_records_carry_duration_and_peer_and_lifecycle_lines_their_facts(
    master, tmp_path
):
    conf = tmp_path / "json_conf.py"
    conf.write_text(
        "from hardened_worker.presets import _jsonlog as jsonlog\n"
        "logconfig_dict = jsonlog.logconfig_dict(access=True)\n"
        "accesslog = '-'\n"
    )
    m = master(app="obsapp:app", args=["-c", str(conf)], workers=1)
    assert (
        get(
            m.port,
            "/sleep?s=0.05",
            headers={"X-Forwarded-For": "198.51.100.9", "X-Request-ID": "req-42"},
        )[0]
        == 200
    )
    m.signal(15)
    m.wait_exit(30)
    docs = [json.loads(line) for line in m.output().splitlines() if line.startswith("{")]
    [access] = [
        d for d in docs if d["logger"] == "gunicorn.access" and d.get("path") == "/sleep?s=0.05"
    ]
    assert access["client"] == "198.51.100.9" and access["peer"] == "127.0.0.1"
    assert access["status_code"] == 200 and access["method"] == "GET" and "status" not in access
    assert access["request_id"] == "req-42"
    assert access["duration_ms"] >= 50
    [ready] = [d for d in docs if " ready in " in d["message"]]
    assert ready["generation"] == 1 and ready["pid"] == ready["pid"] > 0 and "up_s" in ready
    [exiting] = [d for d in docs if " exiting: reason " in d["message"]]
    assert exiting["reason"] == "shutdown" and exiting["requests"] >= 1


@pytest.mark.parametrize(
    "scope, peer, expected",
    [
        (
            {
                "method": "GET",
                "path": "/a b",
                "raw_path": b"/a%20b",
                "query_string": b"x=1",
                "http_version": "1.1",
                "scheme": "https",
                "client": ("10.0.0.2", 5),
                "server": ("h", 80),
                "headers": [
                    (b"user-agent", b"ua"),
                    (b"content-type", b"text/plain"),
                    (b"x-a", b"1"),
                    (b"x-a", b"2"),
                ],
            },
            ("127.0.0.1", 9),
            {
                "REQUEST_METHOD": "GET",
                "RAW_URI": "/a%20b?x=1",
                "PATH_INFO": "/a b",
                "SCRIPT_NAME": "",
                "QUERY_STRING": "x=1",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "https",
                "REMOTE_ADDR": "10.0.0.2",
                "REMOTE_PORT": "5",
                "PEER_ADDR": "127.0.0.1",
                "PEER_PORT": "9",
                "SERVER_NAME": "h",
                "SERVER_PORT": "80",
                "HTTP_USER_AGENT": "ua",
                "CONTENT_TYPE": "text/plain",
                "HTTP_X_A": "1,2",
            },
        ),
        (
            {
                "method": "POST",
                "path": "/app/x",
                "root_path": "/app",
                "query_string": b"",
                "http_version": "2",
                "client": None,
                "server": ("/run/s.sock", None),
                "headers": [],
            },
            None,
            {
                "REQUEST_METHOD": "POST",
                "RAW_URI": "/app/x",
                "PATH_INFO": "/x",
                "SCRIPT_NAME": "/app",
                "QUERY_STRING": "",
                "SERVER_PROTOCOL": "HTTP/2",
                "wsgi.url_scheme": "http",
                "SERVER_NAME": "/run/s.sock",
                "SERVER_PORT": "",
            },
        ),
    ],
)
def test_environ_of(scope, peer, expected):
    assert environ_of(scope, peer) == expected


# --- the lazy atoms: the same values as gunicorn's own Logger.atoms + SafeAtoms ----------------

ATOM_KEYS = [
    "h",
    "l",
    "u",
    "r",
    "s",
    "m",
    "U",
    "q",
    "H",
    "b",
    "B",
    "f",
    "a",
    "T",
    "D",
    "M",
    "L",
    "p",
    "{user-agent}i",
    "{User-Agent}i",
    "{x-a}i",
    "{missing}i",
    "{content-type}o",
    "{X-Resp}o",
    "{nothing}o",
    "{raw_uri}e",
    "{peer_addr}e",
    "{peer_port}e",
    "{remote_addr}e",
    "{http_x_a}e",
    "{path_info}e",
    "{nope}e",
    "x",
    "{wsgi.url_scheme}e",
]
ATOM_SCOPES = [
    {
        "type": "http",
        "method": "GET",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"x=1",
        "http_version": "1.1",
        "scheme": "https",
        "client": ("10.0.0.2", 5),
        "server": ("h", 80),
        "headers": [
            (b"user-agent", b'say "hi"'),
            (b"x-a", b"1"),
            (b"x-a", b"2"),
            (b"authorization", b"Basic dXNlcjpwdw=="),
            (b"referer", b"http://r/"),
        ],
    },
    {
        "type": "http",
        "method": "POST",
        "path": "/app/x",
        "root_path": "/app",
        "query_string": b"",
        "http_version": "2",
        "client": None,
        "server": ("/run/s.sock", None),
        "headers": [],
    },
]


@pytest.mark.parametrize("scope", ATOM_SCOPES)
@pytest.mark.parametrize("seconds", [0.0, 0.2000004, 3.5])
def test_lazy_atoms_match_gunicorns(scope, seconds):
    import datetime

    from gunicorn import glogging
    from gunicorn.config import Config

    from hardened_worker._accesslog import Atoms, Response, request_headers

    log = glogging.Logger(Config())
    response = Response()
    response.status, response.sent = 201, 17
    response.raw = [(b"content-type", b"text/plain"), (b"x-resp", b"1")]
    peer = ("127.0.0.1", 9)
    request_time = datetime.timedelta(seconds=round(seconds * 1e6) / 1e6)
    theirs = glogging.SafeAtoms(
        log.atoms(response, request_headers(scope), environ_of(scope, peer), request_time)
    )
    ours = Atoms(scope, peer, response, seconds, log)
    assert {k: ours[k] for k in ATOM_KEYS} == {k: theirs[k] for k in ATOM_KEYS}
    fmt = '%(h)s %(l)s %(u)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s %({x-a}i)s'
    assert fmt % ours == fmt % theirs


def test_a_logging_configuration_that_discards_access_lines_builds_none(master, tmp_path):
    # gunicorn's access_log_enabled is true for any logconfig_dict; the JSON preset's, with the
    # access log off, sends gunicorn.access to a NullHandler.
    conf = tmp_path / "json_off.py"
    conf.write_text(
        "from hardened_worker.presets import _jsonlog as jsonlog\n"
        "logconfig_dict = jsonlog.logconfig_dict(access=False)\n"
    )
    m = master(app="obsapp:app", args=["-c", str(conf)])
    status, body = get(m.port, "/introspect")
    assert json.loads(body) == {"uvicorn_access_handlers": False, "access_middlewares": 0}


# --- the plain path: a line formatted once, straight to gunicorn's own handlers ----------------


@pytest.fixture
def gunicorn_logger(tmp_path):
    """gunicorn's Logger with ``--access-logfile tmp_path/access.log``, on a ``gunicorn.access``
    logger holding nothing else (pytest's capture handlers taken off, put back afterwards)."""
    from gunicorn import glogging
    from gunicorn.config import Config

    access = logging.getLogger("gunicorn.access")
    saved = (list(access.handlers), list(access.filters), access.propagate)
    access.handlers, access.filters = [], []
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    log = glogging.Logger(cfg)
    yield log
    for handler in access.handlers:  # (pytest's own were taken off by pytest)
        handler.close()
    access.handlers, access.filters, access.propagate = saved


def pytests_off(log):
    """pytest attaches its capture handlers to non-propagating loggers for each test call."""
    log.access_log.handlers = [h for h in log.access_log.handlers if getattr(h, "_gunicorn", False)]
    return log


def _add_filter(log):
    log.access_log.addFilter(lambda record: True)


def _add_handler(log):
    log.access_log.addHandler(logging.NullHandler())


def _json_formatter(log):
    log.access_log.handlers[0].setFormatter(logging.Formatter("%(asctime)s %(message)s"))


def _propagate(log):
    log.access_log.propagate = True


@pytest.mark.parametrize(
    "change, plain",
    [
        (None, True),  # gunicorn's own FileHandler with access_fmt "%(message)s"
        (_add_filter, False),  # a filter may drop or rewrite the record: the full record
        (_add_handler, False),
        (_json_formatter, False),  # a formatter that reads more than the message
        (_propagate, False),  # the root's handlers would see it too
    ],
)
def test_plain_handlers_only_for_gunicorns_own(gunicorn_logger, change, plain):
    from hardened_worker._accesslog import plain_handlers

    pytests_off(gunicorn_logger)
    if change is not None:
        change(gunicorn_logger)
    assert (plain_handlers(gunicorn_logger.access_log) is not None) is plain


def test_the_plain_path_writes_what_gunicorns_logger_writes(gunicorn_logger, tmp_path):
    from hardened_worker._accesslog import plain_handlers, write_plain

    log, path = pytests_off(gunicorn_logger), tmp_path / "access.log"
    lines = ['127.0.0.1 - - "GET / HTTP/1.1" 200 2 "-" "a \\"b\\""', "ünïcode ✓ %s %(x)s"]
    for line in lines:
        log.access_log.info(line)  # a record without args: the message as it is
    theirs = path.read_bytes()
    path.write_bytes(b"")
    log.reopen_files()  # as a USR1 does: the handler's stream is replaced under its lock
    for line in lines:
        write_plain(log.access_log, plain_handlers(log.access_log), line)
    assert path.read_bytes() == theirs and len(theirs.splitlines()) == 2


def test_after_usr1_lines_go_to_the_reopened_file(logged):
    # logrotate's way: move the file, USR1 the master (it reopens its files and USR1s its workers,
    # which reopen theirs on their next tick).
    workers = set(logged.wait_workers(2))
    assert get(logged.port, "/?before")[0] == 200
    wait_lines(logged.access, "GET /?before")
    rotated = logged.access.with_name("access.log.1")
    logged.access.rename(rotated)
    logged.signal(signal.SIGUSR1)
    reopened: set = set()
    sent = iter(range(10**6))

    def both_reopened() -> bool:  # a worker whose line reached the new file has reopened it
        n = next(sent)
        status, body = get(logged.port, f"/pid?n={n}")
        assert status == 200
        if wait_for(
            lambda: (
                access_lines(logged.access, f"GET /pid?n={n} ")
                or access_lines(rotated, f"GET /pid?n={n} ")
            ),
            10,
        ) and access_lines(logged.access, f"GET /pid?n={n} "):
            reopened.add(int(body))
        return reopened == workers

    wait_for(both_reopened, 20, interval=0.05)
    for n in range(20):
        assert get(logged.port, f"/?settled={n}")[0] == 200
    wait_for(lambda: len(access_lines(logged.access, "GET /?settled=")) == 20, 10)
    assert access_lines(rotated, "GET /?settled=") == []
    assert access_lines(rotated, "GET /?before")


# --- the request id --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, kept",
    [
        ([b"abc-123"], True),
        ([b"0f8fad5b-d9cb-469f-a165-70867728950e"], True),
        ([b"dGhpcyBpcyBiYXNlNjQ+/w=="], True),  # base64: Heroku's alphabet
        ([b"x" * 200], True),
        ([b"x" * 201], False),
        ([b""], False),
        ([b"two words"], False),
        ([b'a"b'], False),
        ([b"\xc3\xa9t\xc3\xa9"], False),
        ([b"first", b"bad one"], False),  # the last one counts, as gunicorn's headers
        ([b"bad one", b"last"], True),
        ([], False),
    ],
)
def test_request_id_is_kept_when_well_formed_else_replaced(sent, kept):
    scope = {"headers": [(b"host", b"h"), *((b"x-request-id", v) for v in sent)]}
    rid = accesslog.request_id(scope)
    if kept:
        assert rid == sent[-1] and scope["headers"][0] == (b"host", b"h")
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", rid)
        assert scope["headers"] == [(b"host", b"h"), (b"x-request-id", rid)]  # what the app sees


def test_request_id_goes_on_the_response_unless_the_app_set_one():
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x")]}
    assert accesslog._with_request_id(start, b"r1")["headers"][-1] == (b"x-request-id", b"r1")
    assert start["headers"] == [(b"content-type", b"x")]  # the app's message is not changed
    own = {**start, "headers": [(b"X-Request-ID", b"app")]}
    assert accesslog._with_request_id(own, b"r1") is own


def test_the_request_id_is_in_the_line_the_app_and_the_response(master, tmp_path):
    access = tmp_path / "access.log"
    m = master(
        args=[
            "--access-logfile",
            str(access),
            "--access-logformat",
            '"%(r)s" %(s)s id=%({x-request-id}i)s',
        ]
    )

    def ask(path: str, rid: str | None) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
        try:
            conn.request("GET", path, headers={"X-Request-ID": rid} if rid is not None else {})
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b"ok"
            return response.getheader("X-Request-ID")
        finally:
            conn.close()

    echoed = {
        "kept": ask("/?kept", "trace-7"),
        "bad": ask("/?bad", "not ok"),
        "none": ask("/?none", None),
        "again": ask("/?again", None),
    }
    assert echoed["kept"] == "trace-7"
    assert all(re.fullmatch(r"[0-9a-f]{32}", echoed[k]) for k in ("bad", "none", "again"))
    assert echoed["none"] != echoed["again"]

    def logged() -> dict | None:
        found = dict(
            re.findall(
                r'"GET /\?(\w+) HTTP/1.1" 200 id=(\S+)',
                access.read_text() if access.exists() else "",
            )
        )
        return found if len(found) == 4 else None

    assert wait_for(logged, 10) == echoed  # the log reads the id the app saw (scope headers)
