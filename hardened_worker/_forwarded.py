"""The client address and scheme a trusted proxy forwarded, sans I/O.

A reverse proxy connects to us on the client's behalf and tells us who the client was in a
header: ``X-Forwarded-For`` / ``X-Forwarded-Proto`` (de facto) or ``Forwarded`` (RFC 7239). Any
client can write those headers too, so this module believes them only as far as a chain of
proxies we trust vouches for them. :func:`resolve` is the whole decision as a pure function
(peer address, headers, trust list in; a :class:`Resolution` out); :class:`ForwardedMiddleware`
is thin ASGI glue on top that can be used without gunicorn.

What we trust (``forwarded_allow_ips``, parsed once by :func:`parse_trusted`)
    Entries are IP addresses, CIDR networks, ``*`` and ``unix``. An IPv4-mapped IPv6 address
    (``::ffff:10.0.0.1``, what a dual-stack socket reports for an IPv4 peer) is the same host as
    its IPv4 address, in the list and in the peer alike.

    Only a *peer* (the socket's other end) in the list may tell us anything. ``*`` trusts every
    peer. A peer on a UNIX socket -- one reached through a listening socket that is a UNIX socket,
    ASGI ``scope["server"]`` ``(path, None)`` -- is trusted when the list holds ``*``, ``unix`` or
    a loopback address: a UNIX socket can only be reached from this host, as loopback can, so
    gunicorn's default ``127.0.0.1,::1`` trusts nginx on the same host over either. (gunicorn's
    validator refuses ``unix``, so through gunicorn the loopback rule is the way in.) A peer
    *without an address* on a TCP listener (``client`` None: uvicorn reports that when
    ``getpeername()`` failed, e.g. after an early reset) is nobody we can name, and only ``*``
    trusts it.

Which hop is the client (RFC 7239 section 8.1; MDN "X-Forwarded-For", Selecting an IP address)
    Each proxy appends the address it received the request from, so the list is read from the
    right: past every hop that is itself a trusted proxy, and the first untrusted hop is the
    client. If every hop is trusted, the leftmost is. ``*`` trusts peers, not hops, so with
    ``*`` alone the rightmost entry -- the one our peer added -- is the client, never a
    leftmost entry anybody could have written.

    Entries left of the client were written by the client and are never read: a client that
    sends ``X-Forwarded-For: unknown`` or a broken ``Forwarded`` line must not be able to make
    itself look like our proxy (a private address many apps treat as "internal"). Within the
    part of the list we do read:

    * ``X-Forwarded-For``: an entry that is not an IP address (``unknown``, empty, garbage)
      makes the header untrustworthy: the peer address stands and the scheme is left alone.
    * ``Forwarded``: lines and elements are parsed from the right, one at a time, only as far as
      the walk goes: a proxy appends its element to whatever the client sent (nginx's
      ``$proxy_add_forwarded`` does, on the same line), so a client element, however broken,
      cannot void the proxies' ones, and a long client value costs nothing to skip. A syntax
      error (RFC 7239 section 4 and 6 grammar) in an element the walk reaches makes us ignore
      the whole header. An element whose ``for`` is ``unknown``, an obfuscated
      ``_identifier`` (section 6.2, 6.3) or missing is a hop we cannot trust, so the walk
      stops there; since it is not an IP address the client stays the peer address -- we
      can't give the app a non-IP client -- but that element's ``proto`` and ``host``,
      written by a trusted proxy, still apply.
    * Either family: a walk past more than 32 trusted hops, or to a ``Forwarded`` element
      longer than 1024 characters, makes the header untrustworthy too. No proxy chain writes
      that much, and it bounds the work a request can cause (a client that is itself trusted,
      or any client when ``0.0.0.0/0`` is, could otherwise make every request walk 60 KiB).

Header family
    ``"x-forwarded"`` (default), ``"forwarded"`` or ``"off"``; never both families at once, so a
    client cannot slip one past a proxy that only sanitises the other. Opt-in extras, each only
    from a trusted peer and only when valid: ``host`` (X-Forwarded-Host / Forwarded ``host=``
    rewrites the Host header), ``port`` (X-Forwarded-Port sets the ``server`` port), ``prefix``
    (X-Forwarded-Prefix becomes ``root_path``). RFC 7239 has no port or prefix parameter, so
    those two only work with ``"x-forwarded"``; ``"off"`` turns everything off.

The socket peer, for the app
    Whenever the middleware replaces ``scope["client"]`` it keeps the socket peer it replaced
    (``(host, port)``, or None on a UNIX socket) in ``scope["extensions"]["hardened_worker"]
    ["peer"]`` (the name is :data:`EXTENSION`), adding to any extensions dict the server made.

Robustness
    Nothing here raises on any header bytes, with ``scope["headers"]`` pairs as tuples or as
    lists (ASGI allows both): values are decoded as latin-1 (total) and every grammar below is
    a regular expression transcribed from its RFC, checked before any value reaches
    :mod:`ipaddress`. Each header is parsed only as far as the right-to-left walk needs, and
    what is memoised is bounded in bytes (see ``_Memo``). Resulting client hosts are IP
    addresses in :mod:`ipaddress`'s canonical form, IPv4-mapped IPv6 written as plain IPv4.

References: RFC 7239 (Forwarded), RFC 7230 section 3.2.6 and 7 (token, quoted-string, lists),
RFC 3986 section 3.2.2 (IP literals, host), https://developer.mozilla.org/en-US/docs/Web/HTTP/
Headers/X-Forwarded-For. Design after uvicorn's ``middleware/proxy_headers.py``.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "EXTENSION",
    "FAMILIES",
    "Extras",
    "ForwardedMiddleware",
    "NO_EXTRAS",
    "Resolution",
    "TrustedProxies",
    "header_names",
    "is_unix_listener",
    "parse_trusted",
    "resolve",
    "rewrite_scope",
    "trust_warning",
    "trusted_from_gunicorn",
]

logger = logging.getLogger("hardened_worker.forwarded")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Headers = Iterable[tuple[bytes, bytes]]
Report = Callable[[str, str], None]

FAMILIES = ("x-forwarded", "forwarded", "off")


# ---------------------------------------------------------------------------------------------
# Grammar. Every rule is a `str` pattern over the latin-1 decoding of the header value; all
# character classes are spelled out in ASCII (never \d or \w, which match other digits and
# letters). Matched with fullmatch()/match() only, and built so no rule can backtrack badly.
# ---------------------------------------------------------------------------------------------

# https://www.rfc-editor.org/rfc/rfc7230#section-3.2.3
#   OWS = *( SP / HTAB )
_OWS = "[ \t]*"
_OWS_CHARS = " \t"

# https://www.rfc-editor.org/rfc/rfc7230#section-3.2.6
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|"
#         / "~" / DIGIT / ALPHA
_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"

#   quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   obs-text      = %x80-FF
#   quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
_QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

# https://www.rfc-editor.org/rfc/rfc3986#section-3.2.2
#   dec-octet   = DIGIT / %x31-39 DIGIT / "1" 2DIGIT / "2" %x30-34 DIGIT / "25" %x30-35
#   IPv4address = dec-octet "." dec-octet "." dec-octet "." dec-octet
_DEC_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = rf"{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}"

#   IPv6address =                            6( h16 ":" ) ls32
#               /                       "::" 5( h16 ":" ) ls32
#               / [               h16 ] "::" 4( h16 ":" ) ls32
#               / [ *1( h16 ":" ) h16 ] "::" 3( h16 ":" ) ls32
#               / [ *2( h16 ":" ) h16 ] "::" 2( h16 ":" ) ls32
#               / [ *3( h16 ":" ) h16 ] "::"    h16 ":"   ls32
#               / [ *4( h16 ":" ) h16 ] "::"              ls32
#               / [ *5( h16 ":" ) h16 ] "::"              h16
#               / [ *6( h16 ":" ) h16 ] "::"
#   h16         = 1*4HEXDIG
#   ls32        = ( h16 ":" h16 ) / IPv4address
# No zone identifier (RFC 6874 "%eth0"): it means nothing outside the host that wrote it.
_H16 = "[0-9A-Fa-f]{1,4}"
_LS32 = f"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        [
            f"(?:{_H16}:){{6}}{_LS32}",
            f"::(?:{_H16}:){{5}}{_LS32}",
            f"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            f"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            f"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            f"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            f"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            f"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            f"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
_IPV4_RE = re.compile(_IPV4)
_IPV6_RE = re.compile(_IPV6)
_IPV6_MAX = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")

#   port = *DIGIT   -- we require 1 to 5 digits and a value a socket can have.
_PORT_RE = re.compile("[0-9]{1,5}")

# https://www.rfc-editor.org/rfc/rfc7239#section-4
#   Forwarded         = 1#forwarded-element
#   forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
#   forwarded-pair    = token "=" value
#   value             = token / quoted-string
# and https://www.rfc-editor.org/rfc/rfc7230#section-7 for the list:
#   1#element => *( "," OWS ) element *( OWS "," [ OWS element ] )
# Deviation: OWS is also tolerated around ";" and "=", which section 4 does not allow but
# several proxies' templates write ("for=1.2.3.4; proto=https"); nothing is ambiguous about it.
_PAIR_RE = re.compile(rf"({_TOKEN}){_OWS}={_OWS}({_TOKEN}|{_QUOTED_STRING})")

# Read right to left (see _elements_from_right): one element of the *reversed* line is
# everything up to the first "," outside a quoted-string, so the lexer needs the reverse of
# quoted-string. Reversed, each "\" of a quoted-pair follows the character it escapes; the
# reverse is unambiguous because a "\" always starts a quoted-pair, so in the original a run
# of k backslashes before a character holds k // 2 escaped backslashes, and one more
# quoted-pair when k is odd. Hence, reversed: after the closing DQUOTE an even run (an odd one
# would escape it), then any character but DQUOTE and "\" followed by any run, or a DQUOTE
# followed by an odd run (an escaped DQUOTE), up to the DQUOTE that opened it. Everything
# outside quoted-strings is left to _PAIR_RE, which checks each element the walk reaches.
# Every alternative starts with a different character, so the engine backtracks only out of a
# quoted-string that does not close, one step per character; the one shorter reading it can
# then settle for closes at an escaped DQUOTE and so leaves a "\" outside quotes, which
# _PAIR_RE refuses. (Possessive quantifiers would rule backtracking out, but need Python 3.11.)
_REV_QUOTED_STRING = r'"(?:\\\\)*(?:[^"\\]\\*|"\\(?:\\\\)*(?!\\))*"'
_REV_ELEMENT_RE = re.compile(rf'(?:[^",]+|{_REV_QUOTED_STRING})*')

# https://www.rfc-editor.org/rfc/rfc7239#section-6
#   node      = nodename [ ":" node-port ]
#   nodename  = IPv4address / "[" IPv6address "]" / "unknown" / obfnode
#   obfnode   = "_" 1*( ALPHA / DIGIT / "." / "_" / "-")
#   node-port = port / obfport
#   port      = 1*5DIGIT
#   obfport   = "_" 1*(ALPHA / DIGIT / "." / "_" / "-")
# "unknown" is an ABNF literal, so case-insensitive (RFC 5234 section 2.3).
_OBF = "_[A-Za-z0-9._-]+"
_NODE_RE = re.compile(
    rf"(?:(?P<v4>{_IPV4})|\[(?P<v6>{_IPV6})\]|(?i:unknown)|{_OBF})"
    rf"(?::(?:(?P<port>[0-9]{{1,5}})|{_OBF}))?",
    re.ASCII,
)

# https://www.rfc-editor.org/rfc/rfc7239#section-5.4 (proto: a URI scheme name) and
# https://www.rfc-editor.org/rfc/rfc3986#section-3.1
#   scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME_RE = re.compile("[A-Za-z][A-Za-z0-9+.-]*")

# https://www.rfc-editor.org/rfc/rfc7239#section-5.3 (host: the Host header field), i.e.
# https://www.rfc-editor.org/rfc/rfc7230#section-5.4 and RFC 3986 section 3.2.2:
#   Host        = uri-host [ ":" port ]
#   uri-host    = IP-literal / IPv4address / reg-name
#   IP-literal  = "[" ( IPv6address / IPvFuture  ) "]"
#   IPvFuture   = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
#   reg-name    = *( unreserved / pct-encoded / sub-delims )      ; IPv4address is one too
#   unreserved  = ALPHA / DIGIT / "-" / "." / "_" / "~"
#   sub-delims  = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
#   pct-encoded = "%" HEXDIG HEXDIG
# This is only the syntax check of a Forwarded header; what may reach the app's Host header is
# the narrower _SAFE_HOST_RE below.
_UNRESERVED = "-A-Za-z0-9._~"  # "-" first: literal, not a range
_SUB_DELIMS = "!$&'()*+,;="
_REG_NAME = f"(?:[{_UNRESERVED}{_SUB_DELIMS}]|%[0-9A-Fa-f]{{2}})*"
_IPVFUTURE = rf"[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+"
_HOST_RE = re.compile(rf"(?:\[(?:{_IPV6}|{_IPVFUTURE})\]|{_REG_NAME})(?::[0-9]*)?")

# Deviation, for the Host the app will see: a DNS name (RFC 1123 labels, plus "_", which real
# internal names use) or a bracketed IPv6 address, and an optional port. No sub-delims and no
# pct-encoding: they have no place in a name and are the raw material of cache poisoning and
# of links built from the Host header; the same goes for spaces, "/", "@" and control chars.
_LABEL = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_SAFE_HOST_RE = re.compile(
    rf"(?P<name>\[{_IPV6}\]|{_LABEL}(?:\.{_LABEL})*\.?)(?::(?P<port>[0-9]{{1,5}}))?"
)
_MAX_HOST = 253 + len(":65535")

# X-Forwarded-Prefix has no RFC. We take an absolute path (RFC 3986 section 3.3) of non-empty
# segments, each made of unreserved characters only:
#   prefix     = 1*( "/" segment )
#   segment    = 1*unreserved
#   unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
# and no "." or ".." segment and no ".." at all. Deviation from pchar: a prefix is the path a
# proxy mounts an app at, a name like "/api/v2" or "/team_a/shop"; the rest of pchar has no
# place in one. No sub-delims ("!$&'()*+,;=") or ":" "@": the same raw material of injection
# into links built from root_path that the Host check refuses (and "," separates the list).
# No pct-encoded: root_path and path are decoded and raw_path is not, so "%XX" would need a
# decoding step in which "%2F" and "%2E" turn into the "/" and "." the checks above refuse.
# Empty segments would allow a "//host" prefix, which browsers follow as a link to another site.
_PREFIX_RE = re.compile(f"(?:/[{_UNRESERVED}]+)+")

# X-Forwarded-Proto values we act on, and what each means for an HTTP or a WebSocket scope
# (ASGI: http scopes have scheme http/https, websocket scopes ws/wss).
_SCHEMES = {
    "http": ("http", "ws"),
    "https": ("https", "wss"),
    "ws": ("http", "ws"),
    "wss": ("https", "wss"),
}


# ---------------------------------------------------------------------------------------------
# Memos
# ---------------------------------------------------------------------------------------------


class _Memo:
    """A memo bounded in bytes: memory a client can fill with values of its choosing.

    Behind a proxy every request carries forwarding headers, and the same few proxies, clients
    and whole header values recur, while :mod:`ipaddress` takes microseconds per address; so
    the pure parsers and verdicts here are memoised. Entry counts alone are no bound (4096
    entries keyed by 60 KiB header values pinned 240 MiB per worker), so every entry is
    charged its estimated size in bytes (the ``*_BYTES`` estimates below, checked against
    tracemalloc by the tests): an entry over ``item_max`` is not kept, and the memo is
    cleared when the next entry would take it over ``budget``. Clearing rather than evicting
    keeps :meth:`get` a plain dict lookup; a client churning keys only costs itself and its
    neighbours the uncached path until the memo refills.
    """

    __slots__ = ("get", "_entries", "budget", "item_max", "spent")

    def __init__(self, budget: int, item_max: int) -> None:
        self._entries: dict[Any, Any] = {}
        self.get = self._entries.get  # bound once: the per-request lookup
        self.budget = budget
        self.item_max = item_max
        self.spent = 0

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.item_max:
            return
        if self.spent + size > self.budget:
            self.clear()
        self._entries[key] = value
        self.spent += size

    def clear(self) -> None:
        self._entries.clear()
        self.spent = 0

    def __len__(self) -> int:
        return len(self._entries)


# What objects cost on 64-bit CPython, rounded up, lengths charged on top: a dict slot with
# its share of the table, a str (49 + length, ASCII), a bytes (33 + length), a tuple of two
# (or a Resolution, five slots) with its GC header, a _Node, an IPv6Address with its int.
_SLOT_BYTES = 64
_STR_BYTES = 56
_BYTES_BYTES = 40
_PAIR_BYTES = 72
_RESOLUTION_BYTES = 96
_NODE_BYTES = _SLOT_BYTES + 2 * _STR_BYTES + 80 + 104  # key and text strs, _Node, address
_TRUST_BYTES = _SLOT_BYTES + _STR_BYTES  # a bool is shared: the key (a host) is the cost


def _parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    # The length check first: no long junk value reaches the regex or ipaddress.
    if len(text) > 15 or _IPV4_RE.fullmatch(text) is None:
        return None
    return ipaddress.IPv4Address(text)


def _parse_ipv6(text: str) -> IPAddress | None:
    """An IPv6 address; IPv4-mapped ones come back as the IPv4 address they carry."""
    if len(text) > _IPV6_MAX or _IPV6_RE.fullmatch(text) is None:
        return None
    address = ipaddress.IPv6Address(text)
    return address.ipv4_mapped or address


def _parse_ip(text: str) -> IPAddress | None:
    return _parse_ipv6(text) if ":" in text else _parse_ipv4(text)


def _parse_port(text: str) -> int | None:
    if _PORT_RE.fullmatch(text) is None:
        return None
    port = int(text)
    return port if port <= 65535 else None


def _shorten(text: str, limit: int = 60) -> str:
    """A header value fit for one log line: repr() escapes control characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


