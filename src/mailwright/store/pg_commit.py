"""Group commit on the event loop: concurrent ``commit_message`` calls share transactions.

What: ``AsyncGroupCommitter(run_batch)``; ``await submit(payload)`` returns the item's
result once ``run_batch`` (a coroutine that receives every item pending at that moment
and sets ``item.result`` or ``item.error`` on each) has finished.

How: at most ``concurrency`` drain tasks run at once. A drain takes everything pending
(up to ``max_batch``), runs one batch, settles its items and repeats while more is
pending. While one batch waits for PostgreSQL's COMMIT (the WAL flush) the next batch
accumulates, so N concurrent sessions pay for far fewer than N flushes: the "group
commit" of database logs (GUIDE idea 5), here across sessions before the database sees
them. ``concurrency`` > 1 overlaps batches on several pool connections (PostgreSQL then
shares their WAL flushes itself).

Invariants: every submitted item is settled exactly once, with its result or an
exception; an exception escaping ``run_batch`` fails the items it did not settle with
``StoreError``. A caller cancelled while its batch is in flight does not stop the batch
(like a lost 250: the client retries, a duplicate is possible, never a loss).
``close()`` waits for the batches in flight and refuses new items.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .base import StoreError

log = logging.getLogger("mailwright.store")


class BatchItem:
    __slots__ = ("payload", "future", "result", "error", "settled")

    def __init__(self, payload: Any, future: asyncio.Future) -> None:
        self.payload = payload
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        self.settled = False

    def succeed(self, result: Any) -> None:
        self.result, self.error, self.settled = result, None, True

    def fail(self, error: BaseException) -> None:
        self.result, self.error, self.settled = None, error, True


class AsyncGroupCommitter:
    def __init__(self, run_batch: Callable[[list[BatchItem]], Awaitable[None]], *,
                 max_batch: int = 500, concurrency: int = 1) -> None:
        if max_batch < 1 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._pending: list[BatchItem] = []
        self._tasks: set[asyncio.Task] = set()
        self._active = 0            # drains running (decremented as the drain returns,
                                    # not in a done-callback that runs later)
        self._closed = False
        # statistics (benchmarks and tests)
        self.batches = 0
        self.items = 0

    async def submit(self, payload: Any) -> Any:
        if self._closed:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        item = BatchItem(payload, loop.create_future())
        self._pending.append(item)
        if self._active < self.concurrency:
            self._active += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await item.future

    async def close(self) -> None:
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _drain(self) -> None:
        try:
            await self._drain_pending()
        finally:
            self._active -= 1

    async def _drain_pending(self) -> None:
        while self._pending:
            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            try:
                await self._run_batch(batch)
            except BaseException as exc:  # a backend bug: fail what it did not settle
                if not isinstance(exc, Exception):
                    log.warning("group commit interrupted: %r", exc)
                else:
                    log.exception("group commit batch failed")
                for item in batch:
                    if not item.settled:
                        item.fail(StoreError(f"commit failed: {exc}"))
                self._settle(batch)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.batches += 1
            self.items += sum(1 for item in batch if item.error is None)
            self._settle(batch)

    @staticmethod
    def _settle(batch: list[BatchItem]) -> None:
        for item in batch:
            if item.future.done():
                continue
            if not item.settled:
                item.fail(StoreError("commit not settled"))
            if item.error is not None:
                item.future.set_exception(item.error)
            else:
                item.future.set_result(item.result)
