"""Cluster-wide delivery slots per destination in the PostgreSQL store.

What: ``SlotOps``, the part of ``PostgresStore`` that ``cluster/limits.py`` uses so that
at most ``limit`` deliveries to one destination run at once across every node:

* ``acquire_slot(destination, limit, owner, lease_seconds, now)`` -> slot number, or
  None when all ``limit`` slots are taken (unexpired leases);
* ``renew_slot(destination, slot, owner, lease_seconds, now)`` -> still held?;
* ``release_slot(destination, slot, owner)``;
* ``slots_in_use(now)`` -> {destination: slots leased} (``mailwright cluster status``).

How: ``destination_slots(destination, slot)`` rows, leased like messages: a slot is free
when it has no row or its ``lease_until`` has passed. Acquiring is one statement: pick the
lowest free slot number below ``limit`` and ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
lease_until <= now``. Two claimers racing for the same free slot serialise on its row:
the second re-checks the condition after the first commits, finds an unexpired lease and
gets no row back (the caller retries, then takes the next free slot). A node that dies
holding slots frees them when their leases expire, as it frees its messages.

Invariants: at any instant at most ``limit`` unexpired leases exist per destination for
callers using the same ``limit`` (slot numbers are < limit; the primary key makes each
number one lease). A lowered limit takes effect as the higher-numbered leases end.
"""
from __future__ import annotations

import time
from typing import Awaitable, Callable, TypeVar

import asyncpg

from .pg_conn import exec_count

T = TypeVar("T")

_ACQUIRE = """
INSERT INTO destination_slots (destination, slot, owner, node, lease_until)
SELECT $1::text, s, $3::text, $4::text, $5::float8 + $6::float8
  FROM generate_series(0, $2::int4 - 1) AS s
 WHERE NOT EXISTS (SELECT 1 FROM destination_slots d WHERE d.destination = $1::text
                    AND d.slot = s AND d.lease_until > $5::float8)
 ORDER BY s LIMIT 1
ON CONFLICT (destination, slot) DO UPDATE
   SET owner = EXCLUDED.owner, node = EXCLUDED.node, lease_until = EXCLUDED.lease_until
 WHERE destination_slots.lease_until <= $5::float8
RETURNING slot"""


class SlotOps:
    """Mixin for ``PostgresStore``, which provides ``_one`` and ``node``."""

    node: str

    async def _one(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def acquire_slot(self, destination: str, limit: int, owner: str,
                           lease_seconds: float, now: float | None = None) -> int | None:
        at = time.time() if now is None else float(now)
        return await self._one(lambda c: c.fetchval(
            _ACQUIRE, destination, int(limit), owner, self.node, at, float(lease_seconds)))

    async def renew_slot(self, destination: str, slot: int, owner: str,
                         lease_seconds: float, now: float | None = None) -> bool:
        at = time.time() if now is None else float(now)
        return await self._one(lambda c: exec_count(
            c, "UPDATE destination_slots SET lease_until = $1 WHERE destination = $2"
               " AND slot = $3 AND owner = $4", at + lease_seconds, destination, slot,
            owner)) == 1

    async def release_slot(self, destination: str, slot: int, owner: str) -> None:
        await self._one(lambda c: c.execute(
            "DELETE FROM destination_slots WHERE destination = $1 AND slot = $2"
            " AND owner = $3", destination, slot, owner))

    async def slots_in_use(self, now: float | None = None) -> dict[str, int]:
        at = time.time() if now is None else float(now)
        rows = await self._one(lambda c: c.fetch(
            "SELECT destination, count(*) FROM destination_slots WHERE lease_until > $1"
            " GROUP BY destination ORDER BY destination", at))
        return {r[0]: r[1] for r in rows}
