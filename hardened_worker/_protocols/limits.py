"""gunicorn's request-head limits, counted on the bytes as they arrive. No I/O.

gunicorn enforces ``--limit-request-line``, ``--limit-request-fields`` and
``--limit-request-field_size`` in its own parser only (``gunicorn/http/message.py``); uvicorn's
protocols never see them, and httptools buffers a header of any size. :class:`HeadCounter` is fed
every byte a connection receives, before the HTTP parser gets it, and says when a limit is passed,
so the connection is answered 431/414 without the rest being read or buffered.

What is counted, as gunicorn 27's Python parser counts it (:meth:`Limits.from_gunicorn` applies its
normalisation of the three settings)::

    request-line = method SP target SP version CRLF  ; its length without CRLF <= limit_request_line
    field-line   = name ":" OWS value OWS CRLF       ; its length with CRLF <= limit_request_field_size
    obs-fold     = CRLF 1*(SP / HTAB) ...            ; added to the field it continues (gunicorn)
    field count <= limit_request_fields
    header block (after the request line, through the empty line) <= fields x (field_size + 2) + 4

Lines end at LF with an optional CR before it (h11 accepts a bare LF, so the count must too; a CR
is never counted as content). Empty lines before a request line are skipped, as both parsers do.

To restart the count per request the counter follows each message's framing (RFC 9112 section 6):
``Transfer-Encoding`` ending in ``chunked``, else ``Content-Length``, else no body (a request is
never close-delimited). Body bytes are skipped by arithmetic, chunk sizes are read from their
lines; a framing it cannot follow (conflicting lengths, an unknown coding: the parser answers 400
to those) stops the counting for the connection rather than guessing.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# gunicorn/http/message.py: MAX_REQUEST_LINE, MAX_HEADERS, DEFAULT_MAX_HEADERFIELD_SIZE
MAX_REQUEST_LINE = 8190
MAX_HEADERS = 32768
DEFAULT_MAX_HEADERFIELD_SIZE = 8190


class Breach(enum.Enum):
    """Which limit a request head passed: (status, reason phrase, what the log line names)."""

    REQUEST_LINE = (414, b"URI Too Long", "request line longer than --limit-request-line")
    FIELDS = (
        431,
        b"Request Header Fields Too Large",
        "more header fields than --limit-request-fields",
    )
    FIELD_SIZE = (
        431,
        b"Request Header Fields Too Large",
        "a header field longer than --limit-request-field_size",
    )
    HEADER_BLOCK = (
        431,
        b"Request Header Fields Too Large",
        "header block longer than fields x (field_size + 2) + 4 =",
    )

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def phrase(self) -> bytes:
        return self.value[1]

    @property
    def described(self) -> str:
        return self.value[2]


@dataclass(frozen=True)
class Limits:
    request_line: int  # 0: unlimited
    fields: int
    field_size: int

    @classmethod
    def from_gunicorn(cls, request_line: int, fields: int, field_size: int) -> Limits:
        """gunicorn's own reading of its settings (message.py, ``Request``/``Message.__init__``):
        a request line of 0 is unlimited and anything from 8190 up is 8190; fields of 0 or past
        32768 are 32768; a field size of 0 is 8190 (its documentation says "unlimited", its code
        says 8190: the code is what clients meet)."""
        if request_line < 0 or request_line >= MAX_REQUEST_LINE:
            request_line = MAX_REQUEST_LINE
        if fields <= 0 or fields > MAX_HEADERS:
            fields = MAX_HEADERS
        if field_size <= 0:
            field_size = DEFAULT_MAX_HEADERFIELD_SIZE
        return cls(request_line, fields, field_size)

    def of(self, breach: Breach) -> int:
        """The limit ``breach`` passed, as the log line shows it."""
        return {
            Breach.REQUEST_LINE: self.request_line,
            Breach.FIELDS: self.fields,
            Breach.FIELD_SIZE: self.field_size,
            Breach.HEADER_BLOCK: self.header_block,
        }[breach]

    @property
    def header_block(self) -> int:
        """gunicorn's ``max_buffer_headers``: the bytes a head may take after its request line."""
        return self.fields * (self.field_size + 2) + 4


DEFAULTS = Limits.from_gunicorn(4094, 100, 8190)


class _State(enum.Enum):
    LINE = "request line"  # also: between requests
    FIELDS = "header fields"
    LENGTH = "body (Content-Length)"
    CHUNK_SIZE = "chunk-size line"
    CHUNK_DATA = "chunk data"
    TRAILERS = "trailer fields"
    UNFOLLOWED = "framing not followed"  # the parser will refuse it; nothing is counted any more


