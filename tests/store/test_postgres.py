"""PostgreSQL-backend specifics: schema versions, SKIP LOCKED claims and leases across
nodes, NOTIFY wake-ups, connection loss and recovery, bodies shared between nodes, the
blob writer's read_all/prepend, group commit, cluster status.

Every test runs against the real server (``pg_dsn``) in a schema of its own. "Nodes" are
stores with different ``node`` names and cache directories on the same schema."""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time

import asyncpg
import pytest

from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest
from mailwright.store import StoreError
from mailwright.store import pg_schema as migrations
from mailwright.store.pg_conn import StoreUnavailable
from mailwright.store.postgres import CHUNK_SIZE, PostgresStore

T0 = 1_700_000_000.0


@pytest.fixture
def nodes(pg_dsn, pg_schema, tmp_path, runner):
    """``await nodes(name, **options)`` opens a store as node ``name`` (cache directory
    ``tmp_path/<name>``) on this test's schema; all are closed at teardown."""
    opened: list[PostgresStore] = []

    async def make(name: str, dsn: str | None = None, **options) -> PostgresStore:
        options.setdefault("pool_size", 4)
        s = PostgresStore(dsn or pg_dsn, schema=pg_schema, node=name,
                          cache_dir=str(tmp_path / name), **options)
        await s.open()
        opened.append(s)
        return s
    yield make
    for s in reversed(opened):
        runner.run(s.close())


@pytest.fixture
def admin(pg_dsn, pg_schema, runner):
    """A plain connection on the test's schema (locks, inspection, terminating backends)."""
    conn = runner.run(asyncpg.connect(pg_dsn, server_settings={"search_path": pg_schema}))
    yield conn
    runner.run(conn.close())


async def commit(store, body: bytes = b"Subject: x\r\n\r\nbody\r\n", *rcpts: str,
                 at: float = T0) -> str:
    blob = store.new_blob()
    blob.write(body)
    env = Envelope("alice@example.org", [RecipientRequest(r) for r in rcpts or
                                         ("bob@example.net",)], at)
    return await store.commit_message(env, blob)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def pids(conn, node: str) -> list[int]:
    return [r[0] for r in await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        f"mailwright {node}")]


# ---------------------------------------------------------------- schema and settings

async def test_schema_version_and_durable_commits(nodes, admin):
    s = await nodes("n1")
    assert await migrations.current_version(admin) == migrations.SCHEMA_VERSION
    versions = [r[0] for r in await admin.fetch("SELECT version FROM schema_version"
                                                " ORDER BY version")]
    assert versions == list(range(1, migrations.SCHEMA_VERSION + 1))
    async with s._pool.acquire() as c:
        assert await c.fetchval("SHOW synchronous_commit") == "on"
        assert await c.fetchval("SELECT current_schema()") == s.schema
    tables = {r[0] for r in await admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", s.schema)}
    assert {"messages", "recipients", "attempts", "bodies", "nodes", "meta", "domains",
            "mailboxes", "aliases", "send_as", "dkim_keys"} <= tables


async def test_newer_schema_is_refused(nodes, admin):
    await nodes("n1")
    await admin.execute("INSERT INTO schema_version (version) VALUES ($1)",
                        migrations.SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="newer"):
        await nodes("n2")


async def test_concurrent_first_open_migrates_once(nodes, admin):
    stores = await asyncio.gather(*(nodes(f"n{i}") for i in range(4)))
    assert len(stores) == 4
    versions = [r[0] for r in await admin.fetch("SELECT version FROM schema_version")]
    assert sorted(versions) == list(range(1, migrations.SCHEMA_VERSION + 1))
    assert await admin.fetchval("SELECT value FROM meta WHERE key = 'directory_version'") == 1


async def test_version_1_schema_upgrades_in_place(nodes, admin, pg_schema):
    from mailwright.store.base import DkimKey
    await admin.execute(f'CREATE SCHEMA "{pg_schema}"')
    await admin.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                        " applied_at timestamptz NOT NULL DEFAULT now())")
    for stmt in migrations.MIGRATIONS[0]:
        await admin.execute(stmt)
    await admin.execute("INSERT INTO schema_version (version) VALUES (1)")
    await admin.execute("INSERT INTO domains (name, created_at) VALUES ('example.org', 1)")
    s = await nodes("n1")
    assert await s.list_domains() == ["example.org"]
    await s.add_dkim_key(DkimKey("example.org", "s1", "rsa-sha256", "PEM", T0, True))
    assert [k.selector for k in await s.list_dkim_keys()] == ["s1"]
    assert await migrations.current_version(admin) == migrations.SCHEMA_VERSION >= 2


