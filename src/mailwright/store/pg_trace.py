"""The message trace of the PostgreSQL store (``base.Store`` "message trace").

What: ``TraceOps``, the part of ``PostgresStore`` that appends ``TraceEvent`` rows
(``record_trace``), finds them (``query_trace``) and prunes old ones (``prune_trace``),
with the semantics of ``SQLiteStore``.

How: ``record_trace`` inserts all events with one statement from arrays, in a
transaction with ``SET LOCAL synchronous_commit = off``: the trace is not worth a WAL
flush of its own (the base protocol: "not fsync'd on their own: they ride on the next
commit"; PostgreSQL writes it with the next flushed commit, at the latest after
``wal_writer_delay``). Sender and recipients are lower-cased on the way in;
``recipients`` is a ``text[]`` searched with ``@>`` (GIN index); ``data`` is ``jsonb``.

Invariants: ``query_trace`` returns events matching ANY of the given queue ids, Message-ID
or address (as sender or recipient), within [since, until], oldest first (``at``, then
insertion order); no criteria means every event in the window.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import asyncpg

from .base import TraceEvent
from .pg_conn import exec_count
from .queueid import lower_bound as queueid_lower_bound

T = TypeVar("T")


class TraceOps:
    """Mixin for ``PostgresStore``, which provides ``_txn`` and ``_one``."""

    async def _txn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   isolation: str = "read_committed", readonly: bool = False) -> T:
        raise NotImplementedError

    async def _one(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def record_trace(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return
        cols: tuple[list[Any], ...] = tuple([] for _ in range(9))
        for e in events:
            row = (float(e.at), e.kind, e.session_id, e.queue_id, e.message_id,
                   e.sender.lower(), " ".join(r.lower() for r in e.recipients), e.client_ip,
                   json.dumps(e.data, separators=(",", ":"), default=str))
            for col, value in zip(cols, row):
                col.append(value)

        async def fn(c: asyncpg.Connection) -> None:
            await c.execute("SET LOCAL synchronous_commit = off")
            # recipients travel as space-joined text (addresses hold no spaces): arrays of
            # arrays must be rectangular
            await c.execute(
                "INSERT INTO trace_events (at, kind, session_id, queue_id, message_id, sender,"
                " recipients, client_ip, data)"
                " SELECT a, k, s, q, m, f, COALESCE(string_to_array(NULLIF(r, ''), ' '),"
                " '{}'), ip, d::jsonb FROM unnest($1::float8[], $2::text[], $3::text[],"
                " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])"
                " WITH ORDINALITY AS x(a, k, s, q, m, f, r, ip, d, ord) ORDER BY ord", *cols)
        await self._txn(fn)

    async def query_trace(self, *, queue_ids: Sequence[str] = (), message_id: str = "",
                          address: str = "", client_ip: str = "",
                          since: float | None = None,
                          until: float | None = None, limit: int = 1000
                          ) -> list[TraceEvent]:
        terms: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"
        if queue_ids:
            terms.append(f"queue_id = ANY({arg(list(queue_ids))}::text[])")
        if message_id:
            terms.append(f"message_id = {arg(message_id)}")
        if address:
            a = address.lower()
            terms.append(f"(sender = {arg(a)} OR recipients @> ARRAY[{arg(a)}]::text[])")
        if client_ip:
            terms.append(f"client_ip = {arg(client_ip)}")
        where = " OR ".join(terms) if terms else "true"
        if since is not None:
            where = f"({where}) AND at >= {arg(float(since))}"
        if until is not None:
            where = f"({where}) AND at <= {arg(float(until))}"
        sql = ("SELECT at, kind, session_id, queue_id, message_id, sender, recipients,"
               f" client_ip, data FROM trace_events WHERE {where}"
               f" ORDER BY at, id LIMIT {arg(limit)}")
        rows = await self._one(lambda c: c.fetch(sql, *args))
        return [TraceEvent(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6]), r[7],
                           json.loads(r[8])) for r in rows]

    async def prune_trace(self, before: float) -> int:
        """Delete events older than ``before``; returns how many."""
        return await self._txn(lambda c: exec_count(
            c, "DELETE FROM trace_events WHERE at < $1", float(before)))

    async def prune_completed(self, before: float, batch: int = 1000) -> int:
        """See ``base.Store``: ``batch`` messages per transaction, found by a range of the
        primary key (queue ids sort by arrival time); recipients and attempts go by
        ``ON DELETE CASCADE``."""
        bound = queueid_lower_bound(before)
        total = 0
        while True:
            n = await self._txn(lambda c: exec_count(
                c, "DELETE FROM messages WHERE queue_id IN (SELECT queue_id FROM messages"
                   " WHERE queue_id < $1 AND completed_at IS NOT NULL AND completed_at < $2"
                   " LIMIT $3)", bound, float(before), batch))
            total += n
            if n < batch:
                return total
