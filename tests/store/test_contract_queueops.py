"""Contract tests for operator queue control and quarantine (``base.Store``, schema 7/9 in
SQLite, 5/6 in PostgreSQL): every backend.

Selection follows ``QueueFilter`` (each filter alone and combined with ``state``);
hold/release/retry/delete/bounce change exactly the matched recipients and report every
matching message; a bounce skips a message under a live lease; the audit row lists the ids
actually changed. A quarantined envelope commits with every recipient HELD and is never
claimed until released, which clears its mark."""
from __future__ import annotations


import pytest

from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest, RecipientState
from mailwright.store.base import AuditRecord, QueueFilter
from store.bodies import has_body

T0 = 1_700_000_000.0
BODY = b"Subject: q\r\n\r\nbody\r\n"
QUEUED, HELD, FAILED, DELIVERED = (RecipientState.QUEUED, RecipientState.HELD,
                                   RecipientState.FAILED, RecipientState.DELIVERED)


async def commit(store, *rcpts: str, sender: str = "alice@example.org", at: float = T0,
                 quarantine: str = "") -> str:
    blob = store.new_blob()
    blob.write(BODY)
    env = Envelope(sender=sender, recipients=[RecipientRequest(r) for r in rcpts],
                   received_at=at, size=len(BODY), quarantine=quarantine)
    return await store.commit_message(env, blob)


async def rcpt(store, qid: str, address: str):
    [r] = [r for r in (await store.get_message(qid)).recipients if r.address == address]
    return r


async def states(store, qid: str) -> dict[str, RecipientState]:
    return {r.address: r.state for r in (await store.get_message(qid)).recipients}


async def select(store, **kw) -> list[str]:
    return [m.queue_id for m in await store.queue_select(QueueFilter(**kw))]


# ---------------------------------------------------------------- selection

@pytest.fixture
def corpus(store, runner):
    """a: alice -> bob@remote.test (queued, last reply "Mailbox Busy"), carol@other.test
    (delivered); b: <> -> dave@remote.test at T0+100; c: Eve@Example.NET ->
    frank@other.test at T0+200; d: alice -> gina@remote.test, delivered (complete)."""
    async def make():
        a = await commit(store, "bob@remote.test", "carol@other.test")
        b = await commit(store, "dave@remote.test", sender="", at=T0 + 100)
        c = await commit(store, "frank@other.test", sender="Eve@Example.NET", at=T0 + 200)
        d = await commit(store, "gina@remote.test", at=T0 + 300)
        bob, carol = (await rcpt(store, a, "bob@remote.test")).id, \
            (await rcpt(store, a, "carol@other.test")).id
        await store.record_results(a, [
            DeliveryResult(bob, ok=False, reply="451 4.2.1 Mailbox Busy"),
            DeliveryResult(carol, ok=True, reply="250 ok")], T0 + 1, T0 + 500)
        await store.record_results(d, [DeliveryResult(
            (await rcpt(store, d, "gina@remote.test")).id, ok=True, reply="250 ok")],
            T0 + 301, None)
        return a, b, c, d
    return runner.run(make())


async def test_select_default_is_every_message_still_queued_in_id_order(store, corpus):
    a, b, c, d = corpus
    assert await select(store) == sorted([a, b, c])
    assert len((await store.queue_select(QueueFilter()))[0].recipients) == 2   # all of them
    assert [m.queue_id for m in await store.queue_select(QueueFilter(), limit=2)] \
        == sorted([a, b, c])[:2]
    assert await select(store, queue_ids=(d, a)) == sorted([a, d])   # ids: completed too
    assert await select(store, queue_ids=("0" * 22,)) == []


async def test_select_by_state_sender_recipient_domain_age_and_error(store, corpus):
    a, b, c, d = corpus
    assert await select(store, state=DELIVERED) == sorted([a, d])
    assert await select(store, state=QUEUED) == sorted([a, b, c])
    assert await select(store, state=FAILED) == []
    assert await select(store, sender="alice@example.org") == [a]
    assert await select(store, sender="eve@example.net") == [c]      # case-insensitive
    assert await select(store, sender="@example.net") == [c]
    assert await select(store, sender="@example.org") == [a]
    assert await select(store, sender="") == [b]                      # the null sender
    assert await select(store, recipient="bob@remote.test") == [a]
    assert await select(store, recipient="@remote.test") == sorted([a, b])
    assert await select(store, domain="other.test") == sorted([a, c])
    assert await select(store, received_before=T0 + 100) == sorted([a, b])
    assert await select(store, received_after=T0 + 100) == sorted([b, c])
    assert await select(store, received_after=T0 + 50, received_before=T0 + 150) == [b]
    assert await select(store, error="mailbox busy") == [a]
    assert await select(store, error="no such text") == []
    # the SAME recipient must pass the recipient conditions and the state
    assert await select(store, recipient="carol@other.test", state=QUEUED) == []
    assert await select(store, recipient="carol@other.test", state=DELIVERED) == [a]
    assert await select(store, domain="remote.test", state=DELIVERED) == [d]
    assert await select(store, quarantined=True) == []


