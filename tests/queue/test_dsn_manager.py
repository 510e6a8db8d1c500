"""Bounces from the queue manager: who gets a DSN, when, exactly once, and what it says.

Real SQLite store, real MaildirAgent, a fake clock and scripted agents; the DSN is
delivered like any message and read back from the sender's Maildir."""
import asyncio
import email
import os
import random
from email import policy

from mailwright.delivery.maildir import MaildirAgent
from mailwright.queue.manager import QueueManager
from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest, RecipientState
from mailwright.queue.retry import DAY, HOUR, RetrySchedule
from mailwright.routing.route import Route
from mailwright.store.sqlite import SQLiteStore
from store.bodies import has_body

T0 = 1_700_000_000.0
BODY = (b"From: alice@example.org\r\nTo: x@example.net\r\nSubject: report\r\n"
        b"Message-ID: <orig-1@example.org>\r\n\r\nHello\r\n")


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


class Router:
    """example.org is local (maildir); overrides per address; everything else smtp."""

    def __init__(self):
        self.overrides = {}

    def route(self, address):
        a = address.lower()
        if a in self.overrides:
            return self.overrides[a]
        if a.endswith("@example.org"):
            return Route("maildir", a, mailbox=a)
        return Route("smtp", a, next_hop=a.split("@")[1])


class ScriptedAgent:
    """A stand-in for the smtp agent: one DeliveryResult template per address."""
    transport = "smtp"

    def __init__(self):
        self.script = {}
        self.calls = []

    async def deliver(self, message, body_path, tasks):
        out = []
        for t in tasks:
            self.calls.append((message.envelope.sender, t.recipient.address))
            kw = self.script.get(t.recipient.address,
                                 dict(ok=True, reply="250 2.0.0 Ok", remote_mta="mx.example.net"))
            out.append(DeliveryResult(t.recipient.id, **kw))
        return out


class Env:
    def __init__(self, tmp_path):
        self.clock = Clock()
        self.store = SQLiteStore(tmp_path / "queue.db", tmp_path / "blobs")
        self.root = str(tmp_path / "mail")
        self.router = Router()
        self.smtp = ScriptedAgent()
        self.agents = {"maildir": MaildirAgent(self.root, "mx.example.org", fsync=False,
                                               directory=self.store),
                       "smtp": self.smtp}

    def manager(self, **kw):
        kw.setdefault("clock", self.clock)
        kw.setdefault("hostname", "mx.example.org")
        return QueueManager(self.store, self.router, self.agents,
                            kw.pop("retry", RetrySchedule(jitter=0, rng=random.Random(0))),
                            "test-owner", **kw)

    async def __aenter__(self):
        await self.store.open()
        await self.store.add_domain("example.org")
        for user in ("alice", "bob", "carol"):
            await self.store.add_mailbox(f"{user}@example.org", "")
        return self

    async def __aexit__(self, *exc):
        await self.store.close()

    async def commit(self, *rcpts, sender="alice@example.org", notify=None, orcpt=None,
                     ret=None, envid=None, body=BODY):
        blob = self.store.new_blob()
        blob.write(body)
        env = Envelope(sender=sender,
                       recipients=[RecipientRequest(r, notify, orcpt) for r in rcpts],
                       received_at=self.clock(), client_ip="192.0.2.1", helo="c.example.org",
                       ret=ret, envid=envid, size=len(body))
        return await self.store.commit_message(env, blob)

    def delivered(self, mailbox):
        user, domain = mailbox.split("@")
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.root, domain, user, sub)
            if os.path.isdir(d):
                out += [open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))]
        return out

    async def queued(self):
        return await self.store.list_messages()

    async def dsn_messages(self):
        """Every committed DSN (null sender), oldest first."""
        out = []
        for state in RecipientState:
            for m in await self.store.list_messages(state):
                if m.envelope.sender == "" and m.envelope.listener == "dsn":
                    out.append(m)
        return sorted({m.queue_id: m for m in out}.values(), key=lambda m: m.queue_id)


def run(test):
    def wrapper(tmp_path):
        async def main():
            async with Env(tmp_path) as env:
                await test(env)
        asyncio.run(asyncio.wait_for(main(), 30))
    wrapper.__name__ = test.__name__
    return wrapper


