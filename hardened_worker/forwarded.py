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
    peer. A UNIX-socket peer (ASGI ``client`` is None, or a host that is not an IP address) is
    trusted when the list holds ``*``, ``unix`` or a loopback address: a UNIX socket can only be
    reached from this host, as loopback can, so gunicorn's default ``127.0.0.1,::1`` trusts nginx
    on the same host over either. (gunicorn's validator refuses ``unix``, so through gunicorn the
    loopback rule is the way in; gunicorn itself trusts non-IP peers unconditionally.)

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
    * ``Forwarded``: a syntax error (RFC 7239 section 4 and 6 grammar) in a header line the
      walk reaches makes us ignore the whole header. An element whose ``for`` is ``unknown``,
      an obfuscated ``_identifier`` (section 6.2, 6.3) or missing is a hop we cannot trust,
      so the walk stops there; since it is not an IP address the client stays the peer
      address -- we can't give the app a non-IP client -- but that element's ``proto`` and
      ``host``, written by a trusted proxy, still apply.

Header family
    ``"x-forwarded"`` (default), ``"forwarded"`` or ``"off"``; never both families at once, so a
    client cannot slip one past a proxy that only sanitises the other. Opt-in extras, each only
    from a trusted peer and only when valid: ``host`` (X-Forwarded-Host / Forwarded ``host=``
    rewrites the Host header), ``port`` (X-Forwarded-Port sets the ``server`` port), ``prefix``
    (X-Forwarded-Prefix becomes ``root_path``). RFC 7239 has no port or prefix parameter, so
    those two only work with ``"x-forwarded"``; ``"off"`` turns everything off.

Robustness
    Nothing here raises on any header bytes: values are decoded as latin-1 (total) and every
    grammar below is a regular expression transcribed from its RFC, checked before any value
    reaches :mod:`ipaddress`. Resulting client hosts are IP addresses in :mod:`ipaddress`'s
    canonical form, IPv4-mapped IPv6 written as plain IPv4.

References: RFC 7239 (Forwarded), RFC 7230 section 3.2.6 and 7 (token, quoted-string, lists),
RFC 3986 section 3.2.2 (IP literals, host), https://developer.mozilla.org/en-US/docs/Web/HTTP/
Headers/X-Forwarded-For. Design after uvicorn's ``middleware/proxy_headers.py``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, NamedTuple, Sequence, Tuple, Union

__all__ = [
    "FAMILIES",
    "Extras",
    "ForwardedMiddleware",
    "NO_EXTRAS",
    "Resolution",
    "TrustedProxies",
    "header_names",
    "parse_trusted",
    "resolve",
    "rewrite_scope",
    "trusted_from_gunicorn",
]

logger = logging.getLogger("hardened_worker.forwarded")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Headers = Iterable[Tuple[bytes, bytes]]
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
_IPV6 = "(?:" + "|".join([
    f"(?:{_H16}:){{6}}{_LS32}",
    f"::(?:{_H16}:){{5}}{_LS32}",
    f"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    f"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
    f"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
    f"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    f"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    f"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    f"(?:(?:{_H16}:){{0,6}}{_H16})?::",
]) + ")"
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
# segments made of pchar, minus pct-encoded (so path and raw_path need no decoding step) and
# minus "," (the list separator):
#   prefix  = 1*( "/" segment-nz )
#   pchar   = unreserved / sub-delims / ":" / "@"
# and, separately, no "." or ".." segment and no ".." at all. Empty segments would allow a
# "//host" prefix, which browsers follow as a link to another site.
_PREFIX_RE = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+;=:@-]+)+")

# X-Forwarded-Proto values we act on, and what each means for an HTTP or a WebSocket scope
# (ASGI: http scopes have scheme http/https, websocket scopes ws/wss).
_SCHEMES = {
    "http": ("http", "ws"),
    "https": ("https", "wss"),
    "ws": ("http", "ws"),
    "wss": ("https", "wss"),
}


# Behind a proxy every request carries these headers, and the same few proxy and client
# addresses recur, while ipaddress takes microseconds per address: the parsers are pure, so
# they are memoised. Length is checked first so that no long junk value is ever cached.
_IP_CACHE_SIZE = 4096


def _parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    return None if len(text) > 15 else _parse_ipv4_cached(text)


def _parse_ipv6(text: str) -> IPAddress | None:
    """An IPv6 address; IPv4-mapped ones come back as the IPv4 address they carry."""
    return None if len(text) > _IPV6_MAX else _parse_ipv6_cached(text)


