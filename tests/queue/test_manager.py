"""QueueManager against the real SQLite store, a real MaildirAgent and a fake clock."""
import asyncio
import os
import random
import time
import sqlite3

import pytest

from mailwright.delivery.discard import DiscardAgent
from mailwright.delivery.maildir import MaildirAgent
from mailwright.queue.manager import BODY_ERROR_REPLY, QueueManager
from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest, RecipientState
from mailwright.queue.retry import DAY, RetrySchedule
from mailwright.routing.route import Route
from mailwright.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
BODY = b"From: alice@example.com\r\nSubject: test\r\n\r\nHello\r\n"


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


class Router:
    """example.org is local (maildir); overrides per address; everything else smtp."""

    def __init__(self, **overrides):
        self.overrides = overrides

    def route(self, address):
        a = address.lower()
        if a in self.overrides:
            return self.overrides[a]
        if a.endswith("@example.org"):
            return Route("maildir", a, mailbox=a)
        return Route("smtp", a, next_hop=a.split("@")[1])


class Env:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.clock = Clock()
        self.store = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs")
        self.root = str(tmp_path / "mail")
        self.maildir = MaildirAgent(self.root, "mx.example.org", fsync=False,
                                    directory=self.store)
        self.router = Router()
        self.agents = {"maildir": self.maildir, "discard": DiscardAgent()}

    def manager(self, **kw):
        kw.setdefault("clock", self.clock)
        return QueueManager(self.store, self.router, self.agents,
                            kw.pop("retry", RetrySchedule(jitter=0, rng=random.Random(0))),
                            "test-owner", **kw)

    async def __aenter__(self):
        await self.store.open()
        await self.store.add_domain("example.org")
        for user in ("bob", "carol"):
            await self.store.add_mailbox(f"{user}@example.org", "")
        return self

    async def __aexit__(self, *exc):
        await self.store.close()

    async def commit(self, *rcpts, sender="alice@example.com", body=BODY, received_at=None):
        blob = self.store.new_blob()
        blob.write(body)
        env = Envelope(sender=sender, recipients=[RecipientRequest(r) for r in rcpts],
                       received_at=self.clock() if received_at is None else received_at,
                       client_ip="192.0.2.1",
                       helo="mail.example.com", size=len(body))
        return await self.store.commit_message(env, blob)

    async def states(self, qid):
        msg = await self.store.get_message(qid)
        return {r.address: (r.state, r.attempts, r.last_reply) for r in msg.recipients}

    def delivered(self, mailbox):
        user, domain = mailbox.split("@")
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.root, domain, user, sub)
            if os.path.isdir(d):
                out += [open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))]
        return out


def run(test):
    """Decorator: run an async test body with an opened Env."""
    def wrapper(tmp_path):
        async def main():
            async with Env(tmp_path) as env:
                await test(env)
        asyncio.run(asyncio.wait_for(main(), 30))
    wrapper.__name__ = test.__name__
    return wrapper


@run
async def test_commit_then_deliver_to_maildir(env):
    qid = await env.commit("bob@example.org")
    m = env.manager()
    assert await m.run_once() == 1
    state, attempts, reply = (await env.states(qid))["bob@example.org"]
    assert state is RecipientState.DELIVERED and attempts == 1 and reply.startswith("250")
    [data] = env.delivered("bob@example.org")
    assert data.startswith(b"Return-Path: <alice@example.com>\r\n")
    assert data.endswith(b"\r\n" + BODY)
    assert f" id {qid}".encode() in data
    assert await m.run_once() == 0              # nothing left to do
    assert await env.store.next_due_time() is None


@run
async def test_a_body_the_store_cannot_give_defers_the_recipients(env):
    """Kept inline (the default for a small body), the body comes with the claim; when
    the store has lost it (here: its row removed behind the store's back) nothing is
    delivered and the recipients are deferred with a reply that says why."""
    qid = await env.commit("bob@example.org")
    assert (await env.store.get_message(qid)).blob_path == ""     # inline
    conn = sqlite3.connect(env.store.path)
    with conn:
        assert conn.execute("DELETE FROM bodies WHERE queue_id = ?", (qid,)).rowcount == 1
    conn.close()
    m = env.manager()
    assert await m.run_once() == 1
    state, attempts, reply = (await env.states(qid))["bob@example.org"]
    assert (state, attempts, reply) == (RecipientState.QUEUED, 1, BODY_ERROR_REPLY)
    assert env.delivered("bob@example.org") == []


