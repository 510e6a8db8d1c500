"""The one storage interface. Backends: ``sqlite.py`` (embedded default), PostgreSQL later.

Invariants every backend keeps (and the contract tests in tests/store check):
* ``commit_message`` returns only after the body blob and the envelope with all recipient
  rows are durable (fsync'd). Only then may the SMTP layer answer 250.
* A message is visible to ``claim_due`` only when committed; a half-written blob from a
  crash is never visible and ``recover()`` removes it.
* An envelope with ``quarantine`` set is committed with every recipient HELD and the
  reason stored with the message (``mailwright quarantine``); nothing claims it until
  an operator releases it (``queue_release``, which clears the mark).
* Recipient state changes are recorded per recipient; a message whose recipients are all
  final and owe no DSN is complete and its blob may be removed.
* DSN bookkeeping (RFC 3464): an owed DSN is flagged per recipient in the same transaction
  as the result that caused it (``record_results(dsn=...)``) and cleared in the same
  transaction that commits the DSN message (``commit_dsn``): never lost, never doubled.
* Directory lookups (domains, mailboxes, aliases) compare case-insensitively.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from ..queue.body import MessageBody
from ..queue.model import DeliveryResult, Envelope, QueuedMessage, RecipientState


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str           # "user@domain", lower-cased
    password_hash: str     # "scrypt$..." or "" for no login
    quota_bytes: int = 0   # 0 = unlimited
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Alias:
    source: str            # "user@domain" or "@domain" (catch-all), lower-cased
    targets: tuple[str, ...]


class BlobWriter(Protocol):
    """A body being received. ``write`` may be called many times; nothing is durable
    until the owning store's ``commit_message``. ``abort`` removes the partial file."""

    def write(self, data: bytes) -> None: ...
    def abort(self) -> None: ...
    def read_all(self) -> bytes:
        """Everything written so far (for end-of-data checks); StoreError if unreadable."""
    def prepend(self, data: bytes) -> None:
        """Insert ``data`` before what was written (header fields added after checks)."""
    @property
    def size(self) -> int: ...


