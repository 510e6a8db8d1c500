"""DMARC aggregate reports (RFC 7489 §7.2, Appendix C): build, send-check, read.

What: ``build_aggregate_xml`` writes the XML of one aggregate report from already
aggregated rows; ``build_report_message`` wraps it, gzip'd, in an RFC 5322 message with
the §7.2.1.1 Subject and file name, within the rua URI's size limit;
``external_destination_allowed`` is the §7.1 check that a report destination outside the
policy domain's organization agreed to receive its reports. For the other direction,
``extract_aggregate_report`` pulls the XML out of what arrives (plain XML, gzip, zip, or a
report e-mail) and ``parse_aggregate_xml`` reads it into a plain dict.

How: XML is built with ``xml.etree.ElementTree`` in the element order of the Appendix C
schema (its xs:sequence parts need it; the xs:all parts get it too) and read with a small
tree builder on pyexpat that refuses DTDs and entity declarations (no entity expansion,
no external fetch). Decompression is bounded by ``max_size``.

Invariants:
  * The builders are pure: same inputs, same bytes (the message's Date and Message-ID can
    be passed in; gzip mtime is 0).
  * Builders validate their inputs against the schema's enumerations and raise
    ValueError on a programming error; readers raise ``AggregateReportError`` (never
    another exception) on anything they cannot read.
  * A report larger than the rua "!size" limit is never produced (§6.2: the receiver
    MUST NOT send more): the builder returns None and the reason.
"""
from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import gzip
import hashlib
import io
import ipaddress
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence
from xml.parsers import expat

from ..net.dns import DNSPermanentError, Resolver
from .dmarc import DMARCRecord, ReportURI, is_dmarc_record
from .orgdomain import normalize_domain, organizational_domain

__all__ = [
    "AggregateReportError", "DKIMAuthResult", "ReportRow", "SPFAuthResult",
    "build_aggregate_xml", "build_report_message", "external_destination_allowed",
    "extract_aggregate_report", "parse_aggregate_xml", "report_filename", "report_subject",
]

# Appendix C enumerations.
DISPOSITIONS = ("none", "quarantine", "reject")
DMARC_RESULTS = ("pass", "fail")
OVERRIDE_TYPES = ("forwarded", "sampled_out", "trusted_forwarder", "mailing_list",
                  "local_policy", "other")
DKIM_RESULTS = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
SPF_RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
SPF_SCOPES = ("helo", "mfrom")
# DMARCbis aggregate reporting adds "pass" to the evaluated disposition (read only).
READ_DISPOSITIONS = DISPOSITIONS + ("pass",)

SCHEMA_VERSION = "1.0"
MAX_REPORT_SIZE = 50 * 2**20          # decompressed bytes a reader accepts by default
_UNIQUE_ID_RE = re.compile(r"[^A-Za-z0-9]")
_FILENAME_DOMAIN_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9])?$")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# dot-atom "@" domain (RFC 5322 §3.4.1), nothing else
_ADDRESS_RE = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9.-]+$")
_MSGID_TEXT_RE = re.compile(r"^[!-;=?-~]+$")     # no space, "<" or ">"


class AggregateReportError(ValueError):
    """An aggregate report that cannot be read: not XML, not a DMARC report, bad values,
    too large, or no report in the data at all."""


@dataclass(frozen=True, slots=True)
class DKIMAuthResult:
    """One DKIM signature's raw result (Appendix C DKIMAuthResultType)."""

    domain: str
    result: str
    selector: str | None = None
    human_result: str | None = None