# ---------------------------------------------------------------- claiming and leases

async def test_concurrent_claims_from_two_nodes_are_disjoint(nodes):
    a, b = await nodes("a"), await nodes("b")
    ids = set(await asyncio.gather(*(commit(a, b"m%d" % i) for i in range(60))))
    got_a: list[str] = []
    got_b: list[str] = []

    async def worker(s, out):
        while True:
            claimed = await s.claim_due(T0 + 1, 7, f"w-{s.node}", 60)
            if not claimed:
                return
            out.extend(m.queue_id for m in claimed)
    await asyncio.gather(worker(a, got_a), worker(b, got_b),
                         worker(a, got_a), worker(b, got_b))
    assert not set(got_a) & set(got_b)
    assert len(got_a) + len(got_b) == 60 and set(got_a) | set(got_b) == ids
    assert got_a and got_b          # both really claimed (interleaved, not one after another)


async def test_claim_skips_locked_rows_instead_of_waiting(nodes, admin):
    s = await nodes("n1")
    first, second = await commit(s, b"1", at=T0), await commit(s, b"2", at=T0 + 1)
    async with admin.transaction():
        # another node is in the middle of claiming ``first``
        await admin.execute("SELECT 1 FROM messages WHERE queue_id = $1 FOR UPDATE", first)
        started = time.monotonic()
        got = await asyncio.wait_for(s.claim_due(T0 + 5, 10, "w", 60), 5)
        assert [m.queue_id for m in got] == [second]
        assert time.monotonic() - started < 2
    [again] = await s.claim_due(T0 + 5, 10, "w", 60)     # lock released: claimable
    assert again.queue_id == first


async def test_expired_lease_is_taken_over_by_another_node(nodes, admin):
    a, b = await nodes("a"), await nodes("b")
    qid = await commit(a)
    [m] = await a.claim_due(T0, 10, "wa", 60)
    assert not m.reclaimed
    assert await b.claim_due(T0 + 30, 10, "wb", 60) == []
    # renewing while the lease is held pushes the expiry
    assert await a.renew_leases("wa", [qid], 60, now=T0 + 30) == 1
    assert await b.claim_due(T0 + 61, 10, "wb", 60) == []
    # node a goes silent: at T0+91 its lease is over and b takes the message
    [m2] = await b.claim_due(T0 + 91, 10, "wb", 60)
    assert m2.queue_id == qid and m2.reclaimed
    row = await admin.fetchrow("SELECT lease_owner, lease_node, lease_until FROM messages"
                               " WHERE queue_id = $1", qid)
    assert tuple(row) == ("wb", "b", T0 + 151)
    assert await a.renew_leases("wa", [qid], 60, now=T0 + 92) == 0   # a lost it
    await b.record_results(qid, [DeliveryResult(m2.recipients[0].id, False, reply="451")],
                           T0 + 92, T0 + 500)
    row = await admin.fetchrow("SELECT lease_owner, lease_node, lease_until FROM messages"
                               " WHERE queue_id = $1", qid)
    assert tuple(row) == (None, None, None)                          # released
    assert await b.next_due_time() == T0 + 500


