"""SPF unit tests: macro expansion (RFC 7208 §7.4 examples), record syntax, the processing
limits (§4.6.4) and the temperror rules, the identities (§2.3, §2.4) and Received-SPF (§9.1).

Pure parts are table-tested; everything that looks up a name goes to a real DNSServer on
loopback through our Resolver.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from dnsserver import DNSServer
from mailwright.mailauth.spf import (
    DEFAULT_EXPLANATION, SPFResult, check_helo, check_host, check_mail_from,
    received_spf_header)
from mailwright.mailauth.spf_macro import (
    MacroSyntaxError, MacroValues, expand, expand_domain, parse_domain_spec,
    parse_explain_string, parse_macro_string, truncate_domain)
from mailwright.mailauth.spf_parse import (
    SPFSyntaxError, parse_mechanism, parse_record, select_record)
from mailwright.net.dns import Resolver


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------- macros (§7)

# RFC 7208 §7.4: sender strong-bad@email.example.com, <domain> email.example.com,
# client 192.0.2.3 / 2001:db8::cb01, validated PTR name mx.example.org.
V4 = MacroValues(sender="strong-bad@email.example.com", domain="email.example.com",
                 ip=ipaddress.ip_address("192.0.2.3"), helo="mx.example.org",
                 receiver="mx.example.net", now=1700000000, validated="mx.example.org")
V6 = MacroValues(sender="strong-bad@email.example.com", domain="email.example.com",
                 ip=ipaddress.ip_address("2001:db8::cb01"), helo="mx.example.org")


@pytest.mark.parametrize("text, expected", [
    # §7.4, first table
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    # §7.4, second table
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    # other letters (§7.3)
    ("%{i}", "192.0.2.3"),
    ("%{h}", "mx.example.org"),
    ("%{p}", "mx.example.org"),
    ("%{c}", "192.0.2.3"),
    ("%{r}", "mx.example.net"),
    ("%{t}", "1700000000"),
    ("%{D2R}", "example.email"),               # upper case = same, then URL-escaped
    ("%{S}", "strong-bad%40email.example.com"),
    ("%{l99}", "strong-bad"),                  # more parts than there are: all of them
    ("%{d2.}", "example.com"),
    ("%{lr+-}", "bad.strong"),                 # several delimiters (§7.1)
    ("%%%_%-", "% %20"),                       # escapes (§7.1)
    ("a%{d1}b", "acomb"),
])
def test_macro_expansion_ipv4(text: str, expected: str) -> None:
    assert expand(parse_explain_string(text), V4) == expected


def test_macro_expansion_ipv6() -> None:
    # §7.4: "%{ir}.%{v}._spf.%{d2}" for 2001:db8::cb01
    ms = parse_explain_string("%{ir}.%{v}._spf.%{d2}")
    assert expand(ms, V6) == ("1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
                              ".ip6._spf.example.com")
    assert expand(parse_explain_string("%{c} %{v} %{p} %{r}"), V6) == \
        "2001:db8::cb01 ip6 unknown unknown"


def test_upper_case_macro_escapes_all_but_unreserved() -> None:
    values = MacroValues(sender="~jack&jill=up-a_b3.c@e8.example.com", domain="e8.example.com",
                         ip=ipaddress.ip_address("192.0.2.1"))
    # §7.3: RFC 3986 unreserved (ALPHA DIGIT - . _ ~) stay, everything else is escaped
    assert expand(parse_explain_string("%{L}"), values) == "~jack%26jill%3Dup-a_b3.c"


@pytest.mark.parametrize("text", [
    "%", "%x", "%(ir)", "%{", "%{d", "%{a}", "%{d0}", "%{dx}", "%{d2r-x}", "%{d=@}",
    "a\tb", "a\x00b", "caf\u00e9",
])
def test_macro_syntax_errors(text: str) -> None:
    with pytest.raises(MacroSyntaxError):
        parse_explain_string(text)


def test_space_only_in_explain_strings() -> None:
    assert parse_explain_string("a b").parts == ("a b",)
    with pytest.raises(MacroSyntaxError):
        parse_macro_string("a b")


@pytest.mark.parametrize("text, ok", [
    ("example.com", True),
    ("example.com.", True),
    ("%{d}", True),
    ("%{ir}.%{v}._spf.%{d2}", True),
    ("foo.example.xn--zckzah", True),       # a dash in the top-label (§7.1)
    ("foo:bar/baz.example.com", True),      # any visible character but '%'
    ("mail.example...com", True),           # syntax allows it; the query cannot be made
    ("%{d}%%", True),                       # ends in a macro-expand
    ("museum", False),                      # a lone top-label
    ("museum.", False),
    ("abc.123", False),                     # numeric top-label
    ("example.-com", False),
    ("example.com:8080", False),
    ("%{d}com", False),
    ("-all", False),
    ("", False),
    ("%{r}.example.com", False),            # c, r, t only in exp text (§7.3)
    ("%{c}.example.com", False),
    ("%{t}.example.com", False),
])
def test_domain_spec_syntax(text: str, ok: bool) -> None:
    if ok:
        parse_domain_spec(text)
    else:
        with pytest.raises(MacroSyntaxError):
            parse_domain_spec(text)


def test_domain_truncation() -> None:
    # §7.3: labels are removed from the left until at most 253 characters remain
    long = ".".join(["x" * 60] * 5) + ".example.com."
    out = truncate_domain(long)
    assert len(out) <= 253 and out.endswith("example.com") and not out.endswith(".")
    assert long.rstrip(".").endswith(out) and out.split(".")[0] == "x" * 60
    values = MacroValues(sender="a@" + "b" * 60 + ".example.com", domain="d.example",
                         ip=ipaddress.ip_address("192.0.2.1"))
    name = expand_domain(parse_domain_spec("%{o}.%{o}.%{o}.%{o}.%{o}"), values)
    assert len(name) <= 253 and name.endswith("example.com")


# ---------------------------------------------------------------------- record syntax

def test_select_record() -> None:
    assert select_record(["other", "v=spf1 -all"]) == "v=spf1 -all"
    assert select_record(["V=SPF1 -all"]) == "V=SPF1 -all"         # case-insensitive
    assert select_record(["v=spf1"]) == "v=spf1"
    assert select_record(["v=spf10 -all", "v=spf1mx", " v=spf1 -all"]) is None
    assert select_record([]) is None
    with pytest.raises(SPFSyntaxError):                              # §4.5: several
        select_record(["v=spf1 -all", "v=spf1 -all"])


def test_parse_record_fields() -> None:
    rec = parse_record("v=spf1  a/24//64 mx:%{d}.mx//48 ?ptr:example.com -ip4:192.0.2.0/24 "
                       "~ip6:2001:db8::/32 +include:_spf.example.net exists:%{i}.bl.example "
                       "redirect=_spf.example.com exp=explain.%{d} moo=cow ")
    kinds = [(m.qualifier, m.kind) for m in rec.mechanisms]
    assert kinds == [("+", "a"), ("+", "mx"), ("?", "ptr"), ("-", "ip4"), ("~", "ip6"),
                     ("+", "include"), ("+", "exists")]
    a, mx, ptr, ip4, ip6, inc, ex = rec.mechanisms
    assert (a.domain, a.cidr4, a.cidr6) == (None, 24, 64)
    assert mx.domain is not None and mx.domain.text == "%{d}.mx"
    assert (mx.cidr4, mx.cidr6) == (32, 48)
    assert ptr.domain is not None and ptr.domain.text == "example.com"
    assert ip4.network == ipaddress.ip_network("192.0.2.0/24")
    assert ip6.network == ipaddress.ip_network("2001:db8::/32")
    assert inc.text == "+include:_spf.example.net"
    assert ex.domain is not None and ex.domain.letters == {"i"}
    assert rec.redirect is not None and rec.redirect.text == "_spf.example.com"
    assert rec.exp is not None and rec.exp.text == "explain.%{d}"
    assert rec.unknown == (("moo", "cow"),)
    assert rec.dns_terms == 6                # five mechanisms and redirect (§4.6.4)
    # the network is masked; the case of names does not matter
    assert parse_mechanism("IP4:192.0.2.77/24").network == ipaddress.ip_network("192.0.2.0/24")
    assert parse_mechanism("A:Example.COM").kind == "a"


@pytest.mark.parametrize("record", [
    "v=spf1 moo",                          # unknown mechanism (§4.6)
    "v=spf1 -all.",
    "v=spf1 all:x",
    "v=spf1 a/33",
    "v=spf1 a//129",
    "v=spf1 a/24/64",
    "v=spf1 a:",
    "v=spf1 a/032",                        # no leading zeros in lengths
    "v=spf1 include",
    "v=spf1 include:example.com/24",
    "v=spf1 exists",
    "v=spf1 ptr/0",
    "v=spf1 ip4",
    "v=spf1 ip4:1.2.3",
    "v=spf1 ip4:1.2.3.4:8080",
    "v=spf1 ip4:01.2.3.4",
    "v=spf1 ip4:1.2.3.4//32",
    "v=spf1 ip6::CAFE::BABE",
    "v=spf1 ip6:fe80::1%eth0",
    "v=spf1 ip6:::1/129",
    "v=spf1 redirect:example.com",         # redirect is a modifier
    "v=spf1 redirect=",
    "v=spf1 redirect=a.example redirect=b.example",
    "v=spf1 exp=a.example exp=b.example",
    "v=spf1 exp=-all",
    "v=spf1 1up=foo",
    "v=spf1 =all",
    "v=spf1 foo=%abc",
    "v=spf1 a:example.com\rptr",
    "v=spf1 \u00e9all",
])
def test_syntax_errors(record: str) -> None:
    with pytest.raises(SPFSyntaxError):
        parse_record(record)


# ---------------------------------------------------------------------- evaluation over DNS

def records(name: str, n: int) -> str:
    return "".join(f"{name} A 192.0.2.{i + 1}\n" for i in range(n))


ZONES = {
    "example.test": (
        '@            TXT "v=spf1 ip4:192.0.2.10 a:mail.example.test -all"\n'
        'mail         A   192.0.2.20\n'
        # eleven DNS terms: the 11th is over the limit (§4.6.4)
        'eleven       TXT "v=spf1 a a a a a a a a a a a -all"\n'
        'eleven       A   192.0.2.99\n'
        'ten          TXT "v=spf1 a a a a a a a a a a ip4:192.0.2.1 -all"\n'
        'ten          A   192.0.2.99\n'
        # void lookups: three names that do not exist
        'voids        TXT "v=spf1 a:no1.example.test a:no2.example.test a:no3.example.test ?all"\n'
        'twovoids     TXT "v=spf1 a:no1.example.test a:no2.example.test ?all"\n'
        'manymx       TXT "v=spf1 mx -all"\n'
        + "".join(f"manymx MX {i} mail.example.test.\n" for i in range(11)) +
        'tenmx        TXT "v=spf1 mx -all"\n'
        + "".join(f"tenmx MX {i} h{i}.example.test.\n" for i in range(10)) +
        records("h9", 1) +
        'slowtxt      TXT "v=spf1 +all"\n'
        'failtxt      TXT "v=spf1 +all"\n'
        'slowa        TXT "v=spf1 a:hang.example.test +all"\n'
        'slowexists   TXT "v=spf1 exists:hang.example.test +all"\n'
        'slowinclude  TXT "v=spf1 include:slowtxt.example.test +all"\n'
        'slowmx       TXT "v=spf1 mx:mxhang.example.test +all"\n'
        'mxhang       MX  10 hang.example.test.\n'
        'slowptr      TXT "v=spf1 ptr -all"\n'
        'slowexp      TXT "v=spf1 -all exp=hang.example.test"\n'
        'goodexp      TXT "v=spf1 -all exp=why.example.test"\n'
        'why          TXT "%{i} is not one of %{d}\'s hosts (%{h}, %{r})"\n'
        'mapped       TXT "v=spf1 ip6:::ffff:192.0.2.0/120 ip4:192.0.2.30 -all"\n'
        'six          TXT "v=spf1 ip6:2001:db8::/32 -all"\n'
        'hang         A   192.0.2.1\n'
        'spf99        SPF "v=spf1 +all"\n'
        'spf99        TXT "v=spf1 -all"\n'
        'helo         TXT "v=spf1 a -all"\n'
        'helo         A   192.0.2.40\n'
        'ptrok        TXT "v=spf1 ptr:example.test -all"\n'
        'lexp         TXT "v=spf1 -all exp=lwhy.example.test"\n'
        'lwhy         TXT "sender %{l}"\n'
        'ptrother     TXT "v=spf1 ptr -all"\n'
    ),
    "2.0.192.in-addr.arpa": "40 PTR helo.example.test.\n40 PTR other.example.net.\n",
}


@pytest.fixture(scope="module")
def server():
    with DNSServer(ZONES) as srv:
        for name in ("slowtxt", "hang", "mxhang"):
            srv.set_behaviour(f"{name}.example.test", "timeout")
        srv.set_behaviour("failtxt.example.test", "servfail")
        srv.set_behaviour("1.2.0.192.in-addr.arpa", "timeout")
        yield srv


def resolver(server: DNSServer, timeout: float = 0.4) -> Resolver:
    return Resolver([server.nameserver], timeout=timeout, attempts=2)


def check(server: DNSServer, ip: str, domain: str, **kw) -> SPFResult:
    return run(check_host(resolver(server), ip, domain, f"user@{domain}", **kw))


def test_pass_fail_and_fields(server) -> None:
    ok = check(server, "192.0.2.20", "example.test")
    assert (ok.result, ok.mechanism, ok.lookups) == ("pass", "a:mail.example.test", 1)
    assert ok.record == "v=spf1 ip4:192.0.2.10 a:mail.example.test -all"
    assert ok.explanation == ""
    bad = check(server, "192.0.2.21", "example.test")
    assert (bad.result, bad.mechanism) == ("fail", "-all")
    assert bad.explanation == DEFAULT_EXPLANATION
    assert bad.domain == "example.test" and bad.sender == "user@example.test"


def test_ten_dns_terms_allowed_eleventh_is_permerror(server) -> None:
    ten = check(server, "192.0.2.1", "ten.example.test")
    assert (ten.result, ten.lookups) == ("pass", 10)
    eleven = check(server, "192.0.2.1", "eleven.example.test")
    assert eleven.result == "permerror" and "more than 10" in eleven.reason
    # the limit is a parameter
    assert check(server, "192.0.2.1", "ten.example.test", max_lookups=9).result == "permerror"


def test_void_lookup_limit(server) -> None:
    two = check(server, "192.0.2.1", "twovoids.example.test")
    assert (two.result, two.void_lookups) == ("neutral", 2)
    three = check(server, "192.0.2.1", "voids.example.test")
    assert three.result == "permerror" and "void" in three.reason
    assert check(server, "192.0.2.1", "voids.example.test", max_void=3).result == "neutral"


def test_mx_name_limit(server) -> None:
    assert check(server, "192.0.2.20", "manymx.example.test").result == "permerror"
    # ten MX names are fine; the tenth host's address matches
    assert check(server, "192.0.2.1", "tenmx.example.test").result == "pass"


def test_ptr_validated_names(server) -> None:
    # 192.0.2.40 -> helo.example.test (A 192.0.2.40: validated) and other.example.net
    res = check(server, "192.0.2.40", "ptrok.example.test")
    assert (res.result, res.mechanism) == ("pass", "ptr:example.test")
    assert check(server, "192.0.2.40", "ptrother.example.test").result == "fail"


def test_ptr_lookup_error_is_no_match(server) -> None:
    # §5.5: a DNS error on the PTR query makes "ptr" not match (not a temperror)
    res = check(server, "192.0.2.1", "slowptr.example.test")
    assert (res.result, res.mechanism) == ("fail", "-all")


@pytest.mark.parametrize("domain", [
    "slowtxt.example.test",        # the record itself
    "failtxt.example.test",        # SERVFAIL
    "slowa.example.test",          # a: target
    "slowexists.example.test",     # exists: target
    "slowinclude.example.test",    # include: target's record
    "slowmx.example.test",         # MX lookup of the mx: target
])
def test_dns_timeout_or_servfail_is_temperror(server, domain: str) -> None:
    res = check(server, "192.0.2.1", domain)
    assert res.result == "temperror", res
    assert res.reason


def test_exp_dns_error_keeps_fail_with_default_explanation(server) -> None:
    res = check(server, "192.0.2.1", "slowexp.example.test")
    assert (res.result, res.explanation) == ("fail", DEFAULT_EXPLANATION)


def test_exp_text_is_expanded(server) -> None:
    res = run(check_host(resolver(server), "192.0.2.7", "goodexp.example.test",
                         "a@goodexp.example.test", helo="client.example",
                         receiver="mx.example.test"))
    assert res.explanation == \
        "192.0.2.7 is not one of goodexp.example.test's hosts (client.example, mx.example.test)"


def test_explanation_stays_printable_ascii(server) -> None:
    # an SMTPUTF8 local-part expanded into the explanation must not reach the SMTP reply raw
    res = run(check_host(resolver(server), "192.0.2.7", "lexp.example.test",
                         "jos\u00e9@lexp.example.test"))
    assert (res.result, res.explanation) == ("fail", "sender jos?")


def test_whole_evaluation_time_limit(server) -> None:
    # a resolver willing to wait longer than the evaluation may: temperror at the limit
    started = time.monotonic()
    res = run(check_host(Resolver([server.nameserver], timeout=5, attempts=1), "192.0.2.1",
                         "slowtxt.example.test", "a@slowtxt.example.test", timeout=0.3))
    assert res.result == "temperror" and "took over" in res.reason
    assert time.monotonic() - started < 3


def test_ipv4_mapped_client_is_ipv4(server) -> None:
    # §5: ::ffff:192.0.2.30 is evaluated as 192.0.2.30: it matches ip4, not ip6
    res = check(server, "::ffff:192.0.2.30", "mapped.example.test")
    assert (res.result, res.mechanism) == ("pass", "ip4:192.0.2.30")
    assert check(server, "::ffff:192.0.2.31", "mapped.example.test").result == "fail"
    assert check(server, "2001:db8::1", "six.example.test").result == "pass"
    assert check(server, "192.0.2.1", "six.example.test").result == "fail"


def test_type_spf_records_are_never_used(server) -> None:
    server.clear_log()
    assert check(server, "192.0.2.1", "spf99.example.test").result == "fail"
    assert server.count("spf99.example.test", "SPF") == 0
    assert server.count("spf99.example.test", "TXT") == 1


@pytest.mark.parametrize("domain", ["", "localhost", "[192.0.2.1]", "a..example.test",
                                    "x" * 64 + ".example.test"])
def test_malformed_domain_is_none(server, domain: str) -> None:
    assert check(server, "192.0.2.1", domain).result == "none"


# ---------------------------------------------------------------------- identities, header

def test_mail_from_and_null_reverse_path(server) -> None:
    r = resolver(server)
    res = run(check_mail_from(r, "192.0.2.20", "someone@example.test", "helo.example.test"))
    assert (res.result, res.identity, res.domain) == ("pass", "mailfrom", "example.test")
    # §2.4: the null reverse-path checks postmaster@<HELO>
    res = run(check_mail_from(r, "192.0.2.40", "", "helo.example.test"))
    assert (res.result, res.domain, res.sender) == ("pass", "helo.example.test",
                                                    "postmaster@helo.example.test")
    # §4.3: no local-part -> postmaster
    res = run(check_mail_from(r, "192.0.2.40", "@helo.example.test", "x.example"))
    assert res.sender == "postmaster@helo.example.test"


def test_helo_identity(server) -> None:
    r = resolver(server)
    res = run(check_helo(r, "192.0.2.40", "helo.example.test"))
    assert (res.result, res.identity, res.sender) == ("pass", "helo",
                                                      "postmaster@helo.example.test")
    assert run(check_helo(r, "192.0.2.41", "helo.example.test")).result == "fail"
    assert run(check_helo(r, "192.0.2.40", "[192.0.2.40]")).result == "none"


def test_received_spf_header() -> None:
    res = SPFResult(result="pass", domain="example.com", identity="mailfrom",
                    sender="myname@example.com", mechanism="ip4:192.0.2.0/24")
    header = received_spf_header(res, "192.0.2.1", "foo.example.com", "myname@example.com",
                                 "mybox.example.org")
    assert header == (
        "Received-SPF: pass (mybox.example.org: domain of myname@example.com designates "
        "192.0.2.1 as permitted sender) client-ip=192.0.2.1; "
        'envelope-from="myname@example.com"; helo=foo.example.com; '
        "receiver=mybox.example.org; identity=mailfrom; mechanism=\"ip4:192.0.2.0/24\";")
    err = SPFResult(result="permerror", domain="example.com", identity="mailfrom",
                    sender="a@example.com", reason='bad "x" (y)')
    header = received_spf_header(err, "::ffff:192.0.2.1", "h.example", "", "")
    assert header.startswith("Received-SPF: permerror (permanent error in processing "
                             "domain of a@example.com) client-ip=192.0.2.1; "
                             'envelope-from=""; helo=h.example; problem="bad \\"x\\" (y)";')
    assert "\r" not in header and "\n" not in header
    soft = SPFResult(result="softfail", domain="example.com", identity="mailfrom",
                     sender="a@example.com")
    assert "domain of transitioning a@example.com does not designate" in \
        received_spf_header(soft, "192.0.2.1", "h.example", "a@example.com", "")
    assert "mechanism=default" in received_spf_header(
        SPFResult(result="neutral", domain="example.com"), "192.0.2.1", "h", "", "")
