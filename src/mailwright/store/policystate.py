"""Policy state: rate counters and greylisting triplets shared by every intake process.

What: the small ``PolicyState`` protocol the anti-abuse checks use, and
``SqlitePolicyState``, its embedded implementation:

* ``incr(key, window, now, amount=1) -> int``: add ``amount`` to the counter of ``key`` in
  the fixed window of ``window`` seconds that contains ``now`` and return the new count
  (``amount=0`` reads it).  Fixed windows, as Postfix anvil: around a window boundary a
  client may get up to twice the limit in ``window`` seconds; that is the price of one row.
* ``greylist(triplet, now, delay, expiry, max_age) -> str``: RFC 6647 greylisting state of
  one triplet: ``"new"`` (first seen, or forgotten: not retried within ``expiry`` seconds,
  or passed but unused for ``max_age``), ``"early"`` (retried before ``delay`` seconds),
  ``"retried"`` (the first retry after the delay: the triplet passes from now on) or
  ``"passed"`` (known good; its age is refreshed).

How: one SQLite file of its own (``data_dir/policystate.db``), WAL mode so every worker
process opens its own connection and writes briefly under SQLite's lock (busy timeout);
each call runs in a thread (``asyncio.to_thread``) so the event loop never waits on the
disk.  Rows carry an expiry time; every ``PRUNE_EVERY`` writes the expired ones are deleted.
The PostgreSQL backend (cluster) implements the same three calls in store/pg_policystate.py;
policy/antiabuse.policy_state picks the one of the configured store backend.

Invariants: time comes in as ``now`` (wall-clock seconds, shared between processes); this
module reads no clock.  Counters are not durable (``synchronous=OFF``): a crash may lose the
last increments, never corrupts the file.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from typing import Protocol

__all__ = ["PolicyState", "SqlitePolicyState", "GREYLIST_STATES"]

GREYLIST_STATES = ("new", "early", "retried", "passed")
PRUNE_EVERY = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_counters (
    key     TEXT NOT NULL,
    bucket  INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (key, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_greylist (
    triplet    TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    passed     INTEGER NOT NULL,
    expires    REAL NOT NULL
) WITHOUT ROWID;
"""


class PolicyState(Protocol):
    async def incr(self, key: str, window: int, now: float, amount: int = 1) -> int: ...

    async def greylist(self, triplet: str, now: float, delay: float, expiry: float,
                       max_age: float) -> str: ...

    async def close(self) -> None: ...


class SqlitePolicyState:
    """``PolicyState`` in a SQLite file; the file is opened on first use."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._writes = 0

    # ---------------------------------------------------------------- connection

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % PRUNE_EVERY:
            return
        db.execute("DELETE FROM policy_counters WHERE expires < ?", (now,))
        db.execute("DELETE FROM policy_greylist WHERE expires < ?", (now,))

    # ---------------------------------------------------------------- synchronous halves

    def incr_sync(self, key: str, window: int, now: float, amount: int = 1) -> int:
        if window <= 0:
            raise ValueError("window must be positive")
        bucket = int(now // window)
        expires = (bucket + 1) * window
        with self._lock:
            db = self._conn()
            if amount == 0:
                row = db.execute("SELECT count FROM policy_counters WHERE key=? AND bucket=?",
                                 (key, bucket)).fetchone()
                return int(row[0]) if row else 0
            row = db.execute(
                "INSERT INTO policy_counters(key, bucket, count, expires) VALUES(?,?,?,?) "
                "ON CONFLICT(key, bucket) DO UPDATE SET count = count + excluded.count "
                "RETURNING count", (key, bucket, amount, expires)).fetchone()
            self._prune(db, now)
            return int(row[0])

    def greylist_sync(self, triplet: str, now: float, delay: float, expiry: float,
                      max_age: float) -> str:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT first_seen, passed, expires FROM policy_greylist "
                                 "WHERE triplet=?", (triplet,)).fetchone()
                if row is None or row[2] < now:
                    state = "new"
                    db.execute("INSERT OR REPLACE INTO policy_greylist VALUES(?,?,0,?)",
                               (triplet, now, now + expiry))
                elif row[1]:
                    state = "passed"
                    db.execute("UPDATE policy_greylist SET expires=? WHERE triplet=?",
                               (now + max_age, triplet))
                elif now - row[0] < delay:
                    state = "early"
                else:
                    state = "retried"
                    db.execute("UPDATE policy_greylist SET passed=1, expires=? "
                               "WHERE triplet=?", (now + max_age, triplet))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._prune(db, now)
            return state

    # ---------------------------------------------------------------- the protocol

    async def incr(self, key: str, window: int, now: float, amount: int = 1) -> int:
        return await asyncio.to_thread(self.incr_sync, key, window, now, amount)

    async def greylist(self, triplet: str, now: float, delay: float, expiry: float,
                       max_age: float) -> str:
        return await asyncio.to_thread(self.greylist_sync, triplet, now, delay, expiry,
                                       max_age)

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
