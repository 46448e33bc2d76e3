"""Properties of hardened_worker._forwarded that must hold for any bytes a client can send."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardened_worker import _forwarded as forwarded
from hardened_worker._forwarded import (
    FAMILIES,
    Extras,
    ForwardedMiddleware,
    parse_trusted,
    resolve,
)

RELEVANT = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"forwarded",
    b"host",
]
# Characters that mean something to one of the grammars, plus some that must never pass.
GRAMMAR_CHARS = '0123456789abcdefABCDEF:.[]_-,; ="\\\t/%@?#unkowUNKOW\x00\x01\x7f\x80\xe9\xff'

ips = st.ip_addresses()
ports = st.integers(0, 65535)


@st.composite
def xff_entries(draw, address=ips):
    """One X-Forwarded-For entry as proxies write it, and the (host, port) it stands for."""
    ip = draw(address)
    port = draw(st.none() | st.integers(1, 65535))
    if ip.version == 4:
        text = str(ip) if port is None else f"{ip}:{port}"
    elif port is None:
        text = draw(st.sampled_from([str(ip), f"[{ip}]", ip.exploded]))
    else:
        text = f"[{ip}]:{port}"
    canonical = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
    ows = draw(st.sampled_from(["", " ", "\t", " \t"]))
    return ows + text + ows, (str(canonical), port or 0)


def forwarded_node(ip, port):
    text = str(ip) if ip.version == 4 else f"[{ip}]"
    if port is not None:
        text += f":{port}"
    return f'"{text}"' if ":" in text else text


@st.composite
def mutated(draw, text):
    """``text`` as written, or with a character inserted, deleted or the tail cut off."""
    how = draw(st.sampled_from(["as-is", "as-is", "insert", "delete", "cut"]))
    if how == "as-is" or not text:
        return text
    at = draw(st.integers(0, len(text) - 1))
    if how == "insert":
        return text[:at] + draw(st.sampled_from(GRAMMAR_CHARS)) + text[at:]
    if how == "delete":
        return text[:at] + text[at + 1 :]
    return text[:at]


junk = st.sampled_from(
    [
        "unknown",
        "",
        "_hidden",
        "garbage",
        "localhost",
        "unix:",
        "1.2.3",
        "::ffff:",
        "[::1",
        "10.0.0.1:99999",
    ]
)
xff_entry_text = xff_entries().map(lambda e: e[0]) | junk
xff_values = st.lists(xff_entry_text, min_size=1, max_size=5).map(", ".join)
proto_values = st.lists(
    st.sampled_from(["http", "https", "ws", "wss", "HTTPS", " https", "ftp", ""]),
    min_size=1,
    max_size=3,
).map(",".join)
host_values = st.sampled_from(
    [
        "example.com",
        "example.com:8443",
        "[2001:db8::1]:443",
        "a.example, b.example",
        "evil.com/x",
        "u@evil",
        "",
    ]
)
port_values = st.integers(-5, 70000).map(str) | st.sampled_from(["80, 443", "https", ""])
prefix_values = st.text(alphabet="/ab.%?#\\ ,", max_size=12) | st.sampled_from(
    ["/api", "/api/", "/", "//evil", "/a/../b"]
)


@st.composite
def forwarded_values(draw):
    elements = []
    for _ in range(draw(st.integers(1, 4))):
        pairs = []
        if draw(st.booleans()):
            ip, port = draw(ips), draw(st.none() | ports)
            node = draw(
                st.sampled_from(
                    [forwarded_node(ip, port), "unknown", "_obf", "UNKNOWN", '"_x:_y"', str(ip)]
                )
            )
            pairs.append(("For" if draw(st.booleans()) else "for") + "=" + node)
        if draw(st.booleans()):
            pairs.append(
                "proto="
                + draw(st.sampled_from(["http", "https", "wss", '"https"', "ftp", '"h t"']))
            )
        if draw(st.booleans()):
            pairs.append(
                "host="
                + draw(
                    st.sampled_from(["example.com", '"example.com:8443"', '"[::1]:80"', '"a b"'])
                )
            )
        if draw(st.booleans()):
            pairs.append(draw(st.sampled_from(["by=_lb", 'ext="a,b;c=\\"d\\""', "x=y"])))
        elements.append(draw(st.sampled_from([";", "; ", " ;"])).join(pairs))
    return draw(st.sampled_from([",", ", ", " ,\t"])).join(elements)


plausible = {
    b"x-forwarded-for": xff_values,
    b"x-forwarded-proto": proto_values,
    b"x-forwarded-host": host_values,
    b"x-forwarded-port": port_values,
    b"x-forwarded-prefix": prefix_values,
    b"forwarded": forwarded_values(),
    b"host": host_values,
}


@st.composite
def plausible_header(draw):
    name = draw(st.sampled_from(RELEVANT))
    return name, draw(mutated(draw(plausible[name]))).encode("latin-1")


grammar_text = st.text(alphabet=GRAMMAR_CHARS, max_size=80).map(lambda s: s.encode("latin-1"))
header_values = st.one_of(
    st.binary(max_size=300),
    grammar_text,
    st.sampled_from([b"\xff" * 10_000, b"for=" + b"_a" * 5_000, b"1.1.1.1," * 2_000]),
)
header_names = st.sampled_from(RELEVANT) | st.binary(max_size=12)
headers = st.lists(
    st.one_of(plausible_header(), plausible_header(), st.tuples(header_names, header_values)),
    max_size=8,
)
peers = st.none() | st.tuples(
    st.sampled_from(
        [
            "10.0.0.2",
            "10.0.0.2",
            "10.0.0.2",
            "::ffff:10.0.0.2",
            "198.51.100.9",
            "",
            "/run/app.sock",
            "testclient",
            "fe80::1%eth0",
            "::1",
            "2001:db8::5",
        ]
    ),
    st.integers(0, 65535),
)
trusts = st.sampled_from(
    [
        "10.0.0.0/8",
        "10.0.0.0/8",
        "*",
        "unix",
        "*, 10.0.0.0/8",
        "",
        "::/0",
        "203.0.113.0/24, unix, ::1",
    ]
)
extras = st.builds(Extras, st.booleans(), st.booleans(), st.booleans())


def check_resolution(result, websocket):
    if result is None:
        return
    if result.client is not None:
        host, port = result.client
        address = ipaddress.ip_address(host)
        assert str(address) == host  # canonical form
        assert not (address.version == 6 and address.ipv4_mapped)
        assert 0 <= port <= 65535
    if result.scheme is not None:
        assert result.scheme in (("ws", "wss") if websocket else ("http", "https"))
    if result.host is not None:
        assert result.host.isascii()
        assert not any(c in result.host for c in " /@\\?#%\r\n\t\x00")
    if result.port is not None:
        assert 1 <= result.port <= 65535
    if result.prefix is not None:
        assert result.prefix.startswith("/") and not result.prefix.endswith("/")
        assert ".." not in result.prefix and "//" not in result.prefix
        result.prefix.encode("ascii")


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(peers, headers, trusts, st.sampled_from(FAMILIES), st.booleans(), extras)
def test_never_raises_and_results_are_sane(peer, hdrs, trust, family, websocket, extra):
    reasons = []
    result = resolve(
        peer,
        hdrs,
        parse_trusted(trust),
        family,
        websocket=websocket,
        extras=extra,
        report=lambda header, reason: reasons.append((header, reason)),
    )
    check_resolution(result, websocket)
    for header, reason in reasons:
        assert "\n" not in reason and "\r" not in reason and len(reason) < 400


FAMILY_NAMES = {
    "x-forwarded": [
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
    ],
    "forwarded": [b"forwarded", b"forwarded", b"host"],
}


@st.composite
def family_and_headers(draw):
    family = draw(st.sampled_from(sorted(FAMILY_NAMES)))
    names = st.sampled_from(FAMILY_NAMES[family])
    hdrs = draw(
        st.lists(
            names.flatmap(
                lambda name: st.tuples(
                    st.just(name),
                    plausible[name].flatmap(mutated).map(lambda v: v.encode("latin-1")),
                )
            ),
            min_size=1,
            max_size=6,
        )
    )
    return family, hdrs


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    family_and_headers(),
    st.sampled_from(["10.0.0.0/8", "*", "*, 10.0.0.0/8"]),
    st.booleans(),
    extras,
)
def test_trusted_proxy_headers_never_raise_and_results_are_sane(
    family_headers, trust, websocket, extra
):
    """The same, aimed at the parsers: a trusted peer and near-valid values of its family."""
    family, hdrs = family_headers
    result = resolve(
        ("10.0.0.2", 1),
        hdrs,
        parse_trusted(trust),
        family,
        websocket=websocket,
        extras=extra,
        report=lambda header, reason: None,
    )
    check_resolution(result, websocket)


@given(
    st.sampled_from(
        [
            None,
            ("198.51.100.9", 1),
            ("/run/app.sock", 0),
            ("testclient", 1),
            ("::ffff:198.51.100.9", 1),
            ("", 0),
        ]
    ),
    headers,
    st.sampled_from(FAMILIES),
    st.booleans(),
    extras,
)
def test_untrusted_peer_changes_nothing(peer, hdrs, family, websocket, extra):
    trusted = parse_trusted("10.0.0.0/8, 2001:db8::1")  # no loopback: UNIX peers untrusted too
    assert resolve(peer, hdrs, trusted, family, websocket=websocket, extras=extra) is None


@given(st.lists(header_values, max_size=3), xff_entries(), st.booleans())
def test_star_takes_the_rightmost_valid_entry(left_lines, rightmost, same_line):
    entry, expected = rightmost
    if same_line:
        lines = [b",".join(left_lines + [entry.encode()])]
    else:
        lines = left_lines + [entry.encode()]
    hdrs = [(b"x-forwarded-for", line) for line in lines]
    result = resolve(("198.51.100.9", 1), hdrs, parse_trusted("*"))
    assert result is not None and result.client == expected


internal_ips = st.integers(0, 2**24 - 1).map(lambda n: ipaddress.IPv4Address(0x0A000000 + n))
outside_ips = st.ip_addresses(v=4).filter(lambda ip: not ip.is_private) | st.ip_addresses(v=6)


@given(
    st.lists(header_values, max_size=3),
    xff_entries(outside_ips),
    st.lists(xff_entries(internal_ips), max_size=3),
)
def test_client_written_entries_never_matter(spoof, client, hops):
    """Whatever a client writes left of the address our proxies saw cannot change the result."""
    trusted = parse_trusted("10.0.0.0/8")
    chain = ", ".join([client[0]] + [entry for entry, _ in hops]).encode()
    honest = resolve(("10.0.0.2", 1), [(b"x-forwarded-for", chain)], trusted)
    spoofed = resolve(
        ("10.0.0.2", 1),
        [(b"x-forwarded-for", line) for line in spoof] + [(b"x-forwarded-for", chain)],
        trusted,
    )
    assert honest is not None and honest.client == client[1]
    assert spoofed is not None and spoofed.client == client[1]


@given(
    st.lists(header_values, max_size=3),
    outside_ips,
    st.none() | st.integers(1, 65535),
    st.lists(internal_ips, max_size=3),
    st.sampled_from(["http", "https", "HTTPS"]),
)
def test_client_written_forwarded_lines_never_matter(spoof, client, port, hops, proto):
    trusted = parse_trusted("10.0.0.0/8")
    elements = [f"for={forwarded_node(client, port)};proto={proto}"]
    elements += [f"for={forwarded_node(hop, None)}" for hop in hops]
    line = ", ".join(elements).encode()
    result = resolve(
        ("10.0.0.2", 1),
        [(b"forwarded", s) for s in spoof] + [(b"forwarded", line)],
        trusted,
        "forwarded",
    )
    canonical = client.ipv4_mapped if client.version == 6 and client.ipv4_mapped else client
    assert result is not None
    assert result.client == (str(canonical), port or 0)
    assert result.scheme == proto.lower()


@given(st.lists(st.tuples(ips, st.none() | ports), min_size=1, max_size=5))
def test_forwarded_star_takes_the_rightmost_element(nodes):
    value = ", ".join(f"for={forwarded_node(ip, port)}" for ip, port in nodes)
    result = resolve(
        ("198.51.100.9", 1), [(b"forwarded", value.encode())], parse_trusted("*"), "forwarded"
    )
    ip, port = nodes[-1]
    canonical = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
    assert result is not None and result.client == (str(canonical), port or 0)


def _ip_forms(ip):
    forms = [str(ip), ip.exploded, str(ip).upper()]
    if ip.version == 6:
        tail = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        forms.append(ip.exploded.rsplit(":", 2)[0] + ":" + str(tail))
        forms.append(
            str(ipaddress.IPv6Address(int(ip) & 0xFFFFFFFF))
            if int(ip) >> 32 == 0
            else "::" + str(tail)
        )
    return st.sampled_from(forms)


ip_texts = st.text(alphabet="0123456789abcdefABCDEF:.", max_size=46) | ips.flatmap(
    _ip_forms
).flatmap(lambda text: mutated(text))


@settings(max_examples=1000)
@given(ip_texts)
def test_ip_grammar_agrees_with_ipaddress(text):
    """The RFC 3986 grammar in the module accepts exactly what ipaddress accepts (no zones)."""
    try:
        expected = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    if expected is not None and getattr(expected, "scope_id", None) is not None:
        expected = None  # "::1%eth0": zone identifiers are rejected on purpose
    got = forwarded._parse_ip(text)
    if expected is not None and expected.version == 6 and expected.ipv4_mapped:
        expected = expected.ipv4_mapped
    assert got == expected


@given(st.text(max_size=60) | st.lists(st.text(max_size=20), max_size=4))
def test_trust_list_parses_or_raises_value_error(value):
    try:
        parse_trusted(value)
    except ValueError as exc:
        assert "is not an IP address, CIDR network, '*' or 'unix'" in str(exc)


@given(
    st.lists(
        st.tuples(
            st.binary(max_size=12).filter(lambda n: n not in RELEVANT), st.binary(max_size=40)
        ),
        max_size=20,
    ),
    st.sampled_from(["http", "websocket"]),
    trusts,
)
def test_middleware_hands_over_the_same_scope_without_forwarding_headers(hdrs, kind, trust):
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    middleware = ForwardedMiddleware(app, trust, host=True, port=True, prefix=True)
    scope = {
        "type": kind,
        "client": ("10.0.0.2", 1),
        "headers": hdrs,
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "server": ("10.0.0.1", 80),
    }
    asyncio.run(middleware(scope, None, None))
    assert seen == [scope] and seen[0] is scope


# --- Issue 13: the right-to-left Forwarded parser, and the middleware itself ------------------

# Forwarded elements with quoted-strings that hold what makes reading backwards hard: ",", ";",
# escaped DQUOTEs and runs of escaped backslashes.
quoted_contents = st.lists(
    st.sampled_from(["a", ",", ";", " ", "=", '\\"', "\\\\", "\\a", "\xe9"]), max_size=6
).map("".join)


@st.composite
def tricky_elements(draw):
    pairs = []
    if draw(st.booleans()):
        ip, port = draw(ips), draw(st.none() | ports)
        pairs.append("for=" + draw(st.sampled_from([forwarded_node(ip, port), "unknown"])))
    for name in draw(st.lists(st.sampled_from(["ext", "x", "secret"]), unique=True, max_size=2)):
        pairs.append(f'{name}="{draw(quoted_contents)}"')
    draw(st.randoms()).shuffle(pairs)
    return draw(st.sampled_from([";", "; "])).join(pairs)


_FORWARD_ELEMENT = re.compile(rf'(?:[^",]|{forwarded._QUOTED_STRING})*')


def split_left_to_right(line):
    """The reference: a line's elements as the RFC reads them, left to right, or None."""
    texts, pos = [], 0
    while True:
        end = _FORWARD_ELEMENT.match(line, pos).end()
        texts.append(line[pos:end])
        if end == len(line):
            return texts
        if line[end] != ",":
            return None
        pos = end + 1


