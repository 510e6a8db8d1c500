"""Mailboxes in the PostgreSQL store: delivered copies every node writes and reads.

What: ``MailboxOps``, the part of ``PostgresStore`` behind ``[delivery] mailbox_store =
"postgres"`` (delivery/pgmailbox.py writes, ``mailwright mailbox list|show`` reads):

* ``mailbox_deliver(queue_id, recipient_id, mailbox, folder, data, quota, now)`` stores
  one delivered copy (trace headers + body) and returns True, or False when this
  (queue id, recipient id) was delivered before (by any node); raises ``MailboxFull``
  when ``quota`` (bytes, 0 = unlimited) would be exceeded;
* ``mailbox_list(mailbox, folder=None, limit)`` lists copies (newest last) with the
  Subject, From and Message-ID read from their header section;
* ``mailbox_get(id)`` returns one copy with its bytes.

How: one row per copy in ``mailbox_messages``; ``UNIQUE (queue_id, recipient_id)`` with
``INSERT ... ON CONFLICT DO NOTHING`` makes delivery idempotent in the same database
that holds the queue: a node that dies after the insert but before recording the result
(or a second node that took its lease over) finds the row and reports "already
delivered", never writing a second copy. The quota is counted inside the inserting
transaction under a transaction-level advisory lock on the mailbox, so concurrent
deliveries to one mailbox (from any node) cannot overshoot it together.

Invariants: the insert is committed (``synchronous_commit = on``) before
``mailbox_deliver`` returns True, so the queue records "delivered" only for a durable
copy. Names are stored lower-cased; folder "" is the INBOX.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, TypeVar

import asyncpg

from .base import StoreError

T = TypeVar("T")

_HEAD = 16 * 1024     # header fields shown in listings are read from this prefix


class MailboxFull(StoreError):
    """The copy would exceed the mailbox quota (a temporary 452 4.2.2)."""


def _field(head: bytes, name: str) -> str:
    """The unfolded value of the first ``name`` field in a header section, or ""."""
    end = head.find(b"\r\n\r\n")
    lines = (head if end < 0 else head[:end]).split(b"\r\n")
    want = name.lower().encode() + b":"
    for i, line in enumerate(lines):
        if line[:len(want)].lower() == want:
            parts = [line[len(want):]]
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                parts.append(cont)
            return b" ".join(p.strip() for p in parts).decode("utf-8", "replace")
    return ""


def _summary(r: Any, head: bytes) -> dict[str, Any]:
    return {"id": r["id"], "mailbox": r["mailbox"], "folder": r["folder"] or "INBOX",
            "queue_id": r["queue_id"], "recipient_id": r["recipient_id"],
            "delivered_at": r["delivered_at"], "node": r["node"], "size": r["size"],
            "flags": r["flags"], "subject": _field(head, "Subject"),
            "from": _field(head, "From"), "message_id": _field(head, "Message-ID")}


class MailboxOps:
    """Mixin for ``PostgresStore``, which provides ``_txn``, ``_one`` and ``node``."""

    node: str

    async def _txn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   isolation: str = "read_committed", readonly: bool = False) -> T:
        raise NotImplementedError

    async def _one(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def mailbox_deliver(self, queue_id: str, recipient_id: int, mailbox: str,
                              folder: str, data: bytes, quota: int = 0,
                              now: float | None = None) -> bool:
        at = time.time() if now is None else float(now)
        box = mailbox.strip().lower()

        async def fn(c: asyncpg.Connection) -> bool:
            if await c.fetchval("SELECT 1 FROM mailbox_messages WHERE queue_id = $1"
                                " AND recipient_id = $2", queue_id, recipient_id):
                return False
            if quota > 0:
                await c.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                "mailwright.mailbox." + box)
                used = await c.fetchval("SELECT COALESCE(sum(size), 0) FROM mailbox_messages"
                                        " WHERE mailbox = $1", box)
                if used + len(data) > quota:
                    raise MailboxFull(f"{box}: {used} + {len(data)} bytes > quota {quota}")
            new_id = await c.fetchval(
                "INSERT INTO mailbox_messages (mailbox, folder, queue_id, recipient_id,"
                " delivered_at, node, size, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (queue_id, recipient_id) DO NOTHING RETURNING id",
                box, folder, queue_id, int(recipient_id), at, self.node, len(data), data)
            return new_id is not None
        return await self._txn(fn)

    async def mailbox_list(self, mailbox: str, folder: str | None = None,
                           limit: int = 1000) -> list[dict[str, Any]]:
        """Copies in ``mailbox`` (every folder, or only ``folder``; "INBOX" = ""), oldest
        first."""
        box = mailbox.strip().lower()
        want = None if folder is None else ("" if folder.upper() == "INBOX" else folder)
        rows = await self._one(lambda c: c.fetch(
            "SELECT id, mailbox, folder, queue_id, recipient_id, delivered_at, node, size,"
            " flags, substring(data from 1 for $4) AS head FROM mailbox_messages"
            " WHERE mailbox = $1 AND ($2::text IS NULL OR folder = $2)"
            " ORDER BY id LIMIT $3", box, want, limit, _HEAD))
        return [_summary(r, bytes(r["head"])) for r in rows]

    async def mailbox_get(self, message_id: int) -> dict[str, Any] | None:
        """One copy: the ``mailbox_list`` fields plus ``data`` (the bytes), or None."""
        r = await self._one(lambda c: c.fetchrow(
            "SELECT id, mailbox, folder, queue_id, recipient_id, delivered_at, node, size,"
            " flags, data FROM mailbox_messages WHERE id = $1", int(message_id)))
        if r is None:
            return None
        data = bytes(r["data"])
        return {**_summary(r, data[:_HEAD]), "data": data}
