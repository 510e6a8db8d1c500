"""Policy state in PostgreSQL: rate counters and greylisting triplets shared by every node.

What: ``PostgresPolicyState(dsn, schema)`` implements the ``PolicyState`` protocol of
store/policystate.py (``incr``, ``greylist``, ``close``) with the same semantics as
``SqlitePolicyState`` -- fixed windows, RFC 6647 greylisting states ``new`` / ``early`` /
``retried`` / ``passed`` -- but cluster-wide: every intake process of every node counts in
the same rows.

How: an asyncpg pool opened on first use, each connection with ``search_path`` = the
store's schema and ``synchronous_commit = off`` (as SQLite's ``synchronous=OFF``: a crash
of the database may lose the last increments, never corrupts them).  Two tables of its
own, created with ``CREATE ... IF NOT EXISTS`` under a transaction-level advisory lock (so
nodes starting together do not race on the catalog); they are not part of the store's
versioned migrations (store/pg_schema.py) because nothing else reads them and losing
them costs only counts:

* ``policy_counters(key, bucket, count, expires)``, UNLOGGED (not written to the WAL, not
  replicated, emptied after a database crash: counters are not worth the I/O);
* ``policy_greylist(triplet, first_seen, passed, state, expires)``, logged (forgetting
  triplets would greylist every sender again).

Each call is ONE statement, atomic across nodes without explicit transactions:
``incr`` is ``INSERT ... ON CONFLICT (key, bucket) DO UPDATE SET count = count + n
RETURNING count``; ``greylist`` is an ``INSERT ... ON CONFLICT DO UPDATE`` whose ``SET``
expressions all read the row as it was (PostgreSQL evaluates them against the existing
row under its row lock), so the state it stores and returns is decided from the old row
exactly once even when nodes race on the same triplet.  Every ``PRUNE_EVERY`` writes a
process deletes expired rows.

Invariants: time comes in as ``now`` (wall-clock seconds; the nodes' clocks must agree,
as they must for leases); this module reads no clock.  A database error raises
``StoreError`` (the policy pipeline turns it into ``451 4.3.0``: unknown means temporary).
"""
from __future__ import annotations

import asyncio

import asyncpg

from .pg_conn import quote_ident, translate, valid_schema
from .policystate import PRUNE_EVERY

__all__ = ["PostgresPolicyState"]

_TABLES = [
    """CREATE UNLOGGED TABLE IF NOT EXISTS policy_counters (
        key     text NOT NULL,
        bucket  bigint NOT NULL,
        count   bigint NOT NULL,
        expires double precision NOT NULL,
        PRIMARY KEY (key, bucket))""",
    "CREATE INDEX IF NOT EXISTS policy_counters_expires ON policy_counters (expires)",
    """CREATE TABLE IF NOT EXISTS policy_greylist (
        triplet    text PRIMARY KEY,
        first_seen double precision NOT NULL,
        passed     boolean NOT NULL,
        state      text NOT NULL,
        expires    double precision NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS policy_greylist_expires ON policy_greylist (expires)",
]

_INCR = """
INSERT INTO policy_counters AS c (key, bucket, count, expires) VALUES ($1, $2, $3, $4)
ON CONFLICT (key, bucket) DO UPDATE SET count = c.count + EXCLUDED.count
RETURNING count"""

_READ = "SELECT count FROM policy_counters WHERE key = $1 AND bucket = $2"

# $1 triplet, $2 now, $3 retry window (expiry), $4 delay, $5 max_age.  In DO UPDATE every
# g.* is the row before this statement (see the module docstring).
_GREYLIST = """
INSERT INTO policy_greylist AS g (triplet, first_seen, passed, state, expires)
VALUES ($1, $2::float8, false, 'new', $2::float8 + $3::float8)
ON CONFLICT (triplet) DO UPDATE SET
  state = CASE WHEN g.expires < $2::float8 THEN 'new'
               WHEN g.passed THEN 'passed'
               WHEN $2::float8 - g.first_seen < $4::float8 THEN 'early'
               ELSE 'retried' END,
  first_seen = CASE WHEN g.expires < $2::float8 THEN $2::float8 ELSE g.first_seen END,
  passed = CASE WHEN g.expires < $2::float8 THEN false
                WHEN g.passed THEN true
                ELSE $2::float8 - g.first_seen >= $4::float8 END,
  expires = CASE WHEN g.expires < $2::float8 THEN $2::float8 + $3::float8
                 WHEN g.passed OR $2::float8 - g.first_seen >= $4::float8
                   THEN $2::float8 + $5::float8
                 ELSE g.expires END
RETURNING state"""


class PostgresPolicyState:
    """``PolicyState`` in PostgreSQL; see the module docstring."""

    def __init__(self, dsn: str, schema: str, *, pool_size: int = 4, node: str = "",
                 connect_timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.schema = valid_schema(schema)
        self.pool_size = max(1, pool_size)
        self.node = node
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._writes = 0

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                settings = {"search_path": quote_ident(self.schema),
                            "synchronous_commit": "off",
                            "application_name": f"mailwright {self.node} policy"[:63]}
                pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                                 server_settings=settings,
                                                 timeout=self.connect_timeout)
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                           f"mailwright-policy-state:{self.schema}")
                        await conn.execute(
                            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
                        for statement in _TABLES:
                            await conn.execute(statement)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    async def _prune(self, conn: asyncpg.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % PRUNE_EVERY:
            return
        await conn.execute("DELETE FROM policy_counters WHERE expires < $1", now)
        await conn.execute("DELETE FROM policy_greylist WHERE expires < $1", now)

    async def incr(self, key: str, window: int, now: float, amount: int = 1) -> int:
        if window <= 0:
            raise ValueError("window must be positive")
        bucket = int(now // window)
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                if amount == 0:
                    count = await conn.fetchval(_READ, key, bucket)
                    return int(count or 0)
                count = await conn.fetchval(_INCR, key, bucket, amount,
                                            float((bucket + 1) * window))
                await self._prune(conn, now)
                return int(count)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                asyncio.TimeoutError) as exc:
            raise translate(exc) from exc

    async def greylist(self, triplet: str, now: float, delay: float, expiry: float,
                       max_age: float) -> str:
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                state = await conn.fetchval(_GREYLIST, triplet, float(now), float(expiry),
                                            float(delay), float(max_age))
                await self._prune(conn, now)
                return str(state)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                asyncio.TimeoutError) as exc:
            raise translate(exc) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