def parse_dsn(raw: bytes):
    m = email.message_from_bytes(raw, policy=policy.default)
    assert m.get_content_type() == "multipart/report"
    parts = m.get_payload()
    per_msg, *blocks = parts[1].get_payload()
    return m, per_msg, blocks, parts


# ---------------------------------------------------------------- failures

@run
async def test_permanent_failure_bounces_to_local_sender_maildir(env):
    env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
    qid = await env.commit("bob@example.org", orcpt="rfc822;Bob@Example.ORG", envid="E1")
    m = env.manager()
    assert await m.run_once() == 1            # fails bob, commits the DSN
    [dsn_msg] = await env.dsn_messages()
    assert dsn_msg.envelope.recipients[0].address == "alice@example.org"
    src = await env.store.get_message(qid)
    assert src.recipients[0].dsn_sent == "failed"
    assert src.recipients[0].dsn_queue_id == dsn_msg.queue_id
    assert src.recipients[0].dsn_pending is None
    assert await m.run_once() == 1            # delivers the DSN
    [raw] = env.delivered("alice@example.org")
    assert raw.startswith(b"Return-Path: <>\r\n")
    msg, per_msg, [block], parts = parse_dsn(raw[raw.index(b"From: Mail"):])
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert per_msg["Reporting-MTA"] == "dns; mx.example.org"
    assert per_msg["Original-Envelope-Id"] == "E1"
    assert block["Original-Recipient"] == "rfc822; Bob@Example.ORG"
    assert block["Final-Recipient"] == "rfc822; bob@example.org"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 Mailbox unavailable"
    assert parts[2].get_content_type() == "message/rfc822"
    assert parts[2].get_payload()[0]["Message-ID"] == "<orig-1@example.org>"
    # Both messages are complete and nothing is left to do; the DSN got no DSN.
    assert await env.queued() == []
    assert await m.run_once() == 0
    assert await env.store.next_due_time() is None


@run
async def test_body_is_kept_until_the_dsn_is_committed(env):
    env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
    qid = await env.commit("bob@example.org")
    msg = await env.store.get_message(qid)
    m = env.manager()
    m.send_dsns = lambda: asyncio.sleep(0, 0)     # simulate a crash before the DSN step
    await m.run_once()
    assert has_body(env.store, msg)
    [pending] = await env.store.pending_dsns()
    assert pending.queue_id == qid and pending.recipients[0].dsn_pending == "failed"
    assert [x.queue_id for x in await env.queued()] == [qid]  # not complete yet
    # A fresh manager (the restarted process) sends what is owed, once.
    m2 = env.manager()
    assert await m2.send_dsns() == 1
    assert await m2.send_dsns() == 0
    assert not has_body(env.store, msg)
    assert await env.store.pending_dsns() == []
    assert len(await env.dsn_messages()) == 1


@run
async def test_expired_recipient_bounces_with_4_4_7(env):
    await env.store.set_quota("bob@example.org", 10)
    await env.commit("bob@example.org")
    m = env.manager(delay_warning_after=0)
    await m.run_once()
    assert env.delivered("alice@example.org") == []
    env.clock.t = T0 + 5 * DAY
    await m.run_once()                      # expires, DSN committed
    await m.run_once()                      # DSN delivered
    [raw] = env.delivered("alice@example.org")
    _, _, [block], _ = parse_dsn(raw[raw.index(b"From: Mail"):])
    assert block["Action"] == "failed" and block["Status"] == "4.4.7"
    assert block["Diagnostic-Code"] == ("smtp; 451 4.4.7 Message expired; last error: "
                                        "452 4.2.2 Mailbox full")
    assert "Last-Attempt-Date" in block


@run
async def test_one_dsn_covers_all_failed_recipients_of_a_pass(env):
    for a in ("bob@example.org", "carol@example.org"):
        env.router.overrides[a] = Route("reject", a)
    await env.commit("bob@example.org", "carol@example.org")
    m = env.manager()
    await m.run_once()
    await m.run_once()
    [raw] = env.delivered("alice@example.org")
    _, _, blocks, _ = parse_dsn(raw[raw.index(b"From: Mail"):])
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bob@example.org",
                                                       "rfc822; carol@example.org"]