class _Node(NamedTuple):
    """A hop named in a header: an X-Forwarded-For entry or a Forwarded ``node``."""

    address: IPAddress | None  # None: "unknown" or obfuscated (Forwarded only)
    port: int  # 0 when absent or obfuscated
    text: str | None  # str(address): the client host we hand out, and the trust cache key


# The longest node that can hold an IP address: "[" IPv6 "]:" port. Longer text is parsed
# every time, never memoised (an obfuscated Forwarded node may be longer).
_NODE_CACHE_MAX = _IPV6_MAX + len("[]:65535")
_NODE_MEMO_BUDGET = 512 * 1024  # ~1200 distinct hops, for each of the two header families
_MISSING = object()


def _memoised_node_parser(parse: Callable[[str], _Node | None]) -> Callable[[str], _Node | None]:
    """``parse`` with its results kept in a :class:`_Memo` (the memo is its ``memo``)."""
    memo = _Memo(_NODE_MEMO_BUDGET, _NODE_BYTES + 2 * _NODE_CACHE_MAX)

    def parse_memoised(text: str) -> _Node | None:
        if len(text) > _NODE_CACHE_MAX:  # before hashing it: no IP node is that long
            return parse(text)
        node = memo.get(text, _MISSING)
        if node is _MISSING:
            node = parse(text)
            memo.put(text, node, _NODE_BYTES + 2 * len(text))
        return node

    parse_memoised.memo = memo  # type: ignore[attr-defined]
    return parse_memoised