# ---------------------------------------------------------------- hold, release, retry

async def test_hold_release_retry_touch_only_matched_recipients(store):
    a = await commit(store, "bob@remote.test", "carol@other.test")
    b = await commit(store, "dave@remote.test")
    dave = (await rcpt(store, b, "dave@remote.test")).id
    await store.record_results(b, [DeliveryResult(dave, ok=False, reply="451 later")],
                               T0 + 1, T0 + 1000)
    flt = QueueFilter(domain="remote.test")

    assert await store.queue_hold(flt) == {a: 1, b: 1}
    assert await states(store, a) == {"bob@remote.test": HELD, "carol@other.test": QUEUED}
    assert await store.queue_hold(flt) == {a: 0, b: 0}    # every match listed, 0 = no change
    [m] = await store.claim_due(T0 + 2000, 10, "w", 60)  # only carol is claimable
    assert m.queue_id == a and [r.address for r in m.recipients] == ["carol@other.test"]
    await store.record_results(a, [DeliveryResult(m.recipients[0].id, ok=True)], T0 + 2001,
                               None)

    assert await store.queue_retry(flt, T0 + 5) == {a: 0, b: 0}   # held: not retried
    assert await store.queue_release(flt, T0 + 50) == {a: 1, b: 1}
    assert (await rcpt(store, a, "bob@remote.test")).next_attempt_at == T0      # MIN(old, now)
    assert (await rcpt(store, b, "dave@remote.test")).next_attempt_at == T0 + 50
    assert await store.queue_release(flt, T0 + 50) == {a: 0, b: 0}
    assert await states(store, a) == {"bob@remote.test": QUEUED,
                                      "carol@other.test": DELIVERED}

    assert await store.queue_retry(QueueFilter(queue_ids=(b,)), T0 + 60) == {b: 1}
    assert (await rcpt(store, b, "dave@remote.test")).next_attempt_at == T0 + 60
    assert await store.queue_retry(QueueFilter(recipient="carol@other.test"), T0 + 70) \
        == {a: 0}                                        # delivered: not queued
    assert {m.queue_id for m in await store.claim_due(T0 + 60, 10, "w", 60)} == {a, b}


async def test_hold_by_recipient_leaves_other_recipients_deliverable(store):
    a = await commit(store, "bob@remote.test", "carol@remote.test")
    assert await store.queue_hold(QueueFilter(recipient="carol@remote.test")) == {a: 1}
    assert await states(store, a) == {"bob@remote.test": QUEUED, "carol@remote.test": HELD}
    assert await store.queue_release(QueueFilter(queue_ids=(a,)), T0 + 1) == {a: 1}
    [m] = await store.claim_due(T0 + 1, 10, "w", 60)
    assert len(m.recipients) == 2


# ---------------------------------------------------------------- delete

async def test_delete_removes_rows_history_and_body(store):
    a = await commit(store, "bob@remote.test")
    b = await commit(store, "carol@other.test", sender="eve@example.net")
    bob = (await rcpt(store, a, "bob@remote.test")).id
    await store.record_results(a, [DeliveryResult(bob, ok=False, reply="451 x")], T0 + 1,
                               T0 + 10)
    msg = await store.get_message(a)
    assert store.read_body(msg) == BODY
    assert await store.queue_delete(QueueFilter(sender="alice@example.org")) == [a]
    assert await store.get_message(a) is None
    assert await store.list_attempts(a) == []
    assert not has_body(store, msg)
    assert await store.queue_delete(QueueFilter(queue_ids=(a,))) == []
    assert await select(store) == [b]                       # the other one untouched
    assert await store.claim_due(T0 + 100, 10, "w", 60) != []


# ---------------------------------------------------------------- bounce

