"""DMARC (RFC 7489): organizational domains, records, alignment, policy, discovery.

Pure parts are table tests built from the RFC's own cases; policy discovery runs against a
real authoritative DNS server on loopback (tests/dnsserver.py), never the system resolver.
The Public Suffix List test vectors shipped with the ``publicsuffixlist`` package are read
in place.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import publicsuffixlist
import pytest

from dnsserver import DNSServer
from mailwright.mailauth.dmarc import (
    AuthorDomainError, DMARCRecordError, PolicyLookup, ReportURI, aligned, author_domain,
    evaluate, fetch_policy, is_dmarc_record, parse_record)
from mailwright.mailauth.orgdomain import (
    normalize_domain, organizational_domain, same_organization)
from mailwright.net.dns import Resolver


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------- orgdomain

PSL_VECTORS = Path(publicsuffixlist.__file__).parent / "test_psl.txt"
_CHECK_RE = re.compile(r"^checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);")


def _psl_cases() -> list[tuple[str, str | None]]:
    cases = []
    for line in PSL_VECTORS.read_text(encoding="utf-8").splitlines():
        m = _CHECK_RE.match(line.strip())
        if not m or m.group(1) == "null":
            continue
        cases.append((m.group(1).strip("'"),
                      None if m.group(2) == "null" else m.group(2).strip("'")))
    return cases


PSL_CASES = _psl_cases()


def test_psl_vectors_were_read():
    assert len(PSL_CASES) > 50


@pytest.mark.parametrize("domain,registrable", PSL_CASES)
def test_psl_vectors(domain, registrable):
    """The PSL project's vectors: a registrable domain is the organizational domain; a
    name that has none is a public suffix (its own org domain) or not a valid name."""
    if registrable is not None:
        assert organizational_domain(domain) == normalize_domain(registrable)
        return
    if domain.startswith("."):
        with pytest.raises(ValueError):
            organizational_domain(domain)
    else:
        assert organizational_domain(domain) == normalize_domain(domain)


@pytest.mark.parametrize("domain,org", [
    ("Mail.Example.COM.", "example.com"),            # case and trailing dot
    ("a.b.c.example.co.uk", "example.co.uk"),        # two-label public suffix
    ("example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),                              # a public suffix is its own
    ("host.foo.test", "foo.test"),                   # unlisted TLD: implicit "*" rule
    ("x.y.kawasaki.jp", "x.y.kawasaki.jp"),          # wildcard rule *.kawasaki.jp
    ("www.city.kawasaki.jp", "city.kawasaki.jp"),    # exception rule !city.kawasaki.jp
    ("mail.müller.de", "xn--mller-kva.de"),          # U-labels become A-labels
    ("a.XN--MLLER-KVA.de", "xn--mller-kva.de"),
    ("www.食狮.公司.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("user.github.io", "user.github.io"),            # PSL private section
])
def test_organizational_domain(domain, org):
    assert organizational_domain(domain) == org


@pytest.mark.parametrize("bad", ["", ".", "a..example", "x" * 64 + ".example", " ",
                                 "a\\046b.example",      # master-file escape: a dot in a label
                                 "a b.example", "a/b.example", "a@b.example"])
def test_organizational_domain_rejects_non_names(bad):
    with pytest.raises(ValueError):
        organizational_domain(bad)


def test_same_organization():
    assert same_organization("a.example.com", "B.EXAMPLE.COM.")
    assert not same_organization("example.com", "example.net")
    assert not same_organization("alice.github.io", "bob.github.io")


# ---------------------------------------------------------------------- records

@pytest.mark.parametrize("text,expect", [
    # RFC 7489 Appendix B.2.1
    ("v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com",
     dict(p="none", sp=None, rua=(ReportURI("mailto:dmarc-feedback@example.com"),))),
    # Appendix B.2.3 (third-party failure reports, 25 % sampling, quarantine)
    ("v=DMARC1; p=quarantine; rua=mailto:dmarc-feedback@example.com; "
     "ruf=mailto:auth-reports@thirdparty.example.net; pct=25",
     dict(p="quarantine", pct=25,
          ruf=(ReportURI("mailto:auth-reports@thirdparty.example.net"),))),
    # §6.3 defaults
    ("v=DMARC1; p=reject",
     dict(p="reject", sp=None, np=None, adkim="r", aspf="r", pct=100, fo=("0",),
          rf=("afrf",), ri=86400, rua=(), ruf=())),
    # every tag, odd spacing and case in names and keywords, trailing ";"
    ("v=DMARC1;P=Reject ; SP = quarantine;np=reject;adkim=s;ASPF=s;pct=0;fo=1:d:s;"
     "rf=afrf;ri=3600;",
     dict(p="reject", sp="quarantine", np="reject", adkim="s", aspf="s", pct=0,
          fo=("1", "d", "s"), ri=3600)),
    # §6.2 size limits: k/m/g/t are powers of two; several URIs
    ("v=DMARC1; p=none; rua=mailto:a@example.com!10k, mailto:b@example.net!50m,"
     "mailto:c@example.org!7; ruf=mailto:d@example.com!1g",
     dict(rua=(ReportURI("mailto:a@example.com", 10240),
               ReportURI("mailto:b@example.net", 50 * 2**20),
               ReportURI("mailto:c@example.org", 7)),
          ruf=(ReportURI("mailto:d@example.com", 2**30),))),
    # unknown tags are ignored (§6.3); a repeated tag keeps its first value
    ("v=DMARC1; p=none; future=yes; p=reject", dict(p="none")),
    # §6.3: invalid optional values fall back to the defaults
    ("v=DMARC1; p=reject; pct=150; adkim=x; ri=-1; fo=9",
     dict(p="reject", pct=100, adkim="r", ri=86400, fo=("0",))),
    ("v=DMARC1; p=reject; pct=abc", dict(pct=100)),
    # §6.6.3 step 6: invalid/absent p with a valid rua acts as p=none
    ("v=DMARC1; p=bogus; rua=mailto:r@example.com", dict(p="none", p_invalid=True)),
    ("v=DMARC1; rua=mailto:r@example.com", dict(p="none", p_invalid=True)),
    ("v=DMARC1; p=reject; sp=bogus; rua=mailto:r@example.com",
     dict(p="none", sp=None, p_invalid=True)),
    # p need not be second (DMARCbis drops RFC 7489's order rule)
    ("v=DMARC1; rua=mailto:r@example.com; p=reject", dict(p="reject", p_invalid=False)),
])
def test_parse_record(text, expect):
    record = parse_record(text)
    for name, value in expect.items():
        assert getattr(record, name) == value, name


def test_parse_record_warns_about_what_it_dropped():
    record = parse_record("v=DMARC1; p=none; pct=500; rua=nonsense, mailto:x@example.com")
    assert record.rua == (ReportURI("mailto:x@example.com"),)
    assert any("pct" in w for w in record.warnings)
    assert any("rua" in w for w in record.warnings)


@pytest.mark.parametrize("text", [
    "p=reject; v=DMARC1",                       # v must be first
    "v=dmarc1; p=reject",                       # "DMARC1" is case-sensitive (§6.4)
    "v=DMARC2; p=reject",
    "v=DMARC1p=reject",
    "v=spf1 -all",
    "",
    "v=DMARC1; p=bogus",                        # invalid p and no rua: no DMARC (§6.6.3)
    "v=DMARC1",
    "v=DMARC1; p=none; sp=bogus",
    "v=DMARC1; p=bogus; rua=not-a-uri",
])
def test_parse_record_refuses(text):
    with pytest.raises(DMARCRecordError):
        parse_record(text)


def test_record_fallback_policies():
    r = parse_record("v=DMARC1; p=reject")
    assert (r.subdomain_policy, r.nonexistent_policy) == ("reject", "reject")
    r = parse_record("v=DMARC1; p=reject; sp=none")
    assert (r.subdomain_policy, r.nonexistent_policy) == ("none", "none")
    r = parse_record("v=DMARC1; p=none; sp=quarantine; np=reject")
    assert (r.subdomain_policy, r.nonexistent_policy) == ("quarantine", "reject")


def test_report_uri_parts():
    uri = ReportURI("mailto:dmarc%2Breports@Example.COM?subject=x", 100)
    assert uri.scheme == "mailto"
    assert uri.address == "dmarc+reports@Example.COM"
    assert uri.domain == "example.com"
    assert ReportURI("https://example.com/r").address is None


# ---------------------------------------------------------------------- alignment

@pytest.mark.parametrize("domain,author,mode,expect", [
    # §3.1.1: d=example.com, From alerts@news.example.com
    ("example.com", "news.example.com", "r", True),
    ("example.com", "news.example.com", "s", False),
    # §3.1.2: MailFrom @news.example.com, From alerts@example.com
    ("news.example.com", "example.com", "r", True),
    ("news.example.com", "example.com", "s", False),
    ("Example.COM.", "example.com", "s", True),          # case and trailing dot
    ("a.example.com", "b.example.com", "r", True),       # siblings share the org domain
    ("a.example.com", "b.example.com", "s", False),
    ("example.net", "example.com", "r", False),
    ("mail.example.co.uk", "example.co.uk", "r", True),
    ("example.co.uk", "other.co.uk", "r", False),       # the suffix is not an org
    ("alice.github.io", "bob.github.io", "r", False),   # private-section suffix
    ("xn--mller-kva.de", "müller.de", "s", True),       # A-label vs U-label
    ("", "example.com", "r", False),
    ("bad..name", "example.com", "r", False),
])
def test_alignment(domain, author, mode, expect):
    assert aligned(domain, author, mode) is expect


# ---------------------------------------------------------------------- evaluate

def _found(record: str, from_domain: str = "example.com", policy_domain: str | None = None,
           exists: bool | None = None) -> PolicyLookup:
    return PolicyLookup("found", from_domain, organizational_domain(from_domain),
                        parse_record(record), policy_domain or from_domain, exists)


REJECT = "v=DMARC1; p=reject"
STRICT = "v=DMARC1; p=reject; adkim=s; aspf=s"


@pytest.mark.parametrize("case", [
    # aligned DKIM pass alone passes
    dict(rec=REJECT, spf=("fail", "evil.example"), dkim=[("pass", "example.com")],
         result="pass", dkim_aligned=True, spf_aligned=False, disposition="none"),
    # aligned SPF pass alone passes
    dict(rec=REJECT, spf=("pass", "bounce.example.com"), dkim=[],
         result="pass", spf_aligned=True, dkim_aligned=False),
    # both aligned
    dict(rec=REJECT, spf=("pass", "example.com"), dkim=[("pass", "example.com")],
         result="pass", spf_aligned=True, dkim_aligned=True),
    # passes that do not align fail DMARC
    dict(rec=REJECT, spf=("pass", "example.net"), dkim=[("pass", "example.org")],
         result="fail", disposition="reject", spf_aligned=False, dkim_aligned=False),
    # aligned identifiers whose checks did not pass fail DMARC
    dict(rec=REJECT, spf=("softfail", "example.com"), dkim=[("fail", "example.com")],
         result="fail", disposition="reject"),
    dict(rec=REJECT, spf=("neutral", "example.com"), dkim=[("temperror", "example.com")],
         result="fail"),
    # one good signature among bad ones is enough
    dict(rec=REJECT, spf=("none", ""), dkim=[("fail", "example.com"), ("pass", "other.test"),
                                             ("pass", "mail.example.com")],
         result="pass", dkim_aligned=True, dkim_domain="mail.example.com"),
    # strict mode: subdomains no longer align (§3.1.1, §3.1.2)
    dict(rec=STRICT, spf=("pass", "bounce.example.com"), dkim=[("pass", "mail.example.com")],
         result="fail", disposition="reject"),
    dict(rec=STRICT, spf=("pass", "EXAMPLE.COM"), dkim=[], result="pass", spf_aligned=True),
    # results are compared case-insensitively
    dict(rec=REJECT, spf=("Pass", "example.com"), dkim=[], result="pass"),
    # the requested policy is reported even for a pass
    dict(rec="v=DMARC1; p=quarantine", spf=("pass", "example.com"), dkim=[],
         result="pass", policy="quarantine", disposition="none"),
    dict(rec="v=DMARC1; p=none", spf=("fail", "example.com"), dkim=[],
         result="fail", policy="none", disposition="none"),
])
def test_evaluate_alignment(case):
    res = evaluate("example.com", _found(case["rec"]), spf_result=case["spf"][0],
                   spf_domain=case["spf"][1], dkim=case["dkim"], pct_roll=0.0)
    assert res.result == case["result"]
    for key in ("disposition", "spf_aligned", "dkim_aligned", "policy", "dkim_domain"):
        if key in case:
            assert getattr(res, key) == case[key], key
    assert res.from_domain == "example.com"
    assert res.policy_domain == "example.com"


@pytest.mark.parametrize("from_domain,policy_domain,record,exists,policy", [
    # record at the author domain itself: p
    ("example.com", "example.com", "v=DMARC1; p=reject; sp=none", None, "reject"),
    ("sub.example.com", "sub.example.com", "v=DMARC1; p=reject; sp=none", None, "reject"),
    # record found at the organizational domain for a subdomain: sp, else p (§6.3)
    ("sub.example.com", "example.com", "v=DMARC1; p=reject; sp=none", None, "none"),
    ("sub.example.com", "example.com", "v=DMARC1; p=quarantine", None, "quarantine"),
    # non-existent subdomain: np, else sp, else p (RFC 9091)
    ("ghost.example.com", "example.com", "v=DMARC1; p=none; sp=quarantine; np=reject",
     False, "reject"),
    ("ghost.example.com", "example.com", "v=DMARC1; p=none; sp=quarantine", False,
     "quarantine"),
    ("real.example.com", "example.com", "v=DMARC1; p=none; sp=quarantine; np=reject",
     True, "quarantine"),
])
def test_evaluate_policy_selection(from_domain, policy_domain, record, exists, policy):
    lookup = _found(record, from_domain, policy_domain, exists)
    res = evaluate(from_domain, lookup, spf_result="fail", spf_domain=from_domain, dkim=[],
                   pct_roll=0.0)
    assert (res.result, res.policy, res.disposition) == ("fail", policy, policy)
    assert res.policy_domain == policy_domain


@pytest.mark.parametrize("pct,roll,policy,disposition,override", [
    (100, 0.999, "reject", "reject", None),
    (25, 0.10, "reject", "reject", None),             # 10 < 25: sampled
    (25, 0.25, "reject", "quarantine", "sampled_out"),  # 25 is not < 25
    (25, 0.90, "quarantine", "none", "sampled_out"),
    (0, 0.0, "reject", "quarantine", "sampled_out"),  # pct=0: never sampled
    (0, 0.0, "quarantine", "none", "sampled_out"),
    (50, 0.49, "quarantine", "quarantine", None),
    (10, 0.99, "none", "none", None),                 # p=none has nothing to soften
])
def test_evaluate_pct_sampling(pct, roll, policy, disposition, override):
    """§6.6.4: messages outside the pct sample get the next weaker policy."""
    res = evaluate("example.com", _found(f"v=DMARC1; p={policy}; pct={pct}"),
                   spf_result="fail", spf_domain="example.com", dkim=[], pct_roll=roll)
    assert (res.result, res.policy, res.disposition, res.override) == (
        "fail", policy, disposition, override)


def test_evaluate_pct_random_roll_samples_both_ways():
    lookup = _found("v=DMARC1; p=reject; pct=50")
    seen = {evaluate("example.com", lookup, spf_result="fail", spf_domain="",
                     dkim=[]).disposition for _ in range(200)}
    assert seen == {"reject", "quarantine"}


@pytest.mark.parametrize("status,result", [
    ("none", "none"), ("temperror", "temperror"), ("permerror", "permerror")])
def test_evaluate_without_policy(status, result):
    lookup = PolicyLookup(status, "example.com", "example.com", reason="x")
    res = evaluate("example.com", lookup, spf_result="pass", spf_domain="example.com",
                   dkim=[("pass", "example.com")])
    assert (res.result, res.policy, res.disposition) == (result, "none", "none")


def test_evaluate_refuses_a_lookup_for_another_domain():
    with pytest.raises(ValueError):
        evaluate("example.org", _found(REJECT), spf_result="pass", spf_domain="example.org",
                 dkim=[])


# ---------------------------------------------------------------------- author domain

@pytest.mark.parametrize("values,expect", [
    (["alice@example.com"], "example.com"),
    (["Alice <alice@Example.COM>"], "example.com"),
    (['"bob@evil.example" <alice@example.com>'], "example.com"),  # display name is no address
    (["=?utf-8?q?ceo@evil.example?= <alice@example.com>"], "example.com"),
    (["(comment) alice@example.com (more)"], "example.com"),
    (["a@example.com, B <b@EXAMPLE.com>"], "example.com"),   # several mailboxes, one domain
    (["Team: a@example.com, b@example.com;"], "example.com"),
    (["alice@müller.de"], "xn--mller-kva.de"),
    (["Alice\r\n <alice@example.com>"], "example.com"),      # folded value
    ([], None),                                              # no From at all
])
def test_author_domain(values, expect):
    assert author_domain(values) == expect


@pytest.mark.parametrize("values", [
    ["alice@example.com", "alice@example.com"],     # several From fields (RFC 5322 §3.6)
    ["alice@example.com", "mallory@evil.example"],
    ["a@example.com, m@evil.example"],              # mailboxes in different domains
    ["alice@example.com <mallory@evil.example>"],   # ambiguous: readers disagree
    ["alice@example.com)(mallory@evil.example"],
    ["undisclosed-recipients:;"],
    ["alice"],
    [""],
    ["alice@[192.0.2.1]"],
    ["alice@bad..example"],
])
def test_author_domain_refuses(values):
    with pytest.raises(AuthorDomainError):
        author_domain(values)


# ---------------------------------------------------------------------- discovery (real DNS)

ZONES = {
    "example.test": """
