"""Events the sans-IO SMTP server core hands to its driver.

The core (``smtp.server.ServerConnection``) answers syntax and sequence errors itself.
Events marked *needs a response* pause the core until the driver calls
``ServerConnection.respond(reply_or_None)``; ``None`` means "the default positive reply"
(the EHLO capability list, ``250 2.1.0``, ``250 2.1.5`` ...).  While paused, pipelined
input stays buffered, so replies always leave in command order (RFC 2920 §3.1).
"""
from __future__ import annotations

from dataclasses import dataclass


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``next_event()`` needs more bytes from the peer: flush ``data_to_send()`` and read.
NEED_DATA = _Sentinel("NEED_DATA")
#: ``next_event()`` is waiting for ``respond()`` to the last event that needs a response.
PAUSED = _Sentinel("PAUSED")


@dataclass(frozen=True, slots=True)
class Address:
    """An envelope address after parsing (RFC 5321 §4.1.2).

    ``local`` is the local part with quoting removed; ``domain`` is as given (not folded).
    The null reverse-path ``<>`` is ``Address("", "")``.  ``source_route`` keeps a stripped
    A-d-l (RFC 5321 §4.1.1.3) for the record; it never affects routing.
    """
    local: str
    domain: str
    raw: str = ""                 # the text between the angle brackets, as received
    quoted: bool = False          # local part was a quoted-string
    source_route: str = ""
    is_literal: bool = False      # domain is an address literal "[...]"
    utf8: bool = False            # contains non-ASCII (needs SMTPUTF8, RFC 6531)

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    def __str__(self) -> str:
        if self.is_null:
            return ""
        local = self.local
        if self.quoted:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local


@dataclass(frozen=True, slots=True)
class MailParams:
    """MAIL FROM parameters we understand (RFC 1870, 6152, 6531, 3461)."""
    size: int | None = None       # SIZE=
    body: str | None = None       # BODY=7BIT | 8BITMIME
    smtputf8: bool = False        # SMTPUTF8
    ret: str | None = None        # RET=FULL | HDRS  (RFC 3461 §4.3)
    envid: str | None = None      # ENVID= (xtext-decoded, RFC 3461 §4.4)
    auth: str | None = None       # AUTH= (RFC 4954 §5), accepted and ignored on port 25


@dataclass(frozen=True, slots=True)
class RcptParams:
    """RCPT TO parameters (RFC 3461 §4.1, §4.2)."""
    notify: tuple[str, ...] | None = None   # ("NEVER",) or subset of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None                # "addr-type;xtext-decoded address"


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO/HELO with a syntactically valid argument. Needs a response."""
    hostname: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM after syntax and parameter checks. Needs a response."""
    address: Address
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO after syntax, parameter and recipient-count checks. Needs a response."""
    address: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataStarted:
    """The core answered 354 to DATA, or accepted the first BDAT chunk header.
    No response. The driver opens the body sink (blob file)."""
    chunking: bool


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Message content, dot-unstuffed, CRLF line endings, in order. No response."""
    data: bytes


@dataclass(frozen=True, slots=True)
class BodyComplete:
    """End of data (CRLF.CRLF or BDAT LAST) for a clean message. Needs a response:
    commit durably, then ``respond(Reply(250, '2.0.0', 'Ok: queued as <id>'))``."""
    size: int


@dataclass(frozen=True, slots=True)
class BodyRejected:
    """The core rejected the message being received (size, bare CR/LF, NUL) and has
    already queued the reply. No response. The driver discards the body sink."""
    reason: str


@dataclass(frozen=True, slots=True)
class BdatChunkAccepted:
    """A non-final BDAT chunk was fully received; the core already queued 250. No response."""
    size: int


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS accepted: "220 2.0.0 Ready to start TLS" is queued and any bytes the
    peer pipelined after the command were discarded (CVE-2011-0411). No response.
    The driver flushes, performs the handshake, then calls ``tls_established()``."""


@dataclass(frozen=True, slots=True)
class AuthStart:
    """``AUTH mechanism [initial-response]`` passed the sequence checks (RFC 4954 §4).
    Needs a response.  ``mechanism`` is upper-cased and one the listener offers;
    ``initial_response`` is the base64-decoded initial response (``b""`` for "="), or None
    when the client sent none.  The driver runs the SASL mechanism (smtp.sasl) and answers
    with a 334 continuation (``catalog.auth_challenge``), ``catalog.AUTH_OK`` or a failure.
    The core never looks inside the data."""
    mechanism: str
    initial_response: bytes | None

    def __repr__(self) -> str:          # never put credentials in a log line
        return f"AuthStart(mechanism={self.mechanism!r}, initial_response=<hidden>)"


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One client line of a SASL exchange after a 334, base64-decoded.  Needs a response,
    as for ``AuthStart``.  (A ``*`` line cancels: the core answers 501 5.0.0 itself.)"""
    data: bytes

    def __repr__(self) -> str:
        return "AuthResponse(data=<hidden>)"


@dataclass(frozen=True, slots=True)
class TransactionReset:
    """RSET, a new EHLO/HELO, or STARTTLS ended the mail transaction. No response.
    The driver drops its envelope and any open body sink."""


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The core has queued its last reply (221 after QUIT, or a 421): flush, then close."""
    reason: str


Event = (Hello | MailFrom | RcptTo | DataStarted | BodyChunk | BodyComplete | BodyRejected
         | BdatChunkAccepted | StartTLS | AuthStart | AuthResponse | TransactionReset
         | CloseConnection)

NEEDS_RESPONSE = (Hello, MailFrom, RcptTo, BodyComplete, AuthStart, AuthResponse)