def up_to_the_first_error(results):
    """Elements, last first, as the walk sees them: it stops at the first error, whatever it is."""
    seen = []
    for result in results:
        if isinstance(result, str):
            return seen + ["error"]
        seen.append(result)
    return seen


def parse_left_to_right(line):
    texts = split_left_to_right(line)
    if texts is None:
        return None
    parsed = [forwarded._parse_element(text) for text in reversed(texts)]
    return up_to_the_first_error(element for element in parsed if element is not None)


def parse_right_to_left(line):
    return up_to_the_first_error(forwarded._elements_from_right(line))


@settings(max_examples=800)
@given(st.lists(tricky_elements(), min_size=1, max_size=5), st.sampled_from([",", ", ", " ,\t"]))
def test_reading_backwards_finds_the_elements_reading_forwards_does(elements, separator):
    line = separator.join(elements)
    assert parse_right_to_left(line) == parse_left_to_right(line)
    assert "error" not in parse_right_to_left(line)


@settings(max_examples=1500)
@given(
    st.lists(tricky_elements(), min_size=1, max_size=4)
    .map(", ".join)
    .flatmap(mutated)
    .flatmap(mutated)
)
def test_reading_backwards_agrees_on_any_line_that_is_valid_forwards(line):
    """Mutated lines too: wherever the forward reading finds valid elements only, the backward
    one finds the same. (Where it does not, the two may differ, on purpose: a client's
    unterminated quoted-string swallows, read forwards, the element a proxy appended.)"""
    forwards = parse_left_to_right(line)
    if forwards is not None and "error" not in forwards:
        assert parse_right_to_left(line) == forwards


