"""SQLite-backend specifics: pragmas, schema versioning, several processes, kill -9."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest
from mailwright.store import migrations, queueid
from mailwright.store.blobs import BlobDir
from mailwright.store.sqlite import SQLiteStore

# A child process that commits messages with several concurrent sessions and prints
# "<n> <queue id>" only after commit_message returned (i.e. after the 250 could be sent).
CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from mailwright.queue.model import Envelope, RecipientRequest
    from mailwright.store.sqlite import SQLiteStore

    def body(tag, n):
        return (f"Subject: {tag} {n}\\r\\n\\r\\n".encode()
                + bytes(range(256)) * (n % 40 + 1) + b"\\r\\n")

    async def main(db, blobs, tag, count, sessions, method, inline):
        s = SQLiteStore(db, blobs, sync_method=method, inline_body_max=inline)
        await s.open()
        counter = iter(range(count))

        async def session():
            for n in counter:
                b = s.new_blob()
                data = body(tag, n)
                for i in range(0, len(data), 700):
                    b.write(data[i:i + 700])
                qid = await s.commit_message(
                    Envelope(f"{tag}@example.org", [RecipientRequest("x@example.net")],
                             time.time()), b)
                sys.stdout.write(f"{n} {qid}\\n")
                sys.stdout.flush()
        await asyncio.gather(*(session() for _ in range(sessions)))
        await s.close()

    db, blobs, tag, count, sessions, method, inline = sys.argv[1:8]
    asyncio.run(main(db, blobs, tag, int(count), int(sessions), method, int(inline)))
""")


async def commit(store, body: bytes) -> str:
    blob = store.new_blob()
    blob.write(body)
    return await store.commit_message(
        Envelope("a@example.org", [RecipientRequest("b@example.net")], 1_700_000_000.0), blob)


def child_body(tag: str, n: int) -> bytes:
    return (f"Subject: {tag} {n}\r\n\r\n".encode() + bytes(range(256)) * (n % 40 + 1) + b"\r\n")


def spawn(tmp_path, tag, count, sessions, method="fsync", inline=65536):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "queue.db"), str(tmp_path / "blobs"),
         tag, str(count), str(sessions), method, str(inline)],
        stdout=subprocess.PIPE, text=True)


def blob_files(tmp_path):
    root = tmp_path / "blobs"
    return sorted(p.name for p in root.glob("*/*") if p.parent.name != "tmp")


async def test_pragmas_and_schema_version(store):
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"domains", "mailboxes", "aliases", "messages", "recipients", "attempts",
                "meta"} <= tables
    finally:
        conn.close()
    # per-connection settings of the store's own connections
    c = store._connect()
    try:
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    finally:
        c.close()


def test_newer_schema_is_refused(tmp_path, runner):
    conn = sqlite3.connect(tmp_path / "queue.db")
    conn.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 1}")
    conn.close()
    s = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs")
    with pytest.raises(RuntimeError, match="newer"):
        runner.run(s.open())


@pytest.mark.parametrize("method", ["fsync", "syncfs"])
def test_group_commit_batches_concurrent_commits(tmp_path, runner, method):
    store = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs", sync_method=method)

    async def go():
        await store.open()
        try:
            before = store._writer.batches
            bodies = [b"%d " % i + os.urandom(5000) for i in range(100)]
            ids = await asyncio.gather(*(commit(store, b) for b in bodies))
            batches = store._writer.batches - before
            for qid, body in zip(ids, bodies):
                assert store.read_body(await store.get_message(qid)) == body
            assert os.listdir(tmp_path / "blobs" / "tmp") == []
            return ids, batches
        finally:
            await store.close()
    ids, batches = runner.run(go())
    assert len(set(ids)) == 100
    assert batches < 100          # several commits shared one sync round


def test_processes_commit_concurrently(tmp_path, runner):
    procs = [spawn(tmp_path, f"p{k}", 40, 8) for k in range(3)]
    printed = {}
    for k, p in enumerate(procs):
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        for line in out.splitlines():
            n, qid = line.split()
            printed[qid] = (f"p{k}", int(n))
    assert len(printed) == 120

    async def check():
        s = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs")
        await s.open()
        try:
            for qid, (tag, n) in printed.items():
                m = await s.get_message(qid)
                assert m is not None and s.read_body(m) == child_body(tag, n)
            assert len(await s.list_messages(limit=1000)) == 120
        finally:
            await s.close()
    runner.run(check())


