"""Table-driven tests of hardened_worker._forwarded.

Rows come from RFC 7239's examples (sections 4, 6, 7.1, 7.4, 7.5) and from what real proxies
write: nginx ``$proxy_add_x_forwarded_for``, HAProxy ``option forwardfor`` (one more header
line), Envoy, AWS ALB, GCP load balancers, Cloudflare, Traefik and ingress-nginx. Every row is
one call of the pure ``resolve()``; the last section drives ``ForwardedMiddleware`` itself.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from hardened_worker._forwarded import (
    Extras,
    ForwardedMiddleware,
    Resolution,
    TrustedProxies,
    parse_trusted,
    resolve,
    trust_warning,
    trusted_from_gunicorn,
)

PROXY = ("10.0.0.2", 41000)  # the load balancer / ingress in front of us
INTERNAL = "10.0.0.0/8"
STRANGER = ("198.51.100.9", 52000)  # a client that reached us directly
CLIENT = ("203.0.113.7", 0)
NO_EXTRAS = Extras()
ALL_EXTRAS = Extras(host=True, port=True, prefix=True)
TCP = ("10.0.0.10", 8000)  # ASGI scope["server"] of a TCP listener
UNIX = ("/run/gunicorn.sock", None)  # and of a UNIX socket


def case(
    id,
    *headers,
    trust=INTERNAL,
    peer=PROXY,
    server=TCP,
    family="x-forwarded",
    ws=False,
    extras=NO_EXTRAS,
    client=None,
    scheme=None,
    host=None,
    port=None,
    prefix=None,
):
    expected = Resolution(client, scheme, host, port, prefix)
    return pytest.param(
        trust,
        peer,
        server,
        list(headers),
        family,
        ws,
        extras,
        None if expected == Resolution() else expected,
        id=id,
    )


def xff(value):
    return ("x-forwarded-for", value)


def xfp(value):
    return ("x-forwarded-proto", value)


def fwd(value):
    return ("forwarded", value)


X_FORWARDED_FOR = [
    case("no-headers-nothing-to-do"),
    case("unrelated-headers-only", ("host", "example.com"), ("user-agent", "curl/8")),
    case("single-client", xff("203.0.113.7"), client=CLIENT),
    case("nginx-client-then-proxy1", xff("203.0.113.7, 10.0.0.3"), client=CLIENT),
    case("nginx-appends-to-client-spoof", xff("1.1.1.1, 203.0.113.7"), client=CLIENT),
    case("spoofed-internal-address-never-wins", xff("10.9.9.9, 203.0.113.7"), client=CLIENT),
    case(
        "spoofed-chain-of-internal-addresses",
        xff("10.0.0.1, 10.0.0.1, 203.0.113.7, 10.0.0.3"),
        client=CLIENT,
    ),
    case("client-garbage-left-of-client-is-never-read", xff("garbage, 203.0.113.7"), client=CLIENT),
    case("client-unknown-left-of-client-is-never-read", xff("unknown, 203.0.113.7"), client=CLIENT),
    case("client-empty-entry-left-of-client-is-never-read", xff(", 203.0.113.7"), client=CLIENT),
    case("every-hop-trusted-leftmost-wins", xff("10.0.0.9, 10.0.0.3"), client=("10.0.0.9", 0)),
    case("rightmost-unknown-peer-stands", xff("203.0.113.7, unknown")),
    case("rightmost-garbage-peer-stands", xff("203.0.113.7, not-an-ip")),
    case("empty-value-peer-stands", xff("")),
    case("trailing-comma-peer-stands", xff("203.0.113.7,")),
    case("empty-entry-reached-by-the-walk", xff("203.0.113.7, , 10.0.0.3")),
    case("hostname-entry", xff("client.example.com")),
    case(
        "32-trusted-hops-and-the-client",
        xff(", ".join(["203.0.113.7"] + ["10.0.0.3"] * 32)),
        client=CLIENT,
    ),
    case(
        "33-trusted-hops-leftmost",
        xff(", ".join(["10.0.0.9"] + ["10.0.0.3"] * 32)),
        client=("10.0.0.9", 0),
    ),
    case(
        "more-than-32-trusted-hops-peer-stands", xff(", ".join(["203.0.113.7"] + ["10.0.0.3"] * 33))
    ),
    case("ipv4-with-port", xff("203.0.113.7:5678"), client=("203.0.113.7", 5678)),
    case("ipv4-port-zero", xff("203.0.113.7:0"), client=CLIENT),
    case("ipv4-port-too-big", xff("203.0.113.7:70000")),
    case("ipv4-port-not-digits", xff("203.0.113.7:http")),
    case("ipv4-port-empty", xff("203.0.113.7:")),
    case("ipv4-leading-zero-octet", xff("203.0.113.07")),
    case("ipv4-octet-over-255", xff("203.0.113.256")),
    case("ipv4-three-octets", xff("203.0.113")),
    case("space-inside-address", xff("203.0.113. 7")),
    case("ipv6-bracketed-with-port", xff("[2001:db8::1]:443"), client=("2001:db8::1", 443)),
    case("ipv6-bracketed-no-port", xff("[2001:db8::1]"), client=("2001:db8::1", 0)),
    case("ipv6-bare", xff("2001:db8::1"), client=("2001:db8::1", 0)),
    case("ipv6-bare-canonicalised", xff("2001:DB8:0:0:0:0:0:1"), client=("2001:db8::1", 0)),
    case("ipv6-bracket-then-junk", xff("[2001:db8::1]x")),
    case("ipv6-unclosed-bracket", xff("[2001:db8::1")),
    case("ipv6-zone-id-rejected", xff("fe80::1%eth0")),
    case("ipv4-in-brackets-rejected", xff("[203.0.113.7]:80")),
    case("ipv4-mapped-entry-unmapped", xff("::ffff:203.0.113.7"), client=CLIENT),
    case(
        "ipv4-mapped-hop-matches-ipv4-network", xff("203.0.113.7, ::ffff:10.0.0.3"), client=CLIENT
    ),
    case("ows-with-tab", xff("203.0.113.7,\t10.0.0.3"), client=CLIENT),
    case("nul-byte", xff("203.0.113.7\x00")),
    case("latin1-byte", xff("203.0.113.7\xe9")),
    case(
        "haproxy-option-forwardfor-adds-a-line",
        xff("198.51.100.1"),
        xff("203.0.113.7"),
        client=CLIENT,
    ),
    case("haproxy-two-lines-all-trusted", xff("10.1.1.1"), xff("10.0.0.3"), client=("10.1.1.1", 0)),
    case(
        "lines-are-combined-in-order", xff("203.0.113.7"), xff("10.0.0.3, 10.0.0.4"), client=CLIENT
    ),
    case(
        "envoy-append-and-proto",
        xff("203.0.113.7, 10.0.0.3"),
        xfp("https"),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "aws-alb",
        xff("203.0.113.7"),
        xfp("https"),
        ("x-forwarded-port", "443"),
        trust="10.0.0.0/8",
        extras=Extras(port=True),
        client=CLIENT,
        scheme="https",
        port=443,
    ),
    case(
        "aws-alb-client-spoof",
        xff("127.0.0.1, 203.0.113.7:61234"),
        xfp("https"),
        client=("203.0.113.7", 61234),
        scheme="https",
    ),
    case(
        "gcp-lb-client-then-lb-ip-trusted",
        xff("203.0.113.7, 34.120.0.1"),
        xfp("https"),
        trust="35.191.0.0/16, 130.211.0.0/22, 34.120.0.1",
        peer=("35.191.3.4", 60000),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "gcp-lb-ip-not-listed-is-the-client",
        xff("203.0.113.7, 34.120.0.1"),
        trust="35.191.0.0/16, 130.211.0.0/22",
        peer=("130.211.0.5", 60000),
        client=("34.120.0.1", 0),
    ),
    case(
        "cloudflare-like",
        xff("6.6.6.6, 203.0.113.7"),
        xfp("https"),
        trust="173.245.48.0/20, 2400:cb00::/32",
        peer=("173.245.49.1", 443),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "cloudflare-like-over-ipv6",
        xff("2001:db8:1::7"),
        trust="173.245.48.0/20, 2400:cb00::/32",
        peer=("2400:cb00:2048:1::6810:1", 443),
        client=("2001:db8:1::7", 0),
    ),
    case(
        "ingress-nginx-replaces-header",
        xff("203.0.113.7"),
        xfp("https"),
        ("x-forwarded-host", "shop.example.com"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/shop"),
        extras=ALL_EXTRAS,
        client=CLIENT,
        scheme="https",
        host="shop.example.com",
        port=443,
        prefix="/shop",
    ),
    case(
        "traefik-full-set",
        xff("203.0.113.7"),
        xfp("wss"),
        ("x-forwarded-host", "app.example.com:8443"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/api/"),
        ws=True,
        extras=ALL_EXTRAS,
        client=CLIENT,
        scheme="wss",
        host="app.example.com:8443",
        port=8443,
        prefix="/api",
    ),
]

TRUST = [
    case("untrusted-peer-xff-ignored", xff("203.0.113.7"), peer=STRANGER),
    case("untrusted-peer-proto-ignored", xfp("https"), peer=STRANGER),
    case(
        "untrusted-peer-extras-ignored",
        ("x-forwarded-host", "evil.example"),
        peer=STRANGER,
        extras=ALL_EXTRAS,
    ),
    case("exact-address-trusted", xff("203.0.113.7"), trust="10.0.0.2", client=CLIENT),
    case("exact-address-other-peer", xff("203.0.113.7"), trust="10.0.0.2", peer=("10.0.0.3", 1)),
    case("empty-trust-list", xff("203.0.113.7"), trust=""),
    case(
        "ipv4-mapped-peer-matches-ipv4-entry",
        xff("203.0.113.7"),
        peer=("::ffff:10.0.0.2", 1),
        client=CLIENT,
    ),
    case(
        "ipv4-peer-matches-ipv4-mapped-entry",
        xff("203.0.113.7"),
        trust="::ffff:10.0.0.2",
        client=CLIENT,
    ),
    case(
        "ipv4-peer-matches-ipv4-mapped-network",
        xff("203.0.113.7"),
        trust="::ffff:10.0.0.0/104",
        client=CLIENT,
    ),
    case("ipv4-peer-inside-ipv6-all", xff("203.0.113.7"), trust="::/0", client=CLIENT),
    case(
        "ipv6-loopback", xff("203.0.113.7"), trust="127.0.0.1,::1", peer=("::1", 1), client=CLIENT
    ),
    case(
        "ipv6-network",
        xff("203.0.113.7"),
        trust="2001:db8::/32",
        peer=("2001:db8:0:1::5", 1),
        client=CLIENT,
    ),
    case(
        "ipv6-outside-network", xff("203.0.113.7"), trust="2001:db8::/32", peer=("2001:db9::5", 1)
    ),
    case(
        "link-local-peer-zone-ignored",
        xff("203.0.113.7"),
        trust="fe80::/10",
        peer=("fe80::1%eth0", 1),
        client=CLIENT,
    ),
    case(
        "unix-peer-none-not-trusted-by-non-loopback",
        xff("203.0.113.7"),
        trust="10.0.0.1",
        peer=None,
        server=UNIX,
    ),
    case(
        "unix-peer-none-trusted-like-loopback",
        xff("203.0.113.7"),
        trust="127.0.0.1",
        peer=None,
        server=UNIX,
        client=CLIENT,
    ),
    case(
        "unix-peer-trusted-like-loopback-v6",
        xff("203.0.113.7"),
        trust="::1",
        peer=("/run/gunicorn.sock", 0),
        server=UNIX,
        client=CLIENT,
    ),
    case(
        "unix-peer-none-trusted-by-unix",
        xff("203.0.113.7"),
        trust="unix",
        peer=None,
        server=UNIX,
        client=CLIENT,
    ),
    case(
        "unix-peer-socket-path-trusted-by-unix",
        xff("203.0.113.7"),
        trust="127.0.0.1, unix",
        peer=("/run/gunicorn.sock", 0),
        server=UNIX,
        client=CLIENT,
    ),
    case(
        "unix-peer-empty-host-trusted-by-unix",
        xff("203.0.113.7"),
        trust="unix",
        peer=("", 0),
        server=UNIX,
        client=CLIENT,
    ),
    case(
        "unix-listener-as-a-list",
        xff("203.0.113.7"),
        trust="127.0.0.1",
        peer=None,
        server=["/run/gunicorn.sock", None],
        client=CLIENT,
    ),
    case(
        "unix-peer-trusted-by-star",
        xff("203.0.113.7"),
        trust="*",
        peer=None,
        server=UNIX,
        client=CLIENT,
    ),
    # Issue 13 item 2: no address on a TCP listener (getpeername() failed) is not a UNIX peer.
    case(
        "no-address-on-tcp-not-trusted-by-loopback",
        xff("127.0.0.1"),
        trust="127.0.0.1,::1",
        peer=None,
    ),
    case("no-address-on-tcp-not-trusted-by-unix", xff("203.0.113.7"), trust="unix", peer=None),
    case(
        "no-address-no-server-not-trusted",
        xff("203.0.113.7"),
        trust="127.0.0.1",
        peer=None,
        server=None,
    ),
    case(
        "socket-path-peer-on-tcp-not-trusted",
        xff("203.0.113.7"),
        trust="127.0.0.1, unix",
        peer=("/run/gunicorn.sock", 0),
    ),
    case(
        "no-address-on-tcp-trusted-by-star", xff("203.0.113.7"), trust="*", peer=None, client=CLIENT
    ),
    case("non-ip-peer-name-is-not-an-address", xff("203.0.113.7"), peer=("testclient", 50000)),
    case("unix-entry-does-not-trust-ip-peers", xff("203.0.113.7"), trust="unix"),
    case(
        "star-picks-rightmost", xff("6.6.6.6, 203.0.113.7"), trust="*", peer=STRANGER, client=CLIENT
    ),
    case("star-trusts-no-hop", xff("203.0.113.7, 10.0.0.3"), trust="*", client=("10.0.0.3", 0)),
    case("star-never-reads-left-garbage", xff("garbage, 203.0.113.7"), trust="*", client=CLIENT),
    case("star-rightmost-unknown", xff("203.0.113.7, unknown"), trust="*"),
    case(
        "star-plus-networks-walks-them",
        xff("203.0.113.7, 10.0.0.3"),
        trust="*, 10.0.0.0/8",
        peer=STRANGER,
        client=CLIENT,
    ),
]

PROTO = [
    case("proto-alone-applies", xfp("https"), scheme="https"),
    case("proto-case-insensitive", xfp("HTTPS"), scheme="https"),
    case("proto-ows", xfp(" https\t"), scheme="https"),
    case("proto-unknown-scheme", xfp("ftp")),
    case("proto-empty", xfp("")),
    case("proto-nul", xfp("https\x00")),
    case("proto-latin1", xfp("https\xe9")),
    case("proto-list-without-xff-rightmost", xfp("https, http"), scheme="http"),
    case("proto-lines-rightmost", xfp("https"), xfp("http"), scheme="http"),
    case(
        "proto-list-aligned-with-hops",
        xff("203.0.113.7, 10.0.0.3"),
        xfp("https, http"),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "proto-list-aligned-leftmost-when-all-trusted",
        xff("10.0.0.9, 10.0.0.3"),
        xfp("http, https"),
        client=("10.0.0.9", 0),
        scheme="http",
    ),
    case(
        "proto-list-aligned-across-lines",
        xff("203.0.113.7"),
        xff("10.0.0.3"),
        xfp("https, http"),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "proto-lines-aligned-with-one-xff-line",
        xff("203.0.113.7, 10.0.0.3"),
        xfp("https"),
        xfp("http"),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "proto-list-shorter-rightmost",
        xff("203.0.113.7, 10.0.0.3"),
        xfp("https"),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "proto-list-longer-rightmost",
        xff("203.0.113.7"),
        xfp("http, https"),
        client=CLIENT,
        scheme="https",
    ),
    case(
        "proto-aligned-entry-invalid",
        xff("203.0.113.7, 10.0.0.3"),
        xfp("gopher, https"),
        client=CLIENT,
    ),
    case("proto-untouched-when-xff-untrustworthy", xff("unknown"), xfp("https")),
    case("websocket-https-is-wss", xfp("https"), ws=True, scheme="wss"),
    case("websocket-http-is-ws", xfp("http"), ws=True, scheme="ws"),
    case("websocket-wss-stays", xfp("WSS"), ws=True, scheme="wss"),
    case("http-scope-wss-is-https", xfp("wss"), scheme="https"),
    case("http-scope-ws-is-http", xfp("ws"), scheme="http"),
]

FAMILIES = [
    case("x-forwarded-ignores-client-forwarded", fwd("for=6.6.6.6;proto=https")),
    case("forwarded-ignores-client-xff", xff("6.6.6.6"), xfp("https"), family="forwarded"),
    case(
        "forwarded-family-reads-only-forwarded",
        xff("6.6.6.6"),
        fwd("for=203.0.113.7"),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "x-forwarded-family-reads-only-xff", fwd("for=6.6.6.6"), xff("203.0.113.7"), client=CLIENT
    ),
    case(
        "off-reads-nothing", xff("203.0.113.7"), fwd("for=203.0.113.7"), xfp("https"), family="off"
    ),
    case(
        "forwarded-family-has-no-port-or-prefix",
        fwd("for=203.0.113.7"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/api"),
        family="forwarded",
        extras=ALL_EXTRAS,
        client=CLIENT,
    ),
]

FORWARDED = [
    # RFC 7239 section 4
    case("rfc4-obfuscated-gazonk", fwd('for="_gazonk"'), family="forwarded"),
    case(
        "rfc4-ipv6-port-param-name-case",
        fwd('For="[2001:db8:cafe::17]:4711"'),
        family="forwarded",
        client=("2001:db8:cafe::17", 4711),
    ),
    case(
        "rfc4-proto-and-by",
        fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
        family="forwarded",
        client=("192.0.2.60", 0),
        scheme="http",
    ),
    case(
        "rfc4-two-elements-rightmost-untrusted",
        fwd("for=192.0.2.43, for=198.51.100.17"),
        family="forwarded",
        client=("198.51.100.17", 0),
    ),
    case(
        "rfc4-two-elements-second-trusted",
        fwd("for=192.0.2.43, for=198.51.100.17"),
        trust="10.0.0.0/8, 198.51.100.17",
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    # RFC 7239 section 6
    case(
        "rfc6-ipv4-with-port",
        fwd('for="192.0.2.43:47011"'),
        family="forwarded",
        client=("192.0.2.43", 47011),
    ),
    case(
        "rfc6-ipv6-with-port",
        fwd('for="[2001:db8:cafe::17]:47011"'),
        family="forwarded",
        client=("2001:db8:cafe::17", 47011),
    ),
    case("rfc6.2-unknown", fwd("for=unknown"), family="forwarded"),
    case(
        "rfc6.2-unknown-keeps-peer-but-proto-applies",
        fwd("for=unknown;proto=https"),
        family="forwarded",
        scheme="https",
    ),
    case("rfc6.3-obfuscated-list", fwd("for=_hidden, for=_SEVKISEK"), family="forwarded"),
    case(
        "obfuscated-port-means-port-0",
        fwd('for="192.0.2.43:_p1"'),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case(
        "unknown-with-port",
        fwd('for="unknown:8080";proto=https'),
        family="forwarded",
        scheme="https",
    ),
    case(
        "unknown-uppercase-is-unknown",
        fwd("for=UNKNOWN;proto=https"),
        family="forwarded",
        scheme="https",
    ),
    # RFC 7239 section 7.1: lists, and lists split over lines
    case(
        "rfc7.1-list-ends-in-unknown",
        fwd('for=192.0.2.43,for="[2001:db8:cafe::17]",for=unknown'),
        family="forwarded",
    ),
    case(
        "rfc7.1-list-with-spaces",
        fwd('for=192.0.2.43, for="[2001:db8:cafe::17]", for=unknown'),
        family="forwarded",
    ),
    case(
        "rfc7.1-split-over-lines",
        fwd("for=192.0.2.43"),
        fwd('for="[2001:db8:cafe::17]", for=unknown'),
        family="forwarded",
    ),
    case(
        "rfc7.1-lines-rightmost-ipv6",
        fwd("for=192.0.2.43"),
        fwd('for="[2001:db8:cafe::17]"'),
        family="forwarded",
        client=("2001:db8:cafe::17", 0),
    ),
    # RFC 7239 section 7.4: the same client through either family
    case(
        "rfc7.4-x-forwarded-for",
        xff("192.0.2.43, 2001:db8:cafe::17"),
        client=("2001:db8:cafe::17", 0),
    ),
    case(
        "rfc7.4-forwarded",
        fwd('for=192.0.2.43, for="[2001:db8:cafe::17]"'),
        family="forwarded",
        client=("2001:db8:cafe::17", 0),
    ),
    # RFC 7239 section 7.5
    case(
        "rfc7.5-example",
        fwd("for=192.0.2.43,for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com"),
        family="forwarded",
        extras=Extras(host=True),
        client=("198.51.100.17", 0),
        scheme="http",
        host="example.com",
    ),
    case(
        "rfc7.5-proto-comes-from-the-chosen-element",
        fwd("for=192.0.2.43,for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com"),
        trust="198.51.100.0/24",
        peer=("198.51.100.1", 1),
        family="forwarded",
        extras=Extras(host=True),
        client=("192.0.2.43", 0),
    ),
    # Grammar
    case("ipv6-must-be-quoted", fwd("for=[2001:db8::1]"), family="forwarded"),
    case("ipv6-must-be-bracketed", fwd('for="2001:db8::1"'), family="forwarded"),
    case("port-must-be-quoted", fwd("for=192.0.2.43:80"), family="forwarded"),
    case("port-over-65535", fwd('for="192.0.2.43:99999"'), family="forwarded"),
    case(
        "quoted-pair-unescaped",
        fwd(r'for="192.0.2.4\3"'),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case("unterminated-quote", fwd('for="192.0.2.43'), family="forwarded"),
    case(
        "parameter-twice-in-one-element",
        fwd("for=192.0.2.43;for=198.51.100.17"),
        family="forwarded",
    ),
    case(
        "ows-around-semicolon-and-equals",
        fwd("for = 192.0.2.43 ; proto = https"),
        family="forwarded",
        client=("192.0.2.43", 0),
        scheme="https",
    ),
    case(
        "empty-list-elements",
        fwd(", for=192.0.2.43,,"),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case(
        "empty-pairs",
        fwd(";for=192.0.2.43;;proto=https;"),
        family="forwarded",
        client=("192.0.2.43", 0),
        scheme="https",
    ),
    case("pair-without-separator", fwd("for=192.0.2.43 proto=https"), family="forwarded"),
    case(
        "parameter-names-case-insensitive",
        fwd("FOR=192.0.2.43;PROTO=HTTPS"),
        family="forwarded",
        client=("192.0.2.43", 0),
        scheme="https",
    ),
    case(
        "extension-parameter-ignored",
        fwd("for=192.0.2.43;secret=egah2CGj55fSJFs"),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case("no-for-proto-only", fwd("proto=https"), family="forwarded", scheme="https"),
    case("no-for-by-only", fwd("by=203.0.113.43"), family="forwarded"),
    case("by-must-be-a-node", fwd("for=192.0.2.43;by=proxy.example"), family="forwarded"),
    case("proto-must-be-a-scheme", fwd('for=192.0.2.43;proto="ht tp"'), family="forwarded"),
    case(
        "proto-valid-but-not-http",
        fwd("for=192.0.2.43;proto=ftp"),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case("host-must-be-a-host", fwd('for=192.0.2.43;host="a b"'), family="forwarded"),
    case("empty-value", fwd("for="), family="forwarded"),
    case("empty-header", fwd(""), family="forwarded"),
    case(
        "obs-text-in-quoted-string",
        fwd('for=192.0.2.43;ext="caf\xe9"'),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case("control-char-in-quoted-string", fwd('for=192.0.2.43;ext="a\x01b"'), family="forwarded"),
    case("nul-in-token", fwd("for=192.0.2.43\x00"), family="forwarded"),
    case(
        "comma-inside-quotes-is-not-a-separator",
        fwd('for=192.0.2.43;ext="a, for=6.6.6.6"'),
        family="forwarded",
        client=("192.0.2.43", 0),
    ),
    case(
        "ipv4-mapped-node-unmapped",
        fwd('for="[::ffff:203.0.113.7]"'),
        family="forwarded",
        client=CLIENT,
    ),
    # Walk and spoofing
    case(
        "client-sent-element-never-wins",
        fwd("for=10.9.9.9, for=203.0.113.7"),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "client-broken-line-is-never-read",
        fwd('for="'),
        fwd("for=203.0.113.7"),
        family="forwarded",
        client=CLIENT,
    ),
    # Issue 13 item 1: elements left of the first untrusted hop, in the same line, never matter.
    case(
        "client-broken-prefix-in-the-same-line-is-never-read",
        fwd('for="oops, for=203.0.113.7'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "client-bad-host-left-of-the-proxy-element",
        fwd('host="a b", for=203.0.113.9'),
        trust="127.0.0.1",
        peer=("127.0.0.1", 40000),
        family="forwarded",
        client=("203.0.113.9", 0),
    ),
    case(
        "client-bad-proto-never-read",
        fwd('proto="ht tp", for=203.0.113.7'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "client-bad-for-never-read",
        fwd("for=[::1], for=203.0.113.7"),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "client-repeated-parameter-never-read",
        fwd("for=1.1.1.1;for=2.2.2.2, for=203.0.113.7"),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "client-stray-backslash-never-read",
        fwd("a=\\b, for=203.0.113.7"),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "client-stray-quote-never-read",
        fwd('a"b, for=203.0.113.7'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "32-trusted-elements-and-the-client",
        fwd("for=203.0.113.7"),
        fwd(", ".join(["for=10.0.0.3"] * 32)),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "more-than-32-trusted-elements-ignored",
        fwd("for=203.0.113.7, for=10.0.0.3"),
        fwd(", ".join(["for=10.0.0.3"] * 32)),
        family="forwarded",
    ),
    case(
        "element-of-1024-characters",
        fwd(f'for=203.0.113.7;ext="{"a" * 1002}"'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "element-over-1024-characters-reached",
        fwd(f'for=203.0.113.7;ext="{"a" * 1003}"'),
        family="forwarded",
    ),
    case(
        "client-element-over-1024-characters-never-read",
        fwd(f'ext="{"a" * 5000}", for=203.0.113.7'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "bad-element-reached-after-a-trusted-hop",
        fwd('for=203.0.113.7;host="a b", for=10.0.0.3'),
        family="forwarded",
    ),
    case("stray-quote-reached-by-the-walk", fwd('for=203.0.113.7;a"b'), family="forwarded"),
    # Quoted-strings read from the right: escapes decide where they begin.
    case(
        "escaped-quote-and-comma-inside-quotes",
        fwd(r'for=203.0.113.7;ext="a\",b"'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "escaped-backslash-before-closing-quote",
        fwd(r'for=203.0.113.7;ext="a\\"'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "escaped-closing-quote-is-unterminated",
        fwd(r'for=203.0.113.7;ext="a\"'),
        family="forwarded",
    ),
    case(
        "three-backslashes-then-quote",
        fwd(r'for=203.0.113.7;ext="\\\",x"'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "quoted-pairs-in-the-chosen-node",
        fwd(r'for="\2\0\3.0.113.7", for=10.0.0.3'),
        family="forwarded",
        client=CLIENT,
    ),
    case("backslash-outside-quotes-reached", fwd(r'for=203.0.113.7;ext=\"a"'), family="forwarded"),
    case(
        "empty-quoted-string-and-empty-elements",
        fwd('for=203.0.113.7;ext="",,'),
        family="forwarded",
        client=CLIENT,
    ),
    case(
        "broken-line-reached-by-the-walk",
        fwd("for=203.0.113.7 junk"),
        fwd("for=10.0.0.3"),
        family="forwarded",
    ),
    case(
        "walk-stops-at-unknown-hop",
        fwd("for=203.0.113.7;proto=http, for=unknown;proto=https"),
        family="forwarded",
        scheme="https",
    ),
    case(
        "walk-passes-trusted-hops",
        fwd("for=203.0.113.7;proto=https, for=10.0.0.3;proto=http"),
        family="forwarded",
        client=CLIENT,
        scheme="https",
    ),
    case(
        "star-rightmost-element",
        fwd("for=6.6.6.6;proto=http, for=203.0.113.7;proto=https"),
        trust="*",
        peer=STRANGER,
        family="forwarded",
        client=CLIENT,
        scheme="https",
    ),
    case(
        "websocket-proto-https-is-wss",
        fwd("for=203.0.113.7;proto=https"),
        ws=True,
        family="forwarded",
        client=CLIENT,
        scheme="wss",
    ),
    case(
        "host-extra-with-port",
        fwd('for=203.0.113.7;host="example.com:8443"'),
        family="forwarded",
        extras=Extras(host=True),
        client=CLIENT,
        host="example.com:8443",
    ),
    case(
        "host-extra-off", fwd("for=203.0.113.7;host=example.com"), family="forwarded", client=CLIENT
    ),
    case(
        "host-valid-syntax-but-unsafe",
        fwd('for=203.0.113.7;host="ex%41mple.com"'),
        family="forwarded",
        extras=Extras(host=True),
        client=CLIENT,
    ),
    case(
        "untrusted-peer-forwarded-ignored",
        fwd("for=203.0.113.7;proto=https"),
        peer=STRANGER,
        family="forwarded",
    ),
]

HOST = Extras(host=True)
PORT = Extras(port=True)
PREFIX = Extras(prefix=True)


def xfh(value):
    return ("x-forwarded-host", value)


def xfport(value):
    return ("x-forwarded-port", value)


def xfprefix(value):
    return ("x-forwarded-prefix", value)


EXTRAS = [
    case("host-off-by-default", xfh("example.com")),
    case("host-name", xfh("example.com"), extras=HOST, host="example.com"),
    case("host-name-port", xfh("example.com:8443"), extras=HOST, host="example.com:8443"),
    case("host-ipv6-literal", xfh("[2001:db8::1]:8443"), extras=HOST, host="[2001:db8::1]:8443"),
    case("host-ipv4", xfh("203.0.113.10"), extras=HOST, host="203.0.113.10"),
    case("host-rightmost", xfh("a.example, b.example"), extras=HOST, host="b.example"),
    case("host-space", xfh("exa mple.com"), extras=HOST),
    case("host-slash", xfh("evil.com/path"), extras=HOST),
    case("host-userinfo", xfh("user@evil.com"), extras=HOST),
    case("host-control-char", xfh("example.com\r\nx: y"), extras=HOST),
    case("host-port-zero", xfh("example.com:0"), extras=HOST),
    case("host-port-too-big", xfh("example.com:99999"), extras=HOST),
    case("host-empty", xfh(""), extras=HOST),
    case("host-label-too-long", xfh("a" * 64 + ".example"), extras=HOST),
    case("port-443", xfport("443"), extras=PORT, port=443),
    case("port-rightmost", xfport("80, 443"), extras=PORT, port=443),
    case("port-zero", xfport("0"), extras=PORT),
    case("port-too-big", xfport("65536"), extras=PORT),
    case("port-not-a-number", xfport("https"), extras=PORT),
    case("port-off-by-default", xfport("443")),
    case("prefix", xfprefix("/api"), extras=PREFIX, prefix="/api"),
    case("prefix-nested", xfprefix("/team/api-v2"), extras=PREFIX, prefix="/team/api-v2"),
    case("prefix-trailing-slash-dropped", xfprefix("/api/"), extras=PREFIX, prefix="/api"),
    case("prefix-root-is-no-prefix", xfprefix("/"), extras=PREFIX),
    case("prefix-relative", xfprefix("api"), extras=PREFIX),
    case("prefix-dot-dot", xfprefix("/a/../b"), extras=PREFIX),
    case("prefix-dot-segment", xfprefix("/a/./b"), extras=PREFIX),
    case("prefix-query", xfprefix("/a?b=1"), extras=PREFIX),
    case("prefix-fragment", xfprefix("/a#b"), extras=PREFIX),
    case("prefix-protocol-relative", xfprefix("//evil.com"), extras=PREFIX),
    case("prefix-backslash", xfprefix("/\\evil.com"), extras=PREFIX),
    case("prefix-pct-encoded", xfprefix("/%2e%2e"), extras=PREFIX),
    case("prefix-pct-encoded-letter", xfprefix("/%61pi"), extras=PREFIX),
    case(
        "prefix-unreserved",
        xfprefix("/team_a/v1.2/~shop-x"),
        extras=PREFIX,
        prefix="/team_a/v1.2/~shop-x",
    ),
    # Issue 13 item 6: sub-delims, ":" and "@" have no place in a mount point.
    *[
        case(f"prefix-refuses-{ord(char):02x}", xfprefix(f"/a{char}b"), extras=PREFIX)
        for char in "'();*+$!&=:@"
    ],
    case("prefix-control-char", xfprefix("/a\x00"), extras=PREFIX),
    case("prefix-rightmost", xfprefix("/v1, /api"), extras=PREFIX, prefix="/api"),
    case("prefix-off-by-default", xfprefix("/api")),
    case(
        "extras-independent-of-untrustworthy-xff",
        xff("unknown"),
        xfp("https"),
        xfh("example.com"),
        extras=HOST,
        host="example.com",
    ),
]

CASES = X_FORWARDED_FOR + TRUST + PROTO + FAMILIES + FORWARDED + EXTRAS


def encode(headers):
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


@pytest.mark.parametrize("trust, peer, server, headers, family, ws, extras, expected", CASES)
def test_resolve(trust, peer, server, headers, family, ws, extras, expected):
    got = resolve(
        peer,
        encode(headers),
        parse_trusted(trust),
        family,
        websocket=ws,
        extras=extras,
        server=server,
    )
    assert got == expected


@pytest.mark.parametrize("trust, peer, server, headers, family, ws, extras, expected", CASES)
def test_middleware_agrees_with_resolve(trust, peer, server, headers, family, ws, extras, expected):
    """Every row through the middleware too, with its headers as ASGI lists (issue 13 item 4)."""
    middleware = ForwardedMiddleware(
        RecordingApp(), trust, family, extras.host, extras.port, extras.prefix
    )
    kind = "websocket" if ws else "http"
    scope = http_scope(headers, client=peer, type=kind, server=server)
    scope["headers"] = [list(header) for header in scope["headers"]]
    seen = run(middleware, scope)
    if expected is None or expected.client is None:
        assert seen["client"] == peer
        assert "extensions" not in seen
    else:
        assert seen["client"] == expected.client
        assert seen["extensions"] == {"hardened_worker": {"peer": peer}}
    assert seen["scheme"] == (expected and expected.scheme or ("ws" if ws else "http"))


def test_table_is_big_enough():
    assert len(CASES) >= 90


# --- The trust list --------------------------------------------------------------------------

VALID_TRUST = [
    ("127.0.0.1,::1", "127.0.0.1", False, True),
    ("127.0.0.1,::1", "::1", False, True),
    ("127.0.0.1, ::1 ,", "10.0.0.1", False, False),
    (["10.0.0.0/8", "192.168.0.0/16"], "192.168.4.4", False, True),
    (["10.0.0.0/8", "192.168.0.0/16"], "172.16.0.1", False, False),
    ("*", "8.8.8.8", False, True),
    ("*", None, False, True),
    ("unix", None, True, True),
    ("UNIX", "/tmp/app.sock", True, True),
    ("unix", "127.0.0.1", False, False),
    ("unix", "127.0.0.1", True, False),  # an IP peer is judged by its address
    ("127.0.0.1", None, True, True),  # a UNIX socket is as local as loopback
    ("10.0.0.1", None, True, False),
    ("127.0.0.1,::1", None, False, False),  # no address on TCP: nobody we can name
    ("unix", None, False, False),
    ("unix", "/tmp/app.sock", False, False),
    ("::ffff:127.0.0.1", "127.0.0.1", False, True),
    ("127.0.0.1", "::ffff:127.0.0.1", False, True),
    ("::ffff:0:0/96", "192.0.2.1", False, True),
    ("0.0.0.0/0", "::ffff:192.0.2.1", False, True),
    ("2001:db8::/32", "::ffff:192.0.2.1", False, False),
    ("", "127.0.0.1", False, False),
    ([], "127.0.0.1", False, False),
]


@pytest.mark.parametrize("value, peer_host, unix, trusted", VALID_TRUST)
def test_trust_list(value, peer_host, unix, trusted):
    proxies = parse_trusted(value)
    assert proxies.trusts_peer(peer_host, unix) is trusted
    # The verdict is memoised; asking again, or on the other kind of listener, must not change
    # an IP peer's.
    assert proxies.trusts_peer(peer_host, unix) is trusted
    if peer_host is not None and peer_host[:1].isdigit():
        assert proxies.trusts_peer(peer_host, not unix) is trusted


INVALID_TRUST = [
    "localhost",
    "10.0.0.1/8",
    "10.0.0.0/33",
    "10.0.0.0/",
    "[::1]",
    "fe80::1%eth0",
    "10.0.0.01",
    "10.0.0",
    "10.0.0.0/8/8",
    "*.example.com",
    "uni x",
]


@pytest.mark.parametrize("entry", INVALID_TRUST)
def test_trust_list_rejects(entry):
    with pytest.raises(ValueError) as raised:
        parse_trusted(f"127.0.0.1, {entry}")
    assert str(raised.value) == f"{entry!r} is not an IP address, CIDR network, '*' or 'unix'"


def test_trust_list_rejects_non_strings():
    with pytest.raises(ValueError, match="is not an IP address"):
        parse_trusted(["127.0.0.1", None])  # type: ignore[list-item]


def test_trusted_from_gunicorn_config_value():
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("forwarded_allow_ips", "10.0.0.0/8, ::1")
    trusted = trusted_from_gunicorn(cfg.forwarded_allow_ips)
    assert isinstance(trusted, TrustedProxies)
    assert trusted.trusts_peer("10.1.2.3") and trusted.trusts_peer("::1")
    assert not trusted.trusts_peer("192.0.2.1")
    assert not trusted_from_gunicorn(None).trusts_peer("127.0.0.1")


def test_resolve_rejects_unknown_family():
    with pytest.raises(ValueError, match="is not one of"):
        resolve(PROXY, [], parse_trusted(INTERNAL), "x-real-ip")


# --- The middleware ----------------------------------------------------------------------------


class RecordingApp:
    def __init__(self):
        self.scopes = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)


async def _receive():  # pragma: no cover - never awaited by these apps
    return {"type": "http.disconnect"}


async def _send(message):  # pragma: no cover
    pass


def http_scope(headers, client=PROXY, type="http", **extra):
    scope = {
        "type": type,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("10.0.0.10", 8000),
        "client": client,
        "scheme": "ws" if type == "websocket" else "http",
        "root_path": "",
        "method": "GET",
        "path": "/users/1",
        "raw_path": b"/users/1",
        "query_string": b"",
        "headers": encode(headers),
        "state": {},
    }
    scope.update(extra)
    return scope


TYPICAL = [
    ("host", "api.example.com"),
    ("user-agent", "Mozilla/5.0"),
    ("accept", "*/*"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-US,en;q=0.9"),
    ("connection", "keep-alive"),
    ("cache-control", "no-cache"),
    ("pragma", "no-cache"),
    ("cookie", "session=abc123"),
    ("referer", "https://example.com/"),
    ("sec-fetch-dest", "empty"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-site", "same-site"),
    ("origin", "https://example.com"),
    ("authorization", "Bearer x.y.z"),
]


def run(middleware, scope):
    asyncio.run(middleware(scope, _receive, _send))
    return middleware.app.scopes[-1]


def test_middleware_passes_the_same_scope_when_no_header():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    scope = http_scope(TYPICAL)
    snapshot = dict(scope)
    assert run(middleware, scope) is scope
    assert scope == snapshot


def test_middleware_passes_the_same_scope_for_untrusted_peer():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    scope = http_scope(TYPICAL + [xff("6.6.6.6"), xfp("https")], client=STRANGER)
    assert run(middleware, scope) is scope
    assert scope["client"] == STRANGER and scope["scheme"] == "http"


def test_middleware_passes_other_scope_types():
    middleware = ForwardedMiddleware(RecordingApp(), "*")
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    assert run(middleware, scope) is scope


def test_middleware_rewrites_in_place_so_the_access_log_sees_the_client():
    middleware = ForwardedMiddleware(RecordingApp(), parse_trusted("10.0.0.0/8"))
    scope = http_scope(TYPICAL + [xff("203.0.113.7, 10.0.0.3"), xfp("https")])
    seen = run(middleware, scope)
    assert seen is scope
    assert seen["client"] == CLIENT and seen["scheme"] == "https"


def test_middleware_header_present_but_nothing_to_change_keeps_scope():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    scope = http_scope(TYPICAL + [xff("unknown")])
    assert run(middleware, scope) is scope


def test_middleware_websocket_scheme():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    seen = run(middleware, http_scope([xfp("https")], type="websocket"))
    assert seen["scheme"] == "wss"


def test_middleware_extras_host_port_prefix():
    middleware = ForwardedMiddleware(
        RecordingApp(), "10.0.0.0/8", host=True, port=True, prefix=True
    )
    scope = http_scope(
        TYPICAL + [xfh("shop.example.com"), ("host", "dup"), xfport("443"), xfprefix("/shop")],
        root_path="/inner",
        path="/inner/users/1",
        raw_path=b"/inner/users/1",
    )
    seen = run(middleware, scope)
    hosts = [value for name, value in seen["headers"] if name == b"host"]
    assert hosts == [b"shop.example.com"]
    assert seen["headers"][0] == (b"host", b"shop.example.com")  # where the Host header was
    assert seen["server"] == ("10.0.0.10", 443)
    assert seen["root_path"] == "/shop/inner"
    assert seen["path"] == "/shop/inner/users/1"
    assert seen["raw_path"] == b"/shop/inner/users/1"
    assert seen["path"].startswith(seen["root_path"])


def test_middleware_host_added_when_missing_and_port_needs_a_server():
    middleware = ForwardedMiddleware(RecordingApp(), "unix", host=True, port=True)
    scope = http_scope([xfh("example.com"), xfport("443")], client=None, server=UNIX)
    seen = run(middleware, scope)
    assert (b"host", b"example.com") in seen["headers"]
    assert seen["server"] == UNIX


def test_middleware_prefix_without_raw_path():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8", prefix=True)
    scope = http_scope([xfprefix("/api")], raw_path=None)
    seen = run(middleware, scope)
    assert seen["path"] == "/api/users/1" and seen["raw_path"] is None


def test_middleware_forwarded_family():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8", family="forwarded")
    seen = run(middleware, http_scope([xff("6.6.6.6"), fwd("for=203.0.113.7;proto=https")]))
    assert seen["client"] == CLIENT and seen["scheme"] == "https"


def test_middleware_off_passes_through():
    middleware = ForwardedMiddleware(RecordingApp(), "*", family="off")
    scope = http_scope([xff("203.0.113.7"), fwd("for=203.0.113.7")])
    assert run(middleware, scope) is scope


def test_middleware_rejects_unknown_family():
    with pytest.raises(ValueError):
        ForwardedMiddleware(RecordingApp(), "*", family="both")


def test_middleware_logs_why_at_debug(caplog):
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    with caplog.at_level(logging.DEBUG, logger="hardened_worker.forwarded"):
        run(middleware, http_scope([xff("203.0.113.7, unknown"), xfp("https")]))
        run(middleware, http_scope([xff("203.0.113.7")], client=STRANGER))
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "X-Forwarded-For" in line and "'unknown' is not an IP address" in line for line in lines
    )
    assert any("X-Forwarded-Proto" in line and "untrustworthy" in line for line in lines)
    assert any("'198.51.100.9'" in line and "not a trusted proxy" in line for line in lines)
    assert all("\n" not in line for line in lines)


def test_middleware_silent_above_debug(caplog):
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    with caplog.at_level(logging.INFO, logger="hardened_worker.forwarded"):
        run(middleware, http_scope([xff("unknown")]))
        run(middleware, http_scope([xff("203.0.113.7")], client=STRANGER))
    assert caplog.records == []


def test_middleware_warns_about_extras_the_family_cannot_carry(caplog):
    with caplog.at_level(logging.WARNING, logger="hardened_worker.forwarded"):
        ForwardedMiddleware(RecordingApp(), "*", family="forwarded", port=True, prefix=True)
    assert "ignoring port=True and prefix=True" in caplog.text


def test_middleware_memoised_verdicts_stay_per_scope_type_and_per_values():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    first = run(middleware, http_scope(TYPICAL + [xff("203.0.113.7"), xfp("https")]))
    again = run(middleware, http_scope(TYPICAL + [xff("203.0.113.7"), xfp("https")]))
    socket = run(middleware, http_scope([xff("203.0.113.7"), xfp("https")], type="websocket"))
    other = run(middleware, http_scope(TYPICAL + [xff("198.51.100.1"), xfp("https")]))
    assert first["client"] == again["client"] == socket["client"] == ("203.0.113.7", 0)
    assert (first["scheme"], socket["scheme"]) == ("https", "wss")
    assert other["client"] == ("198.51.100.1", 0)


# --- Issue 13 item 5: the socket peer, for the app ----------------------------------------------


def test_middleware_keeps_the_socket_peer_in_a_scope_extension():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    seen = run(middleware, http_scope([xff("203.0.113.7"), xfp("https")]))
    assert seen["client"] == CLIENT
    assert seen["extensions"] == {"hardened_worker": {"peer": PROXY}}


def test_middleware_adds_to_the_servers_extensions():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    trailers = {}
    scope = http_scope(
        [xff("203.0.113.7")],
        extensions={"http.response.trailers": trailers, "hardened_worker": {"other": 1}},
    )
    seen = run(middleware, scope)
    assert seen["extensions"]["http.response.trailers"] is trailers
    assert seen["extensions"]["hardened_worker"] == {"other": 1, "peer": PROXY}


def test_two_middlewares_record_the_socket_peer_not_the_first_claim():
    inner = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8, 203.0.113.7")
    outer = ForwardedMiddleware(inner, "10.0.0.0/8")
    scope = http_scope([xff("198.51.100.1, 203.0.113.7")])
    asyncio.run(outer(scope, _receive, _send))
    seen = inner.app.scopes[-1]
    assert seen["client"] == ("198.51.100.1", 0)
    assert seen["extensions"]["hardened_worker"]["peer"] == PROXY


def test_no_extension_when_the_client_stands():
    middleware = ForwardedMiddleware(RecordingApp(), "10.0.0.0/8")
    seen = run(middleware, http_scope([xfp("https")]))
    assert seen["scheme"] == "https" and "extensions" not in seen


def test_unix_peer_recorded_as_none():
    middleware = ForwardedMiddleware(RecordingApp(), "127.0.0.1")
    seen = run(middleware, http_scope([xff("203.0.113.7")], client=None, server=UNIX))
    assert seen["client"] == CLIENT and seen["extensions"]["hardened_worker"]["peer"] is None


def test_no_address_peer_on_tcp_is_not_trusted_by_the_middleware():
    middleware = ForwardedMiddleware(RecordingApp(), "127.0.0.1,::1")
    scope = http_scope([xff("127.0.0.1")], client=None)
    assert run(middleware, scope)["client"] is None


# --- Issue 13 item 6: a trust list that trusts every hop -----------------------------------------


@pytest.mark.parametrize(
    "value, warns, what",
    [
        ("0.0.0.0/0", True, "every IPv4 address"),
        ("0.0.0.0/0,::/0", True, "every address"),
        ("::/0", True, "every address"),  # ::ffff:0:0/96 is inside: IPv4 too
        ("::ffff:0:0/96", True, "every IPv4 address"),  # every IPv4-mapped address is every one
        ("2001:db8::/32", False, None),
        ("::/1", True, "every IPv4 address"),  # holds ::ffff:0:0/96
        ("*", False, None),
        ("127.0.0.1,::1", False, None),
        ("10.0.0.0/8, 0.0.0.0/1", False, None),
        ("", False, None),
    ],
)
def test_trust_warning(value, warns, what):
    warning = trust_warning(parse_trusted(value))
    assert (warning is not None) is warns
    if warns:
        assert "\n" not in warning and what in warning and "'*'" in warning
        assert warning.startswith("hardened_worker: forwarded_allow_ips trusts ")
