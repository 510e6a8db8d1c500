"""The first header section of a message being received, captured while the body streams.

What: ``HeaderCapture`` sits between the SMTP core's ``BodyChunk`` events and the blob: it
holds back the bytes of the header section (RFC 5322 §2.1: up to the first empty line),
bounded by ``limit`` octets, and releases everything after it untouched.  ``HeaderInfo``
says what intake needs from those headers:

* ``received`` -- the number of ``Received:`` fields, for loop detection (RFC 5321 §6.3;
  Postfix ``hopcount_limit``, default 50);
* ``has_date`` / ``has_message_id`` -- for the submission fix-ups of RFC 6409 §8.2/§8.3;
* ``from_addresses`` -- the addr-specs of every ``From:`` field, for sender authorization
  (RFC 6409 §6.1 lets an MSA check that the author is the authenticated user).

``submission_fixups(...)`` renders the fields an MSA prepends: a ``Received:`` naming the
authenticated submission (RFC 5321 §4.4; the "Authenticated sender" comment as Postfix's
``smtpd_sasl_authenticated_header`` writes it, RFC 3848 ``ESMTPSA``), and ``Date:`` and
``Message-ID:`` when missing.

How: ``feed(data) -> bytes`` returns the octets that may go to the blob now (b"" while
still capturing); once the section is complete (or the bound is reached, or the message
ends: ``finish()``), ``header`` holds it and ``info`` its analysis, and the driver writes
``prefix + header + rest``.  Only the header section is ever buffered: bodies of any size
stream through.

Invariants:
* Concatenating ``header`` and every octet ``feed``/``finish`` released reproduces the
  input exactly.
* Rendered fields end in CRLF, fold with CRLF TAB, and carry no client-controlled control
  characters (message/trace.py sanitisers).
"""
from __future__ import annotations

import email.utils
import secrets
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from .trace import (
    CRLF, address_literal, fold, rfc5322_date, sanitize_address, sanitize_host, tls_comment,
)

__all__ = ["HeaderCapture", "HeaderInfo", "submission_fixups", "new_message_id",
           "QUARANTINE_FIELD", "quarantine_field", "quarantine_reason", "remove_fields",
           "split_fields", "field_values",
           "HEADER_LIMIT"]

HEADER_LIMIT = 256 * 1024


@dataclass(slots=True)
class HeaderInfo:
    received: int = 0
    has_date: bool = False
    has_message_id: bool = False
    complete: bool = True           # False: the bound cut the section short
    header: bytes = b""
    _from: list[str] | None = None

    @property
    def from_addresses(self) -> list[str]:
        """The addr-specs of every From: field; parsed on first use only (submission
        needs them, the MX role does not, and the email parser is the costly part)."""
        if self._from is None:
            self._from = _from_addresses(self.header)
        return self._from


def _from_addresses(header: bytes) -> list[str]:
    try:
        msg = BytesHeaderParser(policy=compat32).parsebytes(header)
        values = [str(v) for v in msg.get_all("From", [])]
    except Exception:  # noqa: BLE001 - the parser is lenient; be safe anyway
        values = []
    out = [addr for _, addr in email.utils.getaddresses(values) if addr]
    if values and not out:
        out.append("")      # a From field without a usable address
    return out


def analyse(header: bytes, complete: bool = True) -> HeaderInfo:
    info = HeaderInfo(complete=complete, header=header)
    for line in header.split(b"\n"):
        name = line.split(b":", 1)[0].strip().lower() if b":" in line[:80] else b""
        if not line or line[:1] in (b" ", b"\t"):
            continue
        if name == b"received":
            info.received += 1
        elif name == b"date":
            info.has_date = True
        elif name == b"message-id":
            info.has_message_id = True
    return info


class HeaderCapture:
    def __init__(self, limit: int = HEADER_LIMIT) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.header: bytes | None = None     # set once the section is known
        self.info: HeaderInfo | None = None

    @property
    def done(self) -> bool:
        return self.header is not None

    def feed(self, data: bytes) -> bytes:
        """Take body octets; return those that may be written now (after ``header``)."""
        if self.header is not None:
            return data
        start = max(0, len(self._buf) - 3)
        self._buf += data
        buf = self._buf
        if buf[:2] == b"\r\n":                   # no header fields at all
            return self._complete(0, True)
        end = buf.find(b"\r\n\r\n", start)
        if end >= 0:
            return self._complete(end + 4, True)
        if len(buf) >= self.limit:
            return self._complete(len(buf), False)
        return b""

    def finish(self) -> bytes:
        """The message ended: whatever was held is the header section."""
        if self.header is not None:
            return b""
        return self._complete(len(self._buf), True)

    def _complete(self, cut: int, complete: bool) -> bytes:
        buf = bytes(self._buf)
        self._buf = bytearray()
        self.header = buf[:cut]
        self.info = analyse(self.header, complete)
        return buf[cut:]


