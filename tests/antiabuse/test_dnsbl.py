"""DNS block/allow lists against a real DNS server on loopback (RFC 5782)."""
from __future__ import annotations

import asyncio
import time

import pytest

from dnsserver import DNSServer
from mailwright.config.antiabuse import parse_list_spec
from mailwright.net.dns import Resolver
from mailwright.policy.context import MessageView, SessionInfo, TransactionInfo
from mailwright.policy.content import links
from mailwright.policy.dnsbl import (
    ALLOWLISTED, DnsblCheck, ListLookup, RhsblCheck, domain_query_name, ip_query_name,
)
from mailwright.policy.spamscore import SCORE_FACT
from mailwright.policy.verdict import Action

ZONES = {
    "zen.test": """
2.0.0.127 A 127.0.0.2
4.2.0.192 A 127.0.0.4
4.2.0.192 A 127.0.0.10
9.2.0.192 A 127.0.0.1
8.2.0.192 A 127.255.255.254
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 A 127.0.0.3
""",
    "bl2.test": """
4.2.0.192 A 127.0.0.2
""",
    "wl.test": """
7.2.0.192 A 127.0.10.2
""",
    "dbl.test": """
bad.example A 127.0.1.2
spammy-link.example A 127.0.1.2
""",
    "slow.test": "",
}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as server:
        yield server


def resolver(dns) -> Resolver:
    return Resolver([dns.nameserver], timeout=0.5, attempts=1)


def session(ip="192.0.2.4", **kw) -> SessionInfo:
    return SessionInfo(client_ip=ip, client_port=1, listener="smtp", role="mx", **kw)


def test_query_names_follow_rfc5782():
    # §2.1: IPv4 octets reversed; §2.4: IPv6 as 32 reversed nibbles.
    assert ip_query_name("192.0.2.99", "zen.test") == "99.2.0.192.zen.test"
    assert ip_query_name("::ffff:192.0.2.99", "zen.test") == "99.2.0.192.zen.test"
    assert ip_query_name("2001:db8::1", "zen.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test")
    # §2.3: domain lists
    assert domain_query_name("Bad.Example.", "dbl.test") == "bad.example.dbl.test"
    assert domain_query_name("[192.0.2.1]", "dbl.test") is None
    assert domain_query_name("localhost", "dbl.test") is None
    assert domain_query_name("a" * 64 + ".example", "dbl.test") is None


def test_filters_and_weights_parse():
    spec = parse_list_spec("zen.test=127.0.0.[2..11]*3")
    assert spec.weight == 3 and spec.matches("127.0.0.2") and spec.matches("127.0.0.11")
    assert not spec.matches("127.0.0.1") and not spec.matches("127.0.0.12")
    assert parse_list_spec("wl.test=127.0.[0..255].[1;2;3]*-2").matches("127.0.10.2")
    plain = parse_list_spec("zen.test")
    assert plain.weight == 1 and plain.matches("127.0.0.1")
    assert not plain.matches("127.255.255.254") and not plain.matches("10.0.0.2")
    for bad in ("zen.test=127.0.0", "zen.test=127.0.0.[9..2]", "not a zone", "z.test*0"):
        with pytest.raises(ValueError):
            parse_list_spec(bad)


def run_connect(dns, specs, ip, threshold=1.0, allow=-1.0, timeout=2.0):
    check = DnsblCheck(ListLookup(resolver(dns), timeout), [parse_list_spec(s) for s in specs],
                       threshold, allow)
    s = session(ip)
    return asyncio.run(check.check_connect(s)), s