# ---------------------------------------------------------------------------------------------
# Trust
# ---------------------------------------------------------------------------------------------

_V4_IN_V6 = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL_V4 = ipaddress.IPv4Network("0.0.0.0/0")
_TRUST_MEMO_BUDGET = 128 * 1024  # ~1000 distinct peers or hops


class TrustedProxies:
    """The parsed ``forwarded_allow_ips``: who may tell us who the client is.

    Build it with :func:`parse_trusted`. :meth:`trusts_peer` answers for the socket peer (and
    applies ``*`` and ``unix``); :meth:`trusts` answers for an address found in a header, where
    only explicit addresses and networks count (see the module docstring for why ``*`` trusts no
    hop).
    """

    __slots__ = ("addresses", "networks", "trust_all", "trust_unix", "_peer_memo", "_hop_memo")

    def __init__(
        self,
        addresses: Iterable[IPAddress] = (),
        networks: Iterable[IPNetwork] = (),
        trust_all: bool = False,
        trust_unix: bool = False,
    ) -> None:
        exact: set[IPAddress] = set()
        for address in addresses:
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            exact.add(address)
        nets: list[IPNetwork] = []
        for network in networks:
            nets.append(network)
            # Addresses are compared in their IPv4 form (see _parse_ipv6), so an IPv6 network
            # that covers IPv4-mapped addresses must also be expressed over IPv4.
            if network.version == 6:
                if network.subnet_of(_V4_IN_V6):
                    nets.append(
                        ipaddress.IPv4Network(
                            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
                        )
                    )
                elif network.supernet_of(_V4_IN_V6):
                    nets.append(_ALL_V4)
        self.addresses: frozenset[IPAddress] = frozenset(exact)
        self.networks: tuple[IPNetwork, ...] = tuple(dict.fromkeys(nets))
        self.trust_all = trust_all
        self.trust_unix = trust_unix
        # Verdicts by address text (a str caches its hash; an ipaddress object recomputes it
        # in Python on every lookup): hops by canonical text, peers as the socket wrote them.
        # The middleware reads _peer_memo on its fast path; only IP peers are in it, so its
        # verdicts never depend on the listener.
        self._peer_memo = _Memo(_TRUST_MEMO_BUDGET, _TRUST_BYTES + _NODE_CACHE_MAX)
        self._hop_memo = _Memo(_TRUST_MEMO_BUDGET, _TRUST_BYTES + _NODE_CACHE_MAX)

    def trusts(self, address: IPAddress) -> bool:
        """Is ``address`` (as returned by the parsers here: IPv4-mapped already unmapped) a
        trusted proxy? Exact set lookup first, networks only on a miss."""
        if address in self.addresses:
            return True
        return any(address in network for network in self.networks)

    def _trusts_node(self, node: _Node) -> bool:
        if node.text is None:
            return False
        verdict = self._hop_memo.get(node.text)
        if verdict is None:
            verdict = self.trusts(node.address)  # type: ignore[arg-type]
            self._hop_memo.put(node.text, verdict, _TRUST_BYTES + len(node.text))
        return verdict

    def trusts_peer(self, host: Any, unix: bool = False) -> bool:
        """May the socket peer tell us anything?

        ``host`` is ASGI ``scope["client"][0]`` (or None for no ``client``); ``unix`` says the
        listening socket is a UNIX socket (see :func:`is_unix_listener`). A peer that is not
        an IP address is a UNIX peer on a UNIX listener, and nobody we can name on any other.
        """
        verdict = self._peer_memo.get(host)
        if verdict is not None:
            return verdict
        address = None
        if isinstance(host, str):
            # A socket reports a link-local IPv6 peer with its zone ("fe80::1%eth0"); the zone
            # says which interface, not which host, so it plays no part in trust.
            address = _parse_ip(host.partition("%")[0])
        if address is None:
            return self.trust_all or (unix and self.trust_unix)
        verdict = self.trust_all or self.trusts(address)
        self._peer_memo.put(host, verdict, _TRUST_BYTES + len(host))
        return verdict

    def __repr__(self) -> str:
        entries = ["*"] if self.trust_all else []
        entries += ["unix"] if self.trust_unix else []
        entries += sorted(str(a) for a in self.addresses)
        entries += [str(n) for n in self.networks]
        return f"TrustedProxies({','.join(entries)!r})"


