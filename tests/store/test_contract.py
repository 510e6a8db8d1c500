"""Contract tests for ``base.Store``: every backend must pass all of these."""
from __future__ import annotations

import asyncio
import os

import pytest

from mailwright.queue.model import (
    DeliveryResult, Envelope, RecipientRequest, RecipientState,
)
from mailwright.store import DuplicateError, NotFoundError, StoreError
from store.bodies import has_body

T0 = 1_700_000_000.0


def env(*rcpts: str, sender: str = "alice@example.org", at: float = T0, **kw) -> Envelope:
    return Envelope(sender=sender, recipients=[RecipientRequest(r) for r in rcpts],
                    received_at=at, **kw)


async def commit(store, body: bytes, *rcpts: str, at: float = T0, chunks: int = 3, **kw) -> str:
    blob = store.new_blob()
    step = max(1, len(body) // chunks)
    for i in range(0, len(body), step):
        blob.write(body[i:i + step])
    assert blob.size == len(body)
    return await store.commit_message(env(*(rcpts or ("bob@example.net",)), at=at, **kw), blob)


# ---------------------------------------------------------------- intake

async def test_commit_roundtrip_keeps_envelope_and_body(store):
    body = b"Subject: hi\r\n\r\n" + os.urandom(70_000) + b"\r\n"
    e = Envelope(sender="alice@example.org",
                 recipients=[RecipientRequest("bob@example.net", ("SUCCESS", "FAILURE"),
                                              "rfc822;Bob@Example.NET"),
                             RecipientRequest("carol@example.net", ("NEVER",)),
                             RecipientRequest("dave@example.net")],
                 received_at=T0, client_ip="192.0.2.1", client_port=4242,
                 client_name="mx.example.org", helo="mx.example.org", protocol="ESMTPSA",
                 tls="TLSv1.3 TLS_AES_256_GCM_SHA384", auth_user="alice",
                 body_type="8BITMIME", smtputf8=True, ret="HDRS", envid="abc123",
                 listener="submission")
    blob = store.new_blob()
    for i in range(0, len(body), 1000):
        blob.write(body[i:i + 1000])
    qid = await store.commit_message(e, blob)
    assert isinstance(qid, str) and qid

    m = await store.get_message(qid)
    assert m is not None and m.queue_id == qid
    got = m.envelope
    for field in ("sender", "received_at", "client_ip", "client_port", "client_name", "helo",
                  "protocol", "tls", "auth_user", "body_type", "smtputf8", "ret", "envid",
                  "listener"):
        assert getattr(got, field) == getattr(e, field), field
    assert got.size == len(body)
    assert got.recipients == e.recipients
    assert [r.state for r in m.recipients] == [RecipientState.QUEUED] * 3
    assert [r.notify for r in m.recipients] == [("SUCCESS", "FAILURE"), ("NEVER",), None]
    assert m.recipients[0].orcpt == "rfc822;Bob@Example.NET"
    assert all(r.attempts == 0 and r.final_at is None for r in m.recipients)
    assert store.read_body(m) == body
    assert (await store.fetch_body(m)).read() == body


@pytest.mark.parametrize("size", [100, 200_000], ids=["in-memory", "streamed"])
async def test_blob_read_all_and_prepend_before_commit(store, size):
    """End-of-data checks read the body back and add header fields in front of it."""
    body = b"Subject: hi\r\n\r\n" + os.urandom(size) + b"\r\n"
    blob = store.new_blob()
    for i in range(0, len(body), 7000):
        blob.write(body[i:i + 7000])
    assert blob.read_all() == body
    added = b"Authentication-Results: mx.example.net; spf=pass\r\n"
    blob.prepend(added)
    blob.write(b"")
    assert blob.size == len(added) + len(body)
    assert blob.read_all() == added + body
    qid = await store.commit_message(env("bob@example.net"), blob)
    m = await store.get_message(qid)
    assert m.envelope.size == len(added) + len(body)
    assert store.read_body(m) == added + body
    assert (await store.fetch_body(m)).read() == added + body


async def test_ids_are_distinct_and_sort_in_commit_order(store):
    ids = [await commit(store, b"x%d" % i) for i in range(20)]
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


async def test_commit_without_recipients_is_refused(store):
    blob = store.new_blob()
    blob.write(b"x")
    with pytest.raises(ValueError):
        await store.commit_message(Envelope("a@b.c", [], T0), blob)
    blob.abort()


async def test_abort_removes_the_partial_body(store, tmp_path):
    blob = store.new_blob()
    blob.write(b"partial" * 20_000)
    blob.abort()
    blob.abort()  # idempotent
    with pytest.raises(StoreError):
        blob.write(b"more")
    assert await store.list_messages() == []
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size > 0
                 and "blob" in str(p.parent)]
    assert leftovers == []


