"""DNS doctor (``admin/dnsdoctor.py``, ``mailwright dns records|check``) against a real
authoritative DNS server on loopback (``tests/dnsserver.py``).

The good zone is exactly what ``records()`` prints, published and checked back (round
trip); the broken zones are written by hand. The CLI is run through ``cli/dns.register``
on a parser built like main's (``run_dns``); ``test_wired_*`` run ``main([...])`` and are
skipped until the lead adds the ``dns`` group to ``cli/main.build_parser``.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
from pathlib import Path

import pytest

from dnsserver import DNSServer
from mailwright.admin import dnsdoctor
from mailwright.admin.dnsdoctor import (
    MISSING, NOTE, OK, UNCHECKED, WRONG, DomainFacts, check, records, split_txt,
)
from mailwright.cli import dns as dns_cli
from mailwright.cli.main import _run_admin, main
from mailwright.config import load_settings
from mailwright.mailauth.dkim_keys import dns_txt_record, generate_key
from mailwright.net.dns import Resolver

OUR_IP = "192.0.2.10"
OUR_IP6 = "2001:db8::10"
DKIM_TXT = dns_txt_record(generate_key("rsa", 2048))      # ~400 octets: split in the zone
OTHER_TXT = dns_txt_record(generate_key("ed25519"))


def good_facts(**kw) -> DomainFacts:
    base = dict(domain="good.test", mx_hosts=("mx.good.test",), ips=(OUR_IP, OUR_IP6),
                dkim=(("sel1", DKIM_TXT),), rua="")
    base.update(kw)
    return DomainFacts(**base)


def zone_text(recs: list[dnsdoctor.Record]) -> str:
    """What records() says to publish, as one master file with an $ORIGIN per zone."""
    zones: dict[str, list[str]] = {}
    for r in recs:
        name = r.name.rstrip(".")
        origin = next(z for z in ("good.test", "2.0.192.in-addr.arpa",
                                  "8.b.d.0.1.0.0.2.ip6.arpa", "reports.test")
                      if name == z or name.endswith("." + z))
        zones.setdefault(origin, []).append(r.zone_line())
    return "\n".join(f"$ORIGIN {z}.\n" + "\n".join(lines) for z, lines in zones.items()) + "\n"


BROKEN = {
    # MX ours; SPF names only the MX host (not the outbound IP 198.51.100.7); no DKIM key;
    # DMARC sends reports to an external domain that has not authorised them.
    "broken.test": """
@ MX 10 mx.broken.test.
mx A 192.0.2.20
mail A 198.51.100.99
@ TXT "v=spf1 mx -all"
_dmarc TXT "v=DMARC1; p=reject; rua=mailto:agg@reports.test"
""",
    "reports.test": "@ TXT \"nothing here\"\n",
    # PTR of the outbound IP names a host whose A is another address: not forward-confirmed.
    "100.51.198.in-addr.arpa": "7 PTR mail.broken.test.\n",
    # Two SPF records, an MX that is not us, a DMARC record with v= not first.
    "twospf.test": """
