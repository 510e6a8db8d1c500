"""Quarantine held in the store: list, inspect, release or delete held messages.

What: ``QuarantineOps(store, user=..., wake=...)``, behind ``mailwright quarantine``
(cli/quarantine.py) and later the web page:

* ``list(limit)``: messages in quarantine (still in the queue, quarantine mark set),
  oldest first;
* ``show(queue_id)``: one of them, with the header section of its body;
* ``release(ids)``: deliver them normally: every HELD recipient → QUEUED, due now, the
  quarantine mark cleared; the running server is woken;
* ``delete(ids)``: remove them (rows, history, body; nobody is told);
* ``expire(days)``: delete those received more than ``days`` days ago (the server runs it
  hourly with ``[antiabuse] quarantine_retention_days``; audited as ``quarantine-expire``).

A message gets into quarantine at acceptance: a check of the data step called
``MessageView.hold(reason)`` (anti-abuse "quarantine" actions: content rules, attachment
types, ``quarantine_threshold``, rspamd's ``quarantine``), so the session committed the
envelope with ``quarantine = reason`` and the store made every recipient HELD. This is
not the Junk folder (``MessageView.quarantine``: delivered at once, into ``Junk``).

How: the store's operator queue control with ``QueueFilter(quarantined=True,
state=HELD)`` (mark set, some recipient still HELD: "in quarantine"): each
action is ONE store transaction that also writes the audit row (``quarantine-release``,
``quarantine-delete``; the OS user, the ids actually changed), and the same line goes to
the ``mailwright.audit`` logger, as for ``mailwright queue`` (admin/queue_ops.py).

Invariants:
* Only messages in quarantine are touched: an id that is not (or no longer) in quarantine
  is refused with ``NotFound`` before anything changes, and the store's filter repeats
  the condition inside the transaction (two operators racing: the second changes 0).
* Release keeps per-recipient history; a message released is an ordinary queued message
  (``mailwright queue`` shows it, the queue delivers it).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Sequence

from ..queue.model import QueuedMessage, RecipientState
from ..store.base import AuditRecord, QueueFilter
from .queue_ops import AuditedOps
from .service import InvalidInput, NotFound

__all__ = ["QuarantineOps", "HEADER_LIMIT"]

audit_log = logging.getLogger("mailwright.audit")

HEADER_LIMIT = 64 * 1024        # octets of the header section ``show`` returns at most

#: In quarantine: the mark is set and some recipient is still HELD (a message whose held
#: recipients were bounced or released by ``mailwright queue`` has left it).
_IN_QUARANTINE = QueueFilter(quarantined=True, state=RecipientState.HELD)


def _in_quarantine(ids: Sequence[str]) -> QueueFilter:
    return QueueFilter(queue_ids=tuple(ids), quarantined=True, state=RecipientState.HELD)


def _header_section(body: bytes) -> bytes:
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[:end + 2]
    return head[:HEADER_LIMIT]


class QuarantineOps(AuditedOps):
    """The quarantine over one ``Store`` on behalf of ``user`` (default: the OS user)."""

    async def list(self, limit: int | None = 1000) -> list[QueuedMessage]:
        self._check_limit(limit)
        return await self.store.queue_select(_IN_QUARANTINE, limit)

    async def show(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        """The message and the header section of its stored body."""
        qid = queue_id.strip()
        [msg] = await self._quarantined([qid])
        body = await asyncio.to_thread(self.store.read_body, msg)
        return msg, _header_section(body)

    async def release(self, queue_ids: Sequence[str]) -> dict[str, int]:
        """{queue id: recipients released}; wakes the server when something changed."""
        ids = await self._ids(queue_ids)
        now = self.clock()
        record = AuditRecord(at=now, user=self.user, action="quarantine-release",
                             detail="ids=" + ",".join(ids))
        changed = await self.store.queue_release(
            _in_quarantine(ids), now, audit=record)
        self._log("quarantine-release", changed)
        if any(changed.values()) and self.wake is not None:
            self.wake()
        return changed

    async def delete(self, queue_ids: Sequence[str]) -> list[str]:
        ids = await self._ids(queue_ids)
        record = AuditRecord(at=self.clock(), user=self.user, action="quarantine-delete",
                             detail="ids=" + ",".join(ids))
        deleted = await self.store.queue_delete(
            _in_quarantine(ids), audit=record)
        self._log("quarantine-delete", dict.fromkeys(deleted, 1))
        return deleted

    async def expire(self, days: float) -> list[str]:
        """Delete the messages in quarantine received more than ``days`` days ago, as a
        quarantine that is never looked at must not grow without end (Exchange and rspamd
        expire theirs too). One transaction with its audit row; returns the ids."""
        if days <= 0:
            raise InvalidInput(f"invalid retention {days}: expected more than 0 days")
        now = self.clock()
        flt = QueueFilter(quarantined=True, state=RecipientState.HELD,
                          received_before=now - days * 86400)
        due = [m.queue_id for m in await self.store.queue_select(flt, None)]
        if not due:
            return []                   # nothing to do: no audit row every hour
        record = AuditRecord(at=now, user=self.user, action="quarantine-expire",
                             detail=f"received more than {days:g} days ago")
        # The same conditions again inside the delete's transaction: a message released
        # meanwhile is not deleted.
        deleted = await self.store.queue_delete(
            dataclasses.replace(flt, queue_ids=tuple(due)), audit=record)
        self._log("quarantine-expire", dict.fromkeys(deleted, 1))
        return deleted

    # ------------------------------------------------------------------ helpers
    async def _ids(self, queue_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(q.strip() for q in queue_ids if q.strip()))
        if not ids:
            raise InvalidInput("give the queue ids of the messages (mailwright quarantine list)")
        await self._quarantined(ids)
        return ids

    async def _quarantined(self, ids: list[str]) -> list[QueuedMessage]:
        found = await self.store.queue_select(
            _in_quarantine(ids), None)
        have = {m.queue_id for m in found}
        missing = [q for q in ids if q not in have]
        if missing:
            raise NotFound(f"not in quarantine: {', '.join(missing)}")
        return sorted(found, key=lambda m: ids.index(m.queue_id))

    def _log(self, action: str, changed: dict[str, int]) -> None:
        audit_log.info("operator=%s action=%s ids=%s changed=%d", self.user, action,
                       ",".join(q for q, n in changed.items() if n) or "-",
                       sum(changed.values()))