async def test_blob_cannot_be_committed_twice(store):
    blob = store.new_blob()
    blob.write(b"once")
    await store.commit_message(env("bob@example.net"), blob)
    with pytest.raises(StoreError):
        await store.commit_message(env("bob@example.net"), blob)
    assert len(await store.list_messages()) == 1


async def test_200_concurrent_commits_all_succeed_with_distinct_ids(store):
    bodies = [os.urandom(5000) + b"%d" % i for i in range(200)]
    ids = await asyncio.gather(*(commit(store, b, "r%d@example.net" % i)
                                 for i, b in enumerate(bodies)))
    assert len(set(ids)) == 200
    msgs = {m.queue_id: m for m in await store.list_messages(limit=1000)}
    assert set(msgs) == set(ids)
    for qid, body, i in zip(ids, bodies, range(200)):
        assert store.read_body(msgs[qid]) == body
        assert msgs[qid].envelope.recipients[0].address == "r%d@example.net" % i


async def test_two_stores_on_the_same_storage_commit_concurrently(store, store_factory):
    other = await store_factory()
    ids = await asyncio.gather(*(commit(s, b"m%d" % i)
                                 for i in range(60) for s in (store, other)))
    assert len(set(ids)) == 120
    assert len(await store.list_messages()) == 120


async def test_messages_survive_reopen(store, store_factory):
    qid = await commit(store, b"persist me")
    await store.close()
    again = await store_factory()
    m = await again.get_message(qid)
    assert m is not None and again.read_body(m) == b"persist me"


# ---------------------------------------------------------------- queue

async def test_claim_due_leases_and_returns_only_due_messages(store):
    early = await commit(store, b"early", at=T0)
    late = await commit(store, b"late", at=T0 + 100)
    assert await store.next_due_time() == T0

    got = await store.claim_due(T0 + 1, 10, "w1", 60)
    assert [m.queue_id for m in got] == [early]
    assert got[0].recipients[0].state is RecipientState.QUEUED
    assert store.read_body(got[0]) == b"early"
    # leased: nobody else gets it until the lease expires
    assert await store.claim_due(T0 + 2, 10, "w2", 60) == []
    assert await store.next_due_time() == T0 + 61 - 0  # lease expiry (T0+1+60)
    # the lease expires (worker crashed): claimable again
    again = await store.claim_due(T0 + 61, 10, "w2", 60)
    assert [m.queue_id for m in again] == [early]
    both = await store.claim_due(T0 + 200, 10, "w3", 60)
    assert [m.queue_id for m in both] == [early, late]


async def test_claim_due_respects_limit_and_due_order(store):
    ids = [await commit(store, b"%d" % i, at=T0 + 10 - i) for i in range(5)]
    got = await store.claim_due(T0 + 100, 2, "w", 60)
    assert [m.queue_id for m in got] == [ids[4], ids[3]]
    rest = await store.claim_due(T0 + 100, 10, "w", 60)
    assert {m.queue_id for m in rest} == set(ids[:3])


async def test_record_results_per_recipient(store):
    qid = await commit(store, b"body", "ok@x.example", "perm@x.example", "temp@x.example")
    [m] = await store.claim_due(T0, 10, "w", 60)
    ok, perm, temp = m.recipients
    await store.record_results(qid, [
        DeliveryResult(ok.id, True, reply="250 2.0.0 ok"),
        DeliveryResult(perm.id, False, True, "550 5.1.1 no such user"),
        DeliveryResult(temp.id, False, False, "451 4.3.0 try later"),
    ], now=T0 + 5, next_attempt_at=T0 + 300)

    m = await store.get_message(qid)
    by = {r.address: r for r in m.recipients}
    assert by["ok@x.example"].state is RecipientState.DELIVERED
    assert by["ok@x.example"].final_at == T0 + 5
    assert by["ok@x.example"].last_reply == "250 2.0.0 ok"
    assert by["perm@x.example"].state is RecipientState.FAILED
    assert by["perm@x.example"].final_at == T0 + 5
    t = by["temp@x.example"]
    assert (t.state, t.attempts, t.next_attempt_at, t.last_attempt_at, t.last_reply) == (
        RecipientState.QUEUED, 1, T0 + 300, T0 + 5, "451 4.3.0 try later")
    assert t.final_at is None

    # lease released; only the still-queued recipient is due, and only at T0+300
    assert await store.claim_due(T0 + 10, 10, "w", 60) == []
    assert await store.next_due_time() == T0 + 300
    [m2] = await store.claim_due(T0 + 300, 10, "w", 60)
    assert [r.address for r in m2.recipients] == ["temp@x.example"]
    assert len(m2.envelope.recipients) == 3       # the envelope still lists everyone
    assert store.read_body(m2) == b"body"         # not all final: body kept

    hist = await store.list_attempts(qid)
    assert [(a.address, a.ok, a.permanent) for a in hist] == [
        ("ok@x.example", True, False), ("perm@x.example", False, True),
        ("temp@x.example", False, False)]


