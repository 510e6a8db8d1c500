"""HELO/rDNS rules, pregreet, rate limits, harvest guard, greylisting, content, spam score.

Real parts: the loopback DNS server and Resolver, SQLite policy state in tmp, the real
pipeline; time is injected where windows matter.
"""
from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass

import pytest

from dnsserver import DNSServer
from mailwright.config.antiabuse import ContentRule
from mailwright.net.dns import Resolver
from mailwright.policy.content import ContentCheck
from mailwright.policy.context import MessageView, SessionInfo, TransactionInfo
from mailwright.policy.greylist import GreylistCheck, client_network
from mailwright.policy.helo_checks import HeloCheck, RdnsCheck
from mailwright.policy.pipeline import Pipeline
from mailwright.policy.pregreet import PregreetCheck
from mailwright.policy.ratelimit import ConnectionRate, HarvestGuard, MessageRate, RecipientRate
from mailwright.policy.relay import RecipientCheck, RelayCheck
from mailwright.policy.spamscore import SCORE_FACT, SpamScoreStage, add_points, spam_header_filter
from mailwright.policy.verdict import Action
from mailwright.smtp.events import Address
from mailwright.store.policystate import SqlitePolicyState

ZONES = """
$ORIGIN test.
good.example.test. A 192.0.2.10
mail.good.example.test. A 192.0.2.20
liar.example.test. A 198.51.100.1
20.2.0.192.in-addr.arpa. PTR mail.good.example.test.
21.2.0.192.in-addr.arpa. PTR liar.example.test.
$ORIGIN in-addr.arpa.
"""


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as server:
        yield server


def session(ip="192.0.2.20", **kw) -> SessionInfo:
    return SessionInfo(client_ip=ip, client_port=1, listener="smtp", role="mx", **kw)


def run(result):
    """A check's answer: given at once (a Verdict), or awaited (it had to wait)."""
    if not inspect.isawaitable(result):
        return result

    async def wait():
        return await result
    return asyncio.run(wait())


# --------------------------------------------------------------------------- HELO / rDNS

def helo_check(dns, **rules):
    r = dict(ours="reject", non_fqdn="off", unresolvable="off")
    r.update(rules)
    return HeloCheck(Resolver([dns.nameserver], timeout=0.5, attempts=1),
                     our_names=["mx.example.test", "example.test"],
                     our_addresses=["192.0.2.1", "192.0.2.20", "0.0.0.0"], **r)


@pytest.mark.parametrize("helo, rules, expect", [
    ("mx.example.test", {}, (550, "5.7.1")),
    ("EXAMPLE.TEST.", {}, (550, "5.7.1")),
    ("[192.0.2.1]", {}, (550, "5.7.1")),
    ("[192.0.2.2]", {}, None),
    ("[192.0.2.20]", {}, None),         # the client's own address: true
    ("t", {"non_fqdn": "reject"}, (504, "5.5.2")),
    ("t", {}, None),
    ("nowhere.example.test", {"unresolvable": "reject"}, (550, "5.7.1")),
    ("nowhere.example.test", {"unresolvable": "tempfail"}, (450, "4.7.1")),
    ("good.example.test", {"unresolvable": "reject"}, None),
])
def test_helo_rules(dns, helo, rules, expect):
    v = run(helo_check(dns, **rules).check_helo(session(helo=helo)))
    if expect is None:
        assert v.action is Action.CONTINUE
    else:
        assert (v.reply.code, v.reply.enhanced) == expect and v.reason


def test_helo_rule_as_score_and_dns_failure_ignored(dns):
    s = session(helo="nowhere.example.test")
    assert run(helo_check(dns, unresolvable=1.5).check_helo(s)).action is Action.CONTINUE
    assert s.facts[SCORE_FACT] == {"helo-unresolvable": 1.5}
    dns.set_behaviour("slow.example.test", "timeout")
    try:
        s = session(helo="slow.example.test")
        assert run(helo_check(dns, unresolvable="reject").check_helo(s)).action \
            is Action.CONTINUE
    finally:
        dns.clear_behaviour()
    # trusted clients are not judged
    assert run(helo_check(dns).check_helo(session(helo="mx.example.test", trusted=True))) \
        .action is Action.CONTINUE