@run
async def test_quota_failure_is_retried_after_backoff(env):
    await env.store.set_quota("bob@example.org", 10)
    qid = await env.commit("bob@example.org")
    m = env.manager()
    assert await m.run_once() == 1
    state, attempts, reply = (await env.states(qid))["bob@example.org"]
    assert (state, attempts, reply) == (RecipientState.QUEUED, 1, "452 4.2.2 Mailbox full")
    assert await env.store.next_due_time() == T0 + 300   # first back-off, no jitter
    assert env.delivered("bob@example.org") == []

    env.clock.t = T0 + 299
    assert await m.run_once() == 0              # not due yet
    env.clock.t = T0 + 300
    assert await m.run_once() == 1              # still full: second back-off doubles
    assert (await env.states(qid))["bob@example.org"][:2] == (RecipientState.QUEUED, 2)
    assert await env.store.next_due_time() == T0 + 300 + 600

    await env.store.set_quota("bob@example.org", 0)  # the user made room
    env.clock.t = T0 + 900
    assert await m.run_once() == 1
    assert (await env.states(qid))["bob@example.org"][:2] == (RecipientState.DELIVERED, 3)
    assert len(env.delivered("bob@example.org")) == 1


class ExplodingAgent:
    transport = "maildir"

    def __init__(self):
        self.calls = 0

    async def deliver(self, message, body_path, tasks):
        self.calls += 1
        raise RuntimeError("boom")


@run
async def test_agent_exception_defers_and_nothing_is_lost(env):
    qid = await env.commit("bob@example.org", "carol@example.org")
    env.agents["maildir"] = ExplodingAgent()
    m = env.manager()
    assert await m.run_once() == 1
    for state, attempts, reply in (await env.states(qid)).values():
        assert (state, attempts) == (RecipientState.QUEUED, 1)
        assert reply.startswith("451 4.3.0") and "boom" not in reply
    # Fixed (e.g. after a restart with a working agent): the retry delivers both.
    env.clock.t = T0 + 300
    m2 = env.manager()
    m2.agents["maildir"] = env.maildir
    assert await m2.run_once() == 1
    assert {s for s, _, _ in (await env.states(qid)).values()} == {RecipientState.DELIVERED}


@run
async def test_mixed_transports_and_routing_outcomes(env):
    env.router.overrides.update({
        "gone@example.org": Route("reject", "gone@example.org"),
        "later@example.org": Route("defer", "later@example.org"),
        "sink@example.org": Route("discard", "sink@example.org"),
        "lmtp@example.org": Route("lmtp", "lmtp@example.org"),
        "noroute@example.org": None,
    })
    qid = await env.commit("bob@example.org", "remote@example.net", "gone@example.org",
                           "later@example.org", "sink@example.org", "lmtp@example.org",
                           "noroute@example.org")
    assert await env.manager().run_once() == 1
    s = await env.states(qid)
    assert s["bob@example.org"][0] is RecipientState.DELIVERED
    assert s["sink@example.org"][0] is RecipientState.DELIVERED
    assert s["gone@example.org"] == (RecipientState.FAILED, 1, "550 5.1.1 Mailbox unavailable")
    assert s["remote@example.net"] == (RecipientState.QUEUED, 1,
                                       "451 4.4.0 No outbound transport configured")
    assert s["later@example.org"][0] is RecipientState.QUEUED
    assert s["later@example.org"][2].startswith("451 4.4.0")
    assert s["lmtp@example.org"][0] is RecipientState.QUEUED
    assert s["lmtp@example.org"][2].startswith("451 4.3.5")
    assert s["noroute@example.org"] == (RecipientState.QUEUED, 1, "451 4.4.0 No route to recipient")
    assert len(env.delivered("bob@example.org")) == 1


@run
async def test_mailbox_removed_after_acceptance_fails_permanently(env):
    qid = await env.commit("carol@example.org")
    await env.store.remove_mailbox("carol@example.org")
    assert await env.manager().run_once() == 1
    assert (await env.states(qid))["carol@example.org"] == (
        RecipientState.FAILED, 1, "550 5.1.1 Mailbox unavailable")