async def test_all_final_removes_body_but_keeps_history(store):
    qid = await commit(store, b"done soon", "a@x.example", "b@x.example")
    [m] = await store.claim_due(T0, 10, "w", 60)
    assert (await store.fetch_body(m)).read() == b"done soon"
    path = m.blob_path              # "" for a body kept inline in the database
    a, b = m.recipients
    await store.record_results(qid, [DeliveryResult(a.id, False, reply="421 busy")],
                               T0 + 1, T0 + 60)
    assert store.read_body(await store.get_message(qid)) == b"done soon"
    assert not path or os.path.exists(path)
    [m] = await store.claim_due(T0 + 60, 10, "w", 60)
    await store.record_results(qid, [DeliveryResult(a.id, True, reply="250 ok"),
                                      DeliveryResult(b.id, True, reply="250 ok")],
                               T0 + 61, None)
    assert not path or not os.path.exists(path)
    with pytest.raises(NotFoundError):
        store.read_body(await store.get_message(qid))
    with pytest.raises(NotFoundError):
        await store.fetch_body(await store.get_message(qid))
    m = await store.get_message(qid)
    assert m is not None
    assert {r.state for r in m.recipients} == {RecipientState.DELIVERED}
    assert m.recipients[0].attempts == 2
    assert len(await store.list_attempts(qid)) == 3
    assert await store.list_messages() == []
    assert [x.queue_id for x in await store.list_messages(RecipientState.DELIVERED)] == [qid]
    assert await store.claim_due(T0 + 10_000, 10, "w", 60) == []
    assert await store.next_due_time() is None


async def test_record_results_rejects_foreign_recipient(store):
    q1 = await commit(store, b"1")
    q2 = await commit(store, b"2")
    m2 = await store.get_message(q2)
    with pytest.raises(NotFoundError):
        await store.record_results(q1, [DeliveryResult(m2.recipients[0].id, True)], T0, None)
    with pytest.raises(NotFoundError):
        await store.record_results("nosuchmessage000", [], T0, None)
    # nothing was changed by the failed call
    assert (await store.get_message(q1)).recipients[0].attempts == 0


async def test_a_failing_result_among_concurrent_ones_fails_alone(store):
    """Results recorded at the same moment share one transaction on SQLite; the one
    that fails (a foreign recipient) must be rolled back alone and the others kept."""
    qids = [await commit(store, b"%d" % i) for i in range(4)]
    msgs = {m.queue_id: m for m in await store.claim_due(T0, 10, "w", 60)}
    foreign = msgs[qids[3]].recipients[0].id

    async def record(i: int):
        rid = foreign if i == 1 else msgs[qids[i]].recipients[0].id
        return await store.record_results(qids[i], [DeliveryResult(rid, True, reply="250 ok")],
                                          T0 + 1, None)

    outcomes = await asyncio.gather(*(record(i) for i in range(3)), return_exceptions=True)
    assert isinstance(outcomes[1], NotFoundError)
    assert outcomes[0] is None and outcomes[2] is None
    for i in (0, 2):
        m = await store.get_message(qids[i])
        assert [r.state for r in m.recipients] == [RecipientState.DELIVERED]
        assert len(await store.list_attempts(qids[i])) == 1
    untouched = await store.get_message(qids[1])
    assert untouched.recipients[0].attempts == 0
    assert await store.list_attempts(qids[1]) == []
    assert (await store.get_message(qids[3])).recipients[0].attempts == 0