class Store(Protocol):
    # --- lifecycle
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def recover(self) -> int:
        """Remove half-written blobs and orphan rows from a crash; return how many removed."""

    # --- intake
    def new_blob(self) -> BlobWriter: ...
    async def commit_message(self, envelope: Envelope, blob: BlobWriter) -> str:
        """Durably commit body + envelope + recipients (group commit); return the queue id."""

    # --- queue
    async def claim_due(self, now: float, limit: int, owner: str, lease_seconds: float
                        ) -> list[QueuedMessage]:
        """Messages with at least one QUEUED recipient whose next_attempt_at <= now,
        leased to ``owner`` (only their due recipients included)."""
    async def record_results(self, queue_id: str, results: Sequence[DeliveryResult],
                             now: float, next_attempt_at: float | None,
                             dsn: Mapping[int, str] | None = None) -> None:
        """Record attempts; ok → DELIVERED, permanent → FAILED, else stays QUEUED with
        attempts+1 and next_attempt_at. Releases the lease. Removes the blob when all final
        and no DSN is owed. ``dsn`` maps recipient ids to the DSN action now owed
        (``model.DSN_ACTIONS``), flagged in the same transaction ("delayed" also marks
        the recipient's one delay warning as used)."""
    async def next_due_time(self) -> float | None: ...
    def read_body(self, message: QueuedMessage) -> bytes: ...
    async def fetch_body(self, message: QueuedMessage) -> MessageBody:
        """The body for delivery agents: in memory when the store keeps it inline (and
        read it with the claim), else as a local file. Raises NotFoundError when it is
        gone (completed, deleted) and StoreError when it cannot be read."""
    async def list_messages(self, state: RecipientState | None = None, limit: int = 1000
                            ) -> list[QueuedMessage]: ...
    async def get_message(self, queue_id: str) -> QueuedMessage | None: ...

    # --- directory
    async def add_domain(self, domain: str) -> None: ...
    async def remove_domain(self, domain: str) -> bool: ...
    async def list_domains(self) -> list[str]: ...
    async def add_mailbox(self, address: str, password_hash: str, quota_bytes: int = 0,
                          scram_sha256: str = "") -> None: ...
    async def set_password(self, address: str, password_hash: str,
                           scram_sha256: str = "") -> bool:
        """Replace the scrypt hash and the SCRAM-SHA-256 verifier together."""
    async def remove_mailbox(self, address: str) -> bool: ...
    async def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]: ...
    async def get_mailbox(self, address: str) -> Mailbox | None: ...
    async def add_alias(self, source: str, targets: Sequence[str]) -> None: ...
    async def remove_alias(self, source: str) -> bool: ...
    async def list_aliases(self) -> list[Alias]: ...
    async def directory_snapshot(self) -> "DirectorySnapshot":
        """Domains, mailboxes and aliases in one consistent read, for the in-memory
        recipient resolver (routing/) that answers RCPT without touching the store."""
    async def directory_version(self) -> int:
        """Changes whenever domains/mailboxes/aliases change (cheap to poll)."""

    # --- submission (schema 2): SCRAM verifiers and send-as grants
    async def get_scram_verifier(self, address: str) -> str:
        """The stored SCRAM-SHA-256 verifier (smtp/sasl.py format); "" if none."""
    async def add_send_as(self, login: str, address: str) -> None:
        """Let mailbox ``login`` send as ``address`` ("user@domain" or "*@domain")."""
    async def remove_send_as(self, login: str, address: str) -> bool: ...
    async def list_send_as(self, login: str) -> list[str]: ...

    # --- operations (added with the SQLite backend)
    async def hold(self, queue_id: str) -> int:
        """QUEUED recipients of the message → HELD; returns how many changed."""
    async def release(self, queue_id: str, now: float | None = None) -> int:
        """HELD recipients → QUEUED, due at ``now`` at the latest; returns how many."""
    async def delete_message(self, queue_id: str) -> bool:
        """Remove the message, its recipients, history and body; False if unknown."""
    async def list_attempts(self, queue_id: str) -> list["AttemptRecord"]:
        """Every recorded delivery attempt of the message, oldest first."""

    # --- DSN bookkeeping (schema 3; queue/manager.py sends, message/dsn.py builds)
    async def pending_dsns(self, limit: int = 100) -> list[QueuedMessage]:
        """Messages owing a DSN for some recipient, listing only those recipients
        (``dsn_pending`` set); their bodies are still present."""
    async def commit_dsn(self, envelope: Envelope, blob: BlobWriter, source_queue_id: str,
                         covered: Mapping[int, str], now: float) -> str | None:
        """Durably commit the DSN message (like ``commit_message``) and, in the same
        transaction, clear the owed flags of ``covered`` (recipient id → the action the
        DSN reports, which must still be the owed one) and complete the source message if
        it is done. Returns the DSN's queue id, or None (blob discarded, nothing changed)
        when any of those flags was already settled (another worker sent the DSN)."""
    # --- message trace (schema 6)
    async def record_trace(self, events: Sequence["TraceEvent"]) -> None:
        """Append trace events (not fsync'd on their own: they ride on the next commit)."""
    async def query_trace(self, *, queue_ids: Sequence[str] = (), message_id: str = "",
                          address: str = "", client_ip: str = "",
                          since: float | None = None, until: float | None = None,
                          limit: int = 1000) -> list["TraceEvent"]:
        """Events matching any of: the queue ids, the Message-ID, the address (as sender
        or recipient), the client IP, within [since, until], oldest first."""
    async def prune_trace(self, before: float) -> int:
        """Delete events older than ``before``; returns how many."""
    async def maintenance_problems(self) -> list[str]:
        """What in the database server's set-up will slow this store down over time (e.g.
        PostgreSQL without autovacuum), one sentence each, for a warning at start."""
    async def prune_completed(self, before: float, batch: int = 1000) -> int:
        """Delete the rows (message, recipients, attempts) of messages received and
        completed before ``before``, ``batch`` messages per transaction so intake is never
        held up long; returns how many messages. Their bodies are already gone."""

    # --- DMARC aggregate report data (schema 8)
    async def record_dmarc(self, rows: Sequence[tuple[float, str, dict]]) -> None:
        """Append (at, policy_domain, data) DMARC results (not fsync'd on their own)."""
    async def dmarc_results(self, before: float) -> list[tuple[int, float, str, dict]]:
        """(id, at, policy_domain, data) of every result older than ``before``."""
    async def delete_dmarc_results(self, ids: Sequence[int]) -> int: ...

    # --- DKIM keys (schema 5)
    async def add_dkim_key(self, key: "DkimKey") -> None:
        """DuplicateError if (domain, selector) exists. An active key deactivates the
        other keys of its domain with the same algorithm (one signer per algorithm)."""
    async def list_dkim_keys(self, domain: str | None = None) -> list["DkimKey"]: ...
    async def activate_dkim_key(self, domain: str, selector: str) -> bool:
        """Make this key the signer for its algorithm; False if unknown."""
    async def remove_dkim_key(self, domain: str, selector: str) -> bool: ...

    async def clear_dsn(self, source_queue_id: str, covered: Mapping[int, str],
                        now: float) -> bool:
        """Settle owed flags without sending a DSN (e.g. the sender turned out to be
        null); False (nothing changed) if any was already settled."""

    # ---- operator queue control (schema 7; admin/queue_ops.py). Selection rules are
    # those of ``QueueFilter``. Each action runs in ONE transaction; with ``audit`` given,
    # that transaction also appends the audit row, its ``ids`` replaced by the queue ids
    # actually changed.
    async def queue_select(self, flt: "QueueFilter", limit: int | None = 1000
                           ) -> list[QueuedMessage]:
        """Matching messages, oldest first (queue id order), with all their recipients."""
    async def queue_hold(self, flt: "QueueFilter", *, audit: "AuditRecord | None" = None
                         ) -> dict[str, int]:
        """Matched recipients (``QueueFilter.recipient_matches``) QUEUED → HELD. Returns
        {queue id: recipients changed} for EVERY matching message (0 = nothing to do)."""
    async def queue_release(self, flt: "QueueFilter", now: float, *,
                            audit: "AuditRecord | None" = None) -> dict[str, int]:
        """Matched recipients HELD → QUEUED, due at ``now`` at the latest; as queue_hold.
        A changed message left with no HELD recipient loses its quarantine mark
        (``Envelope.quarantine``)."""
    async def queue_retry(self, flt: "QueueFilter", now: float, *,
                          audit: "AuditRecord | None" = None) -> dict[str, int]:
        """Matched QUEUED recipients due now (``next_attempt_at = now``); as queue_hold."""
    async def queue_delete(self, flt: "QueueFilter", *, audit: "AuditRecord | None" = None
                           ) -> list[str]:
        """Remove every matching message (rows, history, body; no DSN); their ids."""
    async def queue_bounce(self, failures: Mapping[str, Mapping[int, str | None]],
                           reply: str, status: str, now: float, *,
                           audit: "AuditRecord | None" = None
                           ) -> tuple[dict[str, int], list[str]]:
        """Operator bounce: ``failures`` maps queue id → {recipient id: DSN action owed
        or None}. Each listed recipient still QUEUED or HELD becomes FAILED with
        ``reply``/``status``, ``final_at = now``, ``remote_mta`` "" (no attempt row:
        ``attempts`` and the attempt history are those of real deliveries;
        ``dsn_pending`` set when an action is given), then the message completes if done
        (body removed when no DSN is owed).
        A message under a live lease (being delivered right now) is skipped whole.
        Returns ({queue id: recipients failed}, [skipped queue ids])."""
    async def add_audit(self, record: "AuditRecord") -> None: ...
    async def list_audit(self, limit: int = 100) -> list["AuditRecord"]:
        """The newest ``limit`` audit rows, oldest first."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One entry of the message trace: an SMTP transaction's outcome (kind "accepted",
    "rejected", "refused" (at connect)), or an operator action. ``data`` is JSON-able."""
    at: float
    kind: str
    session_id: str = ""
    queue_id: str = ""
    message_id: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    client_ip: str = ""
    data: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A DKIM signing key (RFC 6376). ``private_key`` is PEM (PKCS#8)."""
    domain: str
    selector: str
    algorithm: str          # "rsa-sha256" | "ed25519-sha256"
    private_key: str
    created_at: float
    active: bool


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Which queued messages an operator command selects (admin/queue_ops.py).

    A message matches when: its id is in ``queue_ids`` (if any are given); else, when
    ``state`` is None, it is still in the queue (not completed); its sender matches
    ``sender`` ("a@b" exactly, "@domain" by domain, "" the null sender; case-insensitive);
    ``received_at`` is <= ``received_before`` and >= ``received_after`` (when given); and
    at least one of its recipients matches ``recipient_matches`` and, when ``state`` is
    given, is in that state; with ``quarantined``, it carries a quarantine mark
    (``Envelope.quarantine``). Actions on recipients touch only recipients that match
    ``recipient_matches`` (the state filter selects messages, the action its own state).
    """
    queue_ids: tuple[str, ...] = ()
    state: RecipientState | None = None
    sender: str | None = None
    recipient: str | None = None      # "a@b" (exact) or "@domain"; lower-case
    domain: str | None = None         # recipient domain; lower-case
    received_before: float | None = None
    received_after: float | None = None
    error: str | None = None          # case-insensitive substring of last_reply
    quarantined: bool = False         # only messages held in quarantine (reason set)

    def recipient_matches(self, address: str, last_reply: str) -> bool:
        """The recipient conditions (``recipient``, ``domain``, ``error``), as the
        backends evaluate them in SQL."""
        a = address.lower()
        if self.recipient is not None and not (
                a.endswith(self.recipient) if self.recipient.startswith("@")
                else a == self.recipient):
            return False
        if self.domain is not None and not a.endswith("@" + self.domain):
            return False
        if self.error is not None and self.error.lower() not in (last_reply or "").lower():
            return False
        return True


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One operator action on the queue: who (OS user), when, what, on which messages."""
    at: float
    user: str
    action: str                 # hold | release | retry | flush | delete | bounce
    detail: str = ""            # the selection as given, e.g. "--domain remote.test"
    ids: tuple[str, ...] = ()   # queue ids acted on
    id: int = 0                 # assigned by the store


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    version: int
    domains: frozenset[str]
    mailboxes: frozenset[str]
    aliases: dict[str, tuple[str, ...]]
    quotas: dict[str, int]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One delivery attempt for one recipient, as recorded by ``record_results``."""
    recipient_id: int
    address: str
    at: float
    ok: bool
    permanent: bool
    reply: str
    remote_mta: str = ""        # the host that gave ``reply`` ("" = local / no connection)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``recover()`` found (``recover`` returns ``total``; backends keep the last
    report as ``last_recovery``)."""
    tmp_files: int = 0          # half-written bodies removed
    missing_blobs: int = 0      # message rows whose body was missing (removed; should be 0)
    orphan_blobs: int = 0       # bodies without a message row (crash before the DB commit)
    leases_cleared: int = 0
    exclusive: bool = True      # False: other processes had the store open; only old
                                # leftovers were removed

    @property
    def total(self) -> int:
        return self.tmp_files + self.missing_blobs + self.orphan_blobs


class StoreError(Exception):
    """A backend failure. The SMTP layer answers 451 4.3.0 and keeps serving."""


class DuplicateError(StoreError):
    """Adding something that exists."""


class NotFoundError(StoreError):
    """Operating on something that does not exist (e.g. a mailbox in an unknown domain)."""
