"""Message framing for the server core: the DATA dot-stuffed decoder and the BDAT reader.

What: both readers take the connection's input buffer (``bytes``) and a start offset,
consume as much as is safe, and return the new offset plus the next piece of message
content.  ``BodyInspector`` applies the content policy shared by both.

How (speed): a feed call works on the whole available slice with C-level ``bytes``
methods (``find``, ``count``, ``replace``); there is no per-byte Python loop, so a 5 KB
message costs a handful of passes over 5 KB.

Policy
------
* **End of DATA** is only ``CRLF . CRLF`` (RFC 5321 §4.1.1.4).  The CRLF of the DATA
  command line counts as the first CRLF, so ``.\\r\\n`` right after ``DATA\\r\\n`` is an
  empty message.  Dot-unstuffing per RFC 5321 §4.5.2: one leading "." is removed from
  every line that starts with one.
* **SMTP smuggling** (CVE-2023-51764/51765/51766 class): a bare LF, a bare CR (RFC 5321
  §2.3.8) or a NUL byte anywhere in the content *never* ends the message or the chunk.
  The reader keeps consuming until the real terminator (DATA) or the announced octet
  count (BDAT), stops emitting content, and the server then rejects the whole message
  (``554 5.5.2`` for bare CR/LF, ``554 5.6.0`` for NUL).  So ``\\n.\\r\\n``, ``\\r.\\r``,
  ``\\r\\n\\0.\\r\\n`` ... are body bytes of a message that is rejected, and whatever the
  peer sent after them up to the real ``CRLF . CRLF`` is never read as commands.
* **Size**: stored octets (after unstuffing) are counted; beyond ``max_size`` the reader
  stops emitting content, consumes to the end, and the server answers
  ``552 5.3.4`` (RFC 1870 §6).
* **Long lines**: data lines longer than 1000 octets (RFC 5321 §4.5.3.1.6) are accepted
  as they are; the limit matters only for what we send, not what we accept.
* **BDAT** (RFC 3030): exactly the announced number of octets is read, raw, no dot
  handling.  The same line-ending, NUL and size policy applies across chunk boundaries:
  a CRLF split between two chunks is fine, a CR at the end of the LAST chunk is bare.

Invariants: readers never raise on any input; a reader never consumes bytes beyond the
end of its message or chunk; content is emitted in order, and not at all once the
message is rejected.
"""
from __future__ import annotations

__all__ = ["BodyInspector", "DataDecoder", "BdatReader",
           "REJECT_BARE_LINE_ENDING", "REJECT_NUL", "REJECT_SIZE"]

REJECT_BARE_LINE_ENDING = "bare CR or LF in data"
REJECT_NUL = "NUL byte in data"
REJECT_SIZE = "message size exceeds limit"

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E


class BodyInspector:
    """Content policy over the raw octets of one message: line endings, NUL, size.

    ``rejection`` is None while the message is acceptable, else one of the ``REJECT_*``
    strings. Bad octets (NUL, bare CR/LF) take precedence over size and are looked for
    even after the size limit was passed, so the verdict does not depend on how the peer's
    octets were segmented into reads.
    """

    __slots__ = ("max_size", "size", "_bad", "_too_big", "_pending_cr")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0                       # stored octets so far
        self._bad: str | None = None        # first octet-level violation, final once set
        self._too_big = False
        self._pending_cr = False            # the last raw octet seen was a CR

    @property
    def rejection(self) -> str | None:
        if self._bad is not None:
            return self._bad
        return REJECT_SIZE if self._too_big else None

    def check_raw(self, raw: bytes) -> None:
        """Check raw octets (before unstuffing) for bare CR/LF and NUL."""
        if self._bad is not None or not raw:
            return
        if b"\0" in raw:
            self._bad = REJECT_NUL
            return
        if self._pending_cr:
            if raw[0] != _LF:
                self._bad = REJECT_BARE_LINE_ENDING
                return
            raw = raw[1:]
        self._pending_cr = raw.endswith(b"\r")      # may pair with an LF in the next piece
        if self._pending_cr:
            raw = raw[:-1]
        # Remove every CRLF; any CR or LF left over is bare.  (split+join and two memchr
        # passes beat counting "\r\n", "\r" and "\n" separately.)
        if b"\r" in raw or b"\n" in raw:
            rest = b"".join(raw.split(b"\r\n"))
            if b"\r" in rest or b"\n" in rest:
                self._bad = REJECT_BARE_LINE_ENDING

    def mark_too_big(self) -> None:
        self._too_big = True

    def add_size(self, n: int) -> None:
        self.size += n
        if self.size > self.max_size:
            self._too_big = True

    def finish(self) -> None:
        """End of content: a trailing CR is bare."""
        if self._pending_cr and self._bad is None:
            self._bad = REJECT_BARE_LINE_ENDING
        self._pending_cr = False