@functools.lru_cache(maxsize=_IP_CACHE_SIZE)
def _parse_ipv4_cached(text: str) -> ipaddress.IPv4Address | None:
    if _IPV4_RE.fullmatch(text) is None:
        return None
    return ipaddress.IPv4Address(text)


@functools.lru_cache(maxsize=_IP_CACHE_SIZE)
def _parse_ipv6_cached(text: str) -> IPAddress | None:
    if _IPV6_RE.fullmatch(text) is None:
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


# The longest node that can hold an IP address: "[" IPv6 "]:" port. Longer entries are never
# cached (an obfuscated Forwarded node may be longer and is parsed uncached).
_NODE_CACHE_MAX = _IPV6_MAX + len("[]:65535")


# ---------------------------------------------------------------------------------------------
# Trust
# ---------------------------------------------------------------------------------------------

_V4_IN_V6 = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL_V4 = ipaddress.IPv4Network("0.0.0.0/0")
_VERDICT_CACHE_SIZE = 4096


class TrustedProxies:
    """The parsed ``forwarded_allow_ips``: who may tell us who the client is.

    Build it with :func:`parse_trusted`. :meth:`trusts_peer` answers for the socket peer (and
    applies ``*`` and ``unix``); :meth:`trusts` answers for an address found in a header, where
    only explicit addresses and networks count (see the module docstring for why ``*`` trusts no
    hop).
    """

    __slots__ = ("addresses", "networks", "trust_all", "trust_unix", "_peer_cache", "_hop_cache")

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
                if network.subnet_of(_V4_IN_V6):  # type: ignore[arg-type]
                    nets.append(ipaddress.IPv4Network(
                        (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
                    ))
                elif network.supernet_of(_V4_IN_V6):  # type: ignore[arg-type]
                    nets.append(_ALL_V4)
        self.addresses: frozenset[IPAddress] = frozenset(exact)
        self.networks: tuple[IPNetwork, ...] = tuple(dict.fromkeys(nets))
        self.trust_all = trust_all
        self.trust_unix = trust_unix
        # Verdicts, bounded by clearing when full (an address-churning client only costs
        # itself the uncached lookup). The middleware reads _peer_cache on its fast path.
        self._peer_cache: dict[Any, bool] = {}
        self._hop_cache: dict[str, bool] = {}

    def trusts(self, address: IPAddress) -> bool:
        """Is ``address`` (as returned by the parsers here: IPv4-mapped already unmapped) a
        trusted proxy? Exact set lookup first, networks only on a miss."""
        if address in self.addresses:
            return True
        return any(address in network for network in self.networks)

    def _trusts_node(self, node: _Node) -> bool:
        # Keyed by the canonical text: a str caches its hash, an ipaddress object recomputes
        # it in Python on every lookup.
        if node.text is None:
            return False
        verdict = self._hop_cache.get(node.text)
        if verdict is None:
            verdict = self.trusts(node.address)  # type: ignore[arg-type]
            if len(self._hop_cache) >= _VERDICT_CACHE_SIZE:
                self._hop_cache.clear()
            self._hop_cache[node.text] = verdict
        return verdict

    def trusts_peer(self, host: Any) -> bool:
        """May the socket peer ``host`` (ASGI ``scope["client"][0]``, or None) tell us anything?"""
        verdict = self._peer_cache.get(host)
        if verdict is None:
            verdict = self._judge_peer(host)
            if len(self._peer_cache) >= _VERDICT_CACHE_SIZE:
                self._peer_cache.clear()
            self._peer_cache[host] = verdict
        return verdict

    def _judge_peer(self, host: Any) -> bool:
        if self.trust_all:
            return True
        address = None
        if isinstance(host, str):
            # A socket reports a link-local IPv6 peer with its zone ("fe80::1%eth0"); the zone
            # says which interface, not which host, so it plays no part in trust.
            address = _parse_ip(host.partition("%")[0])
        if address is None:
            return self.trust_unix
        return self.trusts(address)

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
    trust_unix = trust_unix or any(a.is_loopback for a in addresses) or any(
        n.network_address.is_loopback for n in networks)
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


@dataclass(frozen=True)
class Resolution:
    """What to change in the scope. Every field is None when it is to be left as it is."""

    client: tuple[str, int] | None = None  # (IP address, port or 0)
    scheme: str | None = None  # http/https for http scopes, ws/wss for websocket scopes
    host: str | None = None  # new Host header value
    port: int | None = None  # new scope["server"] port
    prefix: str | None = None  # prepended to root_path, path and raw_path


def _resolution(client: tuple[str, int] | None, scheme: str | None, host: str | None = None,
                port: int | None = None, prefix: str | None = None) -> Resolution | None:
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
) -> Resolution | None:
    """Decide what a request's forwarding headers change; None means nothing.

    ``peer`` is ASGI ``scope["client"]`` (``(host, port)`` or None), ``headers`` ASGI
    ``scope["headers"]`` (lowercase names). Never raises for any header bytes. ``report``, if
    given, is called with (header name, reason) for every header that was present but ignored.
    """
    names = header_names(family, extras)
    host = peer[0] if peer else None
    if not trusted.trusts_peer(host):
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
    index: int  # in the comma-joined list of every X-Forwarded-For line
    count: int  # length of that list
    node: _Node