def parse_trusted(value: str | Iterable[str]) -> TrustedProxies:
    """Parse a trust list: a comma-separated string or a list of strings.

    Each entry is an IP address, a CIDR network (host bits clear, as gunicorn requires), ``*``
    or ``unix``; blank entries are skipped. A bad entry raises ``ValueError`` whose message
    completes "HARDENED/FORWARDED_ALLOW_IPS value ...", e.g.
    ``'10.0.0.1/33' is not an IP address, CIDR network, '*' or 'unix'``.
    """
    raw_entries = value.split(",") if isinstance(value, str) else list(value)
    addresses: list[IPAddress] = []
    networks: list[IPNetwork] = []
    trust_all = trust_unix = False
    for raw in raw_entries:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not an IP address, CIDR network, '*' or 'unix'")
        entry = raw.strip()
        if not entry:
            continue
        if entry == "*":
            trust_all = True
        elif entry.lower() == "unix":
            trust_unix = True
        elif "/" in entry:
            network = _parse_network(entry)
            if network is None:
                raise ValueError(f"{entry!r} is not an IP address, CIDR network, '*' or 'unix'")
            networks.append(network)
        else:
            address = _parse_ip(entry)
            if address is None:
                raise ValueError(f"{entry!r} is not an IP address, CIDR network, '*' or 'unix'")
            addresses.append(address)
    # A UNIX socket is reachable only from this host, as loopback is: trusting loopback (gunicorn's
    # default, 127.0.0.1,::1) trusts nginx on the same host whether it connects over TCP or a socket.
    trust_unix = (
        trust_unix
        or any(a.is_loopback for a in addresses)
        or any(n.network_address.is_loopback for n in networks)
    )
    return TrustedProxies(addresses, networks, trust_all, trust_unix)


def _parse_network(entry: str) -> IPNetwork | None:
    address_text, _, length_text = entry.partition("/")
    if _parse_ip(address_text) is None or not (length_text.isascii() and length_text.isdigit()):
        return None
    try:
        return ipaddress.ip_network(entry)  # strict: host bits set raises, as in gunicorn
    except ValueError:  # prefix length out of range, or host bits set
        return None


def trusted_from_gunicorn(value: str | Iterable[str] | None) -> TrustedProxies:
    """Trust list from gunicorn's ``cfg.forwarded_allow_ips`` (already a list of str)."""
    return parse_trusted(value or ())


