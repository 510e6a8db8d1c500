"""The embedded default backend: SQLite (WAL) for envelopes, state and small bodies,
files for the others.

What: ``SQLiteStore(path, blob_dir)`` implements ``base.Store``. Several worker
processes may open the same database and blob directory at once, each with its own
``SQLiteStore``.

How:

* Connections use WAL with ``synchronous=FULL``: in WAL mode FULL fsyncs the WAL at
  every commit, and that fsync is what makes an envelope durable (NORMAL would only
  sync at checkpoints; https://www.sqlite.org/pragma.html#pragma_synchronous and
  https://www.sqlite.org/wal.html). ``foreign_keys=ON``, ``busy_timeout`` set.
* All writes of one process go through one ``GroupCommitter`` thread and one write
  connection. Every write transaction is ``BEGIN IMMEDIATE`` (takes the write lock up
  front, so it cannot fail half-way with SQLITE_BUSY when another process writes) and
  is retried with backoff on SQLITE_BUSY/LOCKED for up to ``lock_retry_seconds``.
* ``commit_message`` (GUIDE idea 5, "250 only after a durable commit"): the body was
  streamed to ``blob_dir/tmp``; the writer thread takes every pending commit and makes
  the bodies durable by one of two ``sync_method`` values:

  - ``"fsync"`` (default, portable): start writeback of every body, fsync each on a
    small thread pool (``fsync_threads``; overlapping fsyncs share journal commits),
    link each to ``blob_dir/<fanout>/<queue_id>``, fsync each touched directory once.
  - ``"syncfs"`` (Linux, opt-in): link every body, then ONE ``syncfs(2)`` makes all
    bodies and names durable. Several times faster on ext4 (one journal commit per
    batch), but it also waits for unrelated dirty data on the same file system: use
    it when the spool has its own file system. Needs Linux >= 5.8 for syncfs to
    report writeback errors. A durable transaction with no body file awaiting its
    flush (every batch of inline bodies, every claim and result) is flushed by
    fdatasync of the WAL instead (``_flush``), as ``synchronous=FULL`` would.

  A body still in memory at commit and no larger than ``inline_body_max`` (64 KiB by
  default: most mail) gets no file at all: it is inserted into ``bodies`` with its
  envelope (schema 11) and ``messages.blob`` is ''. Creating, renaming and unlinking a
  file per message cost more CPU than everything else the store does for it (ext4
  inode allocation alone: ~6 % of a worker's time under load; docs/performance.md).
  Claims read these bodies with the messages (``QueuedMessage.inline_body``), so local
  delivery needs no file either; ``fetch_body`` gives agents a ``MessageBody``.

  Then all envelopes, recipients and inline bodies go in ONE transaction and only then
  are the sessions' futures resolved. If that transaction fails, the items are retried
  one per transaction, so one bad item fails alone.
* Reads run on a single reader thread with its own connection (WAL readers never
  block the writer); they are not hot, RCPT lookups use an in-memory snapshot.
* Leases: ``claim_due`` sets ``lease_owner``/``lease_expires`` on the messages it
  returns; a lease that expired (a crashed worker) makes the message claimable again.

Invariants:

* A message row exists only if its body was fsync'd and linked (and the directory
  fsync'd) before the row's transaction committed, or its body is in ``bodies``,
  committed by that same transaction.
* A message whose recipients are all final and owe no DSN gets ``completed_at`` in the
  same transaction as the last result (or as the commit of its last DSN); an inline
  body row is deleted in that transaction, a body file unlinked after that commit
  (``recover`` finishes the job if we crash in between). Rows are kept for history.
* DSN bookkeeping (schema 3): ``record_results(..., dsn=...)`` sets ``dsn_pending`` in the
  result's transaction; ``commit_dsn`` inserts the DSN message and clears exactly those
  flags in one transaction of the group commit (a ``(envelope, blob, after)`` payload
  whose ``after(conn, queue_id)`` runs inside it). If a flag changed meanwhile (another
  worker sent that DSN) the whole item rolls back and its blob is discarded: each owed
  DSN is committed exactly once.
* Directory names are lower-cased on the way in; every directory change bumps
  ``meta.directory_version`` in the same transaction.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..fsutil import unlink_quiet
from ..queue.body import MessageBody
from ..queue.model import (
    check_dsn_actions, is_complete, FINAL_STATES, DeliveryResult, Envelope, QueuedMessage,
    QueuedRecipient, RecipientRequest, RecipientState,
)
from . import migrations
from .base import (
    Alias, AttemptRecord, AuditRecord, DirectorySnapshot, DkimKey, DuplicateError, Mailbox,
    NotFoundError, QueueFilter, RecoveryReport, StoreError, TraceEvent,
)
from .blobs import BlobDir, FileBlobWriter
from .groupcommit import GroupCommitter, Pending
from .queueid import lower_bound as queueid_lower_bound, new_queue_id

log = logging.getLogger("mailwright.store")

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_FINAL_SQL = "('delivered', 'failed')"
_CHUNK = 500
#: Default ``inline_body_max``: the writer's buffer (blobs.BUFFER_SIZE), so every body the
#: session never had to spill to a file is kept inline. SQLite reads blobs of this size
#: faster from the database than from files of their own (sqlite.org/intern-v-extern-blob).
INLINE_BODY_MAX = 64 * 1024


class _Redo(Exception):
    """A job failed in _run_txns' optimistic pass: roll back, run again isolated."""


_MSG_COLS = ("queue_id, sender, received_at, client_ip, client_port, client_name, helo, "
             "protocol, tls, auth_user, body_type, smtputf8, ret, envid, size, listener, "
             "blob, created_at, quarantine")
_RCPT_COLS = ("id, queue_id, address, notify, orcpt, state, attempts, next_attempt_at, "
              "last_attempt_at, last_reply, final_at, remote_mta, status, dsn_pending, "
              "dsn_delayed, dsn_sent, dsn_queue_id")


