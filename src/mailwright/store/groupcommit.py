"""Group commit: one writer thread batches the commits of many concurrent sessions.

What: ``GroupCommitter`` owns a dedicated thread and the write connection. Sessions
``submit_commit(payload, loop)`` and await the returned asyncio future; the thread
takes *everything* pending at once, hands the batch to the backend's
``commit_batch(conn, items)`` (which fsyncs the bodies, publishes them, and writes
all envelope rows in one transaction), then resolves every future on its own loop
with ``loop.call_soon_threadsafe``. Other writes (claims, results, directory
changes) are ``submit_job(fn, loop)``: ``fn(conn)`` runs on the same thread between
batches, so one process never contends with itself for the database write lock.

Why: the expensive part of a durable commit is the fsync wait, not the work. While
one batch is being made durable the next one accumulates, so with N concurrent
sessions the cost of the WAL fsync and of each directory fsync is shared by the
batch (the "group commit" of database logs; Postfix gets the same effect from
many smtpd processes fsyncing in parallel).

Invariants: every submitted item is resolved exactly once, with a result or an
exception; a failure of one item is recorded on that item only (``item.error``);
an exception escaping ``commit_batch`` fails the items it did not settle with
``StoreError``. Items still pending at ``stop()`` are processed before the thread
exits. Futures whose awaiting task was cancelled are skipped (the commit still
happened: like a lost 250, the client retries and a duplicate is possible, never a
loss).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from .base import StoreError

log = logging.getLogger("mailwright.store")

_COMMIT = 0
_JOB = 1
_TXN = 2


class Pending:
    __slots__ = ("kind", "payload", "loop", "future", "result", "error")

    def __init__(self, kind: int, payload: Any, loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future) -> None:
        self.kind = kind
        self.payload = payload
        self.loop = loop
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():               # cancelled by the awaiting task
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _settle_all(items: list["Pending"]) -> None:
    for p in items:
        _settle(p.future, p.result, p.error)


class GroupCommitter:
    def __init__(self, name: str, connect: Callable[[], Any],
                 commit_batch: Callable[[Any, list[Pending]], None],
                 close: Callable[[Any], None] = lambda conn: conn.close(),
                 max_batch: int = 1000,
                 run_txns: Callable[[Any, list[Pending]], None] | None = None) -> None:
        self._name = name
        self._connect = connect
        self._commit_batch = commit_batch
        self._run_txns = run_txns
        self._close = close
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[Pending] = []
        self._stopping = False
        self._idle = False            # the writer waits for work (under _cond)
        self._wake_scheduled = False  # a wake-up at the end of this loop pass is due
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # statistics (read by benchmarks and tests)
        self.batches = 0
        self.committed_items = 0

    # --- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    # --- submission (any thread; normally the event loop's)
    def submit_commit(self, payload: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        return self._submit(_COMMIT, payload, loop)

    def submit_job(self, fn: Callable[[Any], Any], loop: asyncio.AbstractEventLoop
                   ) -> asyncio.Future:
        return self._submit(_JOB, fn, loop)

    def submit_txn(self, fn: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A database job the backend's ``run_txns`` may batch with other pending ones
        into one transaction (each isolated by a savepoint): one commit, one WAL fsync,
        for all the queue results recorded meanwhile."""
        return self._submit(_TXN if self._run_txns is not None else _JOB, fn, loop)

    def _submit(self, kind: int, payload: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        fut = loop.create_future()
        with self._cond:
            if self._stopping or self._thread is None:
                raise StoreError("store is not open")
            self._pending.append(Pending(kind, payload, loop, fut))
            if not self._idle:
                pass                  # busy: it takes everything pending when it is done
            elif asyncio._get_running_loop() is loop:
                # Wake the idle writer once at the end of this event-loop pass, so the
                # commits of every session served in the pass make one batch (one
                # transaction, one flush) and one thread wake-up.
                if not self._wake_scheduled:
                    self._wake_scheduled = True
                    loop.call_soon(self._wake)
            else:
                self._cond.notify()
        return fut

    def _wake(self) -> None:
        with self._cond:
            self._wake_scheduled = False
            self._cond.notify()

    # --- the writer thread
    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stopping:
                        self._idle = True
                        self._cond.wait()
                    self._idle = False
                    if not self._pending:
                        return
                    batch = self._pending[:self._max_batch]
                    del self._pending[:self._max_batch]
                commits = [p for p in batch if p.kind == _COMMIT]
                if commits:
                    self._run_commits(conn, commits)
                txns = [p for p in batch if p.kind == _TXN]
                if txns:
                    try:
                        self._run_txns(conn, txns)
                    except BaseException as exc:  # a backend bug: fail what it did not settle
                        log.exception("batched transaction failed")
                        for p in txns:
                            if p.error is None and p.result is None:
                                p.error = StoreError(f"transaction failed: {exc}")
                    self._settle_batch(txns)
                for p in batch:
                    if p.kind == _JOB:
                        try:
                            p.result = p.payload(conn)
                        except BaseException as exc:
                            p.error = exc
                        self._resolve(p)
        finally:
            try:
                self._close(conn)
            except Exception:
                pass

    def _run_commits(self, conn: Any, items: list[Pending]) -> None:
        try:
            self._commit_batch(conn, items)
        except BaseException as exc:  # a backend bug: fail what it did not settle
            log.exception("group commit batch failed")
            for p in items:
                if p.error is None and p.result is None:
                    p.error = StoreError(f"commit failed: {exc}")
        self.batches += 1
        self.committed_items += sum(1 for p in items if p.error is None)
        self._settle_batch(items)

    @staticmethod
    def _settle_batch(items: list[Pending]) -> None:
        # One wake-up per event loop for the whole batch, not one per item: each
        # call_soon_threadsafe costs the loop a self-pipe write and a GIL hand-off.
        by_loop: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        for p in items:
            by_loop.setdefault(p.loop, []).append(p)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, group)
            except RuntimeError:   # the loop is closed; nobody is waiting any more
                pass

    @staticmethod
    def _resolve(p: Pending) -> None:
        try:
            p.loop.call_soon_threadsafe(_settle, p.future, p.result, p.error)
        except RuntimeError:   # the loop is closed; nobody is waiting any more
            pass