class DataDecoder:
    """Reads a DATA body: dot-unstuffing, terminator detection, policy checks."""

    __slots__ = ("inspector", "_at_bol")

    def __init__(self, max_size: int) -> None:
        self.inspector = BodyInspector(max_size)
        # True when the consumed input ends with CRLF.  The DATA line's CRLF counts.
        self._at_bol = True

    def feed(self, buf: bytes, pos: int) -> tuple[int, bytes | None, bool]:
        """Consume from ``buf[pos:]``.

        Returns ``(new_pos, content, done)``: ``content`` is unstuffed message data to
        store (``None`` if there is none, or the message is rejected); ``done`` is True
        once the terminator was consumed.  ``new_pos == pos`` with ``done`` False and
        no content means "need more input".  Up to 4 trailing octets are held back
        (left unconsumed) while they could still be the start of ``CRLF . CRLF``.
        """
        n = len(buf)
        if pos >= n:
            return pos, None, False
        at_bol = self._at_bol
        stuffed = at_bol and buf[pos] == _DOT
        if stuffed:
            if buf.startswith(b".\r\n", pos):
                return pos + 3, None, True           # terminator; its CRLF came earlier
            if n - pos < 3 and b".\r\n".startswith(buf[pos:]):
                return pos, None, False              # "." or ".\r": wait for more
        # One pass finds both the terminator and dot-stuffed lines ("\r\n." not followed
        # by "\r\n"); usually the terminator is the only hit.
        end = -1
        idx = buf.find(b"\r\n.", pos)
        while idx >= 0:
            if buf.startswith(b"\r\n", idx + 3):
                end, new_pos, done = idx + 2, idx + 5, True
                break
            if idx + 5 > n:
                break                                # maybe a terminator still arriving
            stuffed = True
            idx = buf.find(b"\r\n.", idx + 3)
        if end < 0:
            end = n - 4                              # hold back a possible terminator prefix
            if end > pos and buf[end - 1] == _CR:
                end -= 1                             # never split a CRLF
            if end <= pos:
                return pos, None, False
            new_pos, done = end, False
        raw = buf[pos:end]
        inspector = self.inspector
        inspector.check_raw(raw)
        content: bytes | None = None
        if inspector.rejection is None:
            content = raw.replace(b"\r\n.", b"\r\n") if stuffed else raw    # RFC 5321 §4.5.2
            if at_bol and raw[0] == _DOT:
                content = content[1:]
            inspector.add_size(len(content))
            if inspector.rejection is not None or not content:
                content = None
        self._at_bol = raw.endswith(b"\r\n")
        return new_pos, content, done


class BdatReader:
    """Reads BDAT chunks (RFC 3030 §2) of one transaction, applying the same policy."""

    __slots__ = ("inspector", "remaining", "last", "chunk_size")

    def __init__(self, max_size: int) -> None:
        self.inspector = BodyInspector(max_size)
        self.remaining = 0
        self.last = False
        self.chunk_size = 0

    def start_chunk(self, size: int, last: bool) -> None:
        self.remaining = size
        self.chunk_size = size
        self.last = last
        ins = self.inspector
        if ins.size + size > ins.max_size:
            ins.mark_too_big()              # known now: emit nothing of this chunk

    def feed(self, buf: bytes, pos: int) -> tuple[int, bytes | None, bool]:
        """Consume up to ``remaining`` octets.  Returns ``(new_pos, content, chunk_done)``.
        The caller calls ``inspector.finish()`` after the LAST chunk."""
        take = min(self.remaining, len(buf) - pos)
        if take <= 0:
            return pos, None, self.remaining == 0
        raw = buf[pos:pos + take]
        self.remaining -= take
        ins = self.inspector
        ins.check_raw(raw)
        content: bytes | None = None
        if ins.rejection is None:
            ins.add_size(take)
            if ins.rejection is None:
                content = raw
        else:
            ins.size += take
        return pos + take, content, self.remaining == 0