class _StaleDsn(StoreError):
    """The DSN flags changed under a DSN commit (another worker settled them first)."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    msg = str(exc)
    return "locked" in msg or "busy" in msg


def _encode_notify(notify: tuple[str, ...] | None) -> str | None:
    return None if notify is None else ",".join(notify)


def _decode_notify(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(text.split(",")) if text else ()


def _norm(name: str) -> str:
    return name.strip().lower()


def _domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not domain:
        raise ValueError(f"not an address: {address!r}")
    return domain


def _no_commits(conn: Any, items: list[Pending]) -> None:
    """The reader and reaper threads take jobs only (``submit_txn``), never commits."""
    for p in items:
        p.error = StoreError("not a writer")


class SQLiteStore:
    """``base.Store`` on SQLite + body files. See the module docstring."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str], blob_dir: str | os.PathLike[str], *,
                 busy_timeout: float = 5.0, lock_retry_seconds: float = 30.0,
                 sync_method: str = "fsync", fsync_threads: int = 1, max_batch: int = 1000,
                 recover_grace_seconds: float = 3600.0,
                 inline_body_max: int = INLINE_BODY_MAX) -> None:
        self.path = os.fspath(path)
        self.blobs = BlobDir(blob_dir)
        self.busy_timeout = busy_timeout
        self._wlock_fd = -1
        self._reaper: GroupCommitter | None = None     # unlinks bodies off the writer
        self._db_fd = -1        # syncfs mode, database on another file system than bodies
        # syncfs mode: body files (or names) written since the last syncfs. Until the
        # first syncfs after open, the WAL's own directory entry may not be durable either.
        self._files_unsynced = True
        self.lock_retry_seconds = lock_retry_seconds
        if sync_method not in ("fsync", "syncfs"):
            raise ValueError(f"sync_method must be fsync or syncfs, not {sync_method!r}")
        if sync_method == "syncfs" and not BlobDir.syncfs_available():
            raise ValueError("sync_method syncfs needs Linux")
        self.sync_method = sync_method
        self._syncfs = sync_method == "syncfs"
        self.fsync_threads = fsync_threads
        self.max_batch = max_batch
        self.recover_grace_seconds = recover_grace_seconds
        # Bodies up to this size that are still in memory at commit go into ``bodies``.
        self.inline_body_max = inline_body_max
        self.last_recovery: RecoveryReport | None = None
        self._writer: GroupCommitter | None = None
        self._fsync_pool: ThreadPoolExecutor | None = None
        self._reader: GroupCommitter | None = None     # reads on their own connection

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            # fsync mode: every COMMIT fsyncs the WAL. syncfs mode: the commit only writes
            # the WAL and ``_exclusive`` follows it with one syncfs(2), which makes the
            # WAL, the bodies and their names durable in a single device flush.
            conn.execute("PRAGMA synchronous = NORMAL" if self._syncfs
                         else "PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # Statement journals (multi-row statements inside the batched transactions)
            # stay in memory instead of spilling to files under /var/tmp: they only
            # matter until their statement ends, and a crash discards them anyway.
            conn.execute("PRAGMA temp_store = MEMORY")
        except BaseException:
            conn.close()
            raise
        return conn

    def _retry_busy(self, fn: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.lock_retry_seconds
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _transact(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in BEGIN IMMEDIATE ... COMMIT, retrying on SQLITE_BUSY.
        ``fn`` must only touch the database (it may run more than once)."""
        def attempt() -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return self._exclusive(lambda: self._retry_busy(attempt))

    def _exclusive(self, fn: Callable[[], Any], sync: bool = True) -> Any:
        """Run a write transaction holding ``<db>-write.lock`` (flock). Processes sharing
        the database then queue in the kernel and are woken the moment the writer before
        them commits, instead of polling SQLite's busy handler (which sleeps 1 to 100 ms
        between tries: measured as most of the commit latency with two workers)."""
        fd = self._wlock_fd
        if fd < 0:
            result = fn()
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                result = fn()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        if self._syncfs and sync:
            self._flush()              # raises OSError: the caller's commit is not durable
        return result

    def _flush(self) -> None:
        """Make every transaction committed so far durable (sync_method "syncfs"; called
        after the write lock is released, so the flushes of several processes overlap).

        While body files await their flush: one syncfs(2) makes bodies, names and the
        WAL durable together. Otherwise the database alone changed (inline bodies, claims,
        results): fdatasync(2) of the WAL is enough, which is what ``synchronous=FULL``
        does at COMMIT (https://www.sqlite.org/wal.html); it does not write out what
        other programs left dirty on the file system, and measured 5-12 % more messages/s
        here than a syncfs per batch."""
        if self._files_unsynced:
            self._sync_filesystems()
            return
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:      # no WAL (never, with our connection open): be safe
            self._sync_filesystems()
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _sync_filesystems(self) -> None:
        """syncfs(2) of the spool's file system, and of the database's if it is another."""
        self._files_unsynced = False   # cleared first: a file written meanwhile sets it again
        try:
            self.blobs.syncfs()
            if self._db_fd >= 0:
                self.blobs.syncfs_fd(self._db_fd)
        except BaseException:
            self._files_unsynced = True
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection, list[str]], Any],
                     durable: bool = True) -> Any:
        """Run ``fn(conn, remove)`` as one write transaction on the writer thread; after
        the commit, unlink the blob relpaths ``fn`` appended to ``remove``."""
        if self._writer is None:
            raise StoreError("store is not open")

        result, rels = await self._writer.submit_txn((fn, durable), asyncio.get_running_loop())
        if rels:
            # Unlinking is slow on some file systems (freeing inodes and blocks, online
            # discard) and needs no ordering: a body whose unlink is lost to a crash is an
            # orphan that recover() removes. So it runs beside the writer, not on it.
            await self._reaper.submit_txn(rels, asyncio.get_running_loop())
        return result

    def _remove_all(self, rels: list[str]) -> None:
        for rel in rels:
            self.blobs.remove(rel)

    def _run_unlinks(self, conn: None, items: list[Pending]) -> None:
        """Reaper thread: the unlinks of every ``_write`` pending, settled together."""
        for p in items:
            try:
                self._remove_all(p.payload)
            except BaseException as exc:
                p.error = exc

    def _run_txns(self, conn: sqlite3.Connection, items: list[Pending]) -> None:
        """Writer thread: every pending ``_write`` job in ONE transaction; then, after the
        commit, the blob unlinks the successful jobs asked for. The first pass runs the
        jobs one after the other; if one raises, that transaction is rolled back and the
        batch runs again with each job inside its own savepoint, so the failing job is
        rolled back alone and gets the exception (jobs only touch the database, so
        running one twice is harmless: ``_retry_busy`` already may)."""
        removes: list[list[str]] = [[] for _ in items]
        isolate = False

        def attempt() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i, p in enumerate(items):
                    removes[i] = []
                    p.result, p.error = None, None
                    if not isolate:
                        # Optimistic: jobs almost never fail, so the batch first runs
                        # without a SAVEPOINT/RELEASE pair per job; a failure rolls the
                        # whole batch back and it runs again with one.
                        try:
                            p.result = p.payload[0](conn, removes[i])
                        except BaseException as exc:
                            raise _Redo() from exc
                        continue
                    conn.execute("SAVEPOINT job")
                    try:
                        p.result = p.payload[0](conn, removes[i])
                    except BaseException as exc:
                        conn.execute("ROLLBACK TO job")
                        p.error = (StoreError(f"database error: {exc}")
                                   if isinstance(exc, sqlite3.Error) else exc)
                    conn.execute("RELEASE job")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        def run() -> None:
            nonlocal isolate
            try:
                self._retry_busy(attempt)
            except _Redo:
                isolate = True
                self._retry_busy(attempt)

        durable = any(p.payload[1] for p in items)
        try:
            self._exclusive(run, sync=durable)
        except sqlite3.Error as exc:
            for p in items:
                p.result, p.error = None, StoreError(f"database error: {exc}")
            return
        except OSError as exc:      # committed, but the flush after it failed
            for p in items:
                if p.payload[1]:
                    p.result, p.error = None, StoreError(f"cannot sync: {exc.strerror}")
        for p, rels in zip(items, removes):
            if p.error is None:
                p.result = (p.result, rels)       # _write unlinks them off this thread

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._reader is None:
            raise StoreError("store is not open")
        return await self._reader.submit_txn(fn, asyncio.get_running_loop())

    @staticmethod
    def _run_reads(conn: sqlite3.Connection, items: list[Pending]) -> None:
        """Reader thread: the reads pending, each in one consistent snapshot of its own,
        settled together (one wake-up of each waiting loop, not one per read: the queue
        manager reads on every pass)."""
        for p in items:
            try:
                conn.execute("BEGIN")
                try:
                    p.result = p.payload(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                p.error = StoreError(f"database error: {exc}")
            except BaseException as exc:
                p.error = exc

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        if self._writer is not None:
            return
        self.blobs.open()
        self._wlock_fd = os.open(self.path + "-write.lock",
                                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        db_dir = os.path.dirname(os.path.abspath(self.path))
        if self._syncfs and os.stat(db_dir).st_dev != os.stat(self.blobs.root).st_dev:
            self._db_fd = os.open(db_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            conn = self._connect()
            try:
                migrations.migrate(conn, self._transact)
            finally:
                conn.close()
            if self.fsync_threads > 1:
                self._fsync_pool = ThreadPoolExecutor(self.fsync_threads,
                                                      thread_name_prefix="mailwright-fsync")
            # The reader and the reaper are group committers too, for their batching: all
            # the jobs of one event-loop pass run in one go and settle with one wake-up.
            reader = GroupCommitter("mailwright-store-read", self._connect, _no_commits,
                                    run_txns=self._run_reads)
            reader.start()
            self._reader = reader
            reaper = GroupCommitter("mailwright-store-unlink", lambda: None, _no_commits,
                                    close=lambda conn: None, run_txns=self._run_unlinks)
            reaper.start()
            self._reaper = reaper
            writer = GroupCommitter("mailwright-store-writer", self._connect,
                                    self._commit_batch, max_batch=self.max_batch,
                                    run_txns=self._run_txns)
            writer.start()
            self._writer = writer
        except BaseException:
            self._close_sync()
            raise

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        for thread in (self._reaper, self._reader):
            if thread is not None:
                thread.stop()
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown()
        self._fsync_pool = self._reaper = self._reader = None
        if self._wlock_fd >= 0:
            os.close(self._wlock_fd)
            self._wlock_fd = -1
        if self._db_fd >= 0:
            os.close(self._db_fd)
            self._db_fd = -1
        self.blobs.close()

    async def recover(self) -> int:
        """Clean up after a crash; returns how many things were removed.

        * ``tmp/*``: half-written bodies (sessions that never got a 250);
        * message rows (not yet complete) whose body file is missing -- impossible while
          the commit invariant holds, so this is logged as an error and counted;
        * body files with no message row (crash between link and DB commit), and bodies
          of completed messages (crash between the final result and the unlink);
        * leases: expired ones; all of them if this is the only open store.

        Safe with other processes running: if another store holds the blob directory
        open (``flock``), only leftovers older than ``recover_grace_seconds`` are
        removed, since younger ones may belong to that process's live sessions.
        The details are kept in ``self.last_recovery``."""
        if self._writer is None:
            raise StoreError("store is not open")

        def job(conn: sqlite3.Connection) -> RecoveryReport:
            exclusive = self.blobs.try_exclusive()
            try:
                return self._recover_sync(conn, exclusive)
            finally:
                if exclusive:
                    self.blobs.share()
        report: RecoveryReport = await self._writer.submit_job(job, asyncio.get_running_loop())
        self.last_recovery = report
        return report.total

    def _torn_bodies(self, c: sqlite3.Connection, files: Mapping[str, float],
                     window: float = 120.0) -> list[str]:
        """Queue ids of the newest messages whose body on disk does not match the size and
        CRC-32 committed with them. Only a crash during the flush after a commit can cause
        that (sync_method "syncfs"), before any 250 was sent, and only for the last rows
        committed: those within ``window`` seconds of the newest are checked."""
        newest = c.execute("SELECT MAX(created_at) FROM messages").fetchone()[0]
        if newest is None:
            return []
        torn = []
        for qid, rel, size, crc in c.execute(
                "SELECT queue_id, blob, size, body_crc FROM messages"
                " WHERE completed_at IS NULL AND body_crc IS NOT NULL AND blob != ''"
                " AND created_at >= ?",
                (newest - window,)):
            if rel in files and self.blobs.checksum(rel) != (size, crc & 0xFFFFFFFF):
                torn.append(qid)
        return torn

    def _recover_sync(self, conn: sqlite3.Connection, exclusive: bool) -> RecoveryReport:
        now = time.time()
        cutoff = float("inf") if exclusive else now - self.recover_grace_seconds
        tmp_removed = 0
        for path, mtime in self.blobs.list_tmp():
            if mtime < cutoff and unlink_quiet(path):
                tmp_removed += 1

        def fn(c: sqlite3.Connection) -> tuple[int, int, list[str]]:
            active = dict(c.execute(     # inline bodies ('') commit with their rows
                "SELECT blob, queue_id FROM messages WHERE completed_at IS NULL"
                " AND blob != ''"))
            files = dict(self.blobs.list_final())
            # Of the files no queued message owns, those of completed messages (a crash
            # between the result and the unlink): looked up by queue id (the file's name),
            # so a start reads the files on disk, not the whole retained history.
            others = [rel.rpartition("/")[2] for rel in files if rel not in active]
            completed: set[str] = set()
            for i in range(0, len(others), _CHUNK):
                part = others[i:i + _CHUNK]
                completed.update(r[0] for r in c.execute(
                    f"SELECT blob FROM messages WHERE queue_id IN ({','.join('?' * len(part))})"
                    " AND completed_at IS NOT NULL", part))
            missing = [qid for rel, qid in active.items() if rel not in files]
            if exclusive:
                missing += self._torn_bodies(c, files)
            for i in range(0, len(missing), _CHUNK):
                part = missing[i:i + _CHUNK]
                c.execute(f"DELETE FROM messages WHERE queue_id IN ({','.join('?' * len(part))})",
                          part)
            if exclusive:
                # Expire rather than clear: the owner stays, so the next claim knows the
                # message was in flight in a crash (QueuedMessage.reclaimed).
                leases = c.execute("UPDATE messages SET lease_expires = 0"
                                   " WHERE lease_owner IS NOT NULL AND lease_expires > 0").rowcount
            else:
                leases = c.execute("UPDATE messages SET lease_expires = 0"
                                   " WHERE lease_expires <= ? AND lease_expires > 0",
                                   (now,)).rowcount
            orphans = [rel for rel, mtime in files.items()
                       if rel not in active and (rel in completed or mtime < cutoff)]
            return len(missing), leases, orphans

        missing, leases, orphans = self._transact(conn, fn)
        removed = sum(1 for rel in orphans if self.blobs.remove(rel))
        if missing:
            log.error("recover: %d queued message(s) had no intact body (missing, or failing its size/CRC check after a crash during the flush, so never acknowledged); removed", missing)
        if tmp_removed or removed or leases:
            log.warning("recover: removed %d partial and %d orphan bodies, cleared %d leases",
                        tmp_removed, removed, leases)
        return RecoveryReport(tmp_files=tmp_removed, missing_blobs=missing,
                              orphan_blobs=removed, leases_cleared=leases, exclusive=exclusive)

    # ------------------------------------------------------------------ intake
    def new_blob(self) -> FileBlobWriter:
        return self.blobs.new_writer()

    async def commit_message(self, envelope: Envelope, blob: FileBlobWriter) -> str:  # type: ignore[override]
        """Durably commit body + envelope + recipients; returns the queue id.

        Raises ValueError for a programming error (no recipients, foreign blob; the
        caller still owns the blob) and StoreError when the commit failed (the body is
        then gone; answer 451)."""
        if not envelope.recipients:
            raise ValueError("a message needs at least one recipient")
        if not isinstance(blob, FileBlobWriter) or blob.owner is not self.blobs:
            raise ValueError("blob was not created by this store")
        if self._writer is None:
            raise StoreError("store is not open")
        blob.seal()
        try:
            fut = self._writer.submit_commit((envelope, blob), asyncio.get_running_loop())
        except BaseException:
            blob.discard()
            raise
        return await fut

    def _commit_batch(self, conn: sqlite3.Connection, items: list[Pending]) -> None:
        """Writer thread: make a batch of bodies durable, then their rows (one txn).

        1. a small body still in memory (up to ``inline_body_max``) is kept inline: it is
           inserted with its envelope in step 3, no file. Every other body gets its final
           name (one still in memory is created there directly; a streamed one is renamed
           from tmp/);
        2. one ``syncfs`` for the batch, or an fsync of every body file and of every
           touched directory (``sync_method``);
        3. all envelopes, recipients and inline bodies in one transaction (below), whose
           flush (syncfs, or the WAL's fsync) makes the inline bodies durable with it."""
        touched = self._publish(items)
        if self._syncfs:
            # Bodies are only written here; the syncfs that follows the row commit (in
            # _exclusive) makes bodies, names and rows durable together. A crash before it
            # returns may keep a row whose body did not reach the disk: no 250 was sent
            # for it, and recover() finds it by size and CRC-32.
            for item in items:
                item.payload[1].close_synced()
        else:
            def sync(item: Pending) -> None:
                try:
                    item.payload[1].sync_and_close()
                except OSError as exc:
                    item.error = StoreError(f"cannot sync message body: {exc.strerror}")
            live = [item for item in items
                    if item.error is None and item.payload[1].inline is None]
            for item in live:
                item.payload[1].start_writeback()
            if self._fsync_pool is not None and len(live) > 1:
                for _ in self._fsync_pool.map(sync, live):
                    pass
            else:
                for item in live:
                    sync(item)
            for d, its in touched.items():
                try:
                    self.blobs.fsync_dir(d)
                except OSError as exc:
                    for item in its:
                        item.error = StoreError(f"cannot sync queue directory: {exc.strerror}")
        # 4. all rows in one transaction; on failure, one transaction per item
        live = [item for item in items if item.error is None]
        if live:
            created = time.time()
            try:
                self._transact(conn, lambda c: self._insert_messages(c, live, created))
            except OSError as exc:
                # The rows committed but the flush after them failed: nothing is known to
                # be durable, so no 250. Rows stay (a retry by the client may duplicate,
                # never lose); their bodies are removed below only if the rows are not
                # there, which recover() sorts out.
                log.error("flush after group commit failed: %s", exc)
                for item in live:
                    item.error = StoreError(f"cannot sync queue: {exc.strerror}")
                    item.payload[1].final_path = None     # keep the body for its row
            except Exception as exc:
                if len(live) == 1:
                    live[0].error = StoreError(f"cannot record message: {exc}")
                else:
                    log.warning("group commit of %d failed (%s); retrying one by one",
                                len(live), exc)
                    for item in live:
                        try:
                            self._transact(conn, lambda c: self._insert_messages(c, [item], created))
                        except Exception as exc1:
                            item.error = StoreError(f"cannot record message: {exc1}")
        # 5. settle
        for item in items:
            blob = item.payload[1]
            if item.error is None:
                item.result = blob.queue_id
            else:
                blob.discard()

    def _publish(self, items: list[Pending]) -> dict[str, list[Pending]]:
        """Keep each small body still in memory inline; give every other body that is
        still fine its final name. Returns the touched directories and their items."""
        touched: dict[str, list[Pending]] = {}
        for item in items:
            if item.error is not None:
                continue
            blob: FileBlobWriter = item.payload[1]
            if blob.in_memory and blob.size <= self.inline_body_max:
                # A queue id taken already (two processes drawing the same microsecond
                # and the same 25 random bits, queueid.py) fails the PRIMARY KEY insert:
                # the batch is redone one by one and this message alone gets a 451.
                blob.keep_inline(new_queue_id())
                continue
            for _ in range(8):
                try:
                    dirs = self.blobs.publish(blob, new_queue_id())
                except FileExistsError:
                    continue
                except OSError as exc:
                    item.error = StoreError(f"cannot store message body: {exc.strerror}")
                    break
                # Set after the file is written and named, cleared before a syncfs starts
                # (_sync_filesystems): a file is never left to a WAL-only flush.
                self._files_unsynced = True
                for d in dirs:
                    touched.setdefault(d, []).append(item)
                break
            else:
                item.error = StoreError("no free queue id")
        return touched

    def _insert_messages(self, conn: sqlite3.Connection, items: list[Pending],
                         created: float) -> None:
        msgs = []
        rcpts = []
        bodies = []
        for item in items:
            env: Envelope = item.payload[0]
            blob: FileBlobWriter = item.payload[1]
            qid = blob.queue_id
            if blob.inline is not None:
                bodies.append((qid, blob.inline))
                relpath = ""                        # the body is in ``bodies``
            else:
                relpath = self.blobs.relpath(qid)
            msgs.append((qid, env.sender, env.received_at, env.client_ip, env.client_port,
                         env.client_name, env.helo, env.protocol, env.tls, env.auth_user,
                         env.body_type, int(env.smtputf8), env.ret, env.envid, blob.size,
                         env.listener, relpath, created, env.quarantine, blob.crc))
            state = "held" if env.quarantine else "queued"     # quarantine: all HELD
            for r in env.recipients:
                rcpts.append((qid, r.address, _encode_notify(r.notify), r.orcpt, state,
                              env.received_at))
        conn.executemany(f"INSERT INTO messages ({_MSG_COLS}, body_crc) VALUES "
                         f"({','.join('?' * 20)})", msgs)
        conn.executemany("INSERT INTO recipients (queue_id, address, notify, orcpt, state, "
                         "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)", rcpts)
        if bodies:
            conn.executemany("INSERT INTO bodies (queue_id, data) VALUES (?, ?)", bodies)
        for item in items:
            if len(item.payload) > 2:    # commit_dsn: clear the owed flags in this txn
                item.payload[2](conn, item.payload[1].queue_id)

    # ------------------------------------------------------------------ loading
    def _load(self, conn: sqlite3.Connection, queue_ids: Sequence[str],
              keep: Callable[[QueuedRecipient], bool] | None = None,
              bodies: bool = False) -> list[QueuedMessage]:
        """Messages in ``queue_ids`` order; ``keep`` filters ``recipients`` (the envelope
        always lists all of them). ``bodies``: also read the inline bodies (for delivery)."""
        rows: dict[str, tuple] = {}
        rcpts: dict[str, list[QueuedRecipient]] = {}
        inline: dict[str, bytes] = {}
        for i in range(0, len(queue_ids), _CHUNK):
            part = list(queue_ids[i:i + _CHUNK])
            marks = ",".join("?" * len(part))
            for row in conn.execute(f"SELECT {_MSG_COLS} FROM messages WHERE queue_id IN ({marks})",
                                    part):
                rows[row[0]] = row
            for r in conn.execute(f"SELECT {_RCPT_COLS} FROM recipients WHERE queue_id IN ({marks})"
                                  " ORDER BY id", part):
                rcpts.setdefault(r[1], []).append(QueuedRecipient(
                    id=r[0], queue_id=r[1], address=r[2], notify=_decode_notify(r[3]),
                    orcpt=r[4], state=RecipientState(r[5]), attempts=r[6],
                    next_attempt_at=r[7], last_attempt_at=r[8], last_reply=r[9],
                    final_at=r[10], remote_mta=r[11], status=r[12], dsn_pending=r[13],
                    dsn_delayed=bool(r[14]), dsn_sent=r[15], dsn_queue_id=r[16]))
            if bodies:
                inline.update(conn.execute(
                    f"SELECT queue_id, data FROM bodies WHERE queue_id IN ({marks})", part))
        out = []
        for qid in queue_ids:
            row = rows.get(qid)
            if row is None:
                continue
            all_r = rcpts.get(qid, [])
            env = Envelope(
                sender=row[1], received_at=row[2], client_ip=row[3], client_port=row[4],
                client_name=row[5], helo=row[6], protocol=row[7], tls=row[8],
                auth_user=row[9], body_type=row[10], smtputf8=bool(row[11]), ret=row[12],
                envid=row[13], size=row[14], listener=row[15], quarantine=row[18],
                recipients=[RecipientRequest(r.address, r.notify, r.orcpt) for r in all_r])
            out.append(QueuedMessage(
                queue_id=qid, envelope=env,
                blob_path=self.blobs.path(row[16]) if row[16] else "",
                recipients=[r for r in all_r if keep is None or keep(r)],
                inline_body=inline.get(qid)))
        return out

    # ------------------------------------------------------------------ queue
    async def claim_due(self, now: float, limit: int, owner: str, lease_seconds: float
                        ) -> list[QueuedMessage]:
        def fn(c: sqlite3.Connection, remove: list[str]) -> list[QueuedMessage]:
            # Walk the partial index recipients_due in due order and stop early (a GROUP
            # BY over every queued recipient cost O(queue) per claim); several recipients
            # of one message collapse below, so read a few more rows than messages wanted.
            found: dict[str, str | None] = {}
            for qid, lease_owner in c.execute(
                    "SELECT r.queue_id, m.lease_owner"
                    " FROM recipients r INDEXED BY recipients_due"
                    " JOIN messages m ON m.queue_id = r.queue_id"
                    " WHERE r.state = 'queued' AND r.next_attempt_at <= ?"
                    "   AND (m.lease_owner IS NULL OR m.lease_expires <= ?)"
                    " ORDER BY r.next_attempt_at, r.queue_id LIMIT ?",
                    (now, now, limit * 4)):
                if qid not in found:
                    found[qid] = lease_owner
                    if len(found) == limit:
                        break
            if not found:
                return []
            ids = list(found)
            rows = list(found.items())
            c.executemany("UPDATE messages SET lease_owner = ?, lease_expires = ?"
                          " WHERE queue_id = ?",
                          [(owner, now + lease_seconds, q) for q in ids])
            out = self._load(c, ids, lambda r: r.state is RecipientState.QUEUED
                             and r.next_attempt_at <= now, bodies=True)
            # A lease still held (expired) means an earlier claim never recorded its
            # results: that attempt may have delivered (agents then check, idempotently).
            reclaimed = {qid for qid, lease_owner in rows if lease_owner is not None}
            for m in out:
                m.reclaimed = m.queue_id in reclaimed
            return out
        # A lease need not survive a crash (recover() expires them all): no flush.
        return await self._write(fn, durable=False)

    async def record_results(self, queue_id: str, results: Sequence[DeliveryResult],
                             now: float, next_attempt_at: float | None,
                             dsn: Mapping[int, str] | None = None) -> None:
        """See ``base.Store``. ``next_attempt_at=None`` with temporary failures means
        "due again at ``now``". Results for recipients already final are added to the
        history only. An unknown message or recipient id raises NotFoundError.
        ``dsn`` maps recipient ids to the DSN action now owed for them (set in this
        same transaction; "delayed" also sets ``dsn_delayed``)."""
        retry_at = now if next_attempt_at is None else next_attempt_at
        owed = dict(dsn or {})
        check_dsn_actions(owed.values())

        def fn(c: sqlite3.Connection, remove: list[str]) -> None:
            # One read for the message and all its recipients, then only the writes: the
            # completion test is _complete_if_done's, on the states in hand (is_complete).
            rows = c.execute("SELECT m.blob, r.id, r.state, r.dsn_pending FROM messages m"
                             " JOIN recipients r ON r.queue_id = m.queue_id"
                             " WHERE m.queue_id = ?", (queue_id,)).fetchall()
            if rows:
                blob = rows[0][0]
            else:           # no such message (or, in theory, one without recipients)
                row = c.execute("SELECT blob FROM messages WHERE queue_id = ?",
                                (queue_id,)).fetchone()
                if row is None:
                    raise NotFoundError(f"no message {queue_id}")
                blob = row[0]
            states = {r[1]: r[2] for r in rows}
            pending = {r[1]: r[3] for r in rows}
            history = []
            for res in results:
                state = states.get(res.recipient_id)
                if state is None:
                    raise NotFoundError(f"recipient {res.recipient_id} is not part of {queue_id}")
                history.append((res.recipient_id, now, int(res.ok), int(res.permanent), res.reply,
                                res.remote_mta))
                if RecipientState(state) in FINAL_STATES:
                    continue
                if res.ok or res.permanent:
                    new = RecipientState.DELIVERED if res.ok else RecipientState.FAILED
                    c.execute("UPDATE recipients SET state = ?, attempts = attempts + 1,"
                              " last_attempt_at = ?, last_reply = ?, final_at = ?,"
                              " remote_mta = ?, status = ? WHERE id = ?",
                              (new.value, now, res.reply, now, res.remote_mta, res.status,
                               res.recipient_id))
                    states[res.recipient_id] = new.value
                else:
                    c.execute("UPDATE recipients SET attempts = attempts + 1,"
                              " last_attempt_at = ?, last_reply = ?, next_attempt_at = ?,"
                              " remote_mta = ?, status = ? WHERE id = ?",
                              (now, res.reply, retry_at, res.remote_mta, res.status,
                               res.recipient_id))
                action = owed.get(res.recipient_id)
                if action is not None:
                    c.execute("UPDATE recipients SET dsn_pending = ?,"
                              " dsn_delayed = MAX(dsn_delayed, ?) WHERE id = ?",
                              (action, int(action == "delayed"), res.recipient_id))
                    pending[res.recipient_id] = action
            c.executemany("INSERT INTO attempts (recipient_id, at, ok, permanent, reply,"
                          " remote_mta) VALUES (?, ?, ?, ?, ?, ?)", history)
            # The lease given back and, when complete, completed_at: one statement.
            done = is_complete(states, pending)
            c.execute("UPDATE messages SET lease_owner = NULL, lease_expires = NULL,"
                      " completed_at = CASE WHEN ? THEN COALESCE(completed_at, ?)"
                      " ELSE completed_at END WHERE queue_id = ?", (done, now, queue_id))
            if done:
                self._drop_body(c, queue_id, blob, remove)
        await self._write(fn)

    @staticmethod
    def _drop_body(c: sqlite3.Connection, queue_id: str, blob: str,
                   remove: list[str]) -> None:
        """The message is complete: its inline body row goes in this transaction, a body
        file after the commit (``remove``)."""
        if blob:
            remove.append(blob)
        else:
            c.execute("DELETE FROM bodies WHERE queue_id = ?", (queue_id,))

    @staticmethod
    def _complete_if_done(c: sqlite3.Connection, queue_id: str, now: float) -> bool:
        """Mark the message complete when every recipient is final and no DSN is owed
        (the DSN needs the body); True if it is complete now (its blob may go)."""
        open_rows = c.execute(
            f"SELECT COUNT(*) FROM recipients WHERE queue_id = ?"
            f" AND (state NOT IN {_FINAL_SQL} OR dsn_pending IS NOT NULL)",
            (queue_id,)).fetchone()[0]
        if open_rows:
            return False
        c.execute("UPDATE messages SET completed_at = COALESCE(completed_at, ?)"
                  " WHERE queue_id = ?", (now, queue_id))
        return True

    # ------------------------------------------------------------------ DSN bookkeeping
    async def pending_dsns(self, limit: int = 100) -> list[QueuedMessage]:
        """See ``base.Store``: messages owing a DSN, with only the owed recipients."""
        def fn(c: sqlite3.Connection) -> list[QueuedMessage]:
            ids = [r[0] for r in c.execute(
                "SELECT DISTINCT queue_id FROM recipients WHERE dsn_pending IS NOT NULL"
                " ORDER BY queue_id LIMIT ?", (limit,))]
            return self._load(c, ids, lambda r: r.dsn_pending is not None, bodies=True)
        return await self._read(fn)

    def _settle_dsn(self, c: sqlite3.Connection, source_queue_id: str,
                    covered: Mapping[int, str], dsn_queue_id: str | None, now: float,
                    remove: list[str]) -> None:
        """Clear the owed flags of ``covered`` (all or nothing: _StaleDsn if any flag
        changed since it was read), then complete the source message if it is done."""
        remove.clear()
        for rid, action in covered.items():
            n = c.execute("UPDATE recipients SET dsn_pending = NULL,"
                          " dsn_sent = CASE WHEN ? IS NULL THEN dsn_sent ELSE ? END,"
                          " dsn_queue_id = COALESCE(?, dsn_queue_id)"
                          " WHERE id = ? AND queue_id = ? AND dsn_pending = ?",
                          (dsn_queue_id, action, dsn_queue_id, rid, source_queue_id,
                           action)).rowcount
            if n != 1:
                raise _StaleDsn(f"DSN flag of recipient {rid} of {source_queue_id} changed")
        if self._complete_if_done(c, source_queue_id, now):
            row = c.execute("SELECT blob FROM messages WHERE queue_id = ?",
                            (source_queue_id,)).fetchone()
            if row is not None:
                self._drop_body(c, source_queue_id, row[0], remove)

    async def commit_dsn(self, envelope: Envelope, blob: FileBlobWriter,  # type: ignore[override]
                         source_queue_id: str, covered: Mapping[int, str], now: float
                         ) -> str | None:
        """See ``base.Store``. The DSN's rows and the cleared flags are one transaction
        (the group commit's): exactly once. Returns None (blob discarded) when another
        worker already settled these flags."""
        if not covered:
            raise ValueError("a DSN must cover at least one recipient")
        remove: list[str] = []
        state = {"stale": False}

        def after(c: sqlite3.Connection, dsn_queue_id: str) -> None:
            try:
                self._settle_dsn(c, source_queue_id, covered, dsn_queue_id, now, remove)
            except _StaleDsn:
                state["stale"] = True
                raise
        if not envelope.recipients:
            raise ValueError("a message needs at least one recipient")
        if not isinstance(blob, FileBlobWriter) or blob.owner is not self.blobs:
            raise ValueError("blob was not created by this store")
        if self._writer is None:
            raise StoreError("store is not open")
        blob.seal()
        try:
            fut = self._writer.submit_commit((envelope, blob, after),
                                             asyncio.get_running_loop())
        except BaseException:
            blob.discard()
            raise
        try:
            qid = await fut
        except StoreError:
            if state["stale"]:
                log.info("DSN for %s already sent by another worker", source_queue_id)
                return None
            raise
        for rel in remove:
            self.blobs.remove(rel)
        return qid

    async def clear_dsn(self, source_queue_id: str, covered: Mapping[int, str],
                        now: float) -> bool:
        """See ``base.Store``: settle owed flags without sending (False if stale)."""
        def fn(c: sqlite3.Connection, remove: list[str]) -> bool:
            self._settle_dsn(c, source_queue_id, covered, None, now, remove)
            return True
        try:
            return await self._write(fn)
        except _StaleDsn:        # raised inside the transaction: rolled back, nothing changed
            return False

    async def next_due_time(self) -> float | None:
        """Earliest time a QUEUED recipient becomes claimable (its lease considered)."""
        def fn(c: sqlite3.Connection) -> float | None:
            return c.execute(
                "SELECT MIN(MAX(r.next_attempt_at, COALESCE(m.lease_expires, 0)))"
                " FROM recipients r JOIN messages m ON m.queue_id = r.queue_id"
                " WHERE r.state = 'queued'").fetchone()[0]
        return await self._read(fn)

    def read_body(self, message: QueuedMessage) -> bytes:
        """The body (blocking: a file read, or a query on a connection of its own)."""
        if message.inline_body is not None:
            return message.inline_body
        if not message.blob_path:
            conn = self._connect()
            try:
                return self._inline_body(conn, message.queue_id)
            finally:
                conn.close()
        try:
            with open(message.blob_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFoundError(f"no body for {message.queue_id}") from None
        except OSError as exc:
            raise StoreError(f"cannot read body of {message.queue_id}: {exc.strerror}") from exc

    async def fetch_body(self, message: QueuedMessage) -> MessageBody:
        """See ``base.Store``: an inline body in memory (read with the claim, or now), a
        body file as its path (agents read or stream it)."""
        if message.inline_body is not None:
            return MessageBody.in_memory(message.inline_body)
        if message.blob_path:
            if not os.path.exists(message.blob_path):
                raise NotFoundError(f"no body for {message.queue_id}")
            return MessageBody.in_file(message.blob_path)
        data = await self._read(lambda c: self._inline_body(c, message.queue_id))
        return MessageBody.in_memory(data)

    @staticmethod
    def _inline_body(c: sqlite3.Connection, queue_id: str) -> bytes:
        row = c.execute("SELECT data FROM bodies WHERE queue_id = ?", (queue_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no body for {queue_id}")
        return row[0]

    async def list_messages(self, state: RecipientState | None = None, limit: int = 1000
                            ) -> list[QueuedMessage]:
        """``state=None``: messages still in the queue (some recipient not final), oldest
        first. Otherwise: messages with at least one recipient in ``state`` (DELIVERED
        and FAILED list retained history). Each lists all its recipients."""
        def fn(c: sqlite3.Connection) -> list[QueuedMessage]:
            if state is None:
                ids = [r[0] for r in c.execute(
                    "SELECT queue_id FROM messages WHERE completed_at IS NULL"
                    " ORDER BY queue_id LIMIT ?", (limit,))]
            else:
                ids = [r[0] for r in c.execute(
                    "SELECT DISTINCT queue_id FROM recipients WHERE state = ?"
                    " ORDER BY queue_id LIMIT ?", (RecipientState(state).value, limit))]
            return self._load(c, ids)
        return await self._read(fn)

    async def get_message(self, queue_id: str) -> QueuedMessage | None:
        found = await self._read(lambda c: self._load(c, [queue_id]))
        return found[0] if found else None

    async def hold(self, queue_id: str) -> int:
        return await self._write(lambda c, rm: c.execute(
            "UPDATE recipients SET state = 'held' WHERE queue_id = ? AND state = 'queued'",
            (queue_id,)).rowcount)

    async def release(self, queue_id: str, now: float | None = None) -> int:
        at = time.time() if now is None else now

        def fn(c: sqlite3.Connection, remove: list[str]) -> int:
            n = c.execute("UPDATE recipients SET state = 'queued',"
                          " next_attempt_at = MIN(next_attempt_at, ?)"
                          " WHERE queue_id = ? AND state = 'held'", (at, queue_id)).rowcount
            if n:   # nothing held any more: no longer in quarantine (as queue_release)
                c.execute("UPDATE messages SET quarantine = '' WHERE queue_id = ?"
                          " AND quarantine != ''", (queue_id,))
            return n
        return await self._write(fn)

    async def delete_message(self, queue_id: str) -> bool:
        def fn(c: sqlite3.Connection, remove: list[str]) -> bool:
            row = c.execute("SELECT blob FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
            if row is None:
                return False
            c.execute("DELETE FROM messages WHERE queue_id = ?", (queue_id,))
            if row[0]:                  # an inline body went with the row (cascade)
                remove.append(row[0])
            return True
        return await self._write(fn)

    async def list_attempts(self, queue_id: str) -> list[AttemptRecord]:
        def fn(c: sqlite3.Connection) -> list[AttemptRecord]:
            return [AttemptRecord(recipient_id=r[0], address=r[1], at=r[2], ok=bool(r[3]),
                                  permanent=bool(r[4]), reply=r[5], remote_mta=r[6])
                    for r in c.execute(
                        "SELECT a.recipient_id, r.address, a.at, a.ok, a.permanent, a.reply,"
                        " a.remote_mta"
                        " FROM attempts a JOIN recipients r ON r.id = a.recipient_id"
                        " WHERE r.queue_id = ? ORDER BY a.at, a.id", (queue_id,))]
        return await self._read(fn)

    # ---- operator queue control (schema 7; admin/queue_ops.py, rules in base.QueueFilter)
    @staticmethod
    def _rcpt_conds(flt: QueueFilter, col: str = "r.") -> tuple[str, list[Any]]:
        """SQL for ``QueueFilter.recipient_matches`` over the recipient columns ``col*``."""
        conds: list[str] = []
        args: list[Any] = []
        for suffix in ([flt.recipient] if flt.recipient and flt.recipient.startswith("@")
                       else []) + (["@" + flt.domain] if flt.domain else []):
            conds.append(f"substr(lower({col}address), -?) = ?")
            args += [len(suffix), suffix]
        if flt.recipient is not None and not flt.recipient.startswith("@"):
            conds.append(f"lower({col}address) = ?")
            args.append(flt.recipient)
        if flt.error is not None:
            conds.append(f"instr(lower({col}last_reply), ?) > 0")
            args.append(flt.error.lower())
        return " AND ".join(conds) or "1", args

    def _select_ids(self, c: sqlite3.Connection, flt: QueueFilter,
                    limit: int | None = None) -> list[str]:
        conds: list[str] = []
        args: list[Any] = []
        if flt.queue_ids:
            conds.append("m.queue_id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(flt.queue_ids)))
        elif flt.state is None:
            conds.append("m.completed_at IS NULL")
        if flt.quarantined:
            conds.append("m.quarantine != ''")
        if flt.sender is not None:
            sender = flt.sender.lower()
            if sender.startswith("@"):
                conds.append("substr(lower(m.sender), -?) = ?")
                args += [len(sender), sender]
            else:
                conds.append("lower(m.sender) = ?")
                args.append(sender)
        if flt.received_before is not None:
            conds.append("m.received_at <= ?")
            args.append(flt.received_before)
        if flt.received_after is not None:
            conds.append("m.received_at >= ?")
            args.append(flt.received_after)
        rsql, rargs = self._rcpt_conds(flt)
        if flt.state is not None:
            rsql += " AND r.state = ?"
            rargs.append(RecipientState(flt.state).value)
        conds.append(f"EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.queue_id"
                     f" AND {rsql})")
        args += rargs
        sql = f"SELECT m.queue_id FROM messages m WHERE {' AND '.join(conds)} ORDER BY m.queue_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [r[0] for r in c.execute(sql, args)]

    @staticmethod
    def _write_audit(c: sqlite3.Connection, audit: AuditRecord | None,
                     ids: Iterable[str] | None = None) -> None:
        if audit is None:
            return
        c.execute("INSERT INTO audit (at, user, action, detail, ids) VALUES (?, ?, ?, ?, ?)",
                  (audit.at, audit.user, audit.action, audit.detail,
                   json.dumps(list(audit.ids if ids is None else ids))))

    async def queue_select(self, flt: QueueFilter, limit: int | None = 1000
                           ) -> list[QueuedMessage]:
        return await self._read(lambda c: self._load(c, self._select_ids(c, flt, limit)))

    async def _queue_change(self, flt: QueueFilter, from_state: str, set_sql: str,
                            set_args: Sequence[Any], audit: AuditRecord | None,
                            release: bool = False) -> dict[str, int]:
        """Matched recipients in ``from_state`` of the matching messages get ``set_sql``;
        ``release``: a changed message left without HELD recipients loses its quarantine
        mark."""
        def fn(c: sqlite3.Connection, remove: list[str]) -> dict[str, int]:
            counts = dict.fromkeys(self._select_ids(c, flt), 0)
            rsql, rargs = self._rcpt_conds(flt, "")
            ids = json.dumps(list(counts))
            for (qid,) in c.execute(
                    f"UPDATE recipients SET {set_sql} WHERE state = ? AND {rsql}"
                    " AND queue_id IN (SELECT value FROM json_each(?)) RETURNING queue_id",
                    [*set_args, from_state, *rargs, ids]).fetchall():
                counts[qid] += 1
            changed = [q for q, n in counts.items() if n]
            if release and changed:
                c.execute("UPDATE messages SET quarantine = '' WHERE quarantine != ''"
                          " AND queue_id IN (SELECT value FROM json_each(?)) AND NOT EXISTS"
                          " (SELECT 1 FROM recipients r WHERE r.queue_id = messages.queue_id"
                          " AND r.state = 'held')", (json.dumps(changed),))
            self._write_audit(c, audit, changed)
            return counts
        return await self._write(fn)

    async def queue_hold(self, flt: QueueFilter, *, audit: AuditRecord | None = None
                         ) -> dict[str, int]:
        return await self._queue_change(flt, "queued", "state = 'held'", (), audit)

    async def queue_release(self, flt: QueueFilter, now: float, *,
                            audit: AuditRecord | None = None) -> dict[str, int]:
        return await self._queue_change(
            flt, "held", "state = 'queued', next_attempt_at = MIN(next_attempt_at, ?)",
            (now,), audit, release=True)

    async def queue_retry(self, flt: QueueFilter, now: float, *,
                          audit: AuditRecord | None = None) -> dict[str, int]:
        return await self._queue_change(flt, "queued", "next_attempt_at = ?", (now,), audit)

    async def queue_delete(self, flt: QueueFilter, *, audit: AuditRecord | None = None
                           ) -> list[str]:
        def fn(c: sqlite3.Connection, remove: list[str]) -> list[str]:
            ids = self._select_ids(c, flt)
            for qid in ids:
                row = c.execute("DELETE FROM messages WHERE queue_id = ? RETURNING blob",
                                (qid,)).fetchone()
                if row is not None and row[0]:     # an inline body: gone by cascade
                    remove.append(row[0])
            self._write_audit(c, audit, ids)
            return ids
        return await self._write(fn)

    async def queue_bounce(self, failures: Mapping[str, Mapping[int, str | None]],
                           reply: str, status: str, now: float, *,
                           audit: AuditRecord | None = None
                           ) -> tuple[dict[str, int], list[str]]:
        for owed in failures.values():
            check_dsn_actions(owed.values())

        def fn(c: sqlite3.Connection, remove: list[str]
               ) -> tuple[dict[str, int], list[str]]:
            done: dict[str, int] = {}
            skipped: list[str] = []
            for qid, owed in failures.items():
                row = c.execute("SELECT blob, lease_owner, lease_expires FROM messages"
                                " WHERE queue_id = ?", (qid,)).fetchone()
                if row is None:
                    continue
                if row[1] is not None and (row[2] or 0) > now:
                    skipped.append(qid)        # a delivery is in progress: its result wins
                    continue
                n = 0
                for rid, action in owed.items():
                    n += c.execute(
                        "UPDATE recipients SET state = 'failed', last_reply = ?, status = ?,"
                        " final_at = ?, remote_mta = '', dsn_pending = ?"
                        " WHERE id = ? AND queue_id = ? AND state IN ('queued', 'held')",
                        (reply, status, now, action, rid, qid)).rowcount
                done[qid] = n
                if n and self._complete_if_done(c, qid, now):
                    self._drop_body(c, qid, row[0], remove)
            self._write_audit(c, audit, [q for q, n in done.items() if n])
            return done, skipped
        return await self._write(fn)

    async def add_audit(self, record: AuditRecord) -> None:
        await self._write(lambda c, rm: self._write_audit(c, record))

    async def list_audit(self, limit: int = 100) -> list[AuditRecord]:
        rows = await self._read(lambda c: c.execute(
            "SELECT id, at, user, action, detail, ids FROM audit ORDER BY id DESC LIMIT ?",
            (limit,)).fetchall())
        return [AuditRecord(at=r[1], user=r[2], action=r[3], detail=r[4],
                            ids=tuple(json.loads(r[5])), id=r[0]) for r in reversed(rows)]

    # ------------------------------------------------------------------ directory
    @staticmethod
    def _bump(c: sqlite3.Connection) -> None:
        c.execute("UPDATE meta SET value = value + 1 WHERE key = 'directory_version'")

    @staticmethod
    def _require_domain(c: sqlite3.Connection, domain: str) -> None:
        if c.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is None:
            raise NotFoundError(f"unknown domain {domain}")

    async def add_domain(self, domain: str) -> None:
        d = _norm(domain)
        if not d or "@" in d:
            raise ValueError(f"not a domain: {domain!r}")

        def fn(c: sqlite3.Connection, rm: list[str]) -> None:
            try:
                c.execute("INSERT INTO domains (name, created_at) VALUES (?, ?)", (d, time.time()))
            except sqlite3.IntegrityError:
                raise DuplicateError(f"domain {d} exists") from None
            self._bump(c)
        await self._write(fn)

    async def remove_domain(self, domain: str) -> bool:
        """Remove an empty domain; False if unknown. A domain that still has mailboxes or
        aliases is refused with StoreError (remove those first: nothing disappears as a
        side effect)."""
        d = _norm(domain)

        def fn(c: sqlite3.Connection, rm: list[str]) -> bool:
            n_mb = c.execute("SELECT COUNT(*) FROM mailboxes WHERE domain = ?", (d,)).fetchone()[0]
            n_al = c.execute("SELECT COUNT(*) FROM aliases WHERE domain = ?", (d,)).fetchone()[0]
            if n_mb or n_al:
                raise StoreError(f"domain {d} still has {n_mb} mailbox(es) and {n_al} "
                                 "alias(es); remove them first")
            if c.execute("DELETE FROM domains WHERE name = ?", (d,)).rowcount == 0:
                return False
            self._bump(c)
            return True
        return await self._write(fn)

    async def list_domains(self) -> list[str]:
        return await self._read(lambda c: [r[0] for r in c.execute(
            "SELECT name FROM domains ORDER BY name")])

    async def add_mailbox(self, address: str, password_hash: str, quota_bytes: int = 0,
                          scram_sha256: str = "") -> None:
        a = _norm(address)
        d = _domain_of(a)
        if a.startswith("@"):
            raise ValueError(f"not a mailbox address: {address!r}")

        def fn(c: sqlite3.Connection, rm: list[str]) -> None:
            self._require_domain(c, d)
            try:
                c.execute("INSERT INTO mailboxes (address, domain, password_hash, quota_bytes,"
                          " created_at, scram_sha256) VALUES (?, ?, ?, ?, ?, ?)",
                          (a, d, password_hash, int(quota_bytes), time.time(), scram_sha256))
            except sqlite3.IntegrityError:
                raise DuplicateError(f"mailbox {a} exists") from None
            self._bump(c)
        await self._write(fn)

    async def set_password(self, address: str, password_hash: str,
                           scram_sha256: str = "") -> bool:
        """Replace the scrypt hash and the SCRAM-SHA-256 verifier together ("" = none)."""
        a = _norm(address)

        def fn(c: sqlite3.Connection, rm: list[str]) -> bool:
            n = c.execute("UPDATE mailboxes SET password_hash = ?, scram_sha256 = ?"
                          " WHERE address = ?", (password_hash, scram_sha256, a)).rowcount
            if n:
                self._bump(c)
            return bool(n)
        return await self._write(fn)

    async def set_quota(self, address: str, quota_bytes: int) -> bool:
        """Extra (not in ``base.Store``): change a mailbox quota; False if unknown."""
        a = _norm(address)

        def fn(c: sqlite3.Connection, rm: list[str]) -> bool:
            n = c.execute("UPDATE mailboxes SET quota_bytes = ? WHERE address = ?",
                          (int(quota_bytes), a)).rowcount
            if n:
                self._bump(c)
            return bool(n)
        return await self._write(fn)

    async def remove_mailbox(self, address: str) -> bool:
        a = _norm(address)

        def fn(c: sqlite3.Connection, rm: list[str]) -> bool:
            n = c.execute("DELETE FROM mailboxes WHERE address = ?", (a,)).rowcount
            if n:
                self._bump(c)
            return bool(n)
        return await self._write(fn)

    @staticmethod
    def _mailbox(row: tuple) -> Mailbox:
        return Mailbox(address=row[0], password_hash=row[1], quota_bytes=row[2],
                       created_at=row[3])

    async def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]:
        def fn(c: sqlite3.Connection) -> list[Mailbox]:
            sql = "SELECT address, password_hash, quota_bytes, created_at FROM mailboxes"
            if domain is None:
                rows = c.execute(sql + " ORDER BY address")
            else:
                rows = c.execute(sql + " WHERE domain = ? ORDER BY address", (_norm(domain),))
            return [self._mailbox(r) for r in rows]
        return await self._read(fn)

    async def get_mailbox(self, address: str) -> Mailbox | None:
        def fn(c: sqlite3.Connection) -> Mailbox | None:
            row = c.execute("SELECT address, password_hash, quota_bytes, created_at"
                            " FROM mailboxes WHERE address = ?", (_norm(address),)).fetchone()
            return None if row is None else self._mailbox(row)
        return await self._read(fn)

    async def add_alias(self, source: str, targets: Sequence[str]) -> None:
        """``source`` is "user@domain" or "@domain" (catch-all); the domain must exist
        (NotFoundError). Targets are lower-cased and kept in the given order."""
        s = _norm(source)
        d = _domain_of(s)
        if isinstance(targets, str):
            raise ValueError("targets must be a sequence of addresses, not a string")
        ts = [_norm(t) for t in targets]
        if not ts or not all(ts):
            raise ValueError("an alias needs at least one non-empty target")

        def fn(c: sqlite3.Connection, rm: list[str]) -> None:
            self._require_domain(c, d)
            try:
                c.execute("INSERT INTO aliases (source, domain, targets, created_at)"
                          " VALUES (?, ?, ?, ?)", (s, d, json.dumps(ts), time.time()))
            except sqlite3.IntegrityError:
                raise DuplicateError(f"alias {s} exists") from None
            self._bump(c)
        await self._write(fn)

    async def remove_alias(self, source: str) -> bool:
        s = _norm(source)

        def fn(c: sqlite3.Connection, rm: list[str]) -> bool:
            n = c.execute("DELETE FROM aliases WHERE source = ?", (s,)).rowcount
            if n:
                self._bump(c)
            return bool(n)
        return await self._write(fn)

    async def list_aliases(self) -> list[Alias]:
        return await self._read(lambda c: [
            Alias(source=r[0], targets=tuple(json.loads(r[1])))
            for r in c.execute("SELECT source, targets FROM aliases ORDER BY source")])

    async def directory_snapshot(self) -> DirectorySnapshot:
        def fn(c: sqlite3.Connection) -> DirectorySnapshot:
            version = c.execute(
                "SELECT value FROM meta WHERE key = 'directory_version'").fetchone()[0]
            domains = frozenset(r[0] for r in c.execute("SELECT name FROM domains"))
            quotas = dict(c.execute("SELECT address, quota_bytes FROM mailboxes"))
            aliases = {r[0]: tuple(json.loads(r[1]))
                       for r in c.execute("SELECT source, targets FROM aliases")}
            return DirectorySnapshot(version=version, domains=domains,
                                     mailboxes=frozenset(quotas), aliases=aliases,
                                     quotas=quotas)
        return await self._read(fn)

    async def directory_version(self) -> int:
        return await self._read(lambda c: c.execute(
            "SELECT value FROM meta WHERE key = 'directory_version'").fetchone()[0])

    # ------------------------------------------------------------------ submission
    async def get_scram_verifier(self, address: str) -> str:
        """The mailbox's SCRAM-SHA-256 verifier, "" if none or no such mailbox."""
        row = await self._read(lambda c: c.execute(
            "SELECT scram_sha256 FROM mailboxes WHERE address = ?", (_norm(address),)
        ).fetchone())
        return row[0] if row else ""

    async def add_send_as(self, login: str, address: str) -> None:
        """Grant ``login`` (a mailbox) the sender ``address`` ("user@domain" or
        "*@domain"). NotFoundError if the mailbox is unknown, DuplicateError if granted."""
        lg, ad = _norm(login), _norm(address)

        def fn(c: sqlite3.Connection, rm: list[str]) -> None:
            if c.execute("SELECT 1 FROM mailboxes WHERE address = ?", (lg,)).fetchone() is None:
                raise NotFoundError(f"unknown mailbox {lg}")
            try:
                c.execute("INSERT INTO send_as (login, address) VALUES (?, ?)", (lg, ad))
            except sqlite3.IntegrityError:
                raise DuplicateError(f"{lg} may already send as {ad}") from None
        await self._write(fn)

    async def remove_send_as(self, login: str, address: str) -> bool:
        lg, ad = _norm(login), _norm(address)
        return await self._write(lambda c, rm: c.execute(
            "DELETE FROM send_as WHERE login = ? AND address = ?", (lg, ad)).rowcount > 0)

    # ------------------------------------------------------------------ message trace

    async def record_trace(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return

        def fn(c: sqlite3.Connection, rm: list[str]) -> None:
            # Encoded here, on the writer thread, not on the event loop.
            rows = [(e.at, e.kind, e.session_id, e.queue_id, e.message_id, e.sender.lower(),
                     (" " + " ".join(r.lower() for r in e.recipients) + " ")
                     if e.recipients else "", e.client_ip,
                     json.dumps(e.data, separators=(",", ":"), default=str))
                    for e in events]
            c.executemany("INSERT INTO trace_events (at, kind, session_id, queue_id, "
                          "message_id, sender, recipients, client_ip, data) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        await self._write(fn, durable=False)

    async def query_trace(self, *, queue_ids: Sequence[str] = (), message_id: str = "",
                          address: str = "", client_ip: str = "",
                          since: float | None = None,
                          until: float | None = None, limit: int = 1000
                          ) -> list[TraceEvent]:
        terms: list[str] = []
        args: list[Any] = []
        if queue_ids:
            terms.append(f"queue_id IN ({','.join('?' * len(queue_ids))})")
            args.extend(queue_ids)
        if message_id:
            terms.append("message_id = ?")
            args.append(message_id)
        if address:
            addr = address.lower()
            terms.append("(sender = ? OR recipients LIKE ? ESCAPE '\\')")
            args.extend([addr, "% " + addr.replace("\\", "\\\\").replace("%", "\\%")
                         .replace("_", "\\_") + " %"])
        if client_ip:
            terms.append("client_ip = ?")
            args.append(client_ip)
        where = " OR ".join(terms) if terms else "1"
        window = ""
        if since is not None:
            window += " AND at >= ?"
            args.append(since)
        if until is not None:
            window += " AND at <= ?"
            args.append(until)
        sql = (f"SELECT at, kind, session_id, queue_id, message_id, sender, recipients, "
               f"client_ip, data FROM trace_events WHERE ({where}){window} "
               f"ORDER BY at, id LIMIT ?")
        args.append(limit)

        def fn(c: sqlite3.Connection) -> list[TraceEvent]:
            return [TraceEvent(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6].split()), r[7],
                               json.loads(r[8])) for r in c.execute(sql, args)]
        return await self._read(fn)

    async def prune_trace(self, before: float) -> int:
        return await self._write(lambda c, rm: c.execute(
            "DELETE FROM trace_events WHERE at < ?", (before,)).rowcount, durable=False)

    async def maintenance_problems(self) -> list[str]:
        """See ``base.Store``: SQLite needs no upkeep of its own (deleted rows' pages are
        reused; statistics are not used to choose the queue's indexes)."""
        return []

    async def prune_completed(self, before: float, batch: int = 1000) -> int:
        """See ``base.Store``. Queue ids sort by arrival time, so the candidates are a range
        of the primary key (``queue_id < lower_bound(before)``), not a scan of the whole
        history; recipients and attempts go by ``ON DELETE CASCADE``. Not flushed: a
        deletion lost to a crash is simply done again at the next pass."""
        bound = queueid_lower_bound(before)
        total = 0
        while True:
            n = await self._write(lambda c, rm: c.execute(
                "DELETE FROM messages WHERE queue_id IN (SELECT queue_id FROM messages"
                " WHERE queue_id < ? AND completed_at IS NOT NULL AND completed_at < ?"
                " LIMIT ?)", (bound, before, batch)).rowcount, durable=False)
            total += n
            if n < batch:
                return total

    # ------------------------------------------------------------------ DMARC reports

    async def record_dmarc(self, rows: Sequence[tuple[float, str, dict]]) -> None:
        data = [(at, domain.lower(), json.dumps(d, separators=(",", ":"), default=str))
                for at, domain, d in rows]
        if data:
            await self._write(lambda c, rm: c.executemany(
                "INSERT INTO dmarc_results (at, policy_domain, data) VALUES (?, ?, ?)", data),
                durable=False)

    async def dmarc_results(self, before: float) -> list[tuple[int, float, str, dict]]:
        return await self._read(lambda c: [
            (r[0], r[1], r[2], json.loads(r[3])) for r in c.execute(
                "SELECT id, at, policy_domain, data FROM dmarc_results WHERE at < ? "
                "ORDER BY id", (before,))])

    async def delete_dmarc_results(self, ids: Sequence[int]) -> int:
        ids = list(ids)

        def fn(c: sqlite3.Connection, rm: list[str]) -> int:
            n = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                n += c.execute(f"DELETE FROM dmarc_results WHERE id IN "
                               f"({','.join('?' * len(chunk))})", chunk).rowcount
            return n
        return await self._write(fn)

    # ------------------------------------------------------------------ DKIM keys

    async def add_dkim_key(self, key: DkimKey) -> None:
        dom, sel = _norm(key.domain), key.selector.lower()

        def fn(c: sqlite3.Connection, rm: list[str]) -> None:
            if key.active:
                c.execute("UPDATE dkim_keys SET active = 0 WHERE domain = ? AND algorithm = ?",
                          (dom, key.algorithm))
            try:
                c.execute("INSERT INTO dkim_keys (domain, selector, algorithm, private_key, "
                          "created_at, active) VALUES (?, ?, ?, ?, ?, ?)",
                          (dom, sel, key.algorithm, key.private_key, key.created_at,
                           int(key.active)))
            except sqlite3.IntegrityError:
                raise DuplicateError(f"DKIM selector {sel} exists for {dom}") from None
        await self._write(fn)

    async def list_dkim_keys(self, domain: str | None = None) -> list[DkimKey]:
        def fn(c: sqlite3.Connection) -> list[DkimKey]:
            sql = ("SELECT domain, selector, algorithm, private_key, created_at, active "
                   "FROM dkim_keys")
            args: tuple = ()
            if domain is not None:
                sql += " WHERE domain = ?"
                args = (_norm(domain),)
            rows = c.execute(sql + " ORDER BY domain, created_at, selector", args).fetchall()
            return [DkimKey(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]
        return await self._read(fn)

    async def activate_dkim_key(self, domain: str, selector: str) -> bool:
        dom, sel = _norm(domain), selector.lower()

        def fn(c: sqlite3.Connection, rm: list[str]) -> bool:
            row = c.execute("SELECT algorithm FROM dkim_keys WHERE domain = ? AND selector = ?",
                            (dom, sel)).fetchone()
            if row is None:
                return False
            c.execute("UPDATE dkim_keys SET active = (selector = ?) "
                      "WHERE domain = ? AND algorithm = ?", (sel, dom, row[0]))
            return True
        return await self._write(fn)

    async def remove_dkim_key(self, domain: str, selector: str) -> bool:
        dom, sel = _norm(domain), selector.lower()
        return await self._write(lambda c, rm: c.execute(
            "DELETE FROM dkim_keys WHERE domain = ? AND selector = ?", (dom, sel)).rowcount > 0)

    async def list_send_as(self, login: str) -> list[str]:
        """The addresses granted to ``login``, sorted."""
        return await self._read(lambda c: [r[0] for r in c.execute(
            "SELECT address FROM send_as WHERE login = ? ORDER BY address", (_norm(login),))])

