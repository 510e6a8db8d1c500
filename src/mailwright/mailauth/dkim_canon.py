"""DKIM canonicalisation: header fields, tag lists and streaming body hashes (RFC 6376).

What: the byte-level pieces DKIM signing and verification share, all pure:

* ``split_message(message)`` -> the header fields (``HeaderField``: name and raw octets
  including folding and the final CRLF) and the offset where the body starts (RFC 5322
  §2.1: after the first empty line; no empty line means no body).
* ``canonicalize_header(field, "simple"|"relaxed")`` (RFC 6376 §3.4.1, §3.4.2).
* ``select_headers(fields, names)``: the instances an ``h=`` list signs, each name taking
  the last not-yet-used instance, bottom-up; names without one add nothing (§5.4.2).
* ``parse_tag_list(value)`` (§3.2) -> dict; duplicate tags make the whole list invalid.
* ``BodyHasher(canon, hash_name, limit)``: simple/relaxed body canonicalisation (§3.4.3,
  §3.4.4) fed in chunks, hashing at most ``limit`` octets (``l=``, §3.5) while counting the
  full canonical length, so a 50 MB body is processed once, in linear time, holding only
  a partial line between chunks.

How: bare LF line ends are read as CRLF (the RFC 5322 form; dkimpy does the same), both in
the header section and in the body; a lone CR stays content. Relaxed body work is done per
block of complete lines with two C-level passes (``re.sub`` of WSP runs, then removal of
the SP before CRLF); the unterminated tail of a chunk is processed up to its last non-WSP
octet and only its trailing WSP (collapsed to one SP, as relaxed would) and a final CR wait
for the next chunk. Trailing empty lines are never written, only counted, and written when
content follows (both canonicalisations ignore empty lines at the end of the body).

Invariants:
  * Feeding a body in any split gives the same digest and length as feeding it whole.
  * Work and memory are linear in the input; nothing is buffered but a partial line of
    whitespace, one CR and the count of held-back empty lines.
  * Header field bytes hashed are exactly those of the message (CRLF-normalised); nothing
    is decoded, so non-ASCII octets pass through untouched.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "BodyDigest", "BodyHasher", "CANONICALIZATIONS", "HeaderField", "TagListError",
    "body_digest", "canonicalize_header", "parse_tag_list", "select_headers", "split_message",
    "strip_fws",
]

CANONICALIZATIONS = ("simple", "relaxed")
CRLF = b"\r\n"
# WSP runs that relaxed canonicalisation changes: any with a TAB or longer than one SP
# (matching single spaces too would make every word a match: ~3x slower on text).
_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")
_FWS_ALL = re.compile(r"[ \t\r\n]+")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


class TagListError(ValueError):
    """A tag list (RFC 6376 §3.2) that cannot be parsed; the whole list is invalid."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field: ``name`` as written (without surrounding WSP), ``raw`` the whole
    field with its folding and its final CRLF, line ends normalised to CRLF."""

    name: str
    raw: bytes

    @property
    def lname(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> bytes:
        """Everything after the first colon, without the final CRLF (folding kept)."""
        return self.raw.partition(b":")[2][:-2]


def _to_crlf(data: bytes) -> bytes:
    """Bare LF -> CRLF; existing CRLF kept; lone CR kept."""
    if b"\n" not in data:
        return data
    return data.replace(CRLF, b"\n").replace(b"\n", CRLF)


def split_message(message: bytes) -> tuple[list[HeaderField], int]:
    """Header fields (top-down) and the offset of the body in ``message``.

    The header section ends at the first empty line (CRLF or bare LF); the body starts
    after it. Without an empty line the whole message is header and the offset is
    ``len(message)``. A line that starts with WSP continues the field above it (RFC 5322
    §2.2.3); a line without a colon is kept as a field whose name is the whole line (it
    can then never match an ``h=`` name).
    """
    fields: list[HeaderField] = []
    current: list[bytes] = []
    pos, end = 0, len(message)
    body_start = end

    def close() -> None:
        if current:
            raw = CRLF.join(current) + CRLF
            name = current[0].partition(b":")[0].strip(b" \t")
            fields.append(HeaderField(name.decode("ascii", "replace"), raw))
            current.clear()

    while pos < end:
        nl = message.find(b"\n", pos)
        if nl < 0:
            line, pos = message[pos:], end
        else:
            line, pos = message[pos:nl], nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                body_start = pos
                break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
        else:
            close()
            current.append(line)
    close()
    return fields, body_start


def canonicalize_header(field: HeaderField, canon: str) -> bytes:
    """One header field in canonical form, ending in CRLF.

    simple (§3.4.1): unchanged. relaxed (§3.4.2): name lower-cased, value unfolded, WSP
    runs to one SP, WSP at the ends of the value and around the colon deleted.
    """
    if canon == "simple":
        return field.raw
    if canon != "relaxed":
        raise ValueError(f"unknown canonicalization {canon!r}")
    name, _, value = field.raw[:-2].partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(CRLF, b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + CRLF


def select_headers(fields: Sequence[HeaderField], names: Iterable[str]) -> list[HeaderField]:
    """The fields an ``h=`` list signs, in ``h=`` order (RFC 6376 §5.4.2).

    Each occurrence of a name takes the next instance from the bottom of the header;
    a name with no instance left selects nothing (that is how oversigning works).
    """
    by_name: dict[str, list[HeaderField]] = {}
    for f in fields:
        by_name.setdefault(f.lname, []).append(f)
    taken: list[HeaderField] = []
    for name in names:
        stack = by_name.get(name.lower())
        if stack:
            taken.append(stack.pop())
    return taken


def parse_tag_list(value: str) -> dict[str, str]:
    """``tag=value; ...`` (RFC 6376 §3.2) -> {tag: value}, values with outer FWS removed.

    Tag names are case-sensitive. A duplicate tag, a spec without "=", or an invalid tag
    name raise TagListError. Empty specs (``;;`` or a trailing ``;``) are tolerated.
    """
    tags: dict[str, str] = {}
    for spec in value.split(";"):
        if not spec.strip(" \t\r\n"):
            continue
        name, eq, val = spec.partition("=")
        name = name.strip(" \t\r\n")
        if not eq or not _TAG_NAME.match(name):
            raise TagListError(f"bad tag-spec {spec.strip()[:40]!r}")
        if name in tags:
            raise TagListError(f"duplicate tag {name!r}")
        tags[name] = val.strip(" \t\r\n")
    return tags


def strip_fws(value: str) -> str:
    """A tag value with all folding white space removed (base64 values, §3.5 b=/bh=)."""
    return _FWS_ALL.sub("", value)


@dataclass(frozen=True, slots=True)
class BodyDigest:
    """What a ``BodyHasher`` found: the digest of the hashed octets, how many octets were
    hashed, and the length of the whole canonical body (longer than ``hashed`` when an
    ``l=`` limit cut it)."""

    digest: bytes
    hashed: int
    length: int


class BodyHasher:
    """Streaming body canonicalisation and hash (see the module docstring).

    ``update(chunk)`` any number of times, then ``finish()`` once. ``limit`` is the ``l=``
    count: only the first ``limit`` canonical octets are hashed.
    """

    def __init__(self, canon: str, hash_name: str = "sha256", limit: int | None = None) -> None:
        if canon not in CANONICALIZATIONS:
            raise ValueError(f"unknown canonicalization {canon!r}")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        self.canon = canon
        self.limit = limit
        self._hash = hashlib.new(hash_name)
        self._carry = b""          # partial line (relaxed: trailing WSP only) and/or a CR
        self._pending = 0          # empty lines held back (they may be the body's end)
        self._at_line_start = True
        self._length = 0
        self._hashed = 0
        self._done = False

    # -- output

    def _write(self, data: bytes) -> None:
        if not data:
            return
        self._length += len(data)
        if self.limit is None:
            self._hash.update(data)
            self._hashed += len(data)
            return
        room = self.limit - self._hashed
        if room > 0:
            part = data if len(data) <= room else data[:room]
            self._hash.update(part)
            self._hashed += len(part)

    def _emit(self, seg: bytes) -> None:
        """Write canonical text ``seg`` (complete lines, then maybe a partial line whose
        last octet is content), holding back the empty lines at its end."""
        if not seg:
            return
        if not seg.endswith(CRLF):
            self._flush_pending()
            self._write(seg)
            self._at_line_start = False
            return
        end, empty = len(seg), 0
        while end >= 2 and seg.endswith(CRLF, 0, end):
            before = end - 2
            starts_line = self._at_line_start if before == 0 else seg.endswith(CRLF, 0, before)
            if not starts_line:
                break
            empty += 1
            end = before
        if end == 0:                     # nothing but empty lines
            self._pending += empty
        else:
            self._flush_pending()
            self._write(seg[:end])
            self._pending = empty
        self._at_line_start = True

    def _flush_pending(self) -> None:
        if self._pending:
            self._write(CRLF * self._pending)
            self._pending = 0

    # -- input

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("BodyHasher already finished")
        data = self._carry + bytes(chunk)
        hold = b""
        if data.endswith(b"\r"):         # may be the first half of a CRLF
            data, hold = data[:-1], b"\r"
        data = _to_crlf(data)
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        if self.canon == "simple":
            self._emit(complete + rest)
            self._carry = hold
            return
        content = rest.rstrip(b" \t")
        tail = b" " if len(content) < len(rest) else b""
        self._emit(self._relax(complete + content))
        self._carry = tail + hold

    @staticmethod
    def _relax(data: bytes) -> bytes:
        """RFC 6376 §3.4.4 a and b on whole lines: WSP runs -> SP, no WSP before CRLF."""
        return _WSP_RUN.sub(b" ", data).replace(b" \r\n", CRLF)

    def finish(self) -> BodyDigest:
        if self._done:
            raise RuntimeError("BodyHasher already finished")
        self._done = True
        tail = self._carry
        if self.canon == "relaxed":
            tail = self._relax(tail).rstrip(b" ")
        if tail or not self._at_line_start:
            # content without a final CRLF: a CRLF is added (§3.4.3, §3.4.4)
            self._emit(tail + CRLF)
        if self.canon == "simple" and self._length == 0:
            self._write(CRLF)            # §3.4.3: an empty body is one CRLF
        # §3.4.3/§3.4.4: the held-back empty lines were the end of the body: dropped.
        return BodyDigest(self._hash.digest(), self._hashed, self._length)


def body_digest(body: bytes | memoryview, canon: str, hash_name: str = "sha256",
                limit: int | None = None, chunk_size: int = 1 << 20) -> BodyDigest:
    """The canonical body hash of ``body`` fed to a ``BodyHasher`` in ``chunk_size`` pieces."""
    hasher = BodyHasher(canon, hash_name, limit)
    view = memoryview(body)
    for start in range(0, len(view), chunk_size):
        hasher.update(view[start:start + chunk_size])
    return hasher.finish()