async def test_bounce_fails_listed_recipients_and_flags_the_dsn(store):
    a = await commit(store, "bob@remote.test", "carol@other.test", "dan@other.test")
    bob, carol, dan = [r.id for r in (await store.get_message(a)).recipients]
    await store.record_results(a, [DeliveryResult(dan, ok=True, reply="250 ok")], T0 + 1,
                               None)
    await store.queue_hold(QueueFilter(recipient="carol@other.test"))
    done, skipped = await store.queue_bounce(
        {a: {bob: "failed", carol: None, dan: "failed"}}, "550 5.0.0 deleted", "5.0.0",
        T0 + 10)
    assert (done, skipped) == ({a: 2}, [])                  # dan was already final
    m = await store.get_message(a)
    by = {r.address: r for r in m.recipients}
    for addr, owed in (("bob@remote.test", "failed"), ("carol@other.test", None)):
        r = by[addr]
        assert r.state is FAILED and r.last_reply == "550 5.0.0 deleted"
        assert (r.status, r.final_at, r.remote_mta, r.dsn_pending) == ("5.0.0", T0 + 10, "",
                                                                      owed)
        assert r.attempts == 0 and r.last_attempt_at is None
    assert by["dan@other.test"].state is DELIVERED
    assert [x.recipient_id for x in await store.list_attempts(a)] == [dan]   # no new rows
    assert has_body(store, m) and await select(store) == [a]  # a DSN is owed
    assert [p.queue_id for p in await store.pending_dsns()] == [a]
    assert await store.queue_bounce({a: {bob: "failed"}}, "550 x", "5.0.0", T0 + 11) \
        == ({a: 0}, [])


async def test_bounce_without_dsn_completes_the_message(store):
    a = await commit(store, "bob@remote.test")
    [bob] = [r.id for r in (await store.get_message(a)).recipients]
    msg = await store.get_message(a)
    assert await store.queue_bounce({a: {bob: None}, "0" * 22: {1: None}}, "550 x", "5.0.0",
                                    T0 + 10) == ({a: 1}, [])
    assert await select(store) == []
    assert await select(store, state=FAILED) == [a]
    assert not has_body(store, msg)


async def test_bounce_skips_a_message_under_a_live_lease(store):
    a = await commit(store, "bob@remote.test")
    [bob] = [r.id for r in (await store.get_message(a)).recipients]
    [m] = await store.claim_due(T0, 10, "w", 60)            # lease until T0 + 60
    assert await store.queue_bounce({a: {bob: "failed"}}, "550 x", "5.0.0", T0 + 30) \
        == ({}, [a])
    assert (await rcpt(store, a, "bob@remote.test")).state is QUEUED
    assert await store.queue_bounce({a: {bob: "failed"}}, "550 x", "5.0.0", T0 + 61) \
        == ({a: 1}, [])                                     # expired: the bounce wins
    assert (await rcpt(store, a, "bob@remote.test")).state is FAILED


async def test_bounce_refuses_an_unknown_dsn_action_and_changes_nothing(store):
    a = await commit(store, "bob@remote.test")
    [bob] = [r.id for r in (await store.get_message(a)).recipients]
    audit = AuditRecord(at=T0, user="op", action="bounce")
    with pytest.raises(ValueError):
        await store.queue_bounce({a: {bob: "bogus"}}, "550 x", "5.0.0", T0 + 1, audit=audit)
    assert (await rcpt(store, a, "bob@remote.test")).state is QUEUED
    assert await store.list_audit() == []


# ---------------------------------------------------------------- audit

async def test_audit_rows_name_the_ids_actually_changed(store):
    a = await commit(store, "bob@remote.test")
    b = await commit(store, "carol@remote.test")
    await store.queue_hold(QueueFilter(queue_ids=(b,)))
    rec = AuditRecord(at=T0 + 1, user="op", action="hold", detail="domain=remote.test",
                      ids=("ignored",))
    assert await store.queue_hold(QueueFilter(domain="remote.test"), audit=rec) == {a: 1, b: 0}
    [row] = await store.list_audit()
    assert (row.at, row.user, row.action, row.detail, row.ids) == (
        T0 + 1, "op", "hold", "domain=remote.test", (a,))
    assert row.id > 0

    await store.queue_release(QueueFilter(domain="remote.test"), T0 + 2,
                              audit=AuditRecord(at=T0 + 2, user="op", action="release"))
    await store.queue_retry(QueueFilter(queue_ids=(a,)), T0 + 3,
                            audit=AuditRecord(at=T0 + 3, user="op", action="retry"))
    [bob] = [r.id for r in (await store.get_message(a)).recipients]
    await store.queue_bounce({a: {bob: None}}, "550 x", "5.0.0", T0 + 4,
                             audit=AuditRecord(at=T0 + 4, user="op", action="bounce"))
    deleted = await store.queue_delete(
        QueueFilter(queue_ids=(a, b)), audit=AuditRecord(at=T0 + 5, user="op", action="delete"))
    assert sorted(deleted) == sorted([a, b])
    await store.add_audit(AuditRecord(at=T0 + 6, user="root", action="flush", detail="all"))
    rows = await store.list_audit()
    assert [(r.action, r.ids) for r in rows] == [
        ("hold", (a,)), ("release", tuple(sorted([a, b]))), ("retry", (a,)),
        ("bounce", (a,)), ("delete", tuple(sorted([a, b]))), ("flush", ())]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    last2 = await store.list_audit(limit=2)                 # newest two, oldest first
    assert [(r.action, r.user) for r in last2] == [("delete", "op"), ("flush", "root")]