@settings(max_examples=800)
@given(
    st.text(alphabet=GRAMMAR_CHARS, max_size=40),
    st.lists(tricky_elements(), min_size=1, max_size=3),
)
def test_reading_backwards_finds_appended_elements_whatever_precedes_them(junk, elements):
    line = junk + ", " + ", ".join(elements)
    parsed = [forwarded._parse_element(element) for element in reversed(elements)]
    expected = [element for element in parsed if element is not None]
    assert parse_right_to_left(line)[: len(expected)] == expected


@settings(max_examples=1000)
@given(st.lists(tricky_elements(), min_size=1, max_size=4).map(", ".join), st.integers(1, 40))
def test_an_element_cut_short_by_the_window_is_refused_never_shortened(line, limit):
    """Elements longer than _MAX_ELEMENT (here made small) stop the walk with an error; the
    ones before it are read as without the limit."""
    expected = []
    for text in reversed(split_left_to_right(line)):
        if len(text) > limit:
            expected.append("error")
            break
        element = forwarded._parse_element(text)
        if element is not None:
            expected.append(element)
    with mock.patch.object(forwarded, "_MAX_ELEMENT", limit):
        assert parse_right_to_left(line) == expected


@given(
    st.text(alphabet=GRAMMAR_CHARS, max_size=60)
    | st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    outside_ips,
    st.none() | st.integers(1, 65535),
    st.lists(internal_ips, max_size=2),
    st.sampled_from(["http", "https"]),
)
def test_client_written_prefix_of_the_same_line_never_matters(spoof, client, port, hops, proto):
    """nginx appends its element to the client's Forwarded value on the same line."""
    trusted = parse_trusted("10.0.0.0/8")
    ours = [f"for={forwarded_node(client, port)};proto={proto}"]
    ours += [f"for={forwarded_node(hop, None)}" for hop in hops]
    line = (spoof + ", " + ", ".join(ours)).encode("latin-1")
    result = resolve(("10.0.0.2", 1), [(b"forwarded", line)], trusted, "forwarded")
    canonical = client.ipv4_mapped if client.version == 6 and client.ipv4_mapped else client
    assert result is not None
    assert result.client == (str(canonical), port or 0) and result.scheme == proto