def trust_warning(trusted: TrustedProxies) -> str | None:
    """The one-line start-up warning for a trust list that trusts every address, or None.

    A network such as ``0.0.0.0/0`` or ``::/0`` makes every *hop* a trusted proxy, so the walk
    passes them all and the leftmost entry -- the one the client wrote -- wins; ``*`` trusts
    every *peer* but no hop, so the entry our peer added does. (``::/0``, and any IPv6 network
    holding ``::ffff:0:0/96``, covers every IPv4 address too: see IPv4-mapped above.)
    """
    everything = [network for network in trusted.networks if network.prefixlen == 0]
    if not everything:
        return None
    versions = {network.version for network in everything}
    what = "every address" if versions == {4, 6} else f"every IPv{versions.pop()} address"
    return (
        f"hardened_worker: forwarded_allow_ips trusts {what} as a proxy "
        f"({', '.join(map(str, everything))}), so a client chooses the address the app sees "
        "(the leftmost X-Forwarded-For/Forwarded entry, which it wrote); use '*' to trust "
        "every peer and take the address that peer added, or list your proxies' networks"
    )


def is_unix_listener(server: Any) -> bool:
    """Is ASGI ``scope["server"]`` that of a UNIX socket, ``(path, None)``?

    ASGI: ``server`` is ``[host, port]``, or ``[path, None]`` for a UNIX socket; uvicorn sets
    ``(path, None)`` from ``getsockname()`` on a UNIX socket and ``(host, port)`` on TCP (even
    when ``getpeername()`` failed and ``client`` is None). No ``server`` at all (ASGI allows
    it; uvicorn reports it for an abstract-namespace socket) is not known to be a UNIX socket,
    so it makes no peer local.
    """
    return isinstance(server, (tuple, list)) and len(server) == 2 and server[1] is None


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extras:
    """The opt-in rewrites (all off by default); see the module docstring."""

    host: bool = False
    port: bool = False
    prefix: bool = False


NO_EXTRAS = Extras()


@dataclass(frozen=True, slots=True)  # slots: the verdict memo holds many
class Resolution:
    """What to change in the scope. Every field is None when it is to be left as it is."""

    client: tuple[str, int] | None = None  # (IP address, port or 0)
    scheme: str | None = None  # http/https for http scopes, ws/wss for websocket scopes
    host: str | None = None  # new Host header value
    port: int | None = None  # new scope["server"] port
    prefix: str | None = None  # prepended to root_path, path and raw_path


def _resolution(
    client: tuple[str, int] | None,
    scheme: str | None,
    host: str | None = None,
    port: int | None = None,
    prefix: str | None = None,
) -> Resolution | None:
    """None when there is nothing to change; an empty prefix ("/") is no change."""
    if client is None and scheme is None and host is None and port is None and not prefix:
        return None
    return Resolution(client=client, scheme=scheme, host=host, port=port, prefix=prefix or None)


_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_XFPORT = b"x-forwarded-port"
_XFPREFIX = b"x-forwarded-prefix"
_FORWARDED = b"forwarded"
_DISPLAY = {
    _XFF: "X-Forwarded-For",
    _XFP: "X-Forwarded-Proto",
    _XFH: "X-Forwarded-Host",
    _XFPORT: "X-Forwarded-Port",
    _XFPREFIX: "X-Forwarded-Prefix",
    _FORWARDED: "Forwarded",
}


def header_names(family: str, extras: Extras = NO_EXTRAS) -> frozenset[bytes]:
    """The (lowercase) header names that ``family`` and ``extras`` make us read."""
    if family == "x-forwarded":
        names = {_XFF, _XFP}
        if extras.host:
            names.add(_XFH)
        if extras.port:
            names.add(_XFPORT)
        if extras.prefix:
            names.add(_XFPREFIX)
        return frozenset(names)
    if family == "forwarded":
        return frozenset({_FORWARDED})
    if family == "off":
        return frozenset()
    raise ValueError(f"{family!r} is not one of " + "|".join(FAMILIES))


def resolve(
    peer: Sequence[Any] | None,
    headers: Headers,
    trusted: TrustedProxies,
    family: str = "x-forwarded",
    *,
    websocket: bool = False,
    extras: Extras = NO_EXTRAS,
    report: Report | None = None,
    server: Sequence[Any] | None = None,
) -> Resolution | None:
    """Decide what a request's forwarding headers change; None means nothing.

    ``peer`` is ASGI ``scope["client"]`` (``(host, port)`` or None), ``headers`` ASGI
    ``scope["headers"]`` (lowercase names) and ``server`` ASGI ``scope["server"]``, which says
    whether the peer came through a UNIX socket. Never raises for any header bytes. ``report``,
    if given, is called with (header name, reason) for every header that was present but ignored.
    """
    names = header_names(family, extras)
    host = peer[0] if peer else None
    if not trusted.trusts_peer(host, is_unix_listener(server)):
        if report is not None:
            for name in _present(headers, names):
                report(_DISPLAY[name], f"peer {host!r} is not a trusted proxy")
        return None
    return _resolve_trusted(headers, names, trusted, family, websocket, extras, report)


def _present(headers: Headers, names: frozenset[bytes]) -> list[bytes]:
    return list(dict.fromkeys(name for name, _ in headers if name in names))


def _resolve_trusted(
    headers: Headers,
    names: frozenset[bytes],
    trusted: TrustedProxies,
    family: str,
    websocket: bool,
    extras: Extras,
    report: Report | None,
) -> Resolution | None:
    found: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name in names:
            found.setdefault(name, []).append(value.decode("latin-1"))
    if not found:
        return None
    if family == "x-forwarded":
        return _from_x_forwarded(found, trusted, websocket, extras, report)
    return _from_forwarded(found[_FORWARDED], trusted, websocket, extras, report)


def _scheme(text: str, websocket: bool) -> str | None:
    pair = _SCHEMES.get(text.strip(_OWS_CHARS).lower())
    return None if pair is None else pair[websocket]


# ---------------------------------------------------------------------------------------------
# X-Forwarded-* (no RFC; what nginx, HAProxy, Envoy, cloud load balancers and Traefik write)
# ---------------------------------------------------------------------------------------------


class _Hop(NamedTuple):
    from_right: int  # 0 for the last entry of the comma-joined list of every X-Forwarded-For line
    node: _Node


def _parse_xff_entry_text(text: str) -> _Node | None:
    """One X-Forwarded-For entry (OWS already stripped):

    xff-entry = IPv4address [ ":" port ]
              / "[" IPv6address "]" [ ":" port ]
              / IPv6address
    """
    port: int | None = 0
    if text.startswith("["):
        address_text, bracket, rest = text[1:].partition("]")
        address = _parse_ipv6(address_text) if bracket else None
        if rest:
            port = _parse_port(rest[1:]) if rest[0] == ":" else None
    elif text.count(":") == 1:
        address_text, _, port_text = text.partition(":")
        address, port = _parse_ipv4(address_text), _parse_port(port_text)
    else:
        address = _parse_ip(text)
    if address is None or port is None:
        return None
    return _Node(address, port, str(address))


