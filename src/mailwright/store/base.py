"""The one storage interface. Backends: ``sqlite.py`` (embedded default), PostgreSQL later.

Invariants every backend keeps (and the contract tests in tests/store check):
* ``commit_message`` returns only after the body blob and the envelope with all recipient
  rows are durable (fsync'd). Only then may the SMTP layer answer 250.
* A message is visible to ``claim_due`` only when committed; a half-written blob from a
  crash is never visible and ``recover()`` removes it.
* Recipient state changes are recorded per recipient; a message whose recipients are all
  final and owe no DSN is complete and its blob may be removed.
* DSN bookkeeping (RFC 3464): an owed DSN is flagged per recipient in the same transaction
  as the result that caused it (``record_results(dsn=...)``) and cleared in the same
  transaction that commits the DSN message (``commit_dsn``): never lost, never doubled.
* Directory lookups (domains, mailboxes, aliases) compare case-insensitively.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

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
    def body_path(self, message: QueuedMessage) -> str: ...
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
    async def clear_dsn(self, source_queue_id: str, covered: Mapping[int, str],
                        now: float) -> bool:
        """Settle owed flags without sending a DSN (e.g. the sender turned out to be
        null); False (nothing changed) if any was already settled."""


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