async def test_recover_expires_only_this_nodes_leases(nodes):
    now = time.time()                           # recover() compares with the clock
    a, b = await nodes("a"), await nodes("b")
    qa, qb = await commit(a, b"a", at=now), await commit(a, b"b", at=now + 1)
    await a.claim_due(now + 2, 1, "wa", 3600)
    await b.claim_due(now + 2, 1, "wb", 3600)
    await a.close()                             # node a crashed and restarts
    a2 = await nodes("a")
    await a2.recover()
    assert a2.last_recovery.exclusive and a2.last_recovery.leases_cleared == 1
    [m] = await a2.claim_due(now + 3, 10, "wa2", 60)      # b's lease still holds
    assert m.queue_id == qa and m.reclaimed
    assert (await a2.get_message(qb)) is not None


# ---------------------------------------------------------------- bodies across nodes

async def test_body_readable_from_another_node_with_its_own_cache(nodes, tmp_path):
    a, b = await nodes("a"), await nodes("b")
    big = os.urandom(CHUNK_SIZE * 2 + 12345)
    qid = await commit(a, big)
    assert os.path.exists(tmp_path / "a" / qid[5:7] / qid)    # a kept its copy
    m = await b.get_message(qid)
    assert not os.path.exists(m.blob_path)
    assert b.read_body(m) == big                               # from the database
    path = b.body_path(m)                                      # materialised for agents
    assert path.startswith(str(tmp_path / "b")) and read_file(path) == big
    assert os.listdir(tmp_path / "b" / "tmp") == []
    assert await b.read_body_async(m) == big
    # b delivers and completes it: b's copy goes, the rows go, a's copy is a leftover
    [claimed] = await b.claim_due(T0, 10, "wb", 60)
    await b.record_results(qid, [DeliveryResult(claimed.recipients[0].id, True)], T0 + 1, None)
    assert not os.path.exists(path)
    with pytest.raises(StoreError):
        b.read_body(m)
    assert os.path.exists(a.blobs.path(qid))
    assert await a.cleanup_cache(grace_seconds=0) == 1
    assert not os.path.exists(a.blobs.path(qid))


async def test_fetch_body_path_materialises_without_blocking(nodes):
    a, b = await nodes("a"), await nodes("b")
    qid = await commit(a, b"hello\r\n")
    m = await b.get_message(qid)
    path = await b.fetch_body_path(m)
    assert read_file(path) == b"hello\r\n"


async def test_empty_body_round_trips(nodes):
    a, b = await nodes("a"), await nodes("b")
    qid = await commit(a, b"")
    assert b.read_body(await b.get_message(qid)) == b""


# ---------------------------------------------------------------- blob writer

async def test_read_all_and_prepend_in_memory(store):
    blob = store.new_blob()
    blob.write(b"Subject: hi\r\n")
    blob.write(b"\r\nbody\r\n")
    assert blob.read_all() == b"Subject: hi\r\n\r\nbody\r\n"
    blob.prepend(b"Authentication-Results: mx; dkim=pass\r\n")
    assert blob.read_all() == (b"Authentication-Results: mx; dkim=pass\r\n"
                               b"Subject: hi\r\n\r\nbody\r\n")
    assert blob.size == len(blob.read_all())
    assert not blob.spilled
    qid = await store.commit_message(Envelope("a@x.example", [RecipientRequest("b@y.example")],
                                              T0), blob)
    m = await store.get_message(qid)
    assert m.envelope.size == blob.size == len(store.read_body(m))
    assert store.read_body(m).startswith(b"Authentication-Results: mx; dkim=pass\r\nSubject")
    with pytest.raises(StoreError):
        blob.prepend(b"late")