def _parse_xff_entry(text: str) -> _Node | None:
    return None if len(text) > _NODE_CACHE_MAX else _parse_xff_entry_cached(text)


@functools.lru_cache(maxsize=_IP_CACHE_SIZE)
def _parse_xff_entry_cached(text: str) -> _Node | None:
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


def _walk_x_forwarded_for(lines: list[str], trusted: TrustedProxies) -> _Hop | str:
    """The client hop, or why the header is untrustworthy."""
    # RFC 7230 section 3.2.2: several lines of a list header are one list, in order.
    entries = ",".join(lines).split(",")
    hop = None
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index].strip(_OWS_CHARS)
        node = _parse_xff_entry(entry)
        if node is None:
            return f"entry {_shorten(entry)} is not an IP address"
        hop = _Hop(index, len(entries), node)
        if not trusted._trusts_node(node):
            return hop
    assert hop is not None  # split() never returns an empty list
    return hop  # every hop is a trusted proxy: the leftmost is the client


def _rightmost(lines: list[str]) -> str:
    return ",".join(lines).rpartition(",")[2].strip(_OWS_CHARS)


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

    lines = found.get(_XFF)
    if lines is not None:
        walked = _walk_x_forwarded_for(lines, trusted)
        if isinstance(walked, str):
            scheme_allowed = False
            if report is not None:
                report("X-Forwarded-For", walked + "; keeping the peer address")
        else:
            hop = walked
            client = (hop.node.text, hop.node.port)

    lines = found.get(_XFP)
    if lines is not None:
        if not scheme_allowed:
            if report is not None:
                report("X-Forwarded-Proto", "X-Forwarded-For was untrustworthy")
        else:
            entries = ",".join(lines).split(",")
            # Equal lengths: each proxy appended to both lists, so the entries line up.
            if hop is not None and len(entries) == hop.count:
                chosen = entries[hop.index]
            else:
                chosen = entries[-1]
            scheme = _scheme(chosen, websocket)
            if scheme is None and report is not None:
                report("X-Forwarded-Proto", f"{_shorten(chosen)} is not http, https, ws or wss")

    if extras.host and (lines := found.get(_XFH)) is not None:
        host = _extra(_safe_host, "X-Forwarded-Host", _rightmost(lines), "a host[:port]", report)
    if extras.port and (lines := found.get(_XFPORT)) is not None:
        port = _extra(_safe_port, "X-Forwarded-Port", _rightmost(lines), "a port", report)
    if extras.prefix and (lines := found.get(_XFPREFIX)) is not None:
        prefix = _extra(_safe_prefix, "X-Forwarded-Prefix", _rightmost(lines), "a safe path",
                        report)
    return _resolution(client, scheme, host, port, prefix)


def _extra(check: Callable[[str], Any], header: str, text: str, what: str,
           report: Report | None) -> Any:
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


def _parse_node(text: str) -> _Node | None:
    return _parse_node_cached(text) if len(text) <= _NODE_CACHE_MAX else _parse_node_uncached(text)


def _parse_node_uncached(text: str) -> _Node | None:
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
    if match["v4"] is not None:
        address = _parse_ipv4(match["v4"])
    elif match["v6"] is not None:
        address = _parse_ipv6(match["v6"])
    else:
        return _UNKNOWN_NODE
    return _Node(address, port, str(address))


_parse_node_cached = functools.lru_cache(maxsize=_IP_CACHE_SIZE)(_parse_node_uncached)


