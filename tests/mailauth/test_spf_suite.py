"""The openspf.org SPF test suites against our evaluator, over a real DNS server.

The suites are read in place from the shared conformance directory (``support.CONFORMANCE``):
``spf/rfc7208-tests.yml`` (all 203 cases must pass) and ``spf/rfc4408-tests.yml`` (the
older edition, 191 cases: all pass too, because the 4408 suite accepts both the old and the
RFC 7208 answer wherever they differ, e.g. "mx-limit" lists permerror beside neutral, so
no case needs to be listed as an expected difference). Each YAML document is a scenario:
``zonedata`` (name -> records) and ``tests``.

Zone data -> a real ``DNSServer`` on loopback, one per scenario (started on first use,
stopped at the end of the module), following the suites' driver conventions
(pyspf ``test/testspf.py``):
  * "SPF" records are also served as TXT unless the name lists TXT records itself (even
    "TXT: NONE", which means: no TXT). Type SPF (99) is served too; our evaluator never
    asks for it (RFC 7208 §3.1, §4.4).
  * A record given as a list of strings is ONE TXT record of several strings.
  * "TIMEOUT": queries for the name get no answer, except for the record types listed
    before the TIMEOUT entry (``DNSServer.set_behaviour``, per type).
  * Strings are bytes: YAML "\\xEF" is the octet 0xEF (latin-1), as in the suites.
Every case gets a fresh Resolver (no cache shared between cases) with a short timeout.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest
import yaml

from dnsserver import DNSServer
from mailwright.mailauth.spf import DEFAULT_EXPLANATION, check_mail_from
from mailwright.net.dns import Resolver
from support import CONFORMANCE

SUITE_DIR = CONFORMANCE / "spf"
RFC7208 = SUITE_DIR / "rfc7208-tests.yml"
RFC4408 = SUITE_DIR / "rfc4408-tests.yml"

# The explanation of this case is compared without case: the suite expects the IPv6 %{i}
# nibbles in upper case ("...E.B.A.B.E.F.A.C.ip6.arpa"), while RFC 7208 §7.4's own
# example expands them in lower case ("1.0.b.c.0...8.b.d.0.1.0.0.2.ip6._spf..."), which
# we follow. Asserted: the exact texts do differ, and only in case.
CASE_INSENSITIVE_EXPLANATION = {
    "rfc7208/macro-expansion-rules/v-macro-ip6",
    "rfc4408/macro-expansion-rules/v-macro-ip6",
}

@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    scenario: int
    name: str
    slug: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.slug}/{self.name}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _load(path: Path, suite: str) -> tuple[list[dict], list[Case]]:
    with open(path, "rb") as f:
        scenarios = list(yaml.safe_load_all(f))
    cases = []
    for index, scenario in enumerate(scenarios):
        slug = _slug(scenario.get("description", f"scenario-{index}"))
        for name, test in scenario["tests"].items():
            expected = test["result"]
            results = tuple(expected) if isinstance(expected, list) else (expected,)
            cases.append(Case(suite, index, name, slug, str(test["helo"]), str(test["host"]),
                              str(test["mailfrom"]), results, test.get("explanation")))
    return scenarios, cases


SCENARIOS_7208, CASES_7208 = _load(RFC7208, "rfc7208")
SCENARIOS_4408, CASES_4408 = _load(RFC4408, "rfc4408")
SCENARIOS = {"rfc7208": SCENARIOS_7208, "rfc4408": SCENARIOS_4408}


# ---------------------------------------------------------------------- zone data -> server

def _octets(text: str) -> bytes:
    """YAML text -> record octets: "\\xEF" escapes are octets (latin-1), as the suite means."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _txt_rdata(value: str | list[str]) -> str:
    """One TXT record in master-file syntax; a list is one record of several strings."""
    strings = [value] if isinstance(value, str) else list(value)
    chunks: list[bytes] = []
    for s in strings:
        raw = _octets(s)
        chunks.extend(raw[i:i + 255] for i in range(0, len(raw), 255) or [0])
    if not chunks:
        # "SPF: []" (a record without strings) cannot exist on the wire: RFC 1035 §3.3.14
        # says one or more <character-string>s, and dnspython refuses to build or parse it.
        # The nearest legal record, one empty string, keeps the point of the test: a
        # second, non-SPF record beside the real one.
        chunks = [b""]
    rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
    return rd.to_text()