def test_listed_client_refused_with_list_named(dns):
    verdict, _ = run_connect(dns, ["zen.test=127.0.0.[2..11]*2", "bl2.test"], "192.0.2.4",
                             threshold=3)
    assert verdict.action is Action.REJECT
    assert (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    assert "client [192.0.2.4] blocked using zen.test" in verdict.reply.text
    assert "zen.test" in verdict.reason and "bl2.test" in verdict.reason
    assert "score 3" in verdict.reason


def test_below_threshold_scores_and_filters_apply(dns):
    # 192.0.2.9 answers 127.0.0.1: outside the filter, does not count.
    verdict, s = run_connect(dns, ["zen.test=127.0.0.[2..11]*2"], "192.0.2.9")
    assert verdict.action is Action.CONTINUE and SCORE_FACT not in s.facts
    # Spamhaus-style error answer 127.255.255.254 never counts without a filter.
    verdict, s = run_connect(dns, ["zen.test*5"], "192.0.2.8")
    assert verdict.action is Action.CONTINUE and SCORE_FACT not in s.facts
    # one list of two: weight 1 < threshold 3 -> a spam-score contribution
    verdict, s = run_connect(dns, ["zen.test*1", "wl.test*-5"], "192.0.2.4", threshold=3)
    assert verdict.action is Action.CONTINUE
    assert s.facts[SCORE_FACT] == {"dnsbl": 1.0}


def test_allowlist_negative_weight_offsets_and_allowlists(dns):
    verdict, s = run_connect(dns, ["zen.test*1", "wl.test=127.0.[0..255].[1..3]*-2"],
                             "192.0.2.7", threshold=1)
    assert verdict.action is Action.CONTINUE and s.facts.get(ALLOWLISTED) is True


def test_ipv6_client(dns):
    verdict, _ = run_connect(dns, ["zen.test"], "2001:db8::1")
    assert verdict.action is Action.REJECT


def test_timeout_never_blocks(dns):
    dns.set_behaviour("4.2.0.192.zen.test", "timeout")
    try:
        t0 = time.monotonic()
        verdict, s = run_connect(dns, ["zen.test*5", "bl2.test*0.5"], "192.0.2.4",
                                 threshold=1, timeout=0.3)
        elapsed = time.monotonic() - t0
    finally:
        dns.clear_behaviour()
    assert verdict.action is Action.CONTINUE          # the timed-out list did not count
    assert s.facts[SCORE_FACT] == {"dnsbl": 0.5}      # the list that answered did
    assert elapsed < 2.0


def test_trusted_and_submission_not_looked_up(dns):
    check = DnsblCheck(ListLookup(resolver(dns), 1.0), [parse_list_spec("zen.test")], 1, -1)
    dns.clear_log()
    assert asyncio.run(check.check_connect(session("127.0.0.2", trusted=True))).action \
        is Action.CONTINUE
    sub = SessionInfo(client_ip="127.0.0.2", client_port=1, listener="s", role="submission")
    assert asyncio.run(check.check_connect(sub)).action is Action.CONTINUE
    assert dns.count("2.0.0.127.zen.test") == 0


def rhsbl(dns, threshold=0.0):
    return RhsblCheck(ListLookup(resolver(dns), 2.0), [parse_list_spec("dbl.test*3")],
                      targets=("helo", "sender", "links"), threshold=threshold, max_links=5,
                      links=links)


def test_rhsbl_helo_and_sender(dns):
    s = session(helo="bad.example")
    v = asyncio.run(rhsbl(dns).check_helo(s))
    assert v.action is Action.CONTINUE and s.facts[SCORE_FACT] == {"rhsbl-helo:dbl.test": 3.0}
    txn = TransactionInfo(sender="x@bad.example")
    v = asyncio.run(rhsbl(dns, threshold=2).check_mail(session(), txn))
    assert v.action is Action.REJECT and v.reply.code == 550
    assert "bad.example blocked using dbl.test" in v.reply.text
    clean = TransactionInfo(sender="x@good.example")
    assert asyncio.run(rhsbl(dns, threshold=2).check_mail(session(), clean)).action \
        is Action.CONTINUE


def test_rhsbl_links_in_body(dns):
    body = (b"From: a@b.example\r\nSubject: hi\r\nContent-Type: text/html\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            b"<a href=3D\"https://user@Spammy-Link.example/x?y\">x</a> see www.good.example "
            b"and http://192.0.2.1/\r\n")
    header = body.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    msg = MessageView(header, len(body), lambda: body)
    txn = TransactionInfo(sender="a@b.example")
    assert links(txn, msg, 10) == ["spammy-link.example", "www.good.example"]
    v = asyncio.run(rhsbl(dns).check_data(session(), txn, msg))
    assert v.action is Action.CONTINUE
    assert txn.facts[SCORE_FACT] == {"rhsbl-link:dbl.test": 3.0}