@pytest.mark.parametrize("method", ["fsync", "syncfs"])
@pytest.mark.parametrize("inline", [0, 65536], ids=["files", "inline"])
def test_kill_9_mid_commit_loses_nothing_that_was_acknowledged(tmp_path, runner, method,
                                                               inline):
    """Bodies as files (inline_body_max = 0) and kept inline in the database (the
    default for bodies this small: 0.3-10 KB)."""
    p = spawn(tmp_path, "crash", 100_000, 16, method, inline)
    printed = {}
    try:
        for line in p.stdout:
            n, qid = line.split()
            printed[qid] = int(n)
            if len(printed) >= 300:
                break
        os.kill(p.pid, signal.SIGKILL)       # mid-run: sessions are mid-DATA and mid-commit
        for line in p.stdout:                # ids flushed before the kill also count
            if line.endswith("\n"):
                n, qid = line.split()
                printed[qid] = int(n)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert len(printed) >= 300

    async def check():
        s = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs")
        await s.open()
        try:
            await s.recover()
            report = s.last_recovery
            print("recovery after kill -9:", report)
            assert report.exclusive and report.missing_blobs == 0
            for qid, n in printed.items():
                m = await s.get_message(qid)
                assert m is not None, qid
                assert s.read_body(m) == child_body("crash", n)
            msgs = await s.list_messages(limit=1_000_000)
            # every body file belongs to a message row and vice versa; every row without
            # a file has its body inline; tmp/ is empty
            assert blob_files(tmp_path) == sorted(m.queue_id for m in msgs if m.blob_path)
            assert all(bool(m.blob_path) == (inline == 0) for m in msgs)
            for m in msgs:
                assert s.read_body(m).startswith(b"Subject: crash ")
            assert os.listdir(tmp_path / "blobs" / "tmp") == []
            # committed messages resume: all claimable
            got = await s.claim_due(2**40, 1_000_000, "after-crash", 60)
            assert {m.queue_id for m in got} >= set(printed)
        finally:
            await s.close()
    runner.run(check())


@pytest.fixture
def file_store(tmp_path, runner):
    """Every body in a file (inline_body_max = 0): what recovery checks on disk."""
    s = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs", inline_body_max=0)
    runner.run(s.open())
    yield s
    runner.run(s.close())


def test_recover_removes_orphans_and_rows_without_body(file_store, runner, tmp_path):
    store = file_store

    async def go():
        keep = await commit(store, b"keep")
        lost = await commit(store, b"lost")
        os.unlink((await store.get_message(lost)).blob_path)
        orphan_id = queueid.new_queue_id()
        d = tmp_path / "blobs" / queueid.fanout(orphan_id)
        d.mkdir(exist_ok=True)
        (d / orphan_id).write_bytes(b"crash between link and DB commit")
        assert await store.recover() == 2
        r = store.last_recovery
        assert (r.missing_blobs, r.orphan_blobs, r.tmp_files) == (1, 1, 0)
        assert await store.get_message(lost) is None
        assert await store.get_message(keep) is not None
        assert not (d / orphan_id).exists()
    runner.run(go())


def test_recover_removes_the_body_of_a_completed_message(file_store, runner):
    """A crash between a message's final result and the unlink of its body leaves the
    body behind; recover() finds it by its queue id (not by reading the whole history)
    and removes it, and leaves a queued message's body alone."""
    store = file_store

    async def go():
        done = await commit(store, b"done")
        queued = await commit(store, b"queued")
        path = (await store.get_message(done)).blob_path
        [m] = [m for m in await store.claim_due(2**40, 10, "w", 60) if m.queue_id == done]
        await store.record_results(done, [DeliveryResult(m.recipients[0].id, True,
                                                         reply="250 ok")], 1.0, None)
        assert not os.path.exists(path)
        with open(path, "wb") as f:              # as if the unlink never happened
            f.write(b"done")
        # Another process has the store open, so recover() may not remove young files
        # for their age: this one goes because its message is complete.
        other = SQLiteStore(store.path, store.blobs.root)
        await other.open()
        try:
            await store.recover()
        finally:
            await other.close()
        assert not store.last_recovery.exclusive
        assert store.last_recovery.orphan_blobs == 1
        assert not os.path.exists(path)
        assert (await store.get_message(done)) is not None     # its history stays
        q = await store.get_message(queued)
        assert os.path.exists(q.blob_path)
    runner.run(go())


