"""Local delivery into mailboxes kept in PostgreSQL (``[delivery] mailbox_store =
"postgres"``), so that every node of a cluster delivers to the same mailboxes.

What: ``PgMailboxAgent`` is registered for the local transport (the router's "maildir"
routes) in place of ``MaildirAgent`` and returns exactly one ``DeliveryResult`` per task.

How, per recipient (the same steps as delivery/maildir.py, with a row instead of a file):
1. Look the mailbox up in the directory: gone since acceptance → permanent ``550 5.1.1``;
   its ``quota_bytes`` (0 = unlimited) bounds the sum of its stored copies.
2. Build ``Return-Path``, ``Delivered-To`` and ``Received`` (message/trace.py) and put
   them before the stored body (read once per message, off the event loop).
3. Folder: ``Route.folder`` ("" = INBOX); a message carrying our quarantine field
   (``X-Mailwright-Quarantine``, message/headers.py ``quarantine_reason``: DMARC
   p=quarantine, content rules; intake strips it from everything that arrives) goes to
   ``junk_folder`` instead, exactly as the Maildir agent does.
4. ``store.mailbox_deliver`` inserts the copy, keyed by (queue id, recipient id): a
   repeat (after a crash, or a lease taken over by another node) finds the row and
   reports ``250 2.0.0 Already delivered`` without a second copy (store/pg_mailbox.py).

Errors (GUIDE idea 4): quota exceeded → temporary ``452 4.2.2`` (RFC 3463 X.2.2); a
database or file error → temporary ``451 4.3.0``; ``deliver`` never raises.

Why not Maildir on shared storage, why not LMTP: docs/architecture.md, "Cluster".
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from ..message.headers import quarantine_reason
from ..message.trace import local_delivery_headers
from ..queue.body import MessageBody
from ..queue.model import DeliveryResult, QueuedMessage
from ..store.pg_mailbox import MailboxFull
from .base import DeliveryTask

log = logging.getLogger(__name__)

OK_REPLY = "250 2.0.0 Delivered to mailbox"
ALREADY_REPLY = "250 2.0.0 Already delivered to mailbox"
UNAVAILABLE_REPLY = "550 5.1.1 Mailbox unavailable"
FULL_REPLY = "452 4.2.2 Mailbox full"
LOCAL_ERROR_REPLY = "451 4.3.0 Temporary local delivery error"


class PgMailboxAgent:
    """See the module docstring. ``store`` is a ``PostgresStore`` (mailbox and
    directory calls)."""

    transport = "pgmailbox"

    def __init__(self, store: Any, hostname: str, *, junk_folder: str = "Junk") -> None:
        self.store = store
        self.hostname = hostname
        self.junk_folder = junk_folder

    async def deliver(self, message: QueuedMessage, source: MessageBody,
                      tasks: Sequence[DeliveryTask]) -> list[DeliveryResult]:
        try:
            body = await source.read_async()
        except OSError as exc:
            log.error("%s: body %s unreadable: %s", message.queue_id, source, exc)
            return [DeliveryResult(t.recipient.id, ok=False, permanent=False,
                                   reply=LOCAL_ERROR_REPLY) for t in tasks]
        junk = bool(self.junk_folder) and quarantine_reason(body[:16 * 1024]) is not None
        results = []
        for task in tasks:
            try:
                results.append(await self._deliver_one(message, body, task, junk))
            except Exception:  # noqa: BLE001 - unknown means temporary, never raise
                log.exception("mailbox delivery of %s recipient %s failed",
                              message.queue_id, task.recipient.id)
                results.append(DeliveryResult(task.recipient.id, ok=False, permanent=False,
                                              reply=LOCAL_ERROR_REPLY))
        return results

    async def _deliver_one(self, message: QueuedMessage, body: bytes, task: DeliveryTask,
                           junk: bool) -> DeliveryResult:
        rid = task.recipient.id
        name = (task.route.mailbox or task.route.address).lower()
        mailbox = await self.store.get_mailbox(name)
        if mailbox is None:
            return DeliveryResult(rid, ok=False, permanent=True, reply=UNAVAILABLE_REPLY)
        headers = local_delivery_headers(
            message.envelope, queue_id=message.queue_id, hostname=self.hostname,
            recipient=task.recipient.address, delivered_to=task.route.address or name)
        folder = self.junk_folder if junk else _folder(task.route.folder)
        try:
            fresh = await self.store.mailbox_deliver(message.queue_id, rid, name, folder,
                                                     headers + body, mailbox.quota_bytes)
        except MailboxFull:
            return DeliveryResult(rid, ok=False, permanent=False, reply=FULL_REPLY)
        return DeliveryResult(rid, ok=True, reply=OK_REPLY if fresh else ALREADY_REPLY)


def _folder(folder: str) -> str:
    """"" for the INBOX; Maildir++-style "A/B" is kept as "A.B" like the Maildir agent."""
    if not folder or folder.upper() == "INBOX":
        return ""
    return folder.replace("/", ".")