# Module globals: read faster than enum attributes on the per-chunk path.
_LINE, _FIELDS, _LENGTH = _State.LINE, _State.FIELDS, _State.LENGTH
_CHUNK_SIZE, _CHUNK_DATA, _TRAILERS = _State.CHUNK_SIZE, _State.CHUNK_DATA, _State.TRAILERS
_IN_BODY = (_State.LENGTH, _State.CHUNK_SIZE, _State.CHUNK_DATA, _State.TRAILERS)
_LF, _CR, _SP, _HTAB = 10, 13, 32, 9
# A framing header at the start of a line (the fast path searches a whole head for one).
_FRAMING_NAME = re.compile(rb"\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)
_FRAMING_FIELD = re.compile(
    rb"(content-length|transfer-encoding)[ \t]*:[ \t]*(.*?)[ \t\r]*", re.IGNORECASE | re.DOTALL
)
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_CHUNK_SIZE_KEPT = 64  # bytes of a chunk-size line read for its number (extensions are skipped)


class HeadCounter:
    """Fed every byte of one connection in order; :meth:`feed` returns the first limit passed.

    ``in_head``: part of a request head has arrived and not all of it (the header-read timeout's
    clock runs); ``in_body``: a request body is arriving; ``heads``: request heads completed so far.
    """

    __slots__ = (
        "limits",
        "bare_lf",
        "heads",
        "counting",
        "_state",
        "_line",
        "_cr",
        "_first",
        "_kept",
        "_fields",
        "_last_field",
        "_block",
        "_length",
        "_chunked",
        "_left",
        "_unfollowed",
    )

    def __init__(self, limits: Limits = DEFAULTS, bare_lf: bool = True) -> None:
        self.limits = limits
        # False: the parser refuses a bare LF (httptools: llhttp is strict), so the usual case
        # need not look for one; whatever it counted then, the parser stops at the bare LF.
        self.bare_lf = bare_lf
        self.heads = 0
        self.counting = True  # False once a framing is not followed (the parser refuses it)
        self._state = _State.LINE
        self._line = 0  # bytes of the incomplete line so far (a CR before LF included)
        self._cr = False  # the last byte of the incomplete line is CR
        self._first = 0  # its first byte (obs-fold starts with SP/HTAB)
        self._kept: list[bytes] = []  # its bytes, while it may be a framing field
        self._fields = 0
        self._last_field = 0  # size of the last field, which an obs-fold line adds to
        self._block = 0
        self._length: int | None = None
        self._chunked = False
        self._left = 0  # body or chunk bytes still to skip
        self._unfollowed = False

    @property
    def in_head(self) -> bool:
        return self._state is _FIELDS or (self._state is _LINE and self._line > 0)

    @property
    def in_body(self) -> bool:
        return self._state in _IN_BODY

    def feed(self, data: bytes, pos: int = 0, tried: int = -1) -> Breach | None:
        """Count ``data[pos:]``, the next bytes of the connection; ``tried``: :meth:`whole_head`
        was already called at that position and found none."""
        end = len(data)
        while pos < end:
            state = self._state
            if state is _LINE:
                if not self._line and pos != tried:  # a head starts here: the usual case first
                    after = self.whole_head(data, pos)
                    if after >= 0:
                        pos = after
                        continue
                    tried = pos
                pos = self._request_line(data, pos, end)
                if pos < 0:
                    return Breach.REQUEST_LINE
            elif state is _FIELDS:
                pos = self._field_line(data, pos, end)
                if pos < 0:
                    return _FIELD_BREACHES[-pos - 1]
            elif state is _LENGTH or state is _CHUNK_DATA:
                taken = min(self._left, end - pos)
                self._left -= taken
                pos += taken
                if not self._left:
                    self._state = _LINE if state is _LENGTH else _CHUNK_SIZE
            elif state is _CHUNK_SIZE:
                pos = self._chunk_size(data, pos, end)
            elif state is _TRAILERS:
                pos = self._trailer_line(data, pos, end)
            else:
                return None
        return None

    # --- the request line ------------------------------------------------------------------

    def whole_head(self, data: bytes, pos: int = 0) -> int:
        """The usual case in one step: between requests, a whole head well within every limit at
        the start of ``data[pos:]`` is counted; returns where it ends, or -1 (nothing counted:
        :meth:`feed` counts line by line)."""
        if self._state is not _LINE or self._line:
            return -1
        stop = data.find(b"\r\n\r\n", pos)
        if stop < 0:
            return -1
        after = stop + 4
        line_end = data.find(b"\r\n", pos)
        limits = self.limits
        if (
            line_end == pos  # an empty line first
            or line_end - pos > limits.request_line > 0
            or after - line_end - 4 > limits.field_size
        ):
            return -1  # near a limit, or an odd head: the exact count decides
        if self.bare_lf:
            # Every LF ends a line: with none bare, the LFs are the request line, the fields and
            # the empty line. A bare LF could end the head before ``stop``.
            lines = data.count(b"\n", pos, after)
            if lines - 2 > limits.fields or lines != data.count(b"\r\n", pos, after):
                return -1
        elif (
            after - line_end - 4 > 3 * limits.fields
            and data.count(b"\r\n", line_end + 2, stop + 2) > limits.fields
        ):
            return -1  # (below that size "x\r\n" fields cannot be too many)
        self.heads += 1
        if _FRAMING_NAME.search(data, line_end, stop + 2) is not None:
            self._length, self._chunked, self._unfollowed = None, False, False
            self._framing_of(data[line_end + 2 : stop])
            self._body_begins()
        return after

    def _request_line(self, data: bytes, pos: int, end: int) -> int:
        limit = self.limits.request_line
        nl = data.find(b"\n", pos)
        if nl < 0:
            self._line += end - pos
            self._cr = data[end - 1] == _CR
            if self._line - self._cr > limit > 0:
                return -1
            return end
        cr = data[nl - 1] == _CR if nl > pos else self._cr
        length = self._line + nl - pos - cr
        self._line, self._cr = 0, False
        if length == 0:
            return nl + 1  # an empty line before the request line: skipped, as the parsers do
        if length > limit > 0:
            return -1
        self._state = _State.FIELDS
        self._fields = self._last_field = self._block = 0
        self._length, self._chunked, self._unfollowed = None, False, False
        return nl + 1

    # --- header fields ---------------------------------------------------------------------

    def _field_line(self, data: bytes, pos: int, end: int) -> int:
        """One (piece of a) field line; ``-1 - index`` into ``_FIELD_BREACHES`` on a breach. The
        checks come in gunicorn's order (the count before a field is read, then its size), the
        block last, whatever the split."""
        limits = self.limits
        if self._line == 0:
            self._first = data[pos]
        first = self._first
        folded = (
            first == _SP or first == _HTAB
        ) and self._fields > 0  # obs-fold: adds to its field
        nl = data.find(b"\n", pos)
        self._block += (end if nl < 0 else nl + 1) - pos
        if nl < 0:
            self._line += end - pos
            self._cr = data[end - 1] == _CR
            if not folded and first != _CR and self._fields >= limits.fields:
                return -1
            content = self._line - self._cr  # 0: only a CR so far, maybe the head's end
            if content and (self._last_field if folded else 0) + content + 2 > limits.field_size:
                return -2
            if self._block > limits.header_block:
                return -3
            if first in b"cCtT":
                self._kept.append(data[pos:end])
            return end
        cr = data[nl - 1] == _CR if nl > pos else self._cr
        length = self._line + nl - pos - cr
        kept = self._kept
        self._line, self._cr, self._kept = 0, False, []
        if length == 0:
            if self._block > limits.header_block:
                return -3
            self.heads += 1
            self._body_begins()
            return nl + 1
        if folded:
            self._last_field += length + 2
        else:
            self._fields += 1
            if self._fields > limits.fields:
                return -1
            self._last_field = length + 2
        if self._last_field > limits.field_size:
            return -2
        if self._block > limits.header_block:
            return -3
        if first in b"cCtT" and not folded:
            self._framing_of(b"".join(kept) + data[pos:nl])
        return nl + 1

    def _framing_of(self, fields: bytes) -> None:
        """Note the framing fields among ``fields`` (one field line or a whole header block)."""
        for line in fields.split(b"\n"):
            match = _FRAMING_FIELD.fullmatch(line)
            if match is None:
                continue
            name, value = match.group(1).lower(), match.group(2)
            if name == b"transfer-encoding":
                last = value.rsplit(b",", 1)[-1].strip(b" \t").lower()
                self._chunked = last == b"chunked"
                self._unfollowed = self._unfollowed or not self._chunked
            elif value.isdigit() and self._length in (None, int(value)):
                self._length = int(value)
            else:  # a list, a sign, two different lengths: RFC 9112 6.3 makes it an error
                self._unfollowed = True

    def _body_begins(self) -> None:
        if self._unfollowed:
            self._state, self.counting = _State.UNFOLLOWED, False
        elif self._chunked:
            self._state = _State.CHUNK_SIZE
        elif self._length:
            self._state, self._left = _State.LENGTH, self._length
        else:
            self._state = _State.LINE

    # --- a chunked body --------------------------------------------------------------------

    def _chunk_size(self, data: bytes, pos: int, end: int) -> int:
        nl = data.find(b"\n", pos)
        stop = end if nl < 0 else nl
        if self._line < _CHUNK_SIZE_KEPT:
            self._kept.append(data[pos : min(stop, pos + _CHUNK_SIZE_KEPT - self._line)])
        self._line += stop - pos
        if nl < 0:
            return end
        digits = _HEX.match(b"".join(self._kept).lstrip(b" \t"))
        self._line, self._kept = 0, []
        if digits is None:
            self._state, self.counting = _State.UNFOLLOWED, False
        elif int(digits.group(), 16) == 0:
            self._state = _State.TRAILERS
        else:
            self._state, self._left = _State.CHUNK_DATA, int(digits.group(), 16) + 2  # data CRLF
        return nl + 1

    def _trailer_line(self, data: bytes, pos: int, end: int) -> int:
        nl = data.find(b"\n", pos)
        if nl < 0:
            self._line += end - pos
            self._cr = data[end - 1] == _CR
            return end
        cr = data[nl - 1] == _CR if nl > pos else self._cr
        empty = self._line + nl - pos - cr == 0
        self._line, self._cr = 0, False
        if empty:
            self._state = _State.LINE
        return nl + 1


_FIELD_BREACHES = (Breach.FIELDS, Breach.FIELD_SIZE, Breach.HEADER_BLOCK)