@run
async def test_expiry_turns_temporary_into_failed_4_4_7(env):
    await env.store.set_quota("bob@example.org", 10)
    # Null sender: no bounce is queued (tests/queue/test_dsn_manager.py covers bounces).
    qid = await env.commit("bob@example.org", "carol@example.org", sender="")
    env.clock.t = T0 + 5 * DAY + 1   # e.g. a long outage: first attempt after the deadline
    assert await env.manager().run_once() == 1
    s = await env.states(qid)
    state, _, reply = s["bob@example.org"]
    assert state is RecipientState.FAILED
    assert reply == "451 4.4.7 Message expired; last error: 452 4.2.2 Mailbox full"
    assert s["carol@example.org"][0] is RecipientState.DELIVERED
    assert await env.store.next_due_time() is None
    # The FAILED recipient stays recorded for the DSN generator.
    failed = await env.store.list_messages(RecipientState.FAILED)
    assert [m.queue_id for m in failed] == [qid]


@run
async def test_last_attempt_is_clamped_to_the_deadline(env):
    await env.store.set_quota("bob@example.org", 10)
    qid = await env.commit("bob@example.org", sender="")   # no delay warning / bounce
    env.clock.t = T0 + 5 * DAY - 60
    assert await env.manager().run_once() == 1
    assert await env.store.next_due_time() == T0 + 5 * DAY
    env.clock.t = T0 + 5 * DAY
    assert await env.manager().run_once() == 1
    assert (await env.states(qid))["bob@example.org"][0] is RecipientState.FAILED


class SloppyAgent:
    """Returns a result for the first task only, plus a stray and a duplicate."""
    transport = "maildir"

    async def deliver(self, message, body_path, tasks):
        first = tasks[0].recipient.id
        return [DeliveryResult(first, ok=True, reply="250 2.0.0 ok"),
                DeliveryResult(first, ok=False, permanent=True, reply="550 dup"),
                DeliveryResult(999_999, ok=True, reply="250 stray")]


@run
async def test_missing_results_become_temporary_failures(env):
    env.agents["maildir"] = SloppyAgent()
    qid = await env.commit("bob@example.org", "carol@example.org")
    assert await env.manager().run_once() == 1
    s = await env.states(qid)
    assert s["bob@example.org"][0] is RecipientState.DELIVERED
    assert s["carol@example.org"] == (RecipientState.QUEUED, 1,
                                      "451 4.3.0 Delivery agent returned no result")


class SlowAgent:
    transport = "maildir"

    def __init__(self, delay):
        self.delay = delay
        self.active = 0
        self.peak = 0

    async def deliver(self, message, body_path, tasks):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return [DeliveryResult(t.recipient.id, ok=True, reply="250 2.0.0 ok") for t in tasks]


@run
async def test_agent_timeout_defers(env):
    env.agents["maildir"] = SlowAgent(10)
    qid = await env.commit("bob@example.org")
    assert await env.manager(delivery_timeout=0.05).run_once() == 1
    assert (await env.states(qid))["bob@example.org"] == (
        RecipientState.QUEUED, 1, "451 4.4.1 Delivery attempt timed out")


