"""Contract tests for the DSN bookkeeping of ``base.Store`` (schema 3): every backend.

The owed flag is written with the result, cleared with the DSN's commit, and a message
keeps its body until its DSNs are out."""
from __future__ import annotations

import os

import pytest

from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest, RecipientState
from store.bodies import has_body

T0 = 1_700_000_000.0
BODY = b"Subject: hi\r\n\r\nbody\r\n"


async def commit(store, *rcpts, sender="alice@example.org", body=BODY):
    blob = store.new_blob()
    blob.write(body)
    env = Envelope(sender=sender, recipients=[RecipientRequest(r) for r in rcpts],
                   received_at=T0, size=len(body))
    return await store.commit_message(env, blob)


async def commit_dsn(store, source, covered, to="alice@example.org", data=b"Subject: dsn\r\n\r\nx\r\n"):
    blob = store.new_blob()
    blob.write(data)
    env = Envelope(sender="", recipients=[RecipientRequest(to)], received_at=T0 + 10,
                   protocol="local", size=len(data), listener="dsn")
    return await store.commit_dsn(env, blob, source, covered, T0 + 10)


async def ids(store, qid):
    return [r.id for r in (await store.get_message(qid)).recipients]


async def test_owed_flag_keeps_the_message_and_body_until_the_dsn(store):
    qid = await commit(store, "bob@example.net", "carol@example.net")
    b, c = await ids(store, qid)
    await store.claim_due(T0, 10, "w", 60)
    await store.record_results(qid, [
        DeliveryResult(b, ok=False, permanent=True, reply="550 5.1.1 no", remote_mta="mx.b",
                       status="5.1.1"),
        DeliveryResult(c, ok=True, reply="250 ok")], T0 + 1, None, dsn={b: "failed"})
    msg = await store.get_message(qid)
    assert [r.dsn_pending for r in msg.recipients] == ["failed", None]
    assert (msg.recipients[0].remote_mta, msg.recipients[0].status) == ("mx.b", "5.1.1")
    assert has_body(store, msg)
    assert [m.queue_id for m in await store.list_messages()] == [qid]   # not complete
    [pending] = await store.pending_dsns()
    assert [r.id for r in pending.recipients] == [b]
    assert store.read_body(pending) == BODY

    dsn_id = await commit_dsn(store, qid, {b: "failed"})
    assert dsn_id and dsn_id != qid
    msg = await store.get_message(qid)
    assert msg.recipients[0].dsn_pending is None
    assert (msg.recipients[0].dsn_sent, msg.recipients[0].dsn_queue_id) == ("failed", dsn_id)
    assert not has_body(store, msg)                           # complete now
    assert [m.queue_id for m in await store.list_messages()] == [dsn_id]
    dsn = await store.get_message(dsn_id)
    assert dsn.envelope.sender == "" and dsn.envelope.listener == "dsn"
    assert dsn.recipients[0].address == "alice@example.org"
    assert store.read_body(dsn).startswith(b"Subject: dsn")
    assert await store.pending_dsns() == []


async def test_commit_dsn_is_exactly_once(store):
    qid = await commit(store, "bob@example.net")
    [b] = await ids(store, qid)
    await store.record_results(qid, [DeliveryResult(b, ok=False, permanent=True, reply="550")],
                               T0 + 1, None, dsn={b: "failed"})
    first = await commit_dsn(store, qid, {b: "failed"})
    assert first is not None
    tmp_before = set(os.listdir(store.blobs.tmp)) if hasattr(store, "blobs") else None
    assert await commit_dsn(store, qid, {b: "failed"}) is None       # already settled
    assert await commit_dsn(store, qid, {b: "delayed"}) is None
    if tmp_before is not None:
        assert set(os.listdir(store.blobs.tmp)) == tmp_before       # blob discarded
    dsns = [m for m in await store.list_messages(RecipientState.QUEUED)
            if m.envelope.sender == ""]
    assert [m.queue_id for m in dsns] == [first]


async def test_stale_commit_changes_nothing(store):
    """All or nothing: one stale recipient rolls back the others' flags too."""
    qid = await commit(store, "bob@example.net", "carol@example.net")
    b, c = await ids(store, qid)
    await store.record_results(qid, [DeliveryResult(b, ok=False, permanent=True, reply="550"),
                                     DeliveryResult(c, ok=False, reply="451")],
                               T0 + 1, T0 + 100, dsn={b: "failed", c: "delayed"})
    assert await commit_dsn(store, qid, {b: "failed", c: "failed"}) is None
    msg = await store.get_message(qid)
    assert [r.dsn_pending for r in msg.recipients] == ["failed", "delayed"]
    assert msg.recipients[1].dsn_delayed and not msg.recipients[0].dsn_delayed


async def test_delay_flag_and_later_failure_supersedes(store):
    qid = await commit(store, "bob@example.net")
    [b] = await ids(store, qid)
    await store.record_results(qid, [DeliveryResult(b, ok=False, reply="451 later")],
                               T0 + 1, T0 + 100, dsn={b: "delayed"})
    r = (await store.get_message(qid)).recipients[0]
    assert (r.dsn_pending, r.dsn_delayed, r.state) == ("delayed", True, RecipientState.QUEUED)
    await store.record_results(qid, [DeliveryResult(b, ok=False, permanent=True, reply="550")],
                               T0 + 200, None, dsn={b: "failed"})
    r = (await store.get_message(qid)).recipients[0]
    assert (r.dsn_pending, r.dsn_delayed) == ("failed", True)


async def test_clear_dsn_completes_without_sending(store):
    qid = await commit(store, "bob@example.net")
    [b] = await ids(store, qid)
    await store.record_results(qid, [DeliveryResult(b, ok=False, permanent=True, reply="550")],
                               T0 + 1, None, dsn={b: "failed"})
    msg = await store.get_message(qid)
    assert has_body(store, msg)
    assert await store.clear_dsn(qid, {b: "failed"}, T0 + 2) is True
    assert await store.clear_dsn(qid, {b: "failed"}, T0 + 2) is False
    assert not has_body(store, msg)
    r = (await store.get_message(qid)).recipients[0]
    assert r.dsn_pending is None and r.dsn_sent == "" and r.dsn_queue_id is None
    assert await store.list_messages() == []


async def test_unknown_dsn_action_is_refused(store):
    qid = await commit(store, "bob@example.net")
    [b] = await ids(store, qid)
    with pytest.raises(ValueError):
        await store.record_results(qid, [DeliveryResult(b, ok=False, permanent=True)],
                                   T0 + 1, None, dsn={b: "bounced"})


async def test_attempts_record_the_remote_mta(store):
    qid = await commit(store, "bob@example.net")
    [b] = await ids(store, qid)
    await store.record_results(qid, [DeliveryResult(b, ok=False, reply="421 busy",
                                                    remote_mta="mx1.example.net")],
                               T0 + 1, T0 + 100)
    [a] = await store.list_attempts(qid)
    assert (a.reply, a.remote_mta) == ("421 busy", "mx1.example.net")