@run
async def test_mixed_results_only_the_failed_recipient_is_reported(env):
    env.smtp.script["x@example.net"] = dict(ok=False, permanent=True,
                                            reply="550 5.1.1 <x@example.net>: unknown",
                                            remote_mta="mx.example.net")
    env.smtp.script["y@example.net"] = dict(ok=False, reply="421 4.4.2 timeout")
    await env.commit("x@example.net", "y@example.net", "bob@example.org")
    m = env.manager()
    await m.run_once()
    await m.run_once()
    [raw] = env.delivered("alice@example.org")
    _, _, [block], _ = parse_dsn(raw[raw.index(b"From: Mail"):])
    assert block["Final-Recipient"] == "rfc822; x@example.net"
    assert block["Remote-MTA"] == "dns; mx.example.net"
    assert block["Status"] == "5.1.1"
    assert len(env.delivered("bob@example.org")) == 1


# ---------------------------------------------------------------- who gets none

@run
async def test_notify_never_and_success_only_get_no_failure_dsn(env):
    env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
    q1 = await env.commit("bob@example.org", notify=("NEVER",))
    q2 = await env.commit("bob@example.org", notify=("SUCCESS",))
    m = env.manager()
    await m.run_once()
    await m.run_once()
    assert env.delivered("alice@example.org") == []
    assert await env.dsn_messages() == []
    for q in (q1, q2):
        msg = await env.store.get_message(q)
        assert msg.recipients[0].state is RecipientState.FAILED
        assert msg.recipients[0].dsn_pending is None
    assert await env.queued() == []          # complete, bodies gone


@run
async def test_null_sender_never_gets_a_dsn(env):
    env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
    await env.commit("bob@example.org", sender="")
    m = env.manager()
    await m.run_once()
    assert await env.dsn_messages() == []
    assert await env.queued() == []


@run
async def test_a_failing_dsn_is_dropped_not_bounced(env):
    env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
    env.smtp.script["zed@example.net"] = dict(ok=False, permanent=True,
                                              reply="550 5.1.1 no such sender mailbox")
    await env.commit("bob@example.org", sender="zed@example.net")
    m = env.manager()
    await m.run_once()              # bounce committed, to zed@example.net
    await m.run_once()              # bounce fails at zed's MX
    await m.run_once()
    [dsn_msg] = await env.dsn_messages()
    got = await env.store.get_message(dsn_msg.queue_id)
    assert got.recipients[0].state is RecipientState.FAILED
    assert got.recipients[0].dsn_pending is None
    assert await env.store.pending_dsns() == []
    assert env.smtp.calls == [("", "zed@example.net")]


# ---------------------------------------------------------------- delays

