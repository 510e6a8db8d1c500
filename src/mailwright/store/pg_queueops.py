"""Operator queue control in the PostgreSQL store (``base.Store`` "operator queue
control"; admin/queue_ops.py), with the semantics of ``SQLiteStore``.

What: ``QueueOps``, the part of ``PostgresStore`` behind ``mailwright queue
hold|release|retry|delete|bounce|audit``: ``queue_select``, ``queue_hold``,
``queue_release``, ``queue_retry``, ``queue_delete``, ``queue_bounce``, ``add_audit``,
``list_audit``. Selection follows ``base.QueueFilter``.

How: each action is one transaction that locks the selected message rows (``FOR
UPDATE``, in queue id order, so two operators or a claimer never deadlock), changes the
matching recipients, refreshes ``messages.next_due`` (the claim index) for them, sends
the work NOTIFY when work became due (release, retry), and appends the audit row.

Invariants: as in ``base.Store``; a bounce skips a message under a live lease (its
delivery's result wins); bodies of messages a bounce completes are deleted in the same
transaction (``_complete_if_done``), and this node's cached copies afterwards.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import asyncpg

from ..queue.model import check_dsn_actions, QueuedMessage, RecipientState
from .base import AuditRecord, QueueFilter
from .pg_notify import notify_sql

T = TypeVar("T")

_REFRESH_DUE = (
    "UPDATE messages m SET next_due = (SELECT min(r.next_attempt_at) FROM recipients r"
    " WHERE r.queue_id = m.queue_id AND r.state = 'queued')"
    " WHERE m.queue_id = ANY($1::text[])")


def _rcpt_conds(flt: QueueFilter, args: list[Any], col: str = "r.") -> str:
    """SQL for ``QueueFilter.recipient_matches``; appends its parameters to ``args``."""
    conds: list[str] = []
    suffixes = ([flt.recipient] if flt.recipient and flt.recipient.startswith("@") else []) \
        + (["@" + flt.domain] if flt.domain else [])
    for suffix in suffixes:
        args.append(suffix)
        conds.append(f"right(lower({col}address), length(${len(args)})) = ${len(args)}")
    if flt.recipient is not None and not flt.recipient.startswith("@"):
        args.append(flt.recipient)
        conds.append(f"lower({col}address) = ${len(args)}")
    if flt.error is not None:
        args.append(flt.error.lower())
        conds.append(f"strpos(lower(coalesce({col}last_reply, '')), ${len(args)}) > 0")
    return " AND ".join(conds) or "true"


def _select_sql(flt: QueueFilter, limit: int | None, lock: bool) -> tuple[str, list[Any]]:
    conds: list[str] = []
    args: list[Any] = []
    if flt.queue_ids:
        args.append(list(flt.queue_ids))
        conds.append(f"m.queue_id = ANY(${len(args)}::text[])")
    elif flt.state is None:
        conds.append("m.completed_at IS NULL")
    if flt.quarantined:
        conds.append("m.quarantine <> ''")
    if flt.sender is not None:
        sender = flt.sender.lower()
        args.append(sender)
        conds.append(f"right(lower(m.sender), length(${len(args)})) = ${len(args)}"
                     if sender.startswith("@") else f"lower(m.sender) = ${len(args)}")
    if flt.received_before is not None:
        args.append(float(flt.received_before))
        conds.append(f"m.received_at <= ${len(args)}")
    if flt.received_after is not None:
        args.append(float(flt.received_after))
        conds.append(f"m.received_at >= ${len(args)}")
    rsql = _rcpt_conds(flt, args)
    if flt.state is not None:
        args.append(RecipientState(flt.state).value)
        rsql += f" AND r.state = ${len(args)}"
    conds.append(f"EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.queue_id"
                 f" AND {rsql})")
    sql = f"SELECT m.queue_id FROM messages m WHERE {' AND '.join(conds)} ORDER BY m.queue_id"
    if limit is not None:
        args.append(int(limit))
        sql += f" LIMIT ${len(args)}"
    if lock:
        sql += " FOR UPDATE OF m"
    return sql, args


class QueueOps:
    """Mixin for ``PostgresStore`` (``_txn``, ``_read``, ``_load``, ``channel``,
    ``blobs``, ``_complete_if_done``)."""

    channel: str
    blobs: Any

    async def _txn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   isolation: str = "read_committed", readonly: bool = False) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _select_ids(self, c: asyncpg.Connection, flt: QueueFilter,
                          limit: int | None = None, lock: bool = False) -> list[str]:
        sql, args = _select_sql(flt, limit, lock)
        return [r[0] for r in await c.fetch(sql, *args)]

    @staticmethod
    async def _write_audit(c: asyncpg.Connection, audit: AuditRecord | None,
                           ids: Sequence[str] | None = None) -> None:
        if audit is None:
            return
        await c.execute("INSERT INTO audit (at, username, action, detail, ids)"
                        " VALUES ($1, $2, $3, $4, $5::text[])", float(audit.at), audit.user,
                        audit.action, audit.detail, list(audit.ids if ids is None else ids))

    async def queue_select(self, flt: QueueFilter, limit: int | None = 1000
                           ) -> list[QueuedMessage]:
        async def fn(c: asyncpg.Connection) -> list[QueuedMessage]:
            return await self._load(c, await self._select_ids(c, flt, limit))  # type: ignore[attr-defined]
        return await self._read(fn)

    async def _queue_change(self, flt: QueueFilter, from_state: str, set_sql: str,
                            set_args: Sequence[Any], audit: AuditRecord | None,
                            wake: bool, release: bool = False) -> dict[str, int]:
        """Matched recipients in ``from_state`` of the matching messages get ``set_sql``;
        ``wake``: NOTIFY; ``release``: a changed message left without HELD recipients
        loses its quarantine mark."""
        async def fn(c: asyncpg.Connection) -> dict[str, int]:
            counts = dict.fromkeys(await self._select_ids(c, flt, lock=True), 0)
            args: list[Any] = list(set_args) + [from_state, list(counts)]
            rsql = _rcpt_conds(flt, args, "")
            for r in await c.fetch(
                    f"UPDATE recipients SET {set_sql} WHERE state = ${len(set_args) + 1}"
                    f" AND queue_id = ANY(${len(set_args) + 2}::text[]) AND {rsql}"
                    " RETURNING queue_id", *args):
                counts[r[0]] += 1
            changed = [q for q, n in counts.items() if n]
            if changed:
                await c.execute(_REFRESH_DUE, changed)
                if release:
                    await c.execute(
                        "UPDATE messages m SET quarantine = '' WHERE m.quarantine <> ''"
                        " AND m.queue_id = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM"
                        " recipients r WHERE r.queue_id = m.queue_id AND r.state = 'held')",
                        changed)
                if wake:
                    await c.execute(notify_sql(), self.channel)
            await self._write_audit(c, audit, changed)
            return counts
        return await self._txn(fn)

    async def queue_hold(self, flt: QueueFilter, *, audit: AuditRecord | None = None
                         ) -> dict[str, int]:
        return await self._queue_change(flt, "queued", "state = 'held'", (), audit, False)

    async def queue_release(self, flt: QueueFilter, now: float, *,
                            audit: AuditRecord | None = None) -> dict[str, int]:
        return await self._queue_change(
            flt, "held", "state = 'queued', next_attempt_at = LEAST(next_attempt_at, $1)",
            (float(now),), audit, True, release=True)

    async def queue_retry(self, flt: QueueFilter, now: float, *,
                          audit: AuditRecord | None = None) -> dict[str, int]:
        return await self._queue_change(flt, "queued", "next_attempt_at = $1", (float(now),),
                                        audit, True)

    async def queue_delete(self, flt: QueueFilter, *, audit: AuditRecord | None = None
                           ) -> list[str]:
        async def fn(c: asyncpg.Connection) -> list[str]:
            ids = await self._select_ids(c, flt, lock=True)
            if ids:
                await c.execute("DELETE FROM bodies WHERE queue_id = ANY($1::text[])", ids)
                await c.execute("DELETE FROM messages WHERE queue_id = ANY($1::text[])", ids)
            await self._write_audit(c, audit, ids)
            return ids
        ids = await self._txn(fn)
        for qid in ids:
            self.blobs.remove(qid)
        return ids

    async def queue_bounce(self, failures: Mapping[str, Mapping[int, str | None]],
                           reply: str, status: str, now: float, *,
                           audit: AuditRecord | None = None
                           ) -> tuple[dict[str, int], list[str]]:
        for owed in failures.values():
            check_dsn_actions(owed.values())
        at = float(now)
        completed: list[str] = []

        async def fn(c: asyncpg.Connection) -> tuple[dict[str, int], list[str]]:
            completed.clear()
            done: dict[str, int] = {}
            skipped: list[str] = []
            for qid in sorted(failures):
                owed = failures[qid]
                row = await c.fetchrow("SELECT lease_owner, lease_until FROM messages"
                                       " WHERE queue_id = $1 FOR UPDATE", qid)
                if row is None:
                    continue
                if row[0] is not None and (row[1] or 0) > at:
                    skipped.append(qid)        # a delivery is in progress: its result wins
                    continue
                n = 0
                for rid, action in owed.items():
                    # (no attempts row: the history is that of real deliveries)
                    hit = await c.fetchval(
                        "UPDATE recipients SET state = 'failed', last_reply = $1, status = $2,"
                        " final_at = $3, remote_mta = '', dsn_pending = $4"
                        " WHERE id = $5 AND queue_id = $6 AND state IN ('queued', 'held')"
                        " RETURNING id", reply, status, at, action, int(rid), qid)
                    if hit is not None:
                        n += 1
                done[qid] = n
                if n:
                    await c.execute(_REFRESH_DUE, [qid])
                    if await self._complete_if_done(c, qid, at):  # type: ignore[attr-defined]
                        completed.append(qid)
            await self._write_audit(c, audit, [q for q, n in done.items() if n])
            return done, skipped
        result = await self._txn(fn)
        for qid in completed:
            self.blobs.remove(qid)
        return result

    async def add_audit(self, record: AuditRecord) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await self._write_audit(c, record)
        await self._txn(fn)

    async def list_audit(self, limit: int = 100) -> list[AuditRecord]:
        async def fn(c: asyncpg.Connection) -> list[Any]:
            return await c.fetch("SELECT id, at, username, action, detail, ids FROM audit"
                                 " ORDER BY id DESC LIMIT $1", int(limit))
        rows = await self._read(fn)
        return [AuditRecord(at=r[1], user=r[2], action=r[3], detail=r[4], ids=tuple(r[5]),
                            id=r[0]) for r in reversed(rows)]
