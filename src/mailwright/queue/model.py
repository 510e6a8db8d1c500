"""Queue data model: what is committed before the 250, and per-recipient state after.

Pure data, no I/O. Every store backend persists exactly these values.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RecipientState(str, enum.Enum):
    QUEUED = "queued"        # waiting for its first or next attempt (next_attempt_at says when)
    DELIVERED = "delivered"  # final: delivered (or relayed) successfully
    FAILED = "failed"        # final: permanent failure or expired (a DSN may be owed)
    HELD = "held"            # operator hold: never attempted until released


FINAL_STATES = frozenset({RecipientState.DELIVERED, RecipientState.FAILED})
_FINAL_VALUES = frozenset(st.value for st in FINAL_STATES)


def is_complete(states: dict[int, str], dsn_pending: dict[int, str | None]) -> bool:
    """A message is complete (its body may go) when every recipient is final and none is
    owed a DSN, which needs the body. ``states``/``dsn_pending``: recipient id → stored
    state value / owed DSN action, as a store reads and updates them in one transaction."""
    return all(st in _FINAL_VALUES and dsn_pending[rid] is None for rid, st in states.items())

# RFC 3464 §2.3.3 Action values a DSN can be owed for (QueuedRecipient.dsn_pending).
DSN_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})


def check_dsn_actions(actions) -> None:
    """ValueError for an action that is not a DSN action (None: no DSN owed), before a
    store writes any of them (both backends, results and operator bounces)."""
    for action in actions:
        if action is not None and action not in DSN_ACTIONS:
            raise ValueError(f"unknown DSN action {action!r}")


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
    quarantine: str = ""             # reason the message is held in quarantine ("" = not):
                                     # every recipient committed HELD (policy MessageView.hold)


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
    # --- DSN bookkeeping (schema 3; message/dsn.py, queue/manager.py)
    remote_mta: str = ""             # host that gave last_reply ("" = local or no connection)
    status: str = ""                 # enhanced status code of the last attempt if the agent
                                     # reported one separately (else parsed from last_reply)
    dsn_pending: str | None = None   # DSN action owed: failed|delayed|delivered|relayed|expanded
    dsn_delayed: bool = False        # a delay warning was owed/sent (at most one per recipient)
    dsn_sent: str = ""               # action of the last DSN sent for this recipient
    dsn_queue_id: str | None = None  # queue id of that DSN


@dataclass(slots=True)
class QueuedMessage:
    queue_id: str
    envelope: Envelope
    blob_path: str                   # where the body lives (store-specific reference)
    recipients: list[QueuedRecipient] = field(default_factory=list)
    # Claimed after an earlier claim ended without recording results (crash, lost lease):
    # an attempt may already have delivered, so agents check before delivering again.
    reclaimed: bool = False
    # The body itself, when the store keeps it inline and read it with the message
    # (SQLite, small bodies: blob_path is then ""). Otherwise None: see Store.fetch_body.
    inline_body: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a delivery agent says about one recipient (chasquid: error + permanent?)."""
    recipient_id: int
    ok: bool
    permanent: bool = False          # only meaningful when not ok; unknown errors are temporary
    reply: str = ""                  # e.g. "250 2.0.0 delivered to maildir" or "452 4.2.2 quota"
    # Optional, for DSNs (RFC 3464); agents that do not know them leave the defaults.
    remote_mta: str = ""             # the next hop that answered, e.g. "mx1.example.net"
                                     # (reported as "Remote-MTA: dns; <it>")
    dsn_relayed: bool = False        # ok, but the next hop did not advertise DSN (RFC 3461
                                     # §5.2.2.3): a NOTIFY=SUCCESS recipient gets "relayed"
    status: str = ""                 # enhanced status code ("5.1.1"); "" = parse from reply
