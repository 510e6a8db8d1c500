"""Wake idle nodes when work arrives: PostgreSQL LISTEN/NOTIFY on one channel per schema.

What: ``WorkListener(connect, channel)`` keeps one connection (outside the pool) that
``LISTEN``s on ``channel``; ``wait(timeout)`` returns True as soon as a notification
arrives (or one arrived since the last ``wait``), False after ``timeout`` seconds.
Writers call ``notify_sql()`` inside their transaction.

How: ``NOTIFY`` is transactional: a notification is delivered when, and only when, the
transaction that sent it commits (PostgreSQL 15 docs, "sql-notify"), so a node is woken
exactly when a committed message can be claimed, never for a rolled-back one. Identical
notifications of one transaction are folded into one. A lost LISTEN connection is
noticed through asyncpg's termination callback; the next ``wait`` reconnects and
returns True at once (notifications may have been missed). While the server is down
``wait`` simply sleeps its timeout (the caller then polls, as without NOTIFY).

Invariants: ``wait`` never raises for a database failure (waking is an optimisation;
the queue manager still polls ``next_due_time``); one pending wake-up is remembered, so
a notification that arrives while the caller is busy is not lost.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import asyncpg

log = logging.getLogger("mailwright.store")


def notify_sql() -> str:
    """The statement a writer runs (``$1`` = the channel) in the committing transaction."""
    return "SELECT pg_notify($1, '')"


class WorkListener:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]],
                 channel: str) -> None:
        self._connect = connect
        self.channel = channel
        self._conn: asyncpg.Connection | None = None
        self._event = asyncio.Event()
        self._lost = False
        self._closed = False
        self.notifications = 0          # received so far (tests, statistics)

    async def start(self) -> bool:
        """Connect and LISTEN; False (logged) if the server cannot be reached now."""
        if self._closed:
            return False
        try:
            conn = await self._connect()
        except Exception as exc:
            log.warning("LISTEN connection failed (%s); polling instead", exc)
            return False
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notify)
        except Exception as exc:
            log.warning("LISTEN %s failed (%s); polling instead", self.channel, exc)
            conn.terminate()
            return False
        self._conn = conn
        return True

    async def wait(self, timeout: float) -> bool:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            if not await self.start():
                self._lost = True
            elif self._lost:
                self._lost = False
                return True          # we were deaf for a while: look for work now
        if self._event.is_set():
            self._event.clear()
            return True
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        self._event.set()

    def _on_terminated(self, conn: object) -> None:
        if not self._closed:
            log.warning("LISTEN connection lost; will reconnect")
            self._lost = True