def new_message_id(hostname: str) -> str:
    """``<unique@hostname>`` (RFC 5322 §3.6.4)."""
    return f"<{int(time.time())}.{secrets.token_hex(8)}@{sanitize_host(hostname) or 'localhost'}>"


def submission_fixups(info: HeaderInfo, *, hostname: str, auth_user: str, helo: str,
                      client_ip: str, tls: str, protocol: str, now: float,
                      hide_client: bool, product: str = "Mailwright") -> bytes:
    """The fields an MSA prepends (RFC 6409 §8): Received, then Message-ID and Date if
    the message lacks them."""
    groups: list[list[str]] = []
    if not hide_client:
        groups.append([f"from {sanitize_host(helo) or 'unknown'}",
                       "(unknown", f"{address_literal(client_ip)})"])
    comment = tls_comment(tls)
    if comment:
        groups.append([comment])
    groups.append(["(Authenticated", f"sender: {sanitize_address(auth_user)})"])
    groups.append([f"by {sanitize_host(hostname) or 'localhost'}", f"({product})",
                   f"with {protocol};", rfc5322_date(now)])
    out = fold("Received", groups)
    if not info.has_message_id:
        out += f"Message-ID: {new_message_id(hostname)}{CRLF}"
    if not info.has_date:
        out += f"Date: {rfc5322_date(now)}{CRLF}"
    return out.encode("utf-8")


# --------------------------------------------------------------- our own marks

#: The field that sends a message to the recipient's Junk folder (DMARC quarantine,
#: content rules). Only we may set it: ``remove_fields`` strips it from every arriving
#: message before anything is stored, so its presence at delivery is trustworthy.
QUARANTINE_FIELD = b"X-Mailwright-Quarantine"


def quarantine_field(reason: str) -> bytes:
    text = " ".join(reason.replace("\r", " ").replace("\n", " ").split())[:400] or "yes"
    return fold(QUARANTINE_FIELD.decode(), [text.split(" ")]).encode("utf-8", "replace")


def remove_fields(header: bytes, should_remove) -> tuple[bytes, int]:
    """Remove whole fields (with their folded continuation lines) for which
    ``should_remove(name_lower: bytes, raw_field: bytes)`` is true. Returns the new
    section and how many fields were removed. Line ends are kept as they were."""
    if not header:
        return header, 0
    lines = header.splitlines(keepends=True)
    out: list[bytes] = []
    field: list[bytes] = []
    removed = 0

    def close() -> None:
        nonlocal removed
        if not field:
            return
        raw = b"".join(field)
        colon = raw.find(b":")
        name = raw[:colon].strip().lower() if colon > 0 else b""
        if name and should_remove(name, raw):
            removed += 1
        else:
            out.append(raw)
        field.clear()

    for line in lines:
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        close()
        if line in (b"\r\n", b"\n"):
            out.append(line)
            continue
        field.append(line)
    close()
    return b"".join(out), removed


def quarantine_reason(message_head: bytes) -> str | None:
    """The reason in our quarantine field, if the header section of a stored message has
    one (we put it first; any position is accepted). Folded values are unfolded."""
    end = message_head.find(b"\r\n\r\n")
    section = message_head if end < 0 else message_head[:end + 2]
    wanted = QUARANTINE_FIELD.lower()
    lines = section.split(b"\r\n")
    for i, line in enumerate(lines):
        if line[:len(wanted) + 1].lower() == wanted + b":":
            value = [line[len(wanted) + 1:]]
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value.append(cont)
            text = b" ".join(v.strip() for v in value).decode("utf-8", "replace").strip()
            return text or "yes"
    return None


def split_fields(block: bytes) -> list[bytes]:
    """A block of CRLF header lines as whole fields (continuation lines kept, CRLF
    between them; blank lines dropped)."""
    out: list[bytes] = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\r\n" + line
        else:
            out.append(line)
    return out


def field_values(section: bytes, name: str) -> list[str]:
    """Unfolded values (RFC 5322 §2.2.3: CRLF removed, white space kept) of every field
    called ``name`` (case-insensitive) in a header section; the section ends at the first
    blank line if there is one."""
    end = section.find(b"\r\n\r\n")
    if end >= 0:
        section = section[:end + 2]
    wanted = name.lower().encode()
    out: list[str] = []
    for field in split_fields(section):
        colon = field.find(b":")
        if colon > 0 and field[:colon].strip().lower() == wanted:
            out.append(field[colon + 1:].replace(b"\r\n", b"").decode("utf-8", "replace")
                       .strip())
    return out