_parse_xff_entry = _memoised_node_parser(_parse_xff_entry_text)


def _from_right(lines: list[str]) -> Iterator[str]:
    """The entries of a comma-separated list header, last first, without their OWS.

    RFC 7230 section 3.2.2: several lines of a list header are one list, in order. Lazily,
    because the walk reads only the proxies' entries: splitting a 60 KiB client-written prefix
    would build thousands of strings nobody reads."""
    joined = ",".join(lines)
    end = len(joined)
    while True:
        start = joined.rfind(",", 0, end) + 1
        yield joined[start:end].strip(_OWS_CHARS)
        if start == 0:
            return
        end = start - 1


def _list_length(lines: list[str]) -> int:
    return sum(line.count(",") for line in lines) + len(lines)  # as if joined with ","


# The walk passes at most this many trusted hops. No proxy chain is that long, and without a
# bound a client that is itself in the trust list (or any client, with 0.0.0.0/0 trusted)
# makes every request walk a 60 KiB header of trusted addresses: milliseconds each.
_MAX_HOPS = 32
_TOO_MANY_HOPS = f"more than {_MAX_HOPS} trusted hops"


def _walk_x_forwarded_for(lines: list[str], trusted: TrustedProxies) -> _Hop | str:
    """The client hop, or why the header is untrustworthy."""
    hop = None
    for from_right, entry in enumerate(_from_right(lines)):
        if from_right > _MAX_HOPS:
            return _TOO_MANY_HOPS
        node = _parse_xff_entry(entry)
        if node is None:
            return f"entry {_shorten(entry)} is not an IP address"
        hop = _Hop(from_right, node)
        if not trusted._trusts_node(node):
            return hop
    assert hop is not None  # a list has at least one (maybe empty) entry
    return hop  # every hop is a trusted proxy: the leftmost is the client


def _rightmost(lines: list[str]) -> str:
    return next(_from_right(lines))


def _from_x_forwarded(
    found: dict[bytes, list[str]],
    trusted: TrustedProxies,
    websocket: bool,
    extras: Extras,
    report: Report | None,
) -> Resolution | None:
    client = scheme = host = port = prefix = None
    hop: _Hop | None = None
    scheme_allowed = True
    xff_lines: list[str] = []

    if _XFF in found:
        xff_lines = found[_XFF]
        walked = _walk_x_forwarded_for(xff_lines, trusted)
        if isinstance(walked, str):
            scheme_allowed = False
            if report is not None:
                report("X-Forwarded-For", walked + "; keeping the peer address")
        else:
            hop = walked
            text = hop.node.text
            assert text is not None  # an X-Forwarded-For entry always names an address
            client = (text, hop.node.port)

    lines = found.get(_XFP)
    if lines is not None:
        if not scheme_allowed:
            if report is not None:
                report("X-Forwarded-Proto", "X-Forwarded-For was untrustworthy")
        else:
            # Equal lengths: each proxy appended to both lists, so the entries line up.
            from_right = 0
            if hop is not None and _list_length(lines) == _list_length(xff_lines):
                from_right = hop.from_right
            chosen = next(itertools.islice(_from_right(lines), from_right, None))
            scheme = _scheme(chosen, websocket)
            if scheme is None and report is not None:
                report("X-Forwarded-Proto", f"{_shorten(chosen)} is not http, https, ws or wss")

    if extras.host and (lines := found.get(_XFH)) is not None:
        host = _extra(_safe_host, "X-Forwarded-Host", _rightmost(lines), "a host[:port]", report)
    if extras.port and (lines := found.get(_XFPORT)) is not None:
        port = _extra(_safe_port, "X-Forwarded-Port", _rightmost(lines), "a port", report)
    if extras.prefix and (lines := found.get(_XFPREFIX)) is not None:
        prefix = _extra(
            _safe_prefix, "X-Forwarded-Prefix", _rightmost(lines), "a safe path", report
        )
    return _resolution(client, scheme, host, port, prefix)


def _extra(
    check: Callable[[str], Any], header: str, text: str, what: str, report: Report | None
) -> Any:
    value = check(text)
    if value is None and report is not None:
        report(header, f"{_shorten(text)} is not {what}")
    return value


def _safe_host(text: str) -> str | None:
    match = _SAFE_HOST_RE.fullmatch(text) if len(text) <= _MAX_HOST else None
    if match is None:
        return None
    if len(match["name"]) > 253:
        return None
    if match["port"] is not None and not _parse_port(match["port"]):  # None or 0
        return None
    return text


def _safe_port(text: str) -> int | None:
    return _parse_port(text) or None  # 0 is no port


def _safe_prefix(text: str) -> str | None:
    """The prefix without trailing slashes ("" for "/"), or None if unsafe."""
    stripped = text.rstrip("/")
    if not stripped:
        return "" if text else None
    if _PREFIX_RE.fullmatch(stripped) is None or ".." in stripped:
        return None
    if "/./" in stripped + "/":
        return None
    return stripped


# ---------------------------------------------------------------------------------------------
# Forwarded (RFC 7239)
# ---------------------------------------------------------------------------------------------


class _Element(NamedTuple):
    """One forwarded-element. ``node`` is None when it has no ``for``."""

    for_text: str | None
    node: _Node | None
    proto: str | None
    host: str | None


_UNKNOWN_NODE = _Node(None, 0, None)  # "unknown" or obfuscated: nobody we can name or trust


def _parse_node_text(text: str) -> _Node | None:
    """RFC 7239 section 6 ``node``."""
    match = _NODE_RE.fullmatch(text)
    if match is None:
        return None
    port = 0
    if match["port"] is not None:
        parsed_port = _parse_port(match["port"])
        if parsed_port is None:  # 1*5DIGIT allows 99999; no socket does
            return None
        port = parsed_port
    address: IPAddress | None
    if match["v4"] is not None:
        address = _parse_ipv4(match["v4"])
    elif match["v6"] is not None:
        address = _parse_ipv6(match["v6"])
    else:
        return _UNKNOWN_NODE
    return _Node(address, port, str(address))


_parse_node = _memoised_node_parser(_parse_node_text)


# Longer than any element a proxy writes ("for", "by", "host" and "proto" take < 400), and
# what bounds the work for one: read backwards and then forwards, a hostile element costs up
# to a few hundred nanoseconds a character (60 KiB of quoted-pairs took 15 ms).
_MAX_ELEMENT = 1024


