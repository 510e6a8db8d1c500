"""The policy pipeline: per-step registration, ordering, merging, failures, recording."""
from __future__ import annotations

import asyncio

import pytest

from mailwright.policy.context import MessageView, SessionInfo, TransactionInfo
from mailwright.policy.pipeline import Pipeline
from mailwright.policy.verdict import CONTINUE, Action, Verdict
from mailwright.smtp import catalog
from mailwright.smtp.replies import Reply

DENY = Reply(550, "5.7.1", "No")


class Step:
    def __init__(self, name, verdict=CONTINUE, delay=0.0, boom=False):
        self.name, self.verdict, self.delay, self.boom, self.calls = name, verdict, delay, boom, 0

    async def _answer(self):
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.boom:
            raise RuntimeError("kaput")
        return self.verdict

    def check_connect(self, session):
        return self._answer()

    def check_mail(self, session, txn):
        return self._answer()

    def check_data(self, session, txn, message):
        return self._answer()


def session():
    return SessionInfo("192.0.2.1", 1234, "mx", "mx")


def run(coro):
    return asyncio.run(coro)


def test_registration_is_explicit_and_checked():
    with pytest.raises(TypeError):
        Pipeline(helo=[Step("a")])          # Step has no check_helo
    p = Pipeline(connect=[Step("a")])
    assert p.has("connect") and not p.has("helo") and not p.has("data")


def test_first_refusal_ends_the_step_and_later_checks_do_not_run():
    later = Step("later")
    p = Pipeline(mail=[Step("ok", Verdict(Action.CONTINUE, "ok", reason="fine")),
                       Step("no", Verdict(Action.REJECT, "no", DENY, "listed")), later])
    txn = TransactionInfo()
    verdict = run(p.check_mail(session(), txn))
    assert verdict.action is Action.REJECT and verdict.reply == DENY
    assert later.calls == 0
    assert [v.check for v in txn.verdicts] == ["ok", "no"]     # recorded for the trace


def test_accept_ends_the_step_positively():
    later = Step("later", Verdict(Action.REJECT, "later", DENY, "x"))
    p = Pipeline(connect=[Step("allow", Verdict(Action.ACCEPT, "allow", reason="allowlisted")),
                          later])
    s = session()
    assert run(p.check_connect(s)).action is Action.ACCEPT
    assert later.calls == 0 and s.verdicts[0].reason == "allowlisted"


def test_a_check_that_raises_is_a_tempfail_never_a_pass():
    p = Pipeline(data=[Step("boom", boom=True)])
    msg = MessageView(b"Subject: x\r\n\r\n", 14, lambda: b"Subject: x\r\n\r\n")
    verdict = run(p.check_data(session(), TransactionInfo(), msg))
    assert verdict.action is Action.TEMPFAIL and verdict.reply == catalog.TEMP_LOCAL_ERROR


def test_a_slow_check_times_out_as_tempfail():
    p = Pipeline(connect=[Step("slow", delay=5)], timeout=0.05)
    verdict = run(p.check_connect(session()))
    assert verdict.action is Action.TEMPFAIL and "timed out" in verdict.reason


def test_rcpt_keeps_the_old_keyword():
    class R:
        name = "r"

        def check_rcpt(self, s, t, rcpt, res):
            return CONTINUE
    p = Pipeline(rcpt_checks=[R()])
    assert len(p.rcpt_checks) == 1


def test_message_view_reads_once_and_collects_fields():
    reads = []

    def reader():
        reads.append(1)
        return b"From: a@example.org\r\nSubject: x\r\n y\r\n\r\nbody\r\n"
    header = b"From: a@example.org\r\nSubject: x\r\n y\r\n\r\n"
    view = MessageView(header, 40, reader)
    assert view.read() == view.read() and len(reads) == 1
    assert view.header_values("subject") == ["x y"]
    assert view.header_values("From") == ["a@example.org"]
    view.add_header(b"X-A: 1")
    view.add_header(b"X-B: 2\r\n")
    assert view.prefix() == b"X-A: 1\r\nX-B: 2\r\n"
    view.quarantine("first")
    view.quarantine("second")
    assert view.quarantine_reason == "first"


class Quick:
    """A check that answers at once (no coroutine), as most do most of the time."""

    def __init__(self, name, verdict=CONTINUE, boom=False):
        self.name, self.verdict, self.boom, self.calls = name, verdict, boom, 0

    def check_mail(self, session, txn):
        self.calls += 1
        if self.boom:
            raise RuntimeError("kaput")
        return self.verdict


def test_begin_answers_at_once_when_no_check_waits():
    checks = [Quick("a", Verdict(Action.CONTINUE, "a", reason="fine")), Quick("b")]
    p = Pipeline(mail=checks)
    txn = TransactionInfo()
    verdict = p.begin_mail(session(), txn)
    assert verdict is CONTINUE                      # a Verdict, not an awaitable
    assert [c.calls for c in checks] == [1, 1]
    assert [v.check for v in txn.verdicts] == ["a"]
    p2 = Pipeline(mail=[Quick("no", Verdict(Action.REJECT, "no", DENY, "listed")), Quick("x")])
    refused = p2.begin_mail(session(), TransactionInfo())
    assert refused.action is Action.REJECT and p2.steps["mail"][1].calls == 0
    boom = Pipeline(mail=[Quick("boom", boom=True)]).begin_mail(session(), TransactionInfo())
    assert boom.action is Action.TEMPFAIL and boom.check == "boom"


def test_begin_hands_the_rest_of_the_step_to_an_awaitable_in_order():
    order = []

    class Recorder(Quick):
        def check_mail(self, session, txn):
            order.append(self.name)
            return super().check_mail(session, txn)

    class Waiting(Step):
        def check_mail(self, session, txn):
            order.append(self.name)
            return self._answer()

    first = Recorder("first", Verdict(Action.CONTINUE, "first", reason="1"))
    waits = Waiting("waits", Verdict(Action.CONTINUE, "waits", reason="2"), delay=0.01)
    after = Recorder("after", Verdict(Action.CONTINUE, "after", reason="3"))
    last = Recorder("last", Verdict(Action.REJECT, "last", DENY, "4"))
    never = Recorder("never")
    p = Pipeline(mail=[first, waits, after, last, never])
    txn = TransactionInfo()
    pending = p.begin_mail(session(), txn)
    assert not isinstance(pending, Verdict)
    assert order == ["first", "waits"]              # nothing after the waiting check yet
    verdict = run(pending)
    assert verdict.action is Action.REJECT and verdict.check == "last"
    assert order == ["first", "waits", "after", "last"]
    assert [v.check for v in txn.verdicts] == ["first", "waits", "after", "last"]


def test_the_awaited_remainder_times_out_naming_the_waiting_check():
    class Waiting(Step):
        def check_mail(self, session, txn):
            return self._answer()

    p = Pipeline(mail=[Quick("quick"), Waiting("slow", delay=5.0), Quick("after")],
                 timeout=0.05)
    pending = p.begin_mail(session(), TransactionInfo())
    verdict = run(pending)
    assert verdict.action is Action.TEMPFAIL and "slow timed out" in verdict.reason
    assert p.steps["mail"][2].calls == 0