def rdns(dns, **kw):
    return RdnsCheck(Resolver([dns.nameserver], timeout=0.5, attempts=1),
                     **{"missing": "reject", "mismatch": "reject", **kw})


def test_rdns(dns):
    assert run(rdns(dns).check_connect(session("192.0.2.20"))).action is Action.CONTINUE
    v = run(rdns(dns).check_connect(session("192.0.2.99")))
    assert (v.reply.code, v.reply.enhanced) == (554, "5.7.25") and "no reverse DNS" in v.reason
    v = run(rdns(dns).check_connect(session("192.0.2.21")))
    assert (v.reply.code, v.reply.enhanced) == (554, "5.7.25") and "does not match" in v.reason
    s = session("192.0.2.21")
    assert run(rdns(dns, mismatch=2.0).check_connect(s)).action is Action.CONTINUE
    assert s.facts[SCORE_FACT] == {"rdns-mismatch": 2.0}
    v = run(rdns(dns, missing="tempfail").check_connect(session("192.0.2.99")))
    assert (v.reply.code, v.reply.enhanced) == (421, "4.7.25")


# --------------------------------------------------------------------------- pregreet

def test_early_talker_during_delay():
    s = session()

    async def scenario():
        check = PregreetCheck(0.2, "reject")
        task = asyncio.ensure_future(check.check_connect(s))
        await asyncio.sleep(0.05)
        s.early_talker = True          # what the driver sets when bytes arrive early
        return await task
    v = run(scenario())
    assert (v.reply.code, v.reply.enhanced) == (554, "5.5.1") and "before the greeting" in v.reason
    polite = session()
    assert run(PregreetCheck(0.05, "reject").check_connect(polite)).action is Action.CONTINUE
    s2 = session(early_talker=True)
    assert run(PregreetCheck(0, 3.0).check_connect(s2)).action is Action.CONTINUE
    assert s2.facts[SCORE_FACT] == {"early-talker": 3.0}


# --------------------------------------------------------------------------- rate limits

class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_connection_and_message_rates(tmp_path):
    st = SqlitePolicyState(str(tmp_path / "ps.db"))
    clock = Clock()
    conn = ConnectionRate(st, 3, 60, clock)
    got = [run(conn.check_connect(session("192.0.2.5"))).action for _ in range(4)]
    assert got == [Action.CONTINUE] * 3 + [Action.TEMPFAIL]
    v = run(conn.check_connect(session("192.0.2.5")))
    assert (v.reply.code, v.reply.enhanced) == (421, "4.7.0")
    assert run(conn.check_connect(session("192.0.2.6"))).action is Action.CONTINUE
    clock.t += 60
    assert run(conn.check_connect(session("192.0.2.5"))).action is Action.CONTINUE

    msg = MessageRate(st, per_ip=0, per_sender=2, per_user=0, window=60, clock=clock)
    t = TransactionInfo(sender="Spam@Example.test")
    got = [run(msg.check_mail(session(), t)).action for _ in range(3)]
    assert got == [Action.CONTINUE, Action.CONTINUE, Action.TEMPFAIL]
    v = run(msg.check_mail(session(), TransactionInfo(sender="spam@example.test")))
    assert (v.reply.code, v.reply.enhanced) == (450, "4.7.0") and "sender" in v.reason
    user = MessageRate(st, per_ip=0, per_sender=0, per_user=1, window=60, clock=clock)
    assert run(user.check_mail(session(auth_user="a@x"), t)).action is Action.CONTINUE
    assert run(user.check_mail(session(auth_user="A@x"), t)).action is Action.TEMPFAIL
    assert run(user.check_mail(session(), t)).action is Action.CONTINUE   # no user: no key
    assert run(conn.check_connect(session("192.0.2.5", trusted=True))).action is Action.CONTINUE