def _parse_forwarded_line(line: str) -> list[_Element] | str:
    """One Forwarded field line: its elements, or what is wrong with it."""
    elements: list[_Element] = []
    pairs: dict[str, str] = {}
    expect_pair = True  # at the start of an element or right after ";"
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos] in _OWS_CHARS:
            pos += 1
        if pos == end:
            break
        char = line[pos]
        if char == "," or char == ";":
            # Empty list elements and empty pairs are allowed (RFC 7230 section 7; the
            # [ forwarded-pair ] of section 4); an element without pairs says nothing.
            if char == "," and pairs:
                element = _element(pairs)
                if isinstance(element, str):
                    return element
                elements.append(element)
                pairs = {}
            expect_pair = True
            pos += 1
            continue
        match = _PAIR_RE.match(line, pos) if expect_pair else None
        if match is None:
            return f"syntax error at offset {pos}: {_shorten(line[pos:pos + 20])}"
        name = match[1].lower()  # parameter names are case-insensitive (section 4)
        if name in pairs:
            return f"parameter {name!r} appears twice in one element"
        value = match[2]
        if value[0] == '"':
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        pairs[name] = value
        expect_pair = False
        pos = match.end()
    if pairs:
        element = _element(pairs)
        if isinstance(element, str):
            return element
        elements.append(element)
    return elements


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

    Lines are parsed from the last one back, and only as far as the walk goes: several lines
    are one list (RFC 7239 section 7.1), but a list element cannot span lines, so a broken
    line left of the client -- the client's own -- cannot spoil the proxies' lines."""
    leftmost = None
    for line in reversed(lines):
        elements = _parse_forwarded_line(line)
        if isinstance(elements, str):
            return elements
        for element in reversed(elements):
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
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

_HTTP_TYPES = frozenset({"http", "websocket"})


def rewrite_scope(scope: Scope, resolution: Resolution) -> Scope:
    """``scope`` with ``resolution`` applied, in place.

    In place, as uvicorn's own ProxyHeadersMiddleware does: the server's access log reads the
    same scope object, and must show the client the app saw, not the proxy.
    """
    if resolution.client is not None:
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


def _with_host(headers: Iterable[Tuple[bytes, bytes]], host: bytes) -> list[tuple[bytes, bytes]]:
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


_UNKNOWN = object()


class ForwardedMiddleware:
    """ASGI3 middleware: believe a trusted proxy about the client (and, opt-in, host, port and
    prefix).

    ``trusted`` is a :class:`TrustedProxies` or anything :func:`parse_trusted` takes. Requests
    from an untrusted peer, and requests without any header the family reads, reach the app
    with their scope object untouched; otherwise the scope is rewritten in place. Why a header was
    ignored is logged at DEBUG on ``hardened_worker.forwarded``.
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
        self._peer_cache = self.trusted._peer_cache
        self._verdicts: dict[tuple, Resolution | None] = {}
        if family == "forwarded" and (port or prefix):
            logger.warning(
                "ignoring %s: X-Forwarded-Port and X-Forwarded-Prefix are only read with the "
                "x-forwarded family, and RFC 7239 Forwarded has no such parameters",
                " and ".join(f"{n}=True" for n, on in (("port", port), ("prefix", prefix)) if on),
            )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in _HTTP_TYPES and self._names:
            client = scope.get("client")
            host = client[0] if client else None
            trusted = self._peer_cache.get(host)
            if trusted is None:
                trusted = self.trusted.trusts_peer(host)
            if trusted:
                names = self._names
                found = [header for header in scope["headers"] if header[0] in names]
                if found:
                    self._rewrite(scope, host, tuple(found))
            elif logger.isEnabledFor(logging.DEBUG):
                self._explain_untrusted(scope, host)
        await self.app(scope, receive, send)

    def _rewrite(self, scope: Scope, peer_host: Any, found: tuple) -> None:
        # Behind a proxy every request carries these headers, and a client's next requests carry
        # the same values: the verdict, a pure function of them once the peer is trusted, is
        # memoised (bounded; cleared when full). Not while debug logging wants the reasons.
        key = (found, scope["type"])
        resolution = self._verdicts.get(key, _UNKNOWN)
        if resolution is _UNKNOWN:
            report = self._reporter(peer_host) if logger.isEnabledFor(logging.DEBUG) else None
            resolution = _resolve_trusted(found, self._names, self.trusted, self.family,
                                          scope["type"] == "websocket", self.extras, report)
            if report is None:
                if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[key] = resolution
        if resolution is not None:
            rewrite_scope(scope, resolution)

    def _explain_untrusted(self, scope: Scope, peer_host: Any) -> None:
        for name in _present(scope["headers"], self._names):
            logger.debug("ignored %s from %r: peer is not a trusted proxy (forwarded_allow_ips)",
                         _DISPLAY[name], peer_host)

    @staticmethod
    def _reporter(peer_host: Any) -> Report:
        def report(header: str, reason: str) -> None:
            logger.debug("ignored %s from %r: %s", header, peer_host, reason)

        return report
