"""DMARC aggregate reports (RFC 7489 §7.2, Appendix C): building, sending checks, reading.

The parsedmarc sample reports in ../shared/conformance/dmarc-reports/parsedmarc-samples/
are read in place; §7.1 destination checks run against a real DNS server on loopback.
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import io
import zipfile
from datetime import datetime, timezone
from xml.parsers import expat

import pytest

from dnsserver import DNSServer
from mailwright.mailauth.dmarc import ReportURI, parse_record
from mailwright.mailauth.dmarc_report import (
    AggregateReportError, DKIMAuthResult, ReportRow, SPFAuthResult, build_aggregate_xml,
    build_report_message, external_destination_allowed, extract_aggregate_report,
    parse_aggregate_xml, report_filename, report_subject)
from mailwright.net.dns import DNSTemporaryError, Resolver
from support import CONFORMANCE

SAMPLES = CONFORMANCE / "dmarc-reports" / "parsedmarc-samples"

POLICY = parse_record("v=DMARC1; p=reject; sp=quarantine; pct=50; adkim=s; fo=1:d; "
                      "rua=mailto:agg@example.com")
ROWS = [
    ReportRow("192.0.2.1", 12, "none", "pass", "pass", "example.com",
              envelope_from="example.com",
              dkim_results=[DKIMAuthResult("example.com", "pass", "sel1", "2048-bit key")],
              spf_results=[SPFAuthResult("example.com", "pass", "mfrom")]),
    ReportRow("2001:db8::25", 3, "quarantine", "fail", "fail", "example.com",
              envelope_from="", envelope_to="example.net",
              reasons=[("sampled_out", "pct=50")],
              dkim_results=[DKIMAuthResult("evil.example", "pass"),
                            DKIMAuthResult("example.com", "fail", "sel1")],
              spf_results=[SPFAuthResult("helo.evil.example", "softfail", "helo")]),
    ReportRow("198.51.100.7", 1, "reject", "fail", "fail", "sub.example.com",
              envelope_from="sub.example.com"),   # no SPF result given
]


def build(rows=ROWS, **kw) -> bytes:
    return build_aggregate_xml("Receiver <&> Inc", "noreply-dmarc@receiver.example",
                               "r-2024-001", 1700000000, 1700086399, POLICY, "example.com",
                               rows, **kw)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------- building

def test_generated_xml_parses_back():
    report = parse_aggregate_xml(build(extra_contact_info="https://receiver.example/dmarc",
                                       errors=["one error"]))
    assert report["version"] == "1.0"
    assert report["report_metadata"] == {
        "org_name": "Receiver <&> Inc", "email": "noreply-dmarc@receiver.example",
        "extra_contact_info": "https://receiver.example/dmarc", "report_id": "r-2024-001",
        "begin": 1700000000, "end": 1700086399, "errors": ["one error"]}
    assert report["policy_published"] == {
        "domain": "example.com", "adkim": "s", "aspf": "r", "p": "reject",
        "sp": "quarantine", "np": None, "pct": 50, "fo": "1:d"}
    first, second, third = report["records"]
    assert first == {
        "source_ip": "192.0.2.1", "count": 12, "disposition": "none", "dkim": "pass",
        "spf": "pass", "reasons": [], "envelope_to": None, "envelope_from": "example.com",
        "header_from": "example.com",
        "dkim_results": [{"domain": "example.com", "selector": "sel1", "result": "pass",
                          "human_result": "2048-bit key"}],
        "spf_results": [{"domain": "example.com", "scope": "mfrom", "result": "pass"}]}
    assert second["source_ip"] == "2001:db8::25"
    assert second["reasons"] == [{"type": "sampled_out", "comment": "pct=50"}]
    assert second["envelope_from"] == "" and second["envelope_to"] == "example.net"
    assert [d["domain"] for d in second["dkim_results"]] == ["evil.example", "example.com"]
    assert second["spf_results"] == [
        {"domain": "helo.evil.example", "scope": "helo", "result": "softfail"}]
    # Appendix C: "There will always be at least one SPF result."
    assert third["spf_results"] == [
        {"domain": "sub.example.com", "scope": "mfrom", "result": "none"}]


# The element order of RFC 7489 Appendix C (xs:sequence parts must follow it; the
# builder follows it in the xs:all parts as well).
APPENDIX_C_ORDER = {
    "feedback": ["version", "report_metadata", "policy_published", "record"],
    "report_metadata": ["org_name", "email", "extra_contact_info", "report_id",
                        "date_range", "error"],
    "date_range": ["begin", "end"],
    "policy_published": ["domain", "adkim", "aspf", "p", "sp", "pct", "fo", "np"],
    "record": ["row", "identifiers", "auth_results"],
    "row": ["source_ip", "count", "policy_evaluated"],
    "policy_evaluated": ["disposition", "dkim", "spf", "reason"],
    "reason": ["type", "comment"],
    "identifiers": ["envelope_to", "envelope_from", "header_from"],
    "auth_results": ["dkim", "spf"],
    "dkim": ["domain", "selector", "result", "human_result"],
    "spf": ["domain", "scope", "result"],
}


def _children(xml: bytes) -> list[tuple[str, list[str]]]:
    """(element, [child tags]) for every element with children, with an expat parser
    independent of the module's reader."""
    out: list[tuple[str, list[str]]] = []
    stack: list[tuple[str, list[str]]] = []
    parser = expat.ParserCreate()

    def start(name, _attrs):
        if stack:
            stack[-1][1].append(name)
        stack.append((name, []))

    def end(_name):
        node = stack.pop()
        if node[1]:
            out.append(node)

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.Parse(xml, True)
    return out