def test_recipient_rate_and_harvest_guard(tmp_path):
    from mailwright.routing.directory import Kind, Resolution
    st = SqlitePolicyState(str(tmp_path / "ps.db"))
    clock = Clock()
    rr = RecipientRate(st, 2, clock)
    known = Resolution(Kind.LOCAL, ("bob@example.test",))
    rcpt = Address("bob", "example.test")
    s = session()
    got = [run(rr.check_rcpt(s, TransactionInfo(), rcpt, known)).action for _ in range(3)]
    assert got == [Action.CONTINUE, Action.CONTINUE, Action.TEMPFAIL]
    clock.t += 3600
    assert run(rr.check_rcpt(s, TransactionInfo(), rcpt, known)).action is Action.CONTINUE

    # The guard in a real pipeline, ahead of the recipient check (its ``early`` place).
    pipe = Pipeline(rcpt=[RelayCheck(), HarvestGuard(3), RecipientCheck()])
    unknown = Resolution(Kind.UNKNOWN, ())
    s = session()
    replies = []
    for i in range(3):
        v = run(pipe.check_rcpt(s, TransactionInfo(), Address(f"u{i}", "example.test"),
                                unknown))
        replies.append((v.reply.code, v.reply.enhanced))
    assert replies == [(550, "5.1.1"), (550, "5.1.1"), (421, "4.7.0")]
    assert run(pipe.check_rcpt(session(), TransactionInfo(), rcpt, known)).action \
        is Action.CONTINUE


# --------------------------------------------------------------------------- greylisting

@dataclass
class Spf:
    result: str


def test_greylisting(tmp_path):
    from mailwright.routing.directory import Kind, Resolution
    st = SqlitePolicyState(str(tmp_path / "ps.db"))
    clock = Clock()
    gl = GreylistCheck(st, delay=300, retry_window=3600, max_age=86400, auto_allow=2,
                       spf_domains=["bigmail.test"], clock=clock)
    known = Resolution(Kind.LOCAL, ("bob@example.test",))
    rcpt = Address("bob", "example.test")

    def attempt(ip="192.0.2.20", sender="a@x.test", **facts):
        txn = TransactionInfo(sender=sender, facts=dict(facts))
        return run(gl.check_rcpt(session(ip), txn, rcpt, known))
    v = attempt()
    assert v.action is Action.TEMPFAIL and (v.reply.code, v.reply.enhanced) == (450, "4.7.1")
    clock.t += 100
    assert attempt().action is Action.TEMPFAIL                 # too early
    clock.t += 250
    assert attempt("192.0.2.77").action is Action.CONTINUE     # same /24 retries: passes
    assert attempt().action is Action.CONTINUE
    assert attempt(sender="other@x.test").action is Action.TEMPFAIL   # other triplet
    # SPF pass from an allowlisted domain (or subdomain) skips; other results do not
    assert attempt(sender="n@mx.bigmail.test", spf=Spf("pass")).action is Action.CONTINUE
    assert attempt(sender="n@bigmail.test", spf=Spf("softfail")).action is Action.TEMPFAIL
    # auto-allow: a second passed retry from the network allows it outright
    clock.t += 300
    assert attempt(sender="other@x.test").action is Action.CONTINUE   # 2nd retry passes
    assert attempt(sender="third@x.test").action is Action.CONTINUE   # now allowlisted
    assert attempt("198.51.100.1", sender="third@x.test").action is Action.TEMPFAIL
    assert client_network("2001:db8:1:2:3::1") == "2001:db8:1:2::/64"
    assert run(gl.check_rcpt(session("203.0.113.1", auth_user="u"), TransactionInfo(),
                             rcpt, known)).action is Action.CONTINUE


# --------------------------------------------------------------------------- content

EXE_MAIL = (b"From: a@b.test\r\nTo: bob@example.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
            b"--XX\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''Rechnung%20Q1.PDF.exe\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--XX--\r\n")
PLAIN_MAIL = (b"From: a@b.test\r\nSubject: Cheap\r\n pills today\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n"
              + __import__("base64").b64encode("Buy cheap viagra – now".encode()) + b"\r\n")


def view(raw: bytes) -> MessageView:
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return MessageView(head, len(raw), lambda: raw)


def content(rules=(), action="reject", exts=("exe",), types=("application/x-msdownload",)):
    return ContentCheck(rules, extensions=exts, mime_types=types, attachment_action=action)