@run
async def test_delay_warning_once_with_will_retry_until(env):
    await env.store.set_quota("bob@example.org", 10)
    qid = await env.commit("bob@example.org")
    m = env.manager(delay_warning_after=HOUR)
    await m.run_once()                              # T0: deferred, too early to warn
    assert await env.dsn_messages() == []
    for t in (T0 + HOUR + 1, T0 + 3 * HOUR, T0 + 8 * HOUR):
        env.clock.t = t
        await m.run_once()
        await m.run_once()
    got = env.delivered("alice@example.org")
    assert len(got) == 1                            # once per recipient
    msg, _, [block], parts = parse_dsn(got[0][got[0].index(b"From: Mail"):])
    assert msg["Subject"].startswith("Delayed Mail")
    assert (block["Action"], block["Status"]) == ("delayed", "4.2.2")
    assert block["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"   # T0 + 5 days
    assert parts[2].get_content_type() == "text/rfc822-headers"
    src = await env.store.get_message(qid)
    assert src.recipients[0].dsn_delayed and src.recipients[0].state is RecipientState.QUEUED


@run
async def test_delay_warning_respects_notify_and_zero(env):
    await env.store.set_quota("bob@example.org", 10)
    await env.commit("bob@example.org", notify=("FAILURE",))
    await env.commit("bob@example.org")
    m = env.manager(delay_warning_after=0)
    env.clock.t = T0 + 10 * HOUR
    await m.run_once()
    m2 = env.manager(delay_warning_after=HOUR)
    env.clock.t = T0 + 20 * HOUR
    await m2.run_once()
    await m2.run_once()
    dsns = await env.dsn_messages()
    assert len(dsns) == 1                            # only the default-NOTIFY message


# ---------------------------------------------------------------- success

@run
async def test_success_dsn_delivered_and_relayed(env):
    env.smtp.script["x@example.net"] = dict(ok=True, reply="250 2.0.0 Ok: queued as 9",
                                            remote_mta="mx.example.net", dsn_relayed=True)
    await env.commit("bob@example.org", "x@example.net", notify=("SUCCESS", "FAILURE"))
    m = env.manager()
    await m.run_once()
    await m.run_once()
    [raw] = env.delivered("alice@example.org")
    msg, _, blocks, parts = parse_dsn(raw[raw.index(b"From: Mail"):])
    assert msg["Subject"] == "Successful Mail Delivery Report"
    by = {b["Final-Recipient"]: b for b in blocks}
    assert by["rfc822; bob@example.org"]["Action"] == "delivered"
    relayed = by["rfc822; x@example.net"]
    assert (relayed["Action"], relayed["Status"]) == ("relayed", "2.0.0")
    assert relayed["Remote-MTA"] == "dns; mx.example.net"
    assert parts[2].get_content_type() == "text/rfc822-headers"


@run
async def test_default_notify_gets_no_success_dsn(env):
    await env.commit("bob@example.org")
    m = env.manager()
    await m.run_once()
    await m.run_once()
    assert env.delivered("alice@example.org") == []
    assert await env.dsn_messages() == []


# ---------------------------------------------------------------- attempts

@run
async def test_every_attempt_records_its_remote_reply_and_mta(env):
    env.smtp.script["x@example.net"] = dict(ok=False, reply="451 4.7.1 greylisted",
                                            remote_mta="mx1.example.net")
    qid = await env.commit("x@example.net", sender="")
    m = env.manager()
    await m.run_once()
    env.clock.t = T0 + HOUR
    env.smtp.script["x@example.net"] = dict(ok=True, reply="250 2.0.0 Ok",
                                            remote_mta="mx2.example.net", status="2.0.0")
    await m.run_once()
    attempts = await env.store.list_attempts(qid)
    assert [(a.reply, a.remote_mta) for a in attempts] == [
        ("451 4.7.1 greylisted", "mx1.example.net"), ("250 2.0.0 Ok", "mx2.example.net")]
    r = (await env.store.get_message(qid)).recipients[0]
    assert (r.remote_mta, r.status) == ("mx2.example.net", "2.0.0")


@run
async def test_two_managers_send_each_dsn_once(env):
    env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
    for _ in range(5):
        await env.commit("bob@example.org")
    m = env.manager()
    m.send_dsns = lambda: asyncio.sleep(0, 0)
    await m.run_once()
    a, b = env.manager(), env.manager()
    counts = await asyncio.gather(a.send_dsns(), b.send_dsns())
    assert sum(counts) == 5
    assert len(await env.dsn_messages()) == 5
    assert await env.store.pending_dsns() == []


@run
async def test_run_loop_reads_pending_dsns_only_when_one_may_be_owed(env):
    """The DSN step of ``run`` costs a store read on every pass otherwise: it looks only
    after results that owe a DSN, after a wake that may have set flags, and when its
    periodic scan is due; a wake for new mail (intake) does not make it look."""
    reads = []
    real = env.store.pending_dsns

    async def counted(limit=100):
        reads.append(limit)
        return await real(limit)
    env.store.pending_dsns = counted
    m = env.manager(idle_interval=0.05)
    task = asyncio.get_running_loop().create_task(m.run())
    try:
        await asyncio.sleep(0.2)
        first = len(reads)
        assert first >= 1                        # the first pass scans once
        for _ in range(5):                       # new mail: delivered, no DSN owed
            await env.commit("carol@example.org")
            m.mail_arrived()
            await asyncio.sleep(0.05)
        assert len(env.delivered("carol@example.org")) == 5
        assert len(reads) == first               # no scan for mail that owes nothing
        env.router.overrides["bob@example.org"] = Route("reject", "bob@example.org")
        await env.commit("bob@example.org")      # fails: owes a DSN
        m.mail_arrived()
        for _ in range(40):
            await asyncio.sleep(0.05)
            if env.delivered("alice@example.org"):
                break
        assert len(env.delivered("alice@example.org")) == 1      # the bounce, promptly
        assert len(reads) > first
        before = len(reads)
        m.wake()                                 # an operator's wake: look again
        await asyncio.sleep(0.1)
        assert len(reads) == before + 1
    finally:
        m.stop()
        await asyncio.wait_for(task, 5)