async def test_read_all_and_prepend_after_spilling(store, tmp_path):
    blob = store.new_blob()
    body = os.urandom(200_000)
    for i in range(0, len(body), 1000):
        blob.write(body[i:i + 1000])
    assert blob.spilled and len(os.listdir(store.blobs.tmp)) == 1
    assert blob.read_all() == body
    blob.prepend(b"X-First: 1\r\n")
    blob.prepend(b"X-Zeroth: 0\r\n")
    blob.write(b"tail")
    expected = b"X-Zeroth: 0\r\nX-First: 1\r\n" + body + b"tail"
    assert blob.read_all() == expected and blob.size == len(expected)
    assert len(os.listdir(store.blobs.tmp)) == 1            # the old temp file is gone
    qid = await store.commit_message(Envelope("a@x.example", [RecipientRequest("b@y.example")],
                                              T0), blob)
    assert os.listdir(store.blobs.tmp) == []                 # renamed into the cache
    m = await store.get_message(qid)
    assert store.read_body(m) == expected
    os.unlink(m.blob_path)                                  # drop the copy: read the DB
    assert store.read_body(m) == expected


async def test_prepend_then_abort_leaves_nothing(store):
    blob = store.new_blob()
    blob.write(b"x" * 100_000)
    blob.prepend(b"H: 1\r\n")
    blob.abort()
    assert os.listdir(store.blobs.tmp) == []
    with pytest.raises(StoreError):
        blob.read_all()
    with pytest.raises(StoreError):
        blob.prepend(b"again")


# ---------------------------------------------------------------- group commit, NOTIFY

async def test_group_commit_batches_concurrent_commits(nodes):
    s = await nodes("n1")
    before = s._committer.batches
    bodies = [os.urandom(3000) + b"%d" % i for i in range(100)]
    ids = await asyncio.gather(*(commit(s, body) for body in bodies))
    assert len(set(ids)) == 100
    assert s._committer.batches - before < 100             # commits shared transactions
    for qid, body in zip(ids, bodies):
        m = await s.get_message(qid)
        os.unlink(m.blob_path)
        assert s.read_body(m) == body


async def test_wait_for_work_wakes_on_another_nodes_commit(nodes):
    a, b = await nodes("a"), await nodes("b")
    assert await b.wait_for_work(0.2) is False                # nothing happened
    waiter = asyncio.create_task(b.wait_for_work(30))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    await commit(a)
    assert await asyncio.wait_for(waiter, 5) is True
    assert time.monotonic() - started < 2
    # a notification that arrives while b is busy is kept for its next wait
    await commit(a)
    await asyncio.sleep(0.3)
    assert await b.wait_for_work(0) is True
    assert await b.wait_for_work(0.2) is False


async def test_no_wake_up_for_a_rolled_back_commit(nodes):
    a, b = await nodes("a"), await nodes("b")
    qid = await commit(a)
    m = await a.get_message(qid)
    await a.record_results(qid, [DeliveryResult(m.recipients[0].id, False, True, "550")],
                           T0 + 1, None, dsn={m.recipients[0].id: "failed"})
    blob = a.new_blob()
    blob.write(b"dsn")
    dsn_env = Envelope("", [RecipientRequest("alice@example.org")], T0 + 2)
    assert await a.commit_dsn(dsn_env, blob, qid, {m.recipients[0].id: "failed"}, T0 + 2)
    await asyncio.sleep(0.3)
    assert await b.wait_for_work(0) is True                  # the DSN commit notified
    blob = a.new_blob()
    blob.write(b"dsn again")
    assert await a.commit_dsn(dsn_env, blob, qid, {m.recipients[0].id: "failed"},
                              T0 + 3) is None                # stale: rolled back
    assert await b.wait_for_work(0.5) is False


async def test_heartbeat_and_cluster_status(nodes):
    a, b = await nodes("a"), await nodes("b")
    await a.heartbeat("a", T0, {"version": "1", "workers": 2})
    await b.heartbeat("b", T0 + 1, {"version": "1"})
    await a.heartbeat("a", T0 + 10, {"version": "2", "workers": 2})
    q1 = await commit(a, b"1", "x@example.net", "y@example.net")
    await commit(a, b"2", at=T0 + 1)
    await a.hold(q1)
    await commit(a, b"3", at=T0 + 2)
    await a.claim_due(T0 + 5, 1, "wa", 60)
    await b.claim_due(T0 + 5, 1, "wb", 60)
    st = await a.cluster_status(now=T0 + 6)
    assert [(n["name"], n["started_at"], n["last_heartbeat"], n["info"], n["leases"])
            for n in st["nodes"]] == [("a", T0, T0 + 10, {"version": "2", "workers": 2}, 1),
                                      ("b", T0 + 1, T0 + 1, {"version": "1"}, 1)]
    assert st["leases"] == {"a": 1, "b": 1}
    assert st["recipients"] == {"queued": 2, "held": 2, "delivered": 0, "failed": 0}
    assert st["messages"] == 3 and st["dsn_pending"] == 0
    assert (await a.cluster_status(now=T0 + 1000))["leases"] == {}