@ MX 10 mx.provider.test.
@ TXT "v=spf1 ip4:192.0.2.10 -all"
@ TXT "v=spf1 mx -all"
_dmarc TXT "p=reject; v=DMARC1"
sel1._domainkey TXT "v=DKIM1; k=rsa; p="
""",
}


@pytest.fixture
def good_dns():
    with DNSServer(zone_text(records(good_facts()))) as srv:
        yield srv


@pytest.fixture
def broken_dns():
    with DNSServer(BROKEN) as srv:
        yield srv


def resolver(srv: DNSServer) -> Resolver:
    return Resolver([srv.nameserver], timeout=0.5, attempts=1)


def by_item(findings: list[dnsdoctor.Finding]) -> dict[str, dnsdoctor.Finding]:
    return {f.item: f for f in findings}


# ---------------------------------------------------------------------- records()

def test_records_lists_everything_to_publish():
    facts = good_facts(rua="dmarc@reports.test")
    recs = records(facts)
    lines = [r.zone_line() for r in recs]
    assert "good.test.\t3600\tIN\tMX\t10 mx.good.test." in lines
    assert "mx.good.test.\t3600\tIN\tA\t192.0.2.10" in lines
    assert "mx.good.test.\t3600\tIN\tAAAA\t2001:db8::10" in lines
    assert 'good.test.\t3600\tIN\tTXT\t"v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10 -all"' \
        in lines
    assert '_dmarc.good.test.\t3600\tIN\tTXT\t"v=DMARC1; p=quarantine; ' \
        'rua=mailto:dmarc@reports.test"' in lines
    # RFC 7489 §7.1: the external report domain must authorise the reports.
    auth = next(r for r in recs if r.name == "good.test._report._dmarc.reports.test.")
    assert auth.value == '"v=DMARC1"' and auth.zone == "reports.test"
    # Forward-confirmed reverse DNS advice for each IP.
    ptr4 = next(r for r in recs if r.type == "PTR" and "in-addr" in r.name)
    assert ptr4.name == "10.2.0.192.in-addr.arpa." and ptr4.value == "mx.good.test."
    assert "A 192.0.2.10" in ptr4.note
    ptr6 = next(r for r in recs if r.type == "PTR" and "ip6.arpa" in r.name)
    assert ptr6.name.startswith("0.1.0.0.0.0.0.0") and "AAAA 2001:db8::10" in ptr6.note


def test_dkim_record_is_split_into_255_octet_strings():
    [dk] = [r for r in records(good_facts()) if r.name.startswith("sel1._domainkey")]
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', dk.value)
    assert len(strings) == 2 and len(strings[0]) == 255
    assert "".join(strings) == DKIM_TXT
    assert split_txt("x" * 510) == ["x" * 255, "x" * 255]
    assert split_txt("") == [""]


def test_defaults_rua_and_no_ip():
    facts = DomainFacts("Example.TEST.", ("MX.example.test",))
    recs = records(facts)
    assert facts.rua == "dmarc-reports@example.test"
    assert any(r.value == '"v=spf1 mx -all"' for r in recs)
    assert not any(r.type in ("PTR", "A", "AAAA") for r in recs)
    assert not any("_report._dmarc" in r.name for r in recs)   # own domain: no authorisation


# ---------------------------------------------------------------------- check()

def test_published_records_check_ok(good_dns):
    findings = asyncio.run(check(resolver(good_dns), good_facts()))
    items = by_item(findings)
    assert all(f.status in (OK, NOTE) for f in findings), \
        [(f.item, f.status, f.detail) for f in findings if f.status != OK]
    assert dnsdoctor.ok(findings)
    for item in ("MX", "MX points to us", "MX host mx.good.test resolves", "SPF",
                 "SPF lookup limit", f"SPF authorises {OUR_IP}", f"SPF authorises {OUR_IP6}",
                 "DKIM sel1", "DMARC", f"reverse DNS {OUR_IP}", f"reverse DNS {OUR_IP6}"):
        assert items[item].status == OK, item
    assert items["SPF lookup limit"].data["lookups"] == 1          # the mx term
    assert ("good.test", "MX") in good_dns.queries
    assert ("sel1._domainkey.good.test", "TXT") in good_dns.queries


def test_broken_zone_reports_each_fault_with_its_fix(broken_dns):
    facts = DomainFacts("broken.test", ("mx.broken.test",), ("198.51.100.7",),
                        (("sel1", DKIM_TXT),))
    findings = asyncio.run(check(resolver(broken_dns), facts))
    items = by_item(findings)
    assert items["MX points to us"].status == OK
    assert items["SPF"].status == OK                              # syntax is fine ...
    spf = items["SPF authorises 198.51.100.7"]                     # ... but not our IP
    assert spf.status == WRONG and spf.data["result"] == "fail"
    assert "ip4:198.51.100.7" in spf.fix
    dkim = items["DKIM sel1"]
    assert dkim.status == MISSING and "sel1._domainkey.broken.test" in dkim.detail
    assert dkim.fix.startswith("sel1._domainkey.broken.test.\t3600\tIN\tTXT\t\"v=DKIM1;")
    auth = items["DMARC report authorisation reports.test"]
    assert auth.status == MISSING
    assert "broken.test._report._dmarc.reports.test." in auth.fix
    rdns = items["reverse DNS 198.51.100.7"]
    assert rdns.status == WRONG and "mail.broken.test -> 198.51.100.99" in rdns.detail
    assert "7.100.51.198.in-addr.arpa. PTR mx.broken.test." in rdns.fix
    assert not dnsdoctor.ok(findings)


def test_two_spf_records_foreign_mx_bad_dmarc_revoked_key(broken_dns):
    facts = DomainFacts("twospf.test", ("mx.twospf.test",), (OUR_IP,), (("sel1", DKIM_TXT),))
    items = by_item(asyncio.run(check(resolver(broken_dns), facts)))
    assert items["MX points to us"].status == WRONG
    assert "mx.provider.test" in items["MX points to us"].detail
    assert items["MX points to us"].fix == "twospf.test.\t3600\tIN\tMX\t10 mx.twospf.test."
    spf = items["SPF"]
    assert spf.status == WRONG and "2 v=spf1 records" in spf.detail
    assert "RFC 7208 §4.5" in spf.detail and "merge" in spf.fix
    assert items["DMARC"].status == WRONG and "first tag" in items["DMARC"].detail
    assert items["DKIM sel1"].status == WRONG and "revoked" in items["DKIM sel1"].detail


def test_missing_everything(broken_dns):
    facts = DomainFacts("reports.test", ("mx.reports.test",))
    items = by_item(asyncio.run(check(resolver(broken_dns), facts)))
    assert items["MX"].status == MISSING and "no MX record" in items["MX"].detail
    assert items["SPF"].status == MISSING
    assert items["SPF"].fix.endswith('"v=spf1 mx -all"')
    assert items["DMARC"].status == MISSING
    assert "dmarc-reports@reports.test" in items["DMARC"].fix


def test_dkim_key_that_is_not_ours(good_dns):
    facts = good_facts(dkim=(("sel1", OTHER_TXT),))
    items = by_item(asyncio.run(check(resolver(good_dns), facts)))
    assert items["DKIM sel1"].status == WRONG and "not ours" in items["DKIM sel1"].detail
    assert OTHER_TXT.split("p=")[1] in items["DKIM sel1"].fix


def test_dns_timeout_is_could_not_check_never_ok(good_dns):
    good_dns.set_behaviour("_dmarc.good.test", "timeout")
    good_dns.set_behaviour("sel1._domainkey.good.test", "servfail")
    findings = asyncio.run(check(resolver(good_dns), good_facts()))
    items = by_item(findings)
    assert items["DMARC"].status == UNCHECKED
    assert items["DKIM sel1"].status == UNCHECKED
    assert items["MX"].status == OK
    assert not dnsdoctor.ok(findings)


def test_spf_syntax_and_lookup_limit():
    assert dnsdoctor.spf_syntax_problems("v=spf1 mx -all") == []
    assert "permerror" in dnsdoctor.spf_syntax_problems("v=spf1 foo -all")[0]
    assert "every host" in dnsdoctor.spf_syntax_problems("v=spf1 +all")[0]
    zone = {"many.test": "@ TXT \"v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11))
            + " -all\"\n" + "\n".join(f"h{i} A 203.0.113.{i}" for i in range(11)) + "\n"
            "@ MX 10 mx\nmx A 203.0.113.99\n"}
    with DNSServer(zone) as srv:
        facts = DomainFacts("many.test", ("mx.many.test",), ("203.0.113.99",))
        items = by_item(asyncio.run(check(resolver(srv), facts)))
    lim = items["SPF lookup limit"]
    assert lim.status == WRONG and "the limit is 10" in lim.detail


def test_dmarc_tag_checks():
    tags, problems = dnsdoctor.dmarc_tags("v=DMARC1; p=quarantine; rua=mailto:a@b.test")
    assert problems == [] and tags["rua"] == "mailto:a@b.test"
    _, problems = dnsdoctor.dmarc_tags("v=DMARC1; p=bogus; pct=200; rua=https://x")
    assert any("p=bogus" in p for p in problems)
    assert any("pct=200" in p for p in problems)
    assert any("mailto:" in p for p in problems)
    _, problems = dnsdoctor.dmarc_tags("v=DMARC1")
    assert any("p= is required" in p for p in problems)


# ---------------------------------------------------------------------- the CLI

def _config(tmp_path: Path, srv: DNSServer) -> Path:
    cfg = tmp_path / "mailwright.toml"
    cfg.write_text(f'hostname = "mx.good.test"\ndata_dir = "{tmp_path / "data"}"\n'
                   f'local_domains = ["good.test"]\n'
                   f'[outbound]\nnameservers = ["{srv.nameserver}"]\ndns_timeout = 0.5\n')
    return cfg


def run_dns(cfg: Path, *args: str) -> tuple[int, str, str]:
    """The dns commands through register() on a parser built like main's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true")
    p = argparse.ArgumentParser(prog="mailwright")
    p.add_argument("-c", "--config", default=None)
    cmds = p.add_subparsers(dest="command", required=True)
    dns_cli.register(cmds, common, as_json)
    args = p.parse_args(["-c", str(cfg), *args])
    out, err = io.StringIO(), io.StringIO()
    rc = asyncio.run(_run_admin(args.func, args, load_settings(args.config), out, err,
                                io.StringIO()))
    return rc, out.getvalue(), err.getvalue()