async def test_prune_completed_removes_only_old_completed_messages(store):
    """Completed messages keep their rows for [queue] completed_retention_days, then go
    with their recipients and attempts; queued ones and recently completed ones stay."""
    import time
    now = time.time()
    old = [await commit(store, b"old%d" % i) for i in range(3)]
    recent = await commit(store, b"recent")
    active = await commit(store, b"active")
    msgs = {m.queue_id: m for m in await store.claim_due(now + 1, 10, "w", 60)}
    for qid in old:
        await store.record_results(qid, [DeliveryResult(msgs[qid].recipients[0].id, True,
                                                        reply="250 ok")], now - 40 * 86400, None)
    await store.record_results(recent, [DeliveryResult(msgs[recent].recipients[0].id, True,
                                                       reply="250 ok")], now + 3600, None)
    await store.record_results(active, [DeliveryResult(msgs[active].recipients[0].id, False,
                                                       reply="451 later")], now, now + 600)
    # received after the horizon: kept, however long ago it says it was completed
    assert await store.prune_completed(now - 86400) == 0
    assert all([await store.get_message(q) for q in old])
    # two messages per transaction: the three old ones take two rounds
    assert await store.prune_completed(now + 1, batch=2) == 3
    for qid in old:
        assert await store.get_message(qid) is None
        assert await store.list_attempts(qid) == []
    kept = await store.get_message(recent)
    assert kept is not None and kept.recipients[0].state is RecipientState.DELIVERED
    assert len(await store.list_attempts(recent)) == 1
    still = await store.get_message(active)
    assert still is not None and still.recipients[0].state is RecipientState.QUEUED
    assert len(await store.list_attempts(active)) == 1
    assert await store.prune_completed(now + 1) == 0


async def test_temporary_failure_without_next_time_is_due_now(store):
    qid = await commit(store, b"x")
    [m] = await store.claim_due(T0, 10, "w", 60)
    await store.record_results(qid, [DeliveryResult(m.recipients[0].id, False)], T0 + 7, None)
    assert await store.next_due_time() == T0 + 7


async def test_hold_and_release(store):
    qid = await commit(store, b"x", "a@x.example", "b@x.example")
    assert await store.hold(qid) == 2
    assert await store.claim_due(T0 + 1, 10, "w", 60) == []
    assert {m.queue_id for m in await store.list_messages(RecipientState.HELD)} == {qid}
    assert await store.release(qid, now=T0 + 5) == 2
    [m] = await store.claim_due(T0 + 5, 10, "w", 60)
    assert len(m.recipients) == 2


async def test_delete_message(store):
    qid = await commit(store, b"x")
    m = await store.get_message(qid)
    assert await store.delete_message(qid) is True
    assert await store.delete_message(qid) is False
    assert await store.get_message(qid) is None
    assert not has_body(store, m)
    assert await store.claim_due(T0 + 1, 10, "w", 60) == []


# ---------------------------------------------------------------- recovery

async def test_recover_on_a_clean_store_removes_nothing(store):
    await commit(store, b"x")
    assert await store.recover() == 0
    assert len(await store.list_messages()) == 1


async def test_recover_removes_partial_bodies_and_clears_leases(store, store_factory):
    await commit(store, b"x")
    await store.claim_due(T0, 10, "crashed-worker", 3600)
    half = store.new_blob()
    half.write(b"half a message" * 10_000)
    half.seal()  # as if the process died while committing: the file stays behind
    await store.close()                      # the "crashed" process is gone

    fresh = await store_factory()
    assert await fresh.recover() >= 1
    report = fresh.last_recovery
    assert report.tmp_files == 1 and report.leases_cleared == 1 and report.exclusive
    assert len(await fresh.claim_due(T0, 10, "w", 60)) == 1   # resumes without waiting


async def test_recover_with_another_store_open_keeps_young_leftovers(store, store_factory):
    other = await store_factory()
    live = other.new_blob()              # another process's session, mid-DATA
    live.write(b"in flight")
    assert await store.recover() == 0
    assert store.last_recovery.exclusive is False
    live.write(b" still fine")
    qid = await other.commit_message(env("bob@example.net"), live)
    m = await store.get_message(qid)
    assert store.read_body(m) == b"in flight still fine"


# ---------------------------------------------------------------- directory

async def test_domains_crud_case_insensitive(store):
    await store.add_domain("Example.ORG")
    await store.add_domain("example.net")
    assert await store.list_domains() == ["example.net", "example.org"]
    with pytest.raises(DuplicateError):
        await store.add_domain("EXAMPLE.org")
    assert await store.remove_domain("EXAMPLE.NET") is True
    assert await store.remove_domain("example.net") is False
    assert await store.list_domains() == ["example.org"]