def test_element_order_follows_appendix_c():
    xml = build(extra_contact_info="x", errors=["e1", "e2"])
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    seen = set()
    for parent, kids in _children(xml):
        # only auth_results' dkim/spf have children (policy_evaluated's hold text)
        order = APPENDIX_C_ORDER[parent]
        positions = [order.index(k) for k in kids]
        assert positions == sorted(positions), (parent, kids)
        seen.add(parent)
    assert {"feedback", "report_metadata", "policy_published", "record", "row",
            "policy_evaluated", "identifiers", "auth_results", "reason"} <= seen


def test_np_is_reported_when_published():
    policy = parse_record("v=DMARC1; p=none; np=reject")
    xml = build_aggregate_xml("r", "r@r.example", "1", 0, 1, policy, "example.com", [])
    report = parse_aggregate_xml(xml)
    assert report["policy_published"]["np"] == "reject"
    assert report["policy_published"]["sp"] == "none"      # sp defaults to p
    assert report["records"] == []


def test_build_is_deterministic():
    assert build() == build()


@pytest.mark.parametrize("row", [
    ReportRow("not-an-ip", 1, "none", "pass", "pass", "example.com"),
    ReportRow("192.0.2.1", -1, "none", "pass", "pass", "example.com"),
    ReportRow("192.0.2.1", 1, "pass", "pass", "pass", "example.com"),
    ReportRow("192.0.2.1", 1, "none", "Pass", "pass", "example.com"),
    ReportRow("192.0.2.1", 1, "none", "pass", "pass", "example.com", reasons=[("bad", "")]),
    ReportRow("192.0.2.1", 1, "none", "pass", "pass", "example.com",
              dkim_results=[DKIMAuthResult("example.com", "softfail")]),
    ReportRow("192.0.2.1", 1, "none", "pass", "pass", "example.com",
              spf_results=[SPFAuthResult("example.com", "pass", "pra")]),
])
def test_builder_refuses_values_outside_the_schema(row):
    with pytest.raises(ValueError):
        build([row])


# ---------------------------------------------------------------------- the report e-mail

@pytest.mark.parametrize("args,name", [
    # §7.2.1.1 example (with the "xml.gz" extension its ABNF prescribes)
    (("mail.receiver.example", "example.com", 1013662812, 1013749130),
     "mail.receiver.example!example.com!1013662812!1013749130.xml.gz"),
    (("Mail.Receiver.Example.", "EXAMPLE.com", 1, 2, "id-42/x"),
     "mail.receiver.example!example.com!1!2!id42x.xml.gz"),
    (("r.example", "p.example", 1, 2, "", False), "r.example!p.example!1!2.xml"),
])
def test_report_filename(args, name):
    assert report_filename(*args) == name


@pytest.mark.parametrize("bad", ["a/b.example", "..example", "a\\b.example"])
def test_report_filename_refuses_unsafe_domains(bad):
    with pytest.raises(ValueError):
        report_filename("r.example", bad, 1, 2)


def test_report_subject():
    assert report_subject("example.com", "mail.receiver.example", "2002.02.15.1") == (
        "Report Domain: example.com Submitter: mail.receiver.example "
        "Report-ID: <2002.02.15.1>")
    with pytest.raises(ValueError):
        report_subject("example.com", "r.example", "has space")