@given(st.sampled_from(["/", "/api", "/a/b"]).flatmap(mutated) | st.text(max_size=12))
def test_prefix_accepted_only_with_unreserved_characters(text):
    prefix = forwarded._safe_prefix(text)
    if prefix:
        assert re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix)


UNIX_SERVER = ("/run/gunicorn.sock", None)
servers = st.sampled_from(
    [("10.0.0.1", 80), ("10.0.0.1", 80), UNIX_SERVER, ["/run/gunicorn.sock", None], None]
)


def as_asgi(hdrs, shape):
    """The same headers as the server may hand them over: pairs as tuples or as lists."""
    return [
        list(h) if shape == "lists" or (shape == "mixed" and i % 2) else tuple(h)
        for i, h in enumerate(hdrs)
    ]


def check_scope(seen, before, websocket):
    """What the middleware passes on is a well-formed ASGI scope derived from ``before``."""
    assert seen.keys() - {"extensions"} == before.keys()
    assert seen["type"] == before["type"]
    client = seen["client"]
    if client != before["client"]:
        host, port = client
        assert str(ipaddress.ip_address(host)) == host and 0 <= port <= 65535
        assert seen["extensions"]["hardened_worker"]["peer"] == before["client"]
    else:
        assert "extensions" not in seen
    assert seen["scheme"] in (("ws", "wss") if websocket else ("http", "https"))
    for header in seen["headers"]:
        name, value = header
        assert isinstance(name, bytes) and isinstance(value, bytes)
    hosts = [value for name, value in seen["headers"] if name == b"host"]
    if seen["headers"] != before["headers"]:
        assert len(hosts) == 1 and hosts[0].isascii()
    assert seen["path"].startswith(seen["root_path"])
    assert seen["raw_path"].endswith(before["raw_path"])
    assert seen["raw_path"].decode("ascii") == seen["path"]
    server = seen["server"]
    if server != before["server"]:
        assert server[0] == before["server"][0] and 1 <= server[1] <= 65535


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    peers,
    servers,
    headers,
    st.sampled_from(["tuples", "lists", "mixed"]),
    trusts,
    st.sampled_from(FAMILIES),
    st.booleans(),
    extras,
)
def test_middleware_never_raises_and_passes_a_well_formed_scope(
    peer, server, hdrs, shape, trust, family, websocket, extra
):
    """Issue 13 item 4: the middleware itself, with any headers, as tuples and as lists."""
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    middleware = ForwardedMiddleware(app, trust, family, extra.host, extra.port, extra.prefix)
    kind = "websocket" if websocket else "http"
    scope = {
        "type": kind,
        "client": peer,
        "server": server,
        "headers": as_asgi(hdrs, shape),
        "scheme": "ws" if websocket else "http",
        "path": "/x",
        "raw_path": b"/x",
        "root_path": "",
    }
    before = {**scope, "headers": list(scope["headers"])}
    asyncio.run(middleware(scope, None, None))
    assert seen == [scope]
    check_scope(seen[0], before, websocket)
    expected = resolve(
        peer, hdrs, parse_trusted(trust), family, websocket=websocket, extras=extra, server=server
    )
    if expected is not None and expected.client is not None:
        assert seen[0]["client"] == expected.client