async def test_mailboxes_crud(store):
    await store.add_domain("example.org")
    with pytest.raises(NotFoundError):
        await store.add_mailbox("bob@unknown.example", "h")
    await store.add_mailbox("Alice@Example.Org", "scrypt$1", quota_bytes=1000)
    await store.add_mailbox("bob@example.org", "")
    with pytest.raises(DuplicateError):
        await store.add_mailbox("ALICE@example.org", "x")
    mb = await store.get_mailbox("ALICE@EXAMPLE.ORG")
    assert (mb.address, mb.password_hash, mb.quota_bytes) == ("alice@example.org", "scrypt$1", 1000)
    assert mb.created_at > 0
    assert await store.get_mailbox("nobody@example.org") is None
    assert await store.set_password("alice@EXAMPLE.org", "scrypt$2") is True
    assert await store.set_password("nobody@example.org", "x") is False
    assert (await store.get_mailbox("alice@example.org")).password_hash == "scrypt$2"
    assert [m.address for m in await store.list_mailboxes()] == [
        "alice@example.org", "bob@example.org"]
    assert [m.address for m in await store.list_mailboxes("EXAMPLE.ORG")] == [
        "alice@example.org", "bob@example.org"]
    assert await store.list_mailboxes("other.example") == []
    assert await store.remove_mailbox("Bob@example.org") is True
    assert await store.remove_mailbox("bob@example.org") is False
    assert [m.address for m in await store.list_mailboxes()] == ["alice@example.org"]


async def test_remove_domain_refuses_while_not_empty(store):
    await store.add_domain("example.org")
    await store.add_mailbox("a@example.org", "")
    with pytest.raises(StoreError, match="mailbox"):
        await store.remove_domain("example.org")
    await store.remove_mailbox("a@example.org")
    await store.add_alias("@example.org", ["x@elsewhere.example"])
    with pytest.raises(StoreError, match="alias"):
        await store.remove_domain("example.org")
    await store.remove_alias("@EXAMPLE.org")
    assert await store.remove_domain("example.org") is True


async def test_aliases_crud(store):
    await store.add_domain("example.org")
    with pytest.raises(NotFoundError):
        await store.add_alias("x@unknown.example", ["a@example.org"])
    await store.add_alias("Postmaster@Example.org", ["Alice@example.org", "bob@example.org"])
    await store.add_alias("@example.org", ["catchall@example.org"])
    with pytest.raises(DuplicateError):
        await store.add_alias("postmaster@EXAMPLE.ORG", ["c@example.org"])
    aliases = {a.source: a.targets for a in await store.list_aliases()}
    assert aliases == {"postmaster@example.org": ("alice@example.org", "bob@example.org"),
                       "@example.org": ("catchall@example.org",)}
    assert await store.remove_alias("POSTMASTER@example.org") is True
    assert await store.remove_alias("postmaster@example.org") is False
    assert [a.source for a in await store.list_aliases()] == ["@example.org"]


async def test_directory_snapshot(store):
    await store.add_domain("example.org")
    await store.add_mailbox("a@example.org", "h", quota_bytes=5)
    await store.add_mailbox("b@example.org", "h")
    await store.add_alias("@example.org", ["a@example.org"])
    snap = await store.directory_snapshot()
    assert snap.version == await store.directory_version()
    assert snap.domains == frozenset({"example.org"})
    assert snap.mailboxes == frozenset({"a@example.org", "b@example.org"})
    assert snap.aliases == {"@example.org": ("a@example.org",)}
    assert snap.quotas == {"a@example.org": 5, "b@example.org": 0}


async def test_directory_version_changes_on_every_change_only(store, store_factory):
    seen = [await store.directory_version()]

    async def changed():
        v = await store.directory_version()
        assert v not in seen
        seen.append(v)

    async def unchanged():
        assert await store.directory_version() == seen[-1]

    await store.add_domain("example.org"); await changed()
    await store.list_domains(); await store.directory_snapshot(); await unchanged()
    with pytest.raises(DuplicateError):
        await store.add_domain("example.org")
    await unchanged()
    await store.add_mailbox("a@example.org", "h"); await changed()
    await store.set_password("a@example.org", "h2"); await changed()
    assert await store.set_password("zz@example.org", "h2") is False
    await unchanged()
    await store.add_alias("b@example.org", ["a@example.org"]); await changed()
    await store.remove_alias("b@example.org"); await changed()
    await store.remove_mailbox("a@example.org"); await changed()
    await store.remove_domain("example.org"); await changed()
    # another process sees the same counter
    other = await store_factory()
    assert await other.directory_version() == seen[-1]
    await other.add_domain("example.net")
    await changed()


async def test_invalid_directory_input(store):
    with pytest.raises(ValueError):
        await store.add_domain("")
    await store.add_domain("example.org")
    with pytest.raises(ValueError):
        await store.add_mailbox("no-at-sign", "h")
    with pytest.raises(ValueError):
        await store.add_alias("a@example.org", [])