DATE = datetime(2023, 11, 15, 22, 13, 20, tzinfo=timezone.utc)


def _message(xml: bytes, rua: ReportURI):
    return build_report_message(
        xml, rua=rua, report_from="DMARC Reports <noreply-dmarc@receiver.example>",
        receiver_domain="receiver.example", policy_domain="example.com",
        begin=1700000000, end=1700086399, report_id="r2024001", date=DATE,
        message_id="<r2024001@receiver.example>")


def test_report_message_structure():
    xml = build()
    data, reason = _message(xml, ReportURI("mailto:agg@example.com"))
    assert reason == "" and data is not None
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 78 for line in data.split(b"\r\n"))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["To"] == "agg@example.com"
    assert msg["Subject"] == ("Report Domain: example.com Submitter: receiver.example "
                              "Report-ID: <r2024001>")
    assert msg["Message-ID"] == "<r2024001@receiver.example>"
    assert msg["Date"].datetime == DATE
    assert msg.get_content_type() == "multipart/mixed"
    attachments = list(msg.iter_attachments())
    assert len(attachments) == 1
    part = attachments[0]
    assert part.get_content_type() == "application/gzip"
    assert part.get_filename() == \
        "receiver.example!example.com!1700000000!1700086399!r2024001.xml.gz"
    assert gzip.decompress(part.get_content()) == xml
    # and our own reader finds the report in the message
    assert extract_aggregate_report(data) == xml


def test_report_message_honours_the_size_limit():
    xml = build()
    full, _ = _message(xml, ReportURI("mailto:agg@example.com"))
    data, reason = _message(xml, ReportURI("mailto:agg@example.com", len(full) - 1))
    assert data is None and "exceeds" in reason
    data, reason = _message(xml, ReportURI("mailto:agg@example.com", len(full)))
    assert data == full and reason == ""
    size_limited = parse_record("v=DMARC1; p=none; rua=mailto:agg@example.com!1k").rua[0]
    big = build([ROWS[0]] * 200)
    data, reason = _message(big, size_limited)
    assert data is None and "1024" in reason


def test_report_message_only_for_mailto():
    data, reason = _message(build(), ReportURI("https://example.com/dmarc"))
    assert data is None and "unsupported" in reason


@pytest.mark.parametrize("uri", [
    "mailto:agg@example.com%2C%20victim@example.net",     # decoded "," adds a recipient
    "mailto:agg@example.com%0D%0ABcc:%20victim@example.net",
    "mailto:agg",
    "mailto:agg@bad..example",
    "mailto:%22quoted%20local%22@example.com",
])
def test_report_message_refuses_unusable_addresses(uri):
    data, reason = _message(build(), ReportURI(uri))
    assert data is None and "unusable" in reason


# ---------------------------------------------------------------------- §7.1 (real DNS)