def test_queue_id_lower_bound_sorts_below_every_later_id():
    import time
    t = time.time()
    bound = queueid.lower_bound(t)
    assert queueid.is_valid(bound)
    assert queueid.new_queue_id(now=t - 1) < bound <= queueid.new_queue_id(now=t + 1)
    assert abs(queueid.timestamp(bound) - t) < 1e-5


def test_queue_ids():
    ids = [queueid.new_queue_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(queueid.is_valid(q) and len(q) == 16 for q in ids)
    assert abs(queueid.timestamp(ids[0]) - __import__("time").time()) < 5
    # a clock that steps back still yields increasing ids in one process
    a = queueid.new_queue_id(now=2_000_000_000.0)
    b = queueid.new_queue_id(now=1_000_000_000.0)
    assert b > a
    assert len(queueid.fanout(a)) == 2
    assert not queueid.is_valid("../etc/passwd00")


def test_queue_id_random_part_differs_in_a_forked_child():
    """Two processes minting ids in the same microsecond must not share random bits: a
    forked child re-seeds its generator (store/queueid.py)."""
    import os
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child: its random part, then exit
        os.close(r)
        os.write(w, queueid.new_queue_id(now=3_000_000_000.0)[-5:].encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 16).decode()
    os.close(r)
    os.waitpid(pid, 0)
    mine = {queueid.new_queue_id(now=3_000_000_000.0)[-5:] for _ in range(3)}
    assert len(child) == 5 and child not in mine   # 25 random bits: a clash is ~1e-7


def test_syncfs_recovery_drops_a_body_torn_by_a_crash(tmp_path):
    """sync_method syncfs commits the row before the one flush that makes body and row
    durable; a crash during that flush can leave a row whose body is not what was
    committed. No 250 was sent for it: recovery removes it by size/CRC-32, and keeps the
    intact ones."""
    import asyncio
    import time

    from mailwright.queue.model import Envelope, RecipientRequest
    from mailwright.store.sqlite import SQLiteStore

    async def run():
        store = SQLiteStore(str(tmp_path / "q.db"), str(tmp_path / "blobs"), sync_method="syncfs",
                            inline_body_max=0)
        await store.open()
        ids = []
        for body in (b"Subject: a\r\n\r\nintact\r\n", b"Subject: b\r\n\r\ntorn\r\n"):
            blob = store.new_blob()
            blob.write(body)
            ids.append(await store.commit_message(
                Envelope(sender="s@x.test", recipients=[RecipientRequest("r@y.test")],
                         received_at=time.time()), blob))
        torn = await store.get_message(ids[1])
        await store.close()
        with open(torn.blob_path, "r+b") as f:      # what a crash mid-flush can leave
            f.write(b"\0\0\0\0\0")
        store = SQLiteStore(str(tmp_path / "q.db"), str(tmp_path / "blobs"))
        await store.open()
        await store.recover()
        kept = await store.get_message(ids[0])
        gone = await store.get_message(ids[1])
        assert kept is not None and store.read_body(kept) == b"Subject: a\r\n\r\nintact\r\n"
        assert gone is None
        assert store.last_recovery.missing_blobs == 1
        await store.close()
    asyncio.run(run())


def test_small_bodies_are_kept_inline_and_large_ones_in_files(tmp_path, runner):
    """inline_body_max decides per body: one still in memory and no larger than it goes
    into ``bodies`` in the envelope's transaction (no file at all); a larger one, or one
    streamed to a file, is a file. Completion removes either; claims carry inline bodies."""
    store = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs", inline_body_max=1000)

    def rows() -> dict[str, int]:
        c = sqlite3.connect(store.path)
        try:
            return dict(c.execute("SELECT queue_id, length(data) FROM bodies"))
        finally:
            c.close()

    async def go():
        await store.open()
        try:
            small, medium, large = (b"s" * 1000, b"m" * 1001, os.urandom(200_000))
            ids = [await commit(store, b) for b in (small, medium, large)]
            assert rows() == {ids[0]: 1000}
            assert blob_files(tmp_path) == sorted(ids[1:])
            msgs = {m.queue_id: m for m in await store.claim_due(2**40, 10, "w", 60)}
            assert msgs[ids[0]].blob_path == "" and msgs[ids[0]].inline_body == small
            assert [msgs[q].inline_body for q in ids[1:]] == [None, None]
            for qid, body in zip(ids, (small, medium, large)):
                got = await store.fetch_body(msgs[qid])
                assert got.read() == body and (got.data is not None) == (qid == ids[0])
                assert store.read_body(await store.get_message(qid)) == body
            for qid in ids:
                await store.record_results(qid, [DeliveryResult(
                    msgs[qid].recipients[0].id, True, reply="250 ok")], 1.0, None)
            assert rows() == {} and blob_files(tmp_path) == []
            # recovery does not mistake an inline body for a missing file
            keep = await commit(store, b"inline and queued")
            assert await store.recover() == 0
            assert store.last_recovery.missing_blobs == 0
            assert store.read_body(await store.get_message(keep)) == b"inline and queued"
            # a deleted message takes its inline body with it
            assert await store.delete_message(keep)
            assert rows() == {}
        finally:
            await store.close()
    runner.run(go())


def test_file_bodies_from_before_inline_storage_are_still_delivered(tmp_path, runner):
    """An existing queue (bodies as files: inline_body_max = 0, as every queue before
    schema 11) opened with inline bodies on: its messages keep their files until they
    complete, new small ones go inline, and recovery mixes the two without loss."""
    async def go():
        old = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs", inline_body_max=0)
        await old.open()
        before = await commit(old, b"queued before the upgrade")
        await old.close()
        store = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs")
        await store.open()
        try:
            after = await commit(store, b"queued after it")
            assert await store.recover() == 0
            msgs = {m.queue_id: m for m in await store.claim_due(2**40, 10, "w", 60)}
            assert msgs[before].blob_path and msgs[before].inline_body is None
            assert msgs[after].blob_path == "" and msgs[after].inline_body is not None
            assert (await store.fetch_body(msgs[before])).read() == b"queued before the upgrade"
            assert (await store.fetch_body(msgs[after])).read() == b"queued after it"
            for qid in (before, after):
                await store.record_results(qid, [DeliveryResult(
                    msgs[qid].recipients[0].id, True, reply="250 ok")], 1.0, None)
            assert blob_files(tmp_path) == []
        finally:
            await store.close()
    runner.run(go())


def test_syncfs_mode_flushes_the_wal_alone_when_no_body_file_waits(tmp_path, runner,
                                                                  monkeypatch):
    """sync_method syncfs: a batch that wrote a body file gets a syncfs (bodies, names
    and WAL in one flush); one that changed only the database (an inline body, a
    result) gets fdatasync of the WAL; the first flush after open (the schema check's) is a
    syncfs, so the WAL's own directory entry is durable."""
    import mailwright.store.sqlite as sqlite_mod
    flushes: list[str] = []
    real_syncfs, real_fdatasync = BlobDir.syncfs_fd, os.fdatasync

    def syncfs_fd(fd):
        flushes.append("syncfs")
        real_syncfs(fd)

    def fdatasync(fd):
        flushes.append("wal" if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal")
                       else "other")
        real_fdatasync(fd)
    monkeypatch.setattr(BlobDir, "syncfs_fd", staticmethod(syncfs_fd))
    monkeypatch.setattr(sqlite_mod.os, "fdatasync", fdatasync)
    store = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs", sync_method="syncfs",
                        inline_body_max=1000)

    async def go():
        await store.open()
        try:
            assert flushes[0] == "syncfs"                    # the first flush after open
            flushes.clear()
            small = await commit(store, b"small")            # inline only: the WAL
            await commit(store, b"small again")
            assert flushes == ["wal", "wal"]
            flushes.clear()
            await commit(store, b"x" * 5000)                 # a body file: syncfs
            await commit(store, b"small")                    # nothing waits: the WAL
            assert flushes == ["syncfs", "wal"]
            [m] = [m for m in await store.claim_due(2**40, 10, "w", 60)
                   if m.queue_id == small]
            flushes.clear()
            await store.record_results(small, [DeliveryResult(m.recipients[0].id, True,
                                                              reply="250 ok")], 1.0, None)
            assert flushes == ["wal"]                        # a result: the WAL
        finally:
            await store.close()
        return flushes
    runner.run(go())
