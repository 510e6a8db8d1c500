"""Blocking body reads from PostgreSQL, for the synchronous ``read_body``/``body_path``.

What: ``BlockingFetcher.fetch(queue_id)`` returns the chunks of a body (or None if the
database has none) and may be called from any thread, including an event loop's (it
then blocks that loop for one query, as reading a body file would).

How: the ``Store`` protocol makes ``read_body`` and ``body_path`` plain functions, but
asyncpg is asynchronous and the caller's loop cannot be re-entered. So the fetcher owns
a daemon thread running its own event loop with one connection of its own (made on
first use, remade after a failure) and hands each query to it with
``run_coroutine_threadsafe``.

Invariants: at most one query at a time on the connection (its loop runs one fetch
after another); a driver failure raises ``StoreError`` (``StoreUnavailable`` if the
server is gone) and drops the connection so the next call reconnects; ``close()`` stops
the thread and closes the connection.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable

import asyncpg

from .pg_conn import is_driver_error, translate


class BlockingFetcher:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]],
                 timeout: float = 60.0) -> None:
        self._connect = connect
        self._timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: asyncpg.Connection | None = None
        self._gate: asyncio.Lock | None = None

    def fetch(self, queue_id: str) -> list[bytes] | None:
        return self._call(self._fetch(queue_id))

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._drop(), loop).result(10)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    # --- internals
    def _call(self, coro: Awaitable[Any]) -> Any:
        loop = self._ensure_thread()
        fut = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
        try:
            return fut.result(self._timeout + 5)
        except TimeoutError as exc:
            fut.cancel()
            raise translate(exc) from exc

    def _ensure_thread(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()
                thread = threading.Thread(target=run, name="mailwright-pg-fetch", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _fetch(self, queue_id: str) -> list[bytes] | None:
        if self._gate is None:
            self._gate = asyncio.Lock()
        async with self._gate:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncio.wait_for(self._connect(), self._timeout)
                rows = await self._conn.fetch(
                    "SELECT data FROM bodies WHERE queue_id = $1 ORDER BY seq", queue_id,
                    timeout=self._timeout)
            except BaseException as exc:
                await self._drop()
                if is_driver_error(exc):
                    raise translate(exc) from exc
                raise
            return [r[0] for r in rows] if rows else None

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.terminate()
            except Exception:
                pass