def _elements_from_right(line: str) -> Iterator[_Element | str]:
    """One Forwarded field line's elements, last first, each parsed only when the walk asks
    for it; a str is what is wrong with the element the walk reached, and ends the line.

    A proxy appends ", " and its element to what the client sent, so reading from the right
    finds the proxies' elements exactly as they wrote them, whatever the client wrote left of
    them: even an unterminated quoted-string there cannot swallow them."""
    end = len(line)  # of the next element
    while True:
        # Only a window is reversed and lexed. An element longer than the window has the
        # lexer run to the window's end, or fail inside a quoted-string that the cut leaves
        # open (see _REV_QUOTED_STRING): never a shorter element that would parse.
        window = line[max(0, end - _MAX_ELEMENT - 1) : end][::-1]
        stop = _REV_ELEMENT_RE.match(window).end()  # type: ignore[union-attr]
        if stop > _MAX_ELEMENT:
            yield f"an element longer than {_MAX_ELEMENT} characters"
            return
        if stop < len(window) and window[stop] != ",":  # a DQUOTE that opens or closes nothing
            yield f"unbalanced quote at offset {end - 1 - stop}"
            return
        element = _parse_element(line[end - stop : end])
        if element is not None:  # an empty list element (RFC 7230 section 7) says nothing
            yield element
        if stop == len(window):  # the start of the line
            return
        end -= stop + 1


def _parse_element(text: str) -> _Element | str | None:
    """One forwarded-element (RFC 7239 section 4, no top-level ","): the element, what is
    wrong with it, or None if it has no pairs."""
    pairs: dict[str, str] = {}
    expect_pair = True  # at the start or right after ";": the [ forwarded-pair ] are optional
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _OWS_CHARS:
            pos += 1
        if pos == end:
            break
        if text[pos] == ";":
            expect_pair = True
            pos += 1
            continue
        match = _PAIR_RE.match(text, pos) if expect_pair else None
        if match is None:
            return f"syntax error in {_shorten(text)} at {_shorten(text[pos : pos + 20])}"
        name = match[1].lower()  # parameter names are case-insensitive (section 4)
        if name in pairs:
            return f"parameter {name!r} appears twice in one element"
        value = match[2]
        if value[0] == '"':
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        pairs[name] = value
        expect_pair = False
        pos = match.end()
    return _element(pairs) if pairs else None


def _element(pairs: dict[str, str]) -> _Element | str:
    for_text = pairs.get("for")
    node = None
    if for_text is not None:
        node = _parse_node(for_text)
        if node is None:
            return f"for={_shorten(for_text)} is not a node (RFC 7239 section 6)"
    by = pairs.get("by")
    if by is not None and _parse_node(by) is None:
        return f"by={_shorten(by)} is not a node (RFC 7239 section 6)"
    proto = pairs.get("proto")
    if proto is not None and _SCHEME_RE.fullmatch(proto) is None:
        return f"proto={_shorten(proto)} is not a URI scheme (RFC 7239 section 5.4)"
    host = pairs.get("host")
    if host is not None and _HOST_RE.fullmatch(host) is None:
        return f"host={_shorten(host)} is not a Host value (RFC 7239 section 5.3)"
    return _Element(for_text, node, proto, host)


def _walk_forwarded(lines: list[str], trusted: TrustedProxies) -> _Element | str | None:
    """The element the walk stops at, why the header is ignored, or None if it is empty.

    Lines, and the elements of each, are parsed from the last one back, and only as far as the
    walk goes: several lines are one list (RFC 7239 section 7.1), but a list element cannot
    span lines, so what the client wrote left of the proxies' elements cannot spoil them."""
    leftmost = None
    hops = 0
    for line in reversed(lines):
        for element in _elements_from_right(line):
            if isinstance(element, str):
                return element
            hops += 1
            if hops > _MAX_HOPS + 1:
                return _TOO_MANY_HOPS
            leftmost = element
            if element.node is None or not trusted._trusts_node(element.node):
                return element
    return leftmost  # every hop is a trusted proxy: the leftmost is the client


def _from_forwarded(
    lines: list[str],
    trusted: TrustedProxies,
    websocket: bool,
    extras: Extras,
    report: Report | None,
) -> Resolution | None:
    element = _walk_forwarded(lines, trusted)
    if element is None:
        return None
    if isinstance(element, str):
        if report is not None:
            report("Forwarded", element + "; ignoring the whole header")
        return None
    client = scheme = host = None
    if element.node is not None and element.node.text is not None:
        client = (element.node.text, element.node.port)
    elif report is not None:
        what = "missing" if element.for_text is None else _shorten(element.for_text)
        report("Forwarded", f"for= is {what}, not an IP address; keeping the peer address")
    if element.proto is not None:
        scheme = _scheme(element.proto, websocket)
        if scheme is None and report is not None:
            report("Forwarded", f"proto={_shorten(element.proto)} is not http, https, ws or wss")
    if extras.host and element.host is not None:
        host = _extra(_safe_host, "Forwarded", element.host, "a safe host= value", report)
    return _resolution(client, scheme, host)


# ---------------------------------------------------------------------------------------------
# ASGI glue
# ---------------------------------------------------------------------------------------------

Scope = dict  # an ASGI scope: a plain dict
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

_HTTP_TYPES = frozenset({"http", "websocket"})
EXTENSION = "hardened_worker"  # our key in scope["extensions"]


def rewrite_scope(scope: Scope, resolution: Resolution) -> Scope:
    """``scope`` with ``resolution`` applied, in place.

    In place, as uvicorn's own ProxyHeadersMiddleware does: the server's access log reads the
    same scope object, and must show the client the app saw, not the proxy. The client it
    replaces, the socket peer, is kept in ``scope["extensions"][EXTENSION]["peer"]``.
    """
    if resolution.client is not None:
        extensions = scope.get("extensions")
        if extensions is None:  # uvicorn's http scopes have none: the per-request case
            scope["extensions"] = {EXTENSION: {"peer": scope.get("client")}}
        else:
            _keep_peer(extensions, scope.get("client"))
        scope["client"] = resolution.client
    if resolution.scheme is not None:
        scope["scheme"] = resolution.scheme
    if resolution.host is not None:
        scope["headers"] = _with_host(scope["headers"], resolution.host.encode("ascii"))
    if resolution.port is not None:
        server = scope.get("server")
        # A UNIX-socket server has no (host, port) to put a port into.
        if server and isinstance(server[1], int):
            scope["server"] = (server[0], resolution.port)
    if resolution.prefix:
        # uvicorn (httptools_impl / h11_impl on_headers_complete) builds path and raw_path as
        # root_path + the request target, and ASGI requires path to start with root_path; the
        # proxy stripped its prefix before the request target, so it goes in front of all three.
        prefix = resolution.prefix
        scope["root_path"] = prefix + scope.get("root_path", "")
        scope["path"] = prefix + scope.get("path", "")
        raw_path = scope.get("raw_path")
        if raw_path is not None:
            scope["raw_path"] = prefix.encode("ascii") + raw_path
    return scope