async def test_message_trace(nodes):
    from mailwright.store.base import TraceEvent
    a, b = await nodes("a"), await nodes("b")
    await a.record_trace([
        TraceEvent(T0, "accepted", "s1", "q1", "<m1@x>", "Alice@X.example",
                   ("Bob@Y.example", "carol@y.example"), "192.0.2.1", {"spf": "pass"}),
        TraceEvent(T0 + 1, "rejected", "s2", "", "", "eve@z.example", ("bob@y.example",),
                   "192.0.2.2", {"reply": "550 5.7.1"}),
        TraceEvent(T0 + 2, "refused", "s3", client_ip="192.0.2.3"),
    ])
    await a.record_trace([])
    got = await b.query_trace(address="BOB@y.example")             # any node reads it
    assert [(e.kind, e.recipients) for e in got] == [
        ("accepted", ("bob@y.example", "carol@y.example")), ("rejected", ("bob@y.example",))]
    assert got[0].sender == "alice@x.example" and got[0].data == {"spf": "pass"}
    assert [e.session_id for e in await b.query_trace(address="alice@x.example")] == ["s1"]
    assert [e.session_id for e in await b.query_trace(queue_ids=["q1"],
                                                      message_id="<nope>")] == ["s1"]
    assert [e.session_id for e in await b.query_trace(since=T0 + 1)] == ["s2", "s3"]
    assert [e.session_id for e in await b.query_trace(address="bob@y.example",
                                                      until=T0 + 0.5)] == ["s1"]
    assert [e.session_id for e in await b.query_trace(limit=1)] == ["s1"]
    assert (await b.query_trace(since=T0 + 2))[0].recipients == ()
    assert await b.query_trace(address="b%@y.example") == []
    assert await a.prune_trace(T0 + 1) == 1
    assert [e.session_id for e in await b.query_trace()] == ["s2", "s3"]


# ---------------------------------------------------------------- connection loss

async def test_query_on_a_terminated_backend_fails_then_the_pool_recovers(nodes, admin,
                                                                          pg_dsn):
    s = await nodes("n1")
    await s.add_domain("example.org")
    async with admin.transaction():
        # hold the directory counter so the store's next change waits on the server...
        await admin.execute("SELECT value FROM meta WHERE key = 'directory_version'"
                            " FOR UPDATE")
        change = asyncio.create_task(s.add_domain("example.net"))
        for _ in range(100):
            blocked = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
                " AND wait_event_type = 'Lock'", "mailwright n1")
            if blocked:
                break
            await asyncio.sleep(0.05)
        assert blocked
        # ...and the server goes away under it
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", blocked[0][0])
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(change, 10)
    # nothing half-done, and the pool replaced the connection by itself
    assert await s.list_domains() == ["example.org"]
    await s.add_domain("example.net")
    assert await s.list_domains() == ["example.net", "example.org"]


async def test_all_backends_terminated_store_recovers(nodes, admin):
    a, b = await nodes("a"), await nodes("b")
    qid = await commit(a, b"before")
    m = await b.get_message(qid)
    assert b.read_body(m) == b"before"                       # the fetcher is connected
    os.unlink(b.body_path(m))
    assert await b.wait_for_work(0) in (True, False)         # listener connected
    victims = await pids(admin, "b")
    assert len(victims) >= 3                                 # pool, LISTEN, fetcher
    for pid in victims:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    await asyncio.sleep(0.3)
    failures = 0
    for _ in range(10):
        try:
            await b.get_message(qid)
        except StoreError:
            failures += 1
    assert failures <= 4                                     # at most once per dead conn
    assert (await b.get_message(qid)).queue_id == qid
    assert b.read_body(m) == b"before"                       # fetcher reconnected
    assert await b.wait_for_work(0) is True                  # deaf for a while: look now
    await commit(a, b"after")
    await asyncio.sleep(0.3)
    assert await b.wait_for_work(1) is True                  # LISTEN works again