def _absolute(name: str) -> str:
    return dns.name.from_text(name or ".").to_text()


def _rdata(rtype: str, value: Any) -> str:
    if rtype in ("TXT", "SPF"):
        return _txt_rdata(value)
    if rtype == "MX":
        preference, host = value
        return f"{int(preference)} {_absolute(str(host))}"
    if rtype in ("PTR", "CNAME"):
        return _absolute(str(value))
    if rtype in ("A", "AAAA"):
        return str(value)
    raise ValueError(f"record type {rtype} not handled by this runner")


def zone_of(zonedata: dict) -> tuple[str, list[tuple[str, str, str | None]]]:
    """(master-file text with absolute names under a root zone, behaviours to set)."""
    lines = [". 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300"]
    behaviours: list[tuple[str, str, str | None]] = []
    for owner, entries in zonedata.items():
        name = _absolute(str(owner))
        lists_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answered: set[str] = set()
        timeout = False
        for entry in entries:
            if entry == "TIMEOUT":
                timeout = True
                continue
            for rtype, value in entry.items():
                if value == "NONE":
                    continue
                types = [rtype] + (["TXT"] if rtype == "SPF" and not lists_txt else [])
                for t in types:
                    lines.append(f"{name} 300 IN {t} {_rdata(t, value)}")
                if not timeout:
                    answered.add(rtype)
        if timeout:
            behaviours.append((name, "timeout", None))
            behaviours.extend((name, "answer", t) for t in sorted(answered))
    return "\n".join(lines) + "\n", behaviours


@pytest.fixture(scope="module")
def scenario_server() -> Iterator[Any]:
    """``get(suite, index) -> DNSServer`` serving that scenario; one server per scenario."""
    servers: dict[tuple[str, int], DNSServer] = {}

    def get(suite: str, index: int) -> DNSServer:
        key = (suite, index)
        if key not in servers:
            text, behaviours = zone_of(SCENARIOS[suite][index]["zonedata"])
            server = DNSServer(text).start()
            for name, kind, rdtype in behaviours:
                server.set_behaviour(name, kind, rdtype=rdtype)
            servers[key] = server
        return servers[key]

    yield get
    for server in servers.values():
        server.stop()


def evaluate(case: Case, server: DNSServer):
    resolver = Resolver([server.nameserver], timeout=0.5, attempts=2)
    return asyncio.run(asyncio.wait_for(
        check_mail_from(resolver, case.host, case.mailfrom, case.helo,
                        receiver="receiver.test"), 30))


def _check_explanation(case: Case, got: str) -> None:
    if case.explanation is None:
        return
    want = DEFAULT_EXPLANATION if case.explanation == "DEFAULT" else case.explanation
    if case.id in CASE_INSENSITIVE_EXPLANATION:
        assert got != want and got.lower() == want.lower(), (case.id, got)
    else:
        assert got == want, (case.id, got)


# ---------------------------------------------------------------------- the tests

def test_suite_sizes() -> None:
    assert len(CASES_7208) == 203
    assert len({c.id for c in CASES_7208}) == 203
    assert len({c.id for c in CASES_4408}) == len(CASES_4408)


@pytest.mark.parametrize("case", CASES_7208, ids=[c.id for c in CASES_7208])
def test_rfc7208(case: Case, scenario_server) -> None:
    result = evaluate(case, scenario_server(case.suite, case.scenario))
    assert result.result in case.results, (result.result, result.reason)
    _check_explanation(case, result.explanation)


@pytest.mark.parametrize("case", CASES_4408, ids=[c.id for c in CASES_4408])
def test_rfc4408(case: Case, scenario_server) -> None:
    result = evaluate(case, scenario_server(case.suite, case.scenario))
    assert result.result in case.results, (result.result, result.reason)
    _check_explanation(case, result.explanation)