# ---------------------------------------------------------------- quarantine

async def test_quarantined_commit_is_held_with_its_reason_and_never_claimed(store):
    q = await commit(store, "bob@remote.test", "carol@other.test",
                     quarantine="content rule bad-words")
    n = await commit(store, "dave@remote.test")
    m = await store.get_message(q)
    assert m.envelope.quarantine == "content rule bad-words"
    assert {r.state for r in m.recipients} == {HELD}
    assert (await store.get_message(n)).envelope.quarantine == ""
    assert store.read_body(m) == BODY
    assert [x.queue_id for x in await store.claim_due(T0 + 10_000, 10, "w", 60)] == [n]
    assert await select(store, quarantined=True) == [q]
    assert await select(store, quarantined=True, queue_ids=(n,)) == []
    assert await select(store, quarantined=True, state=HELD) == [q]
    assert await select(store) == sorted([q, n])           # still in the queue


async def test_releasing_a_quarantined_message_clears_the_mark_and_makes_it_due(store):
    q = await commit(store, "bob@remote.test", "carol@other.test", quarantine="spam score 9.0")
    flt = QueueFilter(quarantined=True, queue_ids=(q,))
    # a partial release leaves it in quarantine
    assert await store.queue_release(QueueFilter(quarantined=True, domain="remote.test"),
                                     T0 + 5) == {q: 1}
    assert (await store.get_message(q)).envelope.quarantine == "spam score 9.0"
    rec = AuditRecord(at=T0 + 6, user="op", action="quarantine-release")
    assert await store.queue_release(flt, T0 + 6, audit=rec) == {q: 1}
    m = await store.get_message(q)
    assert m.envelope.quarantine == "" and {r.state for r in m.recipients} == {QUEUED}
    assert await select(store, quarantined=True) == []
    assert await store.queue_release(flt, T0 + 7) == {}     # no longer quarantined
    [row] = await store.list_audit()
    assert (row.action, row.ids) == ("quarantine-release", (q,))
    [c] = await store.claim_due(T0 + 6, 10, "w", 60)
    assert c.queue_id == q and len(c.recipients) == 2
    assert store.read_body(c) == BODY


async def test_releasing_one_quarantined_message_by_id_clears_the_mark(store):
    q = await commit(store, "bob@remote.test", quarantine="spam score 9.0")
    assert await store.release(q, now=T0 + 5) == 1
    m = await store.get_message(q)
    assert m.envelope.quarantine == "" and m.recipients[0].state is QUEUED
    assert await select(store, quarantined=True) == []


async def test_deleting_a_quarantined_message(store):
    q = await commit(store, "bob@remote.test", quarantine="rspamd quarantine")
    n = await commit(store, "dave@remote.test")
    msg = await store.get_message(q)
    assert await store.queue_delete(QueueFilter(quarantined=True, queue_ids=(q, n))) == [q]
    assert await store.get_message(q) is None
    assert not has_body(store, msg)
    assert await store.get_message(n) is not None


async def test_quarantine_survives_reopening_the_store(store, store_factory):
    q = await commit(store, "bob@remote.test", quarantine="content rule x")
    again = await store_factory()
    m = await again.get_message(q)
    assert m.envelope.quarantine == "content rule x" and m.recipients[0].state is HELD
    assert await again.claim_due(T0 + 10_000, 10, "w", 60) == []


async def test_quarantine_expiry_deletes_only_old_messages_still_in_quarantine(store):
    from mailwright.admin.quarantine import QuarantineOps
    from mailwright.admin.service import InvalidInput
    day = 86400.0
    old = await commit(store, "bob@remote.test", at=T0, quarantine="content rule x")
    young = await commit(store, "bob@remote.test", at=T0 + 25 * day, quarantine="score 9")
    released = await commit(store, "bob@remote.test", at=T0, quarantine="score 8")
    await store.release(released, now=T0 + 1)          # left quarantine: an ordinary message
    plain = await commit(store, "bob@remote.test", at=T0)
    ops = QuarantineOps(store, user="mailwright", clock=lambda: T0 + 31 * day)
    assert await ops.expire(30) == [old]
    assert await store.get_message(old) is None
    for kept in (young, released, plain):
        assert await store.get_message(kept) is not None
    [row] = [a for a in await store.list_audit() if a.action == "quarantine-expire"]
    assert row.user == "mailwright" and row.ids == (old,)
    assert await ops.expire(30) == []                   # nothing more to do
    with pytest.raises(InvalidInput):
        await ops.expire(0)
