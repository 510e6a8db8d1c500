"""Queue data model: what is committed before the 250, and per-recipient state after.

Pure data, no I/O. Every store backend persists exactly these values.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RecipientState(str, enum.Enum):
    QUEUED = "queued"        # waiting for its first or next attempt (next_attempt_at says when)
    DELIVERED = "delivered"  # final: delivered (or relayed) successfully
    FAILED = "failed"        # final: permanent failure or expired; a DSN is due (next issue)
    HELD = "held"            # operator hold: never attempted until released


FINAL_STATES = frozenset({RecipientState.DELIVERED, RecipientState.FAILED})


@dataclass(slots=True)
class RecipientRequest:
    """One accepted RCPT TO, as committed with the message."""
    address: str                     # the recipient as given in RCPT TO (source route stripped)
    notify: tuple[str, ...] | None = None  # RFC 3461 NOTIFY
    orcpt: str | None = None         # RFC 3461 ORCPT "type;address"


@dataclass(slots=True)
class Envelope:
    """Everything the SMTP transaction established, committed atomically with the body."""
    sender: str                      # reverse-path, "" for the null sender
    recipients: list[RecipientRequest]
    received_at: float               # unix time of acceptance
    client_ip: str = ""
    client_port: int = 0
    client_name: str = ""            # reverse DNS name if known
    helo: str = ""
    protocol: str = "ESMTP"          # RFC 3848 "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPSA, LMTP...
    tls: str = ""                    # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; "" if cleartext
    auth_user: str = ""
    body_type: str = "7BIT"          # 7BIT or 8BITMIME (RFC 6152)
    smtputf8: bool = False           # RFC 6531
    ret: str | None = None           # RFC 3461 RET=FULL|HDRS
    envid: str | None = None         # RFC 3461 ENVID
    size: int = 0                    # octets of the stored body
    listener: str = "smtp"           # name of the listener that accepted it


@dataclass(slots=True)
class QueuedRecipient:
    """Per-recipient delivery state (GUIDE: per-recipient state everywhere)."""
    id: int
    queue_id: str
    address: str
    notify: tuple[str, ...] | None
    orcpt: str | None
    state: RecipientState
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_attempt_at: float | None = None
    last_reply: str = ""             # last remote/local reply text, e.g. "452 4.2.2 Over quota"
    final_at: float | None = None


@dataclass(slots=True)
class QueuedMessage:
    queue_id: str
    envelope: Envelope
    blob_path: str                   # where the body lives (store-specific reference)
    recipients: list[QueuedRecipient] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a delivery agent says about one recipient (chasquid: error + permanent?)."""
    recipient_id: int
    ok: bool
    permanent: bool = False          # only meaningful when not ok; unknown errors are temporary
    reply: str = ""                  # e.g. "250 2.0.0 delivered to maildir" or "452 4.2.2 quota"
