"""DMARC aggregate-report data in the PostgreSQL store (``base.Store`` "DMARC aggregate
report data"), with the semantics of ``SQLiteStore``.

What: ``ReportOps``, the part of ``PostgresStore`` that appends DMARC results
(``record_dmarc``; like the trace, without a WAL flush of its own: a lost row only makes a
report one message short), lists those older than a time (``dmarc_results``) and deletes the
ones a queued report covered (``delete_dmarc_results``, durable).
"""
from __future__ import annotations

import json
from typing import Awaitable, Callable, Sequence, TypeVar

import asyncpg

from .pg_conn import count_rows

T = TypeVar("T")


class ReportOps:
    """Mixin for ``PostgresStore``, which provides ``_txn`` and ``_one``."""

    async def _txn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   isolation: str = "read_committed", readonly: bool = False) -> T:
        raise NotImplementedError

    async def _one(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def record_dmarc(self, rows: Sequence[tuple[float, str, dict]]) -> None:
        if not rows:
            return
        ats = [float(at) for at, _, _ in rows]
        domains = [d.lower() for _, d, _ in rows]
        datas = [json.dumps(x, separators=(",", ":"), default=str) for _, _, x in rows]

        async def fn(c: asyncpg.Connection) -> None:
            await c.execute("SET LOCAL synchronous_commit = off")
            await c.execute(
                "INSERT INTO dmarc_results (at, policy_domain, data) SELECT a, d, x::jsonb"
                " FROM unnest($1::float8[], $2::text[], $3::text[]) WITH ORDINALITY"
                " AS t(a, d, x, ord) ORDER BY ord", ats, domains, datas)
        await self._txn(fn)

    async def dmarc_results(self, before: float) -> list[tuple[int, float, str, dict]]:
        async def fn(c: asyncpg.Connection) -> list[tuple[int, float, str, dict]]:
            rows = await c.fetch("SELECT id, at, policy_domain, data::text AS data"
                                 " FROM dmarc_results WHERE at < $1 ORDER BY id",
                                 float(before))
            return [(r["id"], r["at"], r["policy_domain"], json.loads(r["data"]))
                    for r in rows]
        return await self._one(fn)

    async def delete_dmarc_results(self, ids: Sequence[int]) -> int:
        wanted = [int(i) for i in ids]
        if not wanted:
            return 0

        async def fn(c: asyncpg.Connection) -> int:
            return count_rows(await c.execute(
                "DELETE FROM dmarc_results WHERE id = ANY($1::bigint[])", wanted))
        return await self._txn(fn)