class _Proxy:
    """A TCP relay to PostgreSQL on its own thread: ``stop()`` makes the server vanish
    for its clients (connections cut, port refused), ``start()`` brings it back on the
    same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._run(self._start())

    def stop(self) -> None:
        self._run(self._stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.fixture
def proxy(pg_dsn):
    from urllib.parse import urlsplit
    u = urlsplit(pg_dsn)
    p = _Proxy((u.hostname or "127.0.0.1", u.port or 5432))
    p.start()
    yield p, pg_dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{p.port}")
    p.close()


async def test_server_gone_gives_store_errors_then_service_resumes(nodes, proxy):
    relay, dsn = proxy
    s = await nodes("n1", dsn=dsn, connect_timeout=2)
    qid = await commit(s, b"one")
    assert await s.wait_for_work(1) is True                 # its own NOTIFY, consumed
    relay.stop()                                            # PostgreSQL "goes away"
    await asyncio.sleep(0.2)
    blob = s.new_blob()
    blob.write(b"y" * 100_000)                              # spilled to a temp file
    with pytest.raises(StoreError):
        await s.commit_message(Envelope("a@x.example", [RecipientRequest("b@y.example")],
                                        T0), blob)
    assert os.listdir(s.blobs.tmp) == []                    # the 451'd body is gone
    with pytest.raises(StoreError):
        await s.claim_due(T0, 10, "w", 60)
    with pytest.raises(StoreError):
        await s.directory_version()
    assert await s.wait_for_work(0.2) is False              # sleeps, never raises
    relay.start()                                           # back on the same port
    qid2 = await commit(s, b"two")
    got = await s.claim_due(T0, 10, "w", 60)
    assert {m.queue_id for m in got} == {qid, qid2}
    assert await s.wait_for_work(1) is True                 # LISTEN re-established


def test_unreachable_server_fails_open(tmp_path, runner):
    with socket.socket() as probe:                          # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test",
                      schema="mw_test_" + secrets.token_hex(4), cache_dir=str(tmp_path / "c"),
                      connect_timeout=2)
    with pytest.raises(StoreUnavailable):
        runner.run(s.open())
    runner.run(s.close())


def test_schema_names_are_checked(tmp_path):
    with pytest.raises(ValueError):
        PostgresStore("postgresql://x/y", schema='x"; DROP TABLE y; --', cache_dir=str(tmp_path))


async def test_release_leases_gives_back_only_the_owners_other_leases(store):
    """After a claim whose reply was lost, the claimer releases its own leases except on
    the messages it is delivering; other owners' leases are untouched."""
    from mailwright.queue.model import Envelope, RecipientRequest
    ids = []
    for i in range(3):
        blob = store.new_blob()
        blob.write(b"Subject: x\r\n\r\nbody\r\n")
        ids.append(await store.commit_message(
            Envelope(sender="a@example.org", recipients=[RecipientRequest(f"b{i}@example.net")],
                     received_at=1_700_000_000.0), blob))
    now = 1_700_000_100.0
    mine = await store.claim_due(now, 2, "node-a:1", 300)
    theirs = await store.claim_due(now, 10, "node-b:1", 300)
    assert len(mine) == 2 and len(theirs) == 1
    keep = [mine[0].queue_id]
    assert await store.release_leases("node-a:1", keep) == 1
    # the released one is claimable again at once; the kept and the other owner's are not
    again = await store.claim_due(now, 10, "node-c:1", 300)
    assert [m.queue_id for m in again] == [mine[1].queue_id]