def test_attachments():
    v = content().check_data(session(), TransactionInfo(), view(EXE_MAIL))
    assert (v.reply.code, v.reply.enhanced) == (554, "5.7.1") and ".exe" in v.reason
    assert content(exts=("scr",)).check_data(session(), TransactionInfo(), view(EXE_MAIL)) \
        .action is Action.CONTINUE
    by_type = EXE_MAIL.replace(b"application/octet-stream", b"application/x-msdownload") \
        .replace(b".exe", b".bin")
    assert content().check_data(session(), TransactionInfo(), view(by_type)).action \
        is Action.REJECT
    m = view(EXE_MAIL)          # "quarantine": held in the store, not the Junk folder
    assert content(action="quarantine").check_data(session(), TransactionInfo(), m).action \
        is Action.CONTINUE
    assert (m.hold_reason, m.quarantine_reason) == ("content rule attachment", "")
    m = view(EXE_MAIL)          # "junk": the Junk folder
    assert content(action="junk").check_data(session(), TransactionInfo(), m).action \
        is Action.CONTINUE
    assert (m.hold_reason, m.quarantine_reason) == ("", "content rule attachment")
    # a plain message is judged from its header alone (never read)
    never = MessageView(b"Subject: x\r\n\r\n", 10, lambda: pytest.fail("body read"))
    assert content().check_data(session(), TransactionInfo(), never).action is Action.CONTINUE


def test_header_and_body_rules():
    rules = (ContentRule(name="pills", part="header", pattern=r"^subject:.*cheap pills",
                         action="reject"),
             ContentRule(name="pharma", part="body", pattern=r"cheap viagra", action="tag",
                         score=4.0))
    txn = TransactionInfo()
    v = content(rules).check_data(session(), txn, view(PLAIN_MAIL))
    assert v.action is Action.REJECT and "pills" in v.reason   # header unfolded, first rule
    tag_only = (rules[1],)
    txn = TransactionInfo()
    v = content(tag_only).check_data(session(), txn, view(PLAIN_MAIL))
    assert v.action is Action.CONTINUE and txn.facts[SCORE_FACT] == {"pharma": 4.0}
    m = view(PLAIN_MAIL)
    stage = SpamScoreStage(tag=5.0, quarantine=0, reject=0)
    assert stage.check_data(session(), txn, m).action is Action.CONTINUE
    prefix = m.prefix()
    assert b"X-Spam-Flag: YES\r\n" in prefix and b"tests=pharma(4.0)" in prefix


def test_spam_score_thresholds_and_filter():
    def judge(points, **thresholds):
        s, txn, m = session(), TransactionInfo(), view(PLAIN_MAIL)
        add_points(s.facts, "dnsbl", points[0])
        add_points(txn.facts, "helo-unresolvable", points[1])
        t = {"tag": 5.0, "quarantine": 0.0, "reject": 0.0, **thresholds}
        return SpamScoreStage(**t).check_data(s, txn, m), m
    v, m = judge((1.0, 1.5))
    assert v.action is Action.CONTINUE and m.spam_score == 2.5
    assert b"X-Spam-Flag" not in m.prefix() and b"X-Spam-Status: No, score=2.5" in m.prefix()
    v, m = judge((4.0, 1.5))
    assert b"X-Spam-Flag: YES" in m.prefix() and not m.quarantine_reason and not m.hold_reason
    v, m = judge((4.0, 4.5), quarantine=8)
    assert (m.hold_reason, m.quarantine_reason) == ("spam score 8.5", "")
    v, m = judge((4.0, 4.5), quarantine=9, junk=6)
    assert (m.hold_reason, m.quarantine_reason) == ("", "spam score 8.5")
    v, m = judge((4.0, 5.5), quarantine=9, junk=6)            # both reached: held
    assert (m.hold_reason, m.quarantine_reason) == ("spam score 9.5", "")
    v, m = judge((10.0, 5.0), reject=15)
    assert (v.reply.code, v.reply.enhanced) == (554, "5.7.1") and "score 15.0" in v.reason
    s, txn, m = session(), TransactionInfo(), view(PLAIN_MAIL)
    assert SpamScoreStage(tag=5, quarantine=0, reject=1).check_data(s, txn, m).action \
        is Action.CONTINUE and m.prefix() == b""
    forged = b"X-Spam-Flag: NO\r\nSubject: a\r\nX-Spam-Status: No,\r\n score=-100\r\n\r\n"
    assert spam_header_filter(forged) == b"Subject: a\r\n\r\n"