ZONES = {
    "thirdparty.test": """
example.com._report._dmarc   TXT  "v=DMARC1"
*._report._dmarc.wild        TXT  "v=DMARC1;"
other.org._report._dmarc     TXT  "v=spf1 -all"
""",
    "slowparty.test": "@ A 192.0.2.1\n",
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


def test_destination_in_the_same_organization_needs_no_lookup(resolver, dns):
    assert run(external_destination_allowed(resolver, "mail.example.com", "example.com"))
    assert run(external_destination_allowed(resolver, "example.co.uk", "dmarc.example.co.uk"))
    assert dns.queries == []


def test_external_destination_with_authorization_record(resolver, dns):
    assert run(external_destination_allowed(resolver, "example.com", "thirdparty.test"))
    assert dns.queries == [("example.com._report._dmarc.thirdparty.test", "TXT")]


def test_external_destination_wildcard_authorization(resolver):
    assert run(external_destination_allowed(resolver, "anything.example",
                                            "wild.thirdparty.test"))


def test_external_destination_without_authorization(resolver):
    assert not run(external_destination_allowed(resolver, "example.net", "thirdparty.test"))
    assert not run(external_destination_allowed(resolver, "other.org", "thirdparty.test"))


def test_external_destination_temporary_failure_propagates(resolver, dns):
    dns.set_behaviour("example.com._report._dmarc.slowparty.test", "timeout")
    with pytest.raises(DNSTemporaryError):
        run(external_destination_allowed(resolver, "example.com", "slowparty.test"))


# ---------------------------------------------------------------------- reading samples

# (path under the samples folder, records expected; None: refused)
SAMPLE_EXPECTATIONS = [
    ("aggregate/!example.com!1538204542!1538463818.xml", 1),
    ("aggregate/Report domain- borschow.com Submitter- google.com Report-ID- "
     "949348866075514174.eml", 1),
    ("aggregate/addisonfoods.com!example.com!1536105600!1536191999.xml", 1),
    ("aggregate/empty_reason.xml", 1),
    ("aggregate/estadocuenta1.infonacot.gob.mx!example.com!1536853302!1536939702!2940"
     ".xml.zip", 1),
    ("aggregate/example.net!example.com!1529366400!1529452799.xml", 1),
    ("aggregate/fastmail.com!example.com!1516060800!1516147199!102675056.xml.gz", 1),
    # an unclosed <xs:schema> wrapper around <feedback>: not well-formed XML
    ("aggregate/ikea.com!example.de!1538690400!1538776800.xml", None),
    ("aggregate/invalid_utf_8.xml", None),
    ("aggregate/invalid_xml.xml", None),
    ("aggregate/mimecast-weird-gzip.eml", 1),   # gzip followed by a stray CRLF
    ("aggregate/old_draft_from_wiki.xml", 1),
    ("aggregate/protection.outlook.com!example.com!1711756800!1711843200.xml", 1),
    ("aggregate/rfc9990-example.net!example.com!1700000000!1700086399.xml", 2),
    ("aggregate/rfc9990-sample.xml", 1),
    ("aggregate/twilight.eml", 1),
    ("aggregate/usssa.com!example.com!1538784000!1538870399.xml", 2),
    ("aggregate/veeam.com!example.com!1530133200!1530219600.xml", 1),
    # "Pass"/"None": outside the schema's enumerations (accepted with strict=False)
    ("aggregate_invalid/report_with_upper_cased_pass.xml", None),
    ("extract_report/nice-input.xml", 20),
    ("extract_report/changed-input.xml", 20),
    ("extract_report/nice-input.xml.gz", 20),
    ("extract_report/nice-input.xml.zip", 20),
]


def test_every_aggregate_sample_has_an_expectation():
    present = {str(p.relative_to(SAMPLES)) for folder in
               ("aggregate", "aggregate_invalid", "extract_report")
               for p in (SAMPLES / folder).iterdir()}
    assert present == {name for name, _ in SAMPLE_EXPECTATIONS}


@pytest.mark.parametrize("name,records", SAMPLE_EXPECTATIONS)
def test_parsedmarc_samples(name, records):
    data = (SAMPLES / name).read_bytes()
    if records is None:
        with pytest.raises(AggregateReportError):
            parse_aggregate_xml(extract_aggregate_report(data))
        return
    report = parse_aggregate_xml(extract_aggregate_report(data))
    assert len(report["records"]) == records
    assert report["policy_published"]["domain"]
    assert report["report_metadata"]["begin"] <= report["report_metadata"]["end"]
    for record in report["records"]:
        assert record["count"] >= 0 and record["header_from"] is not None


def test_sample_details():
    report = parse_aggregate_xml(extract_aggregate_report(
        (SAMPLES / "aggregate/rfc9990-example.net!example.com!1700000000!1700086399.xml")
        .read_bytes()))
    assert report["version"] == "2.0"
    assert report["policy_published"]["np"] == "reject"
    rejected = report["records"][1]
    assert (rejected["source_ip"], rejected["count"], rejected["disposition"]) == (
        "203.0.113.10", 2, "reject")
    assert rejected["reasons"] == [{"type": "other", "comment": "sender not authorized"}]
    ns = parse_aggregate_xml((SAMPLES / "aggregate/rfc9990-sample.xml").read_bytes())
    assert ns["namespace"] == "urn:ietf:params:xml:ns:dmarc-2.0"
    assert ns["records"][0]["disposition"] == "pass"      # DMARCbis disposition value
    empty = parse_aggregate_xml((SAMPLES / "aggregate/empty_reason.xml").read_bytes())
    assert empty["records"][0]["reasons"] == []          # empty <type>: skipped


def test_upper_case_sample_is_read_leniently_when_asked():
    data = (SAMPLES / "aggregate_invalid/report_with_upper_cased_pass.xml").read_bytes()
    report = parse_aggregate_xml(data, strict=False)
    record = report["records"][0]
    assert (record["disposition"], record["dkim"], record["spf"]) == ("none", "pass", "pass")
    assert record["dkim_results"][0]["result"] == "pass"


def test_same_report_in_three_containers():
    base = SAMPLES / "extract_report"
    plain = parse_aggregate_xml(extract_aggregate_report((base / "nice-input.xml")
                                                         .read_bytes()))
    for name in ("nice-input.xml.gz", "nice-input.xml.zip"):
        assert parse_aggregate_xml(extract_aggregate_report((base / name).read_bytes())) \
            == plain


# ---------------------------------------------------------------------- refusing cleanly

MINIMAL = (b"<feedback><report_metadata><org_name>o</org_name><email>e</email>"
           b"<report_id>1</report_id><date_range><begin>1</begin><end>2</end></date_range>"
           b"</report_metadata><policy_published><domain>d.example</domain><p>none</p>"
           b"</policy_published>%s</feedback>")
RECORD = (b"<record><row><source_ip>%s</source_ip><count>%s</count><policy_evaluated>"
          b"<disposition>none</disposition><dkim>pass</dkim><spf>fail</spf>"
          b"</policy_evaluated></row><identifiers><header_from>d.example</header_from>"
          b"</identifiers><auth_results/></record>")


def test_minimal_report_reads():
    report = parse_aggregate_xml(MINIMAL % (RECORD % (b"192.0.2.1", b"4")))
    assert report["records"][0]["count"] == 4 and report["version"] is None


@pytest.mark.parametrize("data", [
    b"",
    b"not xml at all",
    b"<feedback>",
    b"<other/>",
    MINIMAL.replace(b"<p>none</p>", b"") % b"",
    MINIMAL.replace(b"<p>none</p>", b"<p>maybe</p>") % b"",
    MINIMAL.replace(b"<begin>1</begin>", b"<begin>yesterday</begin>") % b"",
    MINIMAL.replace(b"<email>e</email>", b"") % b"",
    MINIMAL % (RECORD % (b"999.1.1.1", b"1")),
    MINIMAL % (RECORD % (b"192.0.2.1", b"-3")),
    MINIMAL % (RECORD % (b"192.0.2.1", b"many")),
    MINIMAL % b"<record><row/></record>",
    # entity expansion ("billion laughs") and external entities are refused outright
    b'<?xml version="1.0"?><!DOCTYPE feedback [<!ENTITY a "aaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><feedback>&b;</feedback>',
    b'<?xml version="1.0"?><!DOCTYPE feedback SYSTEM "http://192.0.2.1/x.dtd">'
    b"<feedback/>",
    b"<a>" * 100000,
])
def test_bad_reports_are_refused_with_our_error(data):
    with pytest.raises(AggregateReportError):
        parse_aggregate_xml(extract_aggregate_report(data))


def _zip(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, payload)
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    gzip.compress(b"<feedback/>")[:-6],                      # truncated gzip
    b"\x1f\x8b" + b"\x00" * 20,                              # corrupt gzip
    b"PK\x03\x04" + b"\x00" * 40,                            # corrupt zip
    b"PK\x03\x04garbage",
    b"From: a@b.example\r\nSubject: no report\r\n\r\nhello\r\n",
    b"\x00\x01\x02binary",
])
def test_bad_containers_are_refused_with_our_error(data):
    with pytest.raises(AggregateReportError):
        extract_aggregate_report(data)


def test_decompression_is_bounded():
    bomb = gzip.compress(b"<feedback>" + b" " * 2_000_000 + b"</feedback>")
    with pytest.raises(AggregateReportError):
        extract_aggregate_report(bomb, max_size=1_000_000)
    assert extract_aggregate_report(bomb, max_size=3_000_000).startswith(b"<feedback>")
    zipped = _zip("r.xml", b"<feedback>" + b" " * 2_000_000 + b"</feedback>")
    with pytest.raises(AggregateReportError):
        extract_aggregate_report(zipped, max_size=1_000_000)


def test_zip_prefers_the_xml_member():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", b"hello")
        zf.writestr("report.xml", b"<feedback/>")
    assert extract_aggregate_report(buf.getvalue()) == b"<feedback/>"


def test_concatenated_gzip_members():
    data = gzip.compress(b"<feedback>") + gzip.compress(b"</feedback>")
    assert extract_aggregate_report(data) == b"<feedback></feedback>"