@dataclass(frozen=True, slots=True)
class SPFAuthResult:
    """The raw SPF result (Appendix C SPFAuthResultType); scope "mfrom" or "helo"."""

    domain: str
    result: str
    scope: str = "mfrom"


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One aggregated record: ``count`` messages from ``source_ip`` that shared all of
    these values. ``dkim``/``spf`` are the DMARC-aligned results ("pass"/"fail");
    ``reasons`` are (PolicyOverrideType, comment) pairs; ``envelope_from`` is the
    RFC5321.MailFrom domain ("" for the null reverse-path)."""

    source_ip: str
    count: int
    disposition: str
    dkim: str
    spf: str
    header_from: str
    envelope_from: str = ""
    envelope_to: str | None = None
    reasons: Sequence[tuple[str, str]] = ()
    dkim_results: Sequence[DKIMAuthResult] = ()
    spf_results: Sequence[SPFAuthResult] = ()


# ---------------------------------------------------------------------- building

def _need(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, not {value!r}")
    return value


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


def _row(feedback: ET.Element, row: ReportRow) -> None:
    try:
        ip = str(ipaddress.ip_address(row.source_ip))
    except ValueError:
        raise ValueError(f"source_ip is not an IP address: {row.source_ip!r}") from None
    if row.count < 0:
        raise ValueError("count must be >= 0")
    record = _sub(feedback, "record")
    xrow = _sub(record, "row")
    _sub(xrow, "source_ip", ip)
    _sub(xrow, "count", int(row.count))
    evaluated = _sub(xrow, "policy_evaluated")
    _sub(evaluated, "disposition", _need(row.disposition, DISPOSITIONS, "disposition"))
    _sub(evaluated, "dkim", _need(row.dkim, DMARC_RESULTS, "policy_evaluated dkim"))
    _sub(evaluated, "spf", _need(row.spf, DMARC_RESULTS, "policy_evaluated spf"))
    for kind, comment in row.reasons:
        reason = _sub(evaluated, "reason")
        _sub(reason, "type", _need(kind, OVERRIDE_TYPES, "reason type"))
        if comment:
            _sub(reason, "comment", comment)
    ids = _sub(record, "identifiers")
    if row.envelope_to:
        _sub(ids, "envelope_to", row.envelope_to)
    _sub(ids, "envelope_from", row.envelope_from)      # minOccurs=1 in Appendix C
    _sub(ids, "header_from", row.header_from)
    auth = _sub(record, "auth_results")
    for dk in row.dkim_results:
        node = _sub(auth, "dkim")
        _sub(node, "domain", dk.domain)
        if dk.selector:
            _sub(node, "selector", dk.selector)
        _sub(node, "result", _need(dk.result, DKIM_RESULTS, "DKIM result"))
        if dk.human_result:
            _sub(node, "human_result", dk.human_result)
    spf_results = list(row.spf_results) or [
        # Appendix C: "There will always be at least one SPF result."
        SPFAuthResult(row.envelope_from, "none", "mfrom")]
    for sp in spf_results:
        node = _sub(auth, "spf")
        _sub(node, "domain", sp.domain)
        _sub(node, "scope", _need(sp.scope, SPF_SCOPES, "SPF scope"))
        _sub(node, "result", _need(sp.result, SPF_RESULTS, "SPF result"))


def build_aggregate_xml(org_name: str, org_email: str, report_id: str, begin: int, end: int,
                        policy: DMARCRecord, policy_domain: str, rows: Iterable[ReportRow],
                        *, extra_contact_info: str | None = None,
                        errors: Sequence[str] = ()) -> bytes:
    """The XML of one aggregate report (RFC 7489 §7.2, Appendix C), UTF-8, with the XML
    declaration. ``begin``/``end``: the UTC epoch seconds of the reporting period;
    ``policy``: the record as published at ``policy_domain``."""
    if end < begin:
        raise ValueError("end before begin")
    feedback = ET.Element("feedback")
    _sub(feedback, "version", SCHEMA_VERSION)
    meta = _sub(feedback, "report_metadata")
    _sub(meta, "org_name", org_name)
    _sub(meta, "email", org_email)
    if extra_contact_info:
        _sub(meta, "extra_contact_info", extra_contact_info)
    _sub(meta, "report_id", report_id)
    dates = _sub(meta, "date_range")
    _sub(dates, "begin", int(begin))
    _sub(dates, "end", int(end))
    for error in errors:
        _sub(meta, "error", error)
    published = _sub(feedback, "policy_published")
    _sub(published, "domain", policy_domain)
    _sub(published, "adkim", policy.adkim)
    _sub(published, "aspf", policy.aspf)
    _sub(published, "p", policy.p)
    _sub(published, "sp", policy.subdomain_policy)
    _sub(published, "pct", policy.pct)
    _sub(published, "fo", ":".join(policy.fo))
    if policy.np:
        _sub(published, "np", policy.np)          # RFC 9091 §4.2 adds np to reports
    for row in rows:
        _row(feedback, row)
    ET.indent(feedback, space="  ")
    body = ET.tostring(feedback, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


def report_filename(receiver: str, policy_domain: str, begin: int, end: int,
                    unique_id: str = "", gzipped: bool = True) -> str:
    """§7.2.1.1: ``receiver "!" policy-domain "!" begin "!" end [ "!" unique-id ] "."
    extension``; unique-id keeps only ALPHA / DIGIT."""
    domains = [normalize_domain(receiver), normalize_domain(policy_domain)]
    for domain in domains:
        # The name becomes a file name at the report consumer: LDH labels only.
        if not _FILENAME_DOMAIN_RE.match(domain):
            raise ValueError(f"domain unusable in a report file name: {domain!r}")
    parts = [*domains, str(int(begin)), str(int(end))]
    uid = _UNIQUE_ID_RE.sub("", unique_id)
    if uid:
        parts.append(uid)
    return "!".join(parts) + (".xml.gz" if gzipped else ".xml")


def report_subject(policy_domain: str, submitter: str, report_id: str) -> str:
    """§7.2.1.1: ``Report Domain: <policy-domain> Submitter: <submitter> Report-ID:
    <msg-id>``."""
    if not _MSGID_TEXT_RE.match(report_id):
        raise ValueError(f"report_id unusable in a msg-id: {report_id!r}")
    return (f"Report Domain: {normalize_domain(policy_domain)} "
            f"Submitter: {normalize_domain(submitter)} Report-ID: <{report_id}>")


def build_report_message(xml: bytes, *, rua: ReportURI, report_from: str,
                         receiver_domain: str, policy_domain: str, begin: int, end: int,
                         report_id: str, date: datetime | None = None,
                         message_id: str | None = None) -> tuple[bytes | None, str]:
    """The report e-mail for one rua destination: (message bytes, "") or (None, reason).

    A multipart/mixed message (§7.2.1.1) From ``report_from`` To the rua mailbox, with a
    short text part and the gzip'd XML as an ``application/gzip`` attachment named per
    ``report_filename``. The whole message must fit the URI's "!size" limit (§6.2); the
    limit is applied to the complete message, the conservative reading. Only mailto:
    URIs are sent (§7.2.1.1).
    """
    address = rua.address
    if rua.scheme != "mailto" or not address:
        return None, f"unsupported report URI {rua.uri!r}"
    if not _ADDRESS_RE.match(address) or rua.domain is None:
        # The URI is the domain owner's text: a decoded "," or CRLF must not add
        # recipients or header fields.
        return None, f"unusable report address in {rua.uri!r}"
    filename = report_filename(receiver_domain, policy_domain, begin, end, report_id)
    gz = gzip.compress(xml, mtime=0)
    # A boundary derived from the content keeps the builder deterministic; "=_" cannot
    # occur in base64 or in the text part (RFC 2046 §5.1.1).
    boundary = "=_dmarc_" + hashlib.sha256(gz).hexdigest()[:32]
    text = (f"This is a DMARC aggregate report (RFC 7489)\r\n"
            f"for {normalize_domain(policy_domain)} from {normalize_domain(receiver_domain)},\r\n"
            f"covering {_utc(begin)} to {_utc(end)}.\r\n")
    fields = [
        ("From", report_from),
        ("To", address),
        ("Subject", report_subject(policy_domain, receiver_domain, report_id)),
        ("Date", email.utils.format_datetime(date or datetime.now(timezone.utc))),
        ("Message-ID", message_id or email.utils.make_msgid(
            domain=normalize_domain(receiver_domain))),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
    ]
    # The parts are written here rather than with the email package: its folding turns
    # a long file name into RFC 2231 continuations, which simple report consumers do not
    # decode; §7.2.1.1 shows a plain quoted-string.
    data = b"".join([
        *(_field(name, value) for name, value in fields),
        b"\r\n",
        f"--{boundary}\r\n".encode(),
        b"Content-Type: text/plain; charset=us-ascii\r\n",
        b"Content-Transfer-Encoding: 7bit\r\n\r\n",
        text.encode("ascii"),
        f"\r\n--{boundary}\r\n".encode(),
        _field("Content-Type", f'application/gzip; name="{filename}"'),
        b"Content-Transfer-Encoding: base64\r\n",
        _field("Content-Disposition", f'attachment; filename="{filename}"'),
        b"\r\n",
        base64.encodebytes(gz).replace(b"\n", b"\r\n"),     # 76-column lines, RFC 2045 §6.8
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    if rua.max_size is not None and len(data) > rua.max_size:
        return None, (f"report of {len(data)} bytes exceeds the {rua.max_size}-byte limit "
                      f"of {rua.uri}")
    return data, ""


def _field(name: str, value: str) -> bytes:
    """One header field, folded at spaces to <= 78 columns where possible (RFC 5322
    §2.1.1, §2.2.3). Values must be ASCII without line breaks."""
    if not value.isascii() or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{name} must be ASCII without line breaks: {value!r}")
    lines = [f"{name}:"]
    for word in value.split(" "):
        if len(lines[-1]) + 1 + len(word) > 78 and lines[-1] != f"{name}:":
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


async def external_destination_allowed(resolver: Resolver, policy_domain: str,
                                       rua_domain: str) -> bool:
    """§7.1: may reports about ``policy_domain`` go to a mailbox in ``rua_domain``?

    Same organizational domain: yes, without a lookup. Otherwise only if
    ``<policy-domain>._report._dmarc.<rua-domain>`` has a TXT record starting with
    v=DMARC1. A DNSTemporaryError propagates (try again later, §7.1 distinguishes "no
    record" from a transient error); names that cannot be queried give False.
    """
    try:
        policy, target = normalize_domain(policy_domain), normalize_domain(rua_domain)
    except ValueError:
        return False
    if organizational_domain(policy) == organizational_domain(target):
        return True
    try:
        texts = await resolver.txt(f"{policy}._report._dmarc.{target}")
    except DNSPermanentError:
        return False
    return any(is_dmarc_record(t) for t in texts)


# ---------------------------------------------------------------------- extracting

_XML_TYPES = ("text/xml", "application/xml")
_ARCHIVE_TYPES = ("application/gzip", "application/x-gzip", "application/zip",
                  "application/x-zip-compressed", "application/x-zip",
                  "application/octet-stream")


def _gunzip(data: bytes, max_size: int) -> bytes:
    """Decompress the gzip members at the start of ``data`` (RFC 1952 §2.2: members may
    be concatenated). Bytes after the last member that do not start another one are
    ignored: some reporters (Mimecast) append a CRLF."""
    out = bytearray()
    rest = data
    try:
        while rest[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, max_size + 1 - len(out))
            if len(out) > max_size:
                raise AggregateReportError(f"report larger than {max_size} bytes")
            if not inflater.eof:
                raise AggregateReportError("truncated gzip data")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise AggregateReportError(f"bad gzip data: {exc}") from None
    return bytes(out)


def _unzip(data: bytes, max_size: int) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            xmls = [i for i in members if i.filename.lower().endswith(".xml")]
            chosen = (xmls or members)[:1]
            if not chosen:
                raise AggregateReportError("empty zip archive")
            info = chosen[0]
            if info.file_size > max_size:
                raise AggregateReportError(f"report larger than {max_size} bytes")
            with zf.open(info) as fh:
                out = fh.read(max_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError,
            RuntimeError) as exc:
        raise AggregateReportError(f"bad zip data: {exc}") from None
    if len(out) > max_size:
        raise AggregateReportError(f"report larger than {max_size} bytes")
    return out


def _looks_like_xml(data: bytes) -> bool:
    head = data.lstrip(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"<")


def extract_aggregate_report(data: bytes, *, max_size: int = MAX_REPORT_SIZE) -> bytes:
    """The report XML inside ``data``: plain XML, gzip (RFC 1952), zip, or an RFC 5322
    message carrying one of those as a part (the first that holds a report wins)."""
    return _extract(data, max_size, allow_message=True)


def _extract(data: bytes, max_size: int, allow_message: bool) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return _gunzip(data, max_size)
    if data[:4] == b"PK\x03\x04":
        return _unzip(data, max_size)
    if _looks_like_xml(data):
        if len(data) > max_size:
            raise AggregateReportError(f"report larger than {max_size} bytes")
        return data
    if not allow_message:
        raise AggregateReportError("not XML, gzip or zip")
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception as exc:  # the parser should never raise; be sure of it
        raise AggregateReportError(f"unreadable message: {exc}") from None
    if not msg.keys():
        raise AggregateReportError("not XML, gzip, zip or an e-mail message")
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        filename = (part.get_filename() or "").lower()
        if not (ctype in _XML_TYPES or ctype in _ARCHIVE_TYPES
                or filename.endswith((".xml", ".gz", ".zip"))):
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            continue
        if not payload:
            continue
        try:
            return _extract(payload, max_size, allow_message=False)
        except AggregateReportError:
            continue
    raise AggregateReportError("no aggregate report in the message")


# ---------------------------------------------------------------------- reading

class _Node:
    __slots__ = ("tag", "text", "children")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.text: list[str] = []
        self.children: list[_Node] = []

    def child(self, tag: str) -> "_Node | None":
        return next((c for c in self.children if c.tag == tag), None)

    def all(self, tag: str) -> list["_Node"]:
        return [c for c in self.children if c.tag == tag]

    @property
    def value(self) -> str:
        return "".join(self.text).strip()


def _refuse(*_args: Any) -> None:
    raise AggregateReportError("DTDs and entity declarations are not accepted")


def _tree(data: bytes) -> tuple[_Node, str | None]:
    """Parse ``data`` into _Nodes (local names); returns (root, root namespace)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    stack: list[_Node] = []
    root: list[_Node] = []
    namespace: list[str | None] = []

    def start(name: str, _attrs: dict) -> None:
        ns, _, local = name.rpartition(" ")
        node = _Node(local)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
            namespace.append(ns or None)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if stack:
            stack[-1].text.append(text)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise AggregateReportError(f"not well-formed XML: {exc}") from None
    except RecursionError:
        raise AggregateReportError("XML nested too deeply") from None
    return root[0], namespace[0]


def _text(node: _Node | None, tag: str, *, required: bool = False) -> str | None:
    child = node.child(tag) if node is not None else None
    if child is None:
        if required:
            where = node.tag if node is not None else "?"
            raise AggregateReportError(f"<{where}> lacks <{tag}>")
        return None
    return child.value


def _int(text: str | None, what: str, *, minimum: int | None = None) -> int:
    if text is None or not re.fullmatch(r"[+-]?[0-9]+", text):
        raise AggregateReportError(f"{what} is not an integer: {text!r}")
    value = int(text)
    if minimum is not None and value < minimum:
        raise AggregateReportError(f"{what} below {minimum}: {value}")
    return value


def _enum(text: str | None, allowed: Sequence[str], what: str, strict: bool,
          *, optional: bool = False) -> str | None:
    if text is None or (optional and text == ""):
        if optional:
            return None
        raise AggregateReportError(f"{what} missing")
    value = text if strict else text.lower()
    if value not in allowed:
        raise AggregateReportError(f"{what}: {text!r} is not one of {allowed}")
    return value


def parse_aggregate_xml(data: bytes, *, strict: bool = True) -> dict:
    """Read an aggregate report's XML (RFC 7489 Appendix C; DMARCbis reports too).

    Returns {"version", "namespace", "report_metadata": {org_name, email,
    extra_contact_info, report_id, begin, end, errors}, "policy_published": {domain,
    adkim, aspf, p, sp, np, pct, fo}, "records": [{source_ip, count, disposition, dkim,
    spf, reasons: [{type, comment}], envelope_to, envelope_from, header_from,
    dkim_results: [{domain, selector, result, human_result}], spf_results: [{domain,
    scope, result}]}]}; absent optional values are None.

    Checked: well-formed XML without DTD, root <feedback>, the required elements, integer
    fields, IP addresses, and the schema's enumerations. ``strict`` (default) compares
    enumerations case-sensitively as the schema does; ``strict=False`` lower-cases them
    first (some reporters write "Pass"). Tolerated in both modes, as in reports seen in
    the wild: a missing <version>, an <auth_results> without <spf>, a <reason> with an
    empty <type> (skipped), and empty strings in string elements.
    """
    root, namespace = _tree(data)
    if root.tag != "feedback":
        raise AggregateReportError(f"root element is <{root.tag}>, not <feedback>")
    meta = root.child("report_metadata")
    if meta is None:
        raise AggregateReportError("no <report_metadata>")
    dates = meta.child("date_range")
    if dates is None:
        raise AggregateReportError("no <date_range>")
    report_metadata = {
        "org_name": _text(meta, "org_name", required=True),
        "email": _text(meta, "email", required=True),
        "extra_contact_info": _text(meta, "extra_contact_info"),
        "report_id": _text(meta, "report_id", required=True),
        "begin": _int(_text(dates, "begin", required=True), "begin"),
        "end": _int(_text(dates, "end", required=True), "end"),
        "errors": [e.value for e in meta.all("error")],
    }
    pub = root.child("policy_published")
    if pub is None:
        raise AggregateReportError("no <policy_published>")
    pct_text = _text(pub, "pct")
    pct = None
    if pct_text:
        pct = _int(pct_text, "pct", minimum=0)
        if pct > 100:
            raise AggregateReportError(f"pct above 100: {pct}")
    policy_published = {
        "domain": _text(pub, "domain", required=True),
        "adkim": _enum(_text(pub, "adkim"), ("r", "s"), "adkim", strict, optional=True),
        "aspf": _enum(_text(pub, "aspf"), ("r", "s"), "aspf", strict, optional=True),
        "p": _enum(_text(pub, "p", required=True), DISPOSITIONS, "p", strict),
        "sp": _enum(_text(pub, "sp"), DISPOSITIONS, "sp", strict, optional=True),
        "np": _enum(_text(pub, "np"), DISPOSITIONS, "np", strict, optional=True),
        "pct": pct,
        "fo": _text(pub, "fo"),
    }
    records = [_record(node, strict) for node in root.all("record")]
    version = _text(root, "version")
    return {"version": version or None, "namespace": namespace,
            "report_metadata": report_metadata, "policy_published": policy_published,
            "records": records}


def _record(node: _Node, strict: bool) -> dict:
    row = node.child("row")
    if row is None:
        raise AggregateReportError("<record> without <row>")
    ip_text = _text(row, "source_ip", required=True) or ""
    try:
        source_ip = str(ipaddress.ip_address(ip_text))
    except ValueError:
        raise AggregateReportError(f"source_ip is not an IP address: {ip_text!r}") from None
    evaluated = row.child("policy_evaluated")
    if evaluated is None:
        raise AggregateReportError("<row> without <policy_evaluated>")
    reasons = []
    for reason in evaluated.all("reason"):
        kind = _text(reason, "type")
        if not kind:
            continue
        reasons.append({"type": _enum(kind, OVERRIDE_TYPES, "reason type", strict),
                        "comment": _text(reason, "comment") or None})
    ids = node.child("identifiers")
    if ids is None:
        raise AggregateReportError("<record> without <identifiers>")
    auth = node.child("auth_results")
    dkim_results = []
    spf_results = []
    if auth is not None:
        for dk in auth.all("dkim"):
            dkim_results.append({
                "domain": _text(dk, "domain", required=True),
                "selector": _text(dk, "selector") or None,
                "result": _enum(_text(dk, "result", required=True), DKIM_RESULTS,
                                "DKIM result", strict),
                "human_result": _text(dk, "human_result") or None,
            })
        for sp in auth.all("spf"):
            spf_results.append({
                "domain": _text(sp, "domain", required=True),
                "scope": _enum(_text(sp, "scope"), SPF_SCOPES, "SPF scope", strict,
                               optional=True),
                "result": _enum(_text(sp, "result", required=True), SPF_RESULTS,
                                "SPF result", strict),
            })
    return {
        "source_ip": source_ip,
        "count": _int(_text(row, "count", required=True), "count", minimum=0),
        "disposition": _enum(_text(evaluated, "disposition", required=True),
                             READ_DISPOSITIONS, "disposition", strict),
        "dkim": _enum(_text(evaluated, "dkim", required=True), DMARC_RESULTS,
                      "policy_evaluated dkim", strict),
        "spf": _enum(_text(evaluated, "spf", required=True), DMARC_RESULTS,
                     "policy_evaluated spf", strict),
        "reasons": reasons,
        "envelope_to": _text(ids, "envelope_to") or None,
        "envelope_from": _text(ids, "envelope_from"),
        "header_from": _text(ids, "header_from", required=True),
        "dkim_results": dkim_results,
        "spf_results": spf_results,
    }