@              A     192.0.2.1
_dmarc         TXT   "v=DMARC1; p=reject; sp=quarantine; np=reject; rua=mailto:agg@example.test!10m"
_dmarc         TXT   "some other text"
sub            A     192.0.2.2
own            A     192.0.2.3
_dmarc.own     TXT   "v=DMARC1; " "p=none"
multi          A     192.0.2.4
_dmarc.multi   TXT   "v=DMARC1; p=none"
_dmarc.multi   TXT   "v=DMARC1; p=reject"
broken         A     192.0.2.5
_dmarc.broken  TXT   "v=DMARC1; p=bogus"
notdmarc       A     192.0.2.6
_dmarc.notdmarc TXT  "v=spf1 -all"
""",
    "plain.test": """
@              A     192.0.2.10
_dmarc         TXT   "v=DMARC1; p=quarantine; pct=30"
""",
    "nopolicy.test": "@ A 192.0.2.20\nwww A 192.0.2.21\n",
    "slow.test": """
@              A     192.0.2.30
_dmarc         TXT   "v=DMARC1; p=reject"
_dmarc.sub     TXT   "v=DMARC1; p=none"
""",
}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as server:
        yield server


@pytest.fixture
def resolver(dns):
    dns.clear_behaviour()
    dns.clear_log()
    return Resolver([dns.nameserver], timeout=0.5, attempts=1)


def test_fetch_policy_at_the_author_domain(resolver, dns):
    lookup = run(fetch_policy(resolver, "Example.TEST."))
    assert lookup.status == "found"
    assert (lookup.from_domain, lookup.policy_domain) == ("example.test", "example.test")
    assert lookup.record.p == "reject"
    assert lookup.record.rua == (ReportURI("mailto:agg@example.test", 10 * 2**20),)
    assert lookup.from_domain_exists is None           # not needed: p applies
    assert dns.count("_dmarc.example.test", "TXT") == 1


def test_fetch_policy_falls_back_to_the_organizational_domain(resolver, dns):
    lookup = run(fetch_policy(resolver, "sub.example.test"))
    assert (lookup.status, lookup.policy_domain, lookup.org_domain) == (
        "found", "example.test", "example.test")
    assert dns.queries[:2] == [("_dmarc.sub.example.test", "TXT"),
                               ("_dmarc.example.test", "TXT")]
    assert lookup.from_domain_exists is True           # np published: existence checked
    res = evaluate("sub.example.test", lookup, spf_result="fail", spf_domain="x.test",
                   dkim=[], pct_roll=0.0)
    assert (res.result, res.policy, res.disposition) == ("fail", "quarantine", "quarantine")


def test_fetch_policy_np_for_a_non_existent_subdomain(resolver):
    lookup = run(fetch_policy(resolver, "ghost.example.test"))
    assert lookup.status == "found" and lookup.from_domain_exists is False
    res = evaluate("ghost.example.test", lookup, spf_result="none", spf_domain="",
                   dkim=[], pct_roll=0.0)
    assert (res.policy, res.disposition) == ("reject", "reject")


def test_fetch_policy_deep_subdomain_goes_straight_to_the_org_domain(resolver, dns):
    lookup = run(fetch_policy(resolver, "a.b.c.plain.test"))
    assert (lookup.status, lookup.policy_domain) == ("found", "plain.test")
    # §6.6.3: only the author domain and the organizational domain are queried
    assert [q for q in dns.queries if q[1] == "TXT"] == [
        ("_dmarc.a.b.c.plain.test", "TXT"), ("_dmarc.plain.test", "TXT")]
    assert lookup.from_domain_exists is None           # no np: no existence lookups


def test_fetch_policy_own_record_wins_over_the_org_domain(resolver, dns):
    lookup = run(fetch_policy(resolver, "own.example.test"))
    assert (lookup.status, lookup.policy_domain, lookup.record.p) == (
        "found", "own.example.test", "none")
    assert dns.count("_dmarc.example.test") == 0


def test_fetch_policy_several_records_mean_none_without_fallback(resolver, dns):
    lookup = run(fetch_policy(resolver, "multi.example.test"))
    assert lookup.status == "none" and "2 DMARC records" in lookup.reason
    assert dns.count("_dmarc.example.test") == 0       # §6.6.3 step 5: discovery ends


def test_fetch_policy_unusable_record_is_none(resolver):
    assert run(fetch_policy(resolver, "broken.example.test")).status == "none"


def test_fetch_policy_non_dmarc_txt_is_ignored(resolver, dns):
    # _dmarc.notdmarc has only an SPF-looking record: discarded, fall back to the org
    lookup = run(fetch_policy(resolver, "notdmarc.example.test"))
    assert (lookup.status, lookup.policy_domain) == ("found", "example.test")


def test_fetch_policy_no_record_anywhere(resolver):
    for name in ("nopolicy.test", "www.nopolicy.test"):
        lookup = run(fetch_policy(resolver, name))
        assert lookup.status == "none" and lookup.record is None


def test_fetch_policy_timeout_is_temperror(resolver, dns):
    dns.set_behaviour("_dmarc.slow.test", "timeout")
    lookup = run(fetch_policy(resolver, "slow.test"))
    assert lookup.status == "temperror"
    res = evaluate("slow.test", lookup, spf_result="pass", spf_domain="slow.test",
                   dkim=[("pass", "slow.test")])
    assert res.result == "temperror"                   # never a pass


def test_fetch_policy_timeout_on_the_fallback_is_temperror(resolver, dns):
    dns.set_behaviour("_dmarc.slow.test", "timeout")
    assert run(fetch_policy(resolver, "x.y.slow.test")).status == "temperror"


def test_fetch_policy_servfail_is_temperror(resolver, dns):
    dns.set_behaviour("_dmarc.sub.slow.test", "servfail")
    assert run(fetch_policy(resolver, "sub.slow.test")).status == "temperror"


def test_fetch_policy_existence_check_failure_is_temperror(resolver, dns):
    dns.set_behaviour("ghost.example.test", "servfail")
    assert run(fetch_policy(resolver, "ghost.example.test")).status == "temperror"


def test_fetch_policy_bad_author_domain_is_permerror(resolver):
    assert run(fetch_policy(resolver, "a..example.test")).status == "permerror"


def test_is_dmarc_record():
    assert is_dmarc_record("v=DMARC1; p=none")
    assert is_dmarc_record("v = DMARC1 ;p=none")
    assert not is_dmarc_record(" p=none; v=DMARC1")
    assert not is_dmarc_record("v=DMARC10; p=none")