def _keep_peer(extensions: dict, peer: Any) -> None:
    """Record the socket peer in extensions the server (or an outer layer) made: added to
    them, never replacing them; and never over a peer a first pass (two such middlewares)
    recorded, which was the socket's, not a proxy's claim. An outer layer's dict is copied,
    never written to: it may be one dict shared by every request (``deadline.RequestGuard``'s),
    where the first request's peer would stay for all the others."""
    ours = extensions.get(EXTENSION)
    if ours is None:
        extensions[EXTENSION] = {"peer": peer}
    elif "peer" not in ours:
        extensions[EXTENSION] = {**ours, "peer": peer}


def _with_host(headers: Iterable[tuple[bytes, bytes]], host: bytes) -> list[tuple[bytes, bytes]]:
    rewritten: list[tuple[bytes, bytes]] = []
    placed = False
    for name, value in headers:
        if name == b"host":
            if not placed:
                rewritten.append((b"host", host))
                placed = True
        else:
            rewritten.append((name, value))
    if not placed:
        rewritten.append((b"host", host))
    return rewritten


# The verdict memo is keyed by whole header values, which a client writes (nginx appends to the
# client's X-Forwarded-For): an entry over _VERDICT_ITEM_MAX bytes (values over ~1.2 KiB in
# all, far more than any proxy chain writes) is resolved every time, never kept.
_VERDICT_MEMO_BUDGET = 1024 * 1024  # per middleware: ~1200 entries of typical headers
_VERDICT_ITEM_MAX = 2048
# A verdict: its slot, the key (a pair, and the tuple of headers), the Resolution, its client
# pair and host str; and each header (a pair and the two bytes objects the key keeps alive).
_VERDICT_BYTES = _SLOT_BYTES + 2 * _PAIR_BYTES + _RESOLUTION_BYTES + _PAIR_BYTES + _STR_BYTES
_HEADER_BYTES = _PAIR_BYTES + 2 * _BYTES_BYTES


def _verdict_size(found: tuple, resolution: Resolution | None) -> int:
    size = _VERDICT_BYTES
    for name, value in found:
        size += _HEADER_BYTES + len(name) + len(value)
    if resolution is not None and resolution.host is not None:
        size += len(resolution.host)
    return size


class ForwardedMiddleware:
    """ASGI3 middleware: believe a trusted proxy about the client (and, opt-in, host, port and
    prefix).

    ``trusted`` is a :class:`TrustedProxies` or anything :func:`parse_trusted` takes. Requests
    from an untrusted peer, and requests without any header the family reads, reach the app
    with their scope object untouched; otherwise the scope is rewritten in place (see
    :func:`rewrite_scope`; the socket peer is kept in ``scope["extensions"]["hardened_worker"]
    ["peer"]``). Why a header was ignored is logged at DEBUG on ``hardened_worker.forwarded``.
    """

    def __init__(
        self,
        app: ASGIApp,
        trusted: TrustedProxies | str | Iterable[str],
        family: str = "x-forwarded",
        host: bool = False,
        port: bool = False,
        prefix: bool = False,
    ) -> None:
        self.app = app
        self.trusted = trusted if isinstance(trusted, TrustedProxies) else parse_trusted(trusted)
        self.family = family
        self.extras = Extras(host, port, prefix)
        self._names = header_names(family, self.extras)
        self._peer_verdict = self.trusted._peer_memo.get
        self._verdicts = _Memo(_VERDICT_MEMO_BUDGET, _VERDICT_ITEM_MAX)
        if family == "forwarded" and (port or prefix):
            logger.warning(
                "ignoring %s: X-Forwarded-Port and X-Forwarded-Prefix are only read with the "
                "x-forwarded family, and RFC 7239 Forwarded has no such parameters",
                " and ".join(f"{n}=True" for n, on in (("port", port), ("prefix", prefix)) if on),
            )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # The per-request path: one pass over the header names, and a request that carries none
        # of the family's headers (no proxy, or a proxy that writes none) goes straight on.
        names = self._names
        if names and scope["type"] in _HTTP_TYPES:
            for name, _ in scope["headers"]:
                if name in names:
                    self._forwarded(scope)
                    break
        await self.app(scope, receive, send)

    def _forwarded(self, scope: Scope) -> None:
        """A request with at least one of the family's headers: rewrite ``scope`` if its peer
        is trusted and the headers hold up."""
        client = scope.get("client")
        host = client[0] if client else None
        trusted = self._peer_verdict(host)  # memoised for IP peers: the usual answer
        if trusted is None:
            trusted = self.trusted.trusts_peer(host, is_unix_listener(scope.get("server")))
        if not trusted:
            if logger.isEnabledFor(logging.DEBUG):
                self._explain_untrusted(scope, host)
            return
        names = self._names
        # Pairs, not the server's items: ASGI allows lists, and the memo key must hash.
        found = tuple([(name, value) for name, value in scope["headers"] if name in names])
        # Behind a proxy every request carries these headers, and a client's next requests carry
        # the same values: the verdict, a pure function of them once the peer is trusted, is
        # memoised (see _Memo).
        key = (found, scope["type"])
        resolution = self._verdicts.get(key, _MISSING)
        if resolution is _MISSING:
            resolution = self._resolve(key, host)
        if resolution is not None:
            rewrite_scope(scope, resolution)

    def _resolve(self, key: tuple, peer_host: Any) -> Resolution | None:
        found, kind = key
        report = self._reporter(peer_host) if logger.isEnabledFor(logging.DEBUG) else None
        resolution = _resolve_trusted(
            found, self._names, self.trusted, self.family, kind == "websocket", self.extras, report
        )
        if report is None:  # not memoised while debug logging wants the reasons every time
            self._verdicts.put(key, resolution, _verdict_size(found, resolution))
        return resolution

    def _explain_untrusted(self, scope: Scope, peer_host: Any) -> None:
        for name in _present(scope["headers"], self._names):
            logger.debug(
                "ignored %s from %r: peer is not a trusted proxy (forwarded_allow_ips)",
                _DISPLAY[name],
                peer_host,
            )

    @staticmethod
    def _reporter(peer_host: Any) -> Report:
        def report(header: str, reason: str) -> None:
            logger.debug("ignored %s from %r: %s", header, peer_host, reason)

        return report