@run
async def test_concurrency_is_bounded(env):
    agent = SlowAgent(0.02)
    env.agents["maildir"] = agent
    qids = [await env.commit("bob@example.org") for _ in range(6)]
    m = env.manager(concurrency=2, batch=4)
    assert await m.run_once() == 4
    assert await m.run_once() == 2
    assert agent.peak == 2
    for qid in qids:
        assert (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED


class CountingAgent(SlowAgent):
    def __init__(self, delay):
        super().__init__(delay)
        self.calls: dict[str, int] = {}

    async def deliver(self, message, body_path, tasks):
        self.calls[message.queue_id] = self.calls.get(message.queue_id, 0) + 1
        return await super().deliver(message, body_path, tasks)


@run
async def test_message_whose_lease_ran_out_while_waiting_is_not_delivered_twice(env):
    """Claimed messages wait for a delivery slot; if a lease runs out meanwhile the next
    claim takes the message again, and the manager must not start a second delivery."""
    agent = CountingAgent(0.4)
    env.agents["maildir"] = agent
    qids = [await env.commit("bob@example.org", received_at=time.time()) for _ in range(3)]
    m = env.manager(clock=time.time, concurrency=1, batch=4, lease_seconds=0.3,
                    delivery_timeout=5, idle_interval=0.05)
    task = asyncio.create_task(m.run())
    for _ in range(300):
        states = [(await env.states(q))["bob@example.org"][0] for q in qids]
        if all(st is RecipientState.DELIVERED for st in states):
            break
        await asyncio.sleep(0.01)
    m.stop()
    await asyncio.wait_for(task, 5)
    assert agent.calls == {q: 1 for q in qids}
    assert agent.peak == 1


@run
async def test_run_loop_wakes_on_commit_and_stops(env):
    m = env.manager(idle_interval=30)       # without wake() it would sleep 30 s
    task = asyncio.create_task(m.run())
    await asyncio.sleep(0.05)                # idle now
    qid = await env.commit("bob@example.org")
    m.wake()
    for _ in range(200):
        if (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED:
            break
        await asyncio.sleep(0.01)
    assert (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED
    m.stop()
    await asyncio.wait_for(task, 2)


@run
async def test_run_loop_sleeps_until_next_due_then_retries(env):
    await env.store.set_quota("bob@example.org", 10)
    qid = await env.commit("bob@example.org", received_at=time.time())
    # A short first back-off in real seconds: the loop must wake by itself.
    m = env.manager(clock=time.time, idle_interval=30,
                    retry=RetrySchedule(first=0.2, jitter=0, rng=random.Random(0)))
    task = asyncio.create_task(m.run())
    for _ in range(100):
        if (await env.states(qid))["bob@example.org"][1] >= 1:
            break
        await asyncio.sleep(0.01)
    await env.store.set_quota("bob@example.org", 0)
    for _ in range(200):
        if (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED:
            break
        await asyncio.sleep(0.01)
    m.stop()
    await asyncio.wait_for(task, 2)
    assert (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED


class FlakyStore:
    """Delegates to the real store; claim_due fails the first time."""

    def __init__(self, store):
        self._store = store
        self.failures = 1

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def claim_due(self, *a, **kw):
        if self.failures:
            self.failures -= 1
            raise OSError("database is locked")
        return await self._store.claim_due(*a, **kw)


@run
async def test_run_loop_survives_store_errors(env):
    qid = await env.commit("bob@example.org")
    flaky = FlakyStore(env.store)
    m = QueueManager(flaky, env.router, env.agents, RetrySchedule(), "o", clock=env.clock,
                     error_backoff=0.01, idle_interval=30)
    task = asyncio.create_task(m.run())
    for _ in range(200):
        if (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED:
            break
        await asyncio.sleep(0.01)
    m.stop()
    await asyncio.wait_for(task, 2)
    assert flaky.failures == 0
    assert (await env.states(qid))["bob@example.org"][0] is RecipientState.DELIVERED


@run
async def test_crash_after_maildir_link_does_not_duplicate(env):
    """Simulate a crash between the Maildir link and record_results: the lease expires,
    another pass claims the message again, and the agent reports the earlier copy."""
    qid = await env.commit("bob@example.org")
    msg = (await env.store.claim_due(env.clock(), 10, "crashed-worker", 60))[0]
    from mailwright.delivery.base import DeliveryTask
    tasks = [DeliveryTask(msg, msg.recipients[0], env.router.route("bob@example.org"))]
    [res] = await env.maildir.deliver(msg, await env.store.fetch_body(msg), tasks)
    assert res.ok
    # ... process dies here; results never recorded. The lease holds until it expires:
    m = env.manager()
    assert await m.run_once() == 0
    env.clock.t = T0 + 61
    assert await m.run_once() == 1
    state, _, reply = (await env.states(qid))["bob@example.org"]
    assert state is RecipientState.DELIVERED and "Already" in reply
    assert len(env.delivered("bob@example.org")) == 1


def test_invalid_parameters():
    with pytest.raises(ValueError):
        QueueManager(None, None, {}, RetrySchedule(), "o", batch=0)