def test_cli_records_zone_format_and_json(tmp_path, good_dns):
    cfg = _config(tmp_path, good_dns)
    rc, out, err = run_dns(cfg, "dns", "records", "good.test", "--ip", OUR_IP)
    assert rc == 0, err
    assert "good.test.\t3600\tIN\tMX\t10 mx.good.test." in out
    assert '"v=spf1 mx ip4:192.0.2.10 -all"' in out
    assert "10.2.0.192.in-addr.arpa.\t3600\tIN\tPTR\tmx.good.test." in out
    assert "no DKIM keys known" in out
    rc, out, _ = run_dns(cfg, "dns", "records", "good.test", "--json")
    data = json.loads(out)
    assert rc == 0 and data["domain"] == "good.test"
    assert {r["type"] for r in data["records"]} == {"MX", "TXT"}


def test_cli_check_good_and_broken(tmp_path, good_dns, broken_dns):
    cfg = _config(tmp_path, good_dns)
    rc, out, err = run_dns(cfg, "dns", "check", "good.test", "--ip", OUR_IP,
                           "--ip", OUR_IP6)
    assert rc == 0, out + err
    assert "Result: all ok" in out
    assert f"[       ok] SPF authorises {OUR_IP}" in out
    cfg2 = _config(tmp_path, broken_dns)
    rc, out, _ = run_dns(cfg2, "dns", "check", "broken.test", "--ip", "198.51.100.7",
                         "--mx", "mx.broken.test", "--json")
    data = json.loads(out)
    assert rc == 1 and data["ok"] is False
    statuses = {f["item"]: f["status"] for f in data["findings"]}
    assert statuses["SPF authorises 198.51.100.7"] == "wrong"
    assert statuses["DMARC report authorisation reports.test"] == "missing"
    assert statuses["reverse DNS 198.51.100.7"] == "wrong"
    rc, out, _ = run_dns(cfg2, "dns", "check", "broken.test", "--mx", "mx.broken.test")
    assert rc == 1 and "[  MISSING] DKIM" not in out and "[  MISSING]" in out
    assert "fix: " in out and "problem(s) found" in out


def test_cli_usage_errors(tmp_path, good_dns):
    cfg = _config(tmp_path, good_dns)
    rc, _, err = run_dns(cfg, "dns", "check", "good.test", "--ip", "not-an-ip")
    assert rc == 2 and "--ip: not an IP address" in err
    rc, _, err = run_dns(cfg, "dns", "records", "no spaces allowed")
    assert rc == 2 and "not a domain name" in err




def test_wired_main_dns_check(tmp_path, good_dns):
    cfg = _config(tmp_path, good_dns)
    out, err = io.StringIO(), io.StringIO()
    rc = main(["-c", str(cfg), "dns", "check", "good.test", "--ip", OUR_IP, "--json"],
              stdout=out, stderr=err, stdin=io.StringIO())
    assert rc == 0, err.getvalue()
    assert json.loads(out.getvalue())["ok"] is True
