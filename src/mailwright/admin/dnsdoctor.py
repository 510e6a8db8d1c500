"""DNS doctor: the records a mail domain must publish, and a live check of what it does publish.

What:
* ``records(facts) -> list[Record]``: everything to publish for ``facts.domain``, in
  zone-file presentation format: MX (RFC 5321 §5.1), A/AAAA of our MX host, SPF (RFC 7208
  §3: one TXT record ``v=spf1 mx ip4:.. ip6:.. -all``), one DKIM key per selector (RFC 6376
  §3.6.2.1, long TXT values split into strings of at most 255 octets, RFC 1035 §3.3.14),
  DMARC (RFC 7489 §6.3), the report authorisation an external ``rua`` domain must publish
  (RFC 7489 §7.1), and the PTR advice for every outbound IP (forward-confirmed reverse DNS:
  the PTR names a host whose A/AAAA is that IP again).
* ``async check(resolver, facts) -> list[Finding]``: queries live DNS and reports each item
  as ok, missing, wrong or "could not check", with the exact fix.

How: fetch through ``net.dns.Resolver`` only; parse and judge here (GUIDE idea 9). SPF
authorisation of our IPs and the 10-lookup limit (RFC 7208 §4.6.4) are evaluated by
``mailauth.spf.check_host``, the syntax by ``mailauth.spf_parse``: the doctor judges a
record exactly as our own receiving side does. The lookup limit is measured by
one extra evaluation for 192.0.2.1 (RFC 5737 TEST-NET-1, never authorised), which walks the
whole record.

Invariants:
* A DNS timeout or SERVFAIL (``DNSTemporaryError``) is ``UNCHECKED``, never ok.
* ``ok(findings)`` is True only when every finding is ok or a note: anything missing, wrong
  or unchecked makes ``mailwright dns check`` exit 1.
* Nothing here prints; ``cli/dns.py`` formats.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import dns.reversename

from ..mailauth.dkim_keys import KeyRecordError, parse_key_record
from ..mailauth.orgdomain import organizational_domain
from ..mailauth.spf_parse import SPFSyntaxError, parse_record as parse_spf_record
from ..net.dns import DNSError, DNSTemporaryError, Resolver

__all__ = [
    "DomainFacts", "Record", "Finding", "records", "check", "ok",
    "OK", "MISSING", "WRONG", "UNCHECKED", "NOTE",
    "split_txt", "spf_record", "spf_syntax_problems", "dmarc_tags", "dkim_tags",
]

OK, MISSING, WRONG, UNCHECKED, NOTE = "ok", "missing", "wrong", "could not check", "note"
DEFAULT_TTL = 3600
SPF_LOOKUP_LIMIT = 10                  # RFC 7208 §4.6.4
PROBE_IP = "192.0.2.1"                 # RFC 5737 TEST-NET-1: never authorised anywhere


@dataclass(frozen=True)
class DomainFacts:
    """What we know about a domain we serve.

    ``mx_hosts``: our MX host names, most preferred first (default: the server hostname);
    ``ips``: our outbound IPs; ``dkim``: (selector, public TXT value) pairs;
    ``rua``: the DMARC aggregate report address (default ``dmarc-reports@DOMAIN``).
    """
    domain: str
    mx_hosts: tuple[str, ...]
    ips: tuple[str, ...] = ()
    dkim: tuple[tuple[str, str], ...] = ()
    rua: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", _norm(self.domain))
        object.__setattr__(self, "mx_hosts", tuple(_norm(h) for h in self.mx_hosts))
        object.__setattr__(self, "ips", tuple(str(ipaddress.ip_address(i)) for i in self.ips))
        object.__setattr__(self, "dkim", tuple((s.strip(), t.strip()) for s, t in self.dkim))
        if not self.rua:
            object.__setattr__(self, "rua", f"dmarc-reports@{self.domain}")


@dataclass(frozen=True)
class Record:
    """One resource record to publish (``value`` is presentation-format RDATA).

    ``zone`` says who publishes it when it is not the domain's own zone (a reverse zone, the
    report domain); ``note`` is advice for the operator.
    """
    name: str
    type: str
    value: str
    ttl: int = DEFAULT_TTL
    zone: str = ""
    note: str = ""

    def zone_line(self) -> str:
        return f"{self.name}\t{self.ttl}\tIN\t{self.type}\t{self.value}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """The verdict on one item: ``status`` is OK, MISSING, WRONG, UNCHECKED or NOTE;
    ``fix`` is what to do (often a zone line) when it is not ok."""
    item: str
    status: str
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(findings: Sequence[Finding]) -> bool:
    return all(f.status in (OK, NOTE) for f in findings)


# ------------------------------------------------------------------------ helpers

def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def _org_domain(name: str) -> str:
    """RFC 7489 §3.2 Organizational Domain (a malformed name stands for itself)."""
    try:
        return organizational_domain(name)
    except ValueError:
        return _norm(name)


def split_txt(value: str, limit: int = 255) -> list[str]:
    """A TXT value as character-strings of at most ``limit`` octets (RFC 1035 §3.3.14;
    RFC 7208 §3.3 and RFC 6376 §3.6.2.2: receivers join them without separator)."""
    data = value.encode("utf-8")
    out, start = [], 0
    while start < len(data) or not out:
        end = min(start + limit, len(data))
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:
            end -= 1                       # never cut a UTF-8 sequence in two
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out


def _txt_rdata(value: str) -> str:
    def quote(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return " ".join(quote(s) for s in split_txt(value))


def spf_record(facts: DomainFacts) -> str:
    """``v=spf1 mx ip4:.. ip6:.. -all`` (RFC 7208 §5.4, §5.6, §5.1)."""
    terms = ["v=spf1", "mx"]
    for ip in facts.ips:
        terms.append(f"ip{ipaddress.ip_address(ip).version}:{ip}")
    terms.append("-all")
    return " ".join(terms)


def dmarc_record(facts: DomainFacts) -> str:
    return f"v=DMARC1; p=quarantine; rua=mailto:{facts.rua}"


def _reverse_name(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text()


# ------------------------------------------------------------------------ records

def records(facts: DomainFacts) -> list[Record]:
    """Everything ``facts.domain`` should publish (see the module docstring)."""
    d = _fqdn(facts.domain)
    out: list[Record] = []
    for i, host in enumerate(facts.mx_hosts):
        out.append(Record(d, "MX", f"{10 * (i + 1)} {_fqdn(host)}"))
    if facts.mx_hosts and facts.ips:
        host = facts.mx_hosts[0]
        for ip in facts.ips:
            rtype = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
            zone = "" if host == facts.domain or host.endswith("." + facts.domain) else host
            out.append(Record(_fqdn(host), rtype, ip, zone=zone,
                              note="the MX host must resolve (RFC 5321 §5.1); MX must not "
                                   "point to a CNAME (RFC 2181 §10.3)"))
    out.append(Record(d, "TXT", _txt_rdata(spf_record(facts)),
                      note="SPF (RFC 7208): exactly one v=spf1 record per name"))
    for selector, txt in facts.dkim:
        out.append(Record(f"{selector}._domainkey.{d}", "TXT", _txt_rdata(txt),
                          note=f"DKIM public key, selector {selector} (RFC 6376 §3.6.2)"))
    out.append(Record(f"_dmarc.{d}", "TXT", _txt_rdata(dmarc_record(facts)),
                      note="DMARC policy (RFC 7489 §6.3)"))
    rua_domain = facts.rua.rpartition("@")[2].lower()
    if rua_domain and _org_domain(rua_domain) != _org_domain(facts.domain):
        out.append(Record(f"{facts.domain}._report._dmarc.{_fqdn(rua_domain)}", "TXT",
                          '"v=DMARC1"', zone=rua_domain,
                          note=f"{rua_domain} authorises reports about {facts.domain} "
                               "(RFC 7489 §7.1)"))
    hostname = facts.mx_hosts[0] if facts.mx_hosts else facts.domain
    for ip in facts.ips:
        out.append(Record(_reverse_name(ip), "PTR", _fqdn(hostname),
                          zone="reverse zone of the IP (ask its provider)",
                          note=f"forward-confirmed rDNS: {hostname} must have "
                               f"{'A' if ipaddress.ip_address(ip).version == 4 else 'AAAA'} "
                               f"{ip}, and the server should use {hostname} in EHLO"))
    return out


# ------------------------------------------------------------------------ parsing

def spf_syntax_problems(record: str) -> list[str]:
    """Problems of one SPF record, each a sentence: what receivers reject (the parser of
    ``mailauth.spf_parse``, RFC 7208 §4.6, §12) and what they accept but should not be
    published (``+all``, the ``ptr`` mechanism, RFC 7208 §5.5)."""
    try:
        parsed = parse_spf_record(record)
    except SPFSyntaxError as exc:
        return [f"{exc}: receivers return permerror (RFC 7208 §4.6)"]
    problems: list[str] = []
    for mech in parsed.mechanisms:
        if mech.kind == "all" and mech.qualifier == "+":
            problems.append(f"{mech.text!r} authorises every host on the internet")
        elif mech.kind == "ptr":
            problems.append(f"{mech.text!r}: the ptr mechanism SHOULD NOT be used "
                            "(RFC 7208 §5.5)")
    return problems


def _tag_list(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """RFC 6376 §3.2 / RFC 7489 §6.4 tag=value list -> ([(tag, value)], problems)."""
    tags: list[tuple[str, str]] = []
    problems: list[str] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            problems.append(f"{part!r} is not tag=value")
            continue
        k, v = part.split("=", 1)
        tags.append((k.strip(), v.strip()))
    return tags, problems


def dkim_tags(txt: str) -> dict[str, str]:
    """The tags of a DKIM key record (RFC 6376 §3.6.1); p= with whitespace removed."""
    tags, _ = _tag_list(txt)
    out = {k.lower(): v for k, v in tags}
    if "p" in out:
        out["p"] = re.sub(r"\s+", "", out["p"])
    return out


def dmarc_tags(txt: str) -> tuple[dict[str, str], list[str]]:
    """(tags, problems) of a DMARC record (RFC 7489 §6.3, §6.4)."""
    tags, problems = _tag_list(txt)
    if not tags or tags[0] != ("v", "DMARC1"):
        problems.insert(0, "v=DMARC1 must be the first tag (RFC 7489 §6.4)")
    out = {k.lower(): v for k, v in tags}
    p = out.get("p")
    if p is None:
        problems.append("p= is required (RFC 7489 §6.3)")
    elif p.lower() not in ("none", "quarantine", "reject"):
        problems.append(f"p={p}: must be none, quarantine or reject (RFC 7489 §6.3)")
    if "sp" in out and out["sp"].lower() not in ("none", "quarantine", "reject"):
        problems.append(f"sp={out['sp']}: must be none, quarantine or reject")
    for k in ("adkim", "aspf"):
        if k in out and out[k].lower() not in ("r", "s"):
            problems.append(f"{k}={out[k]}: must be r or s (RFC 7489 §6.3)")
    if "pct" in out and not (out["pct"].isdigit() and 0 <= int(out["pct"]) <= 100):
        problems.append(f"pct={out['pct']}: must be 0 to 100 (RFC 7489 §6.3)")
    for k in ("rua", "ruf"):
        for uri in _report_uris(out.get(k, "")):
            if not uri.lower().startswith("mailto:") or "@" not in uri:
                problems.append(f"{k}: {uri!r} is not a mailto: address (RFC 7489 §6.2)")
    return out, problems


def _report_uris(value: str) -> list[str]:
    # RFC 7489 §6.4: comma-separated URIs, each optionally followed by "!size".
    out = []
    for u in value.split(","):
        u = u.strip()
        if u:
            out.append(re.sub(r"!\d+[kmgt]?$", "", u, flags=re.IGNORECASE))
    return out


def _mailto_domain(uri: str) -> str:
    addr = uri[7:] if uri.lower().startswith("mailto:") else uri
    return addr.split("?", 1)[0].rpartition("@")[2].strip().lower().rstrip(".")


# ------------------------------------------------------------------------ checks

def _unchecked(item: str, exc: Exception) -> Finding:
    return Finding(item, UNCHECKED, f"DNS lookup failed ({exc}); could not check",
                   "try again; if it persists, check the domain's name servers")


async def check(resolver: Resolver, facts: DomainFacts) -> list[Finding]:
    """Live DNS checks for ``facts.domain`` (see the module docstring)."""
    findings: list[Finding] = []
    findings += await _check_mx(resolver, facts)
    findings += await _check_spf(resolver, facts)
    for selector, txt in facts.dkim:
        findings.append(await _check_dkim(resolver, facts, selector, txt))
    if not facts.dkim:
        findings.append(Finding("DKIM", NOTE, "no DKIM key known for this domain: "
                                "nothing to compare"))
    findings += await _check_dmarc(resolver, facts)
    for ip in facts.ips:
        findings.append(await _check_fcrdns(resolver, facts, ip))
    return findings


async def _check_mx(resolver: Resolver, facts: DomainFacts) -> list[Finding]:
    fix = "; ".join(r.zone_line() for r in records(facts) if r.type == "MX")
    try:
        mx = await resolver.mx(facts.domain)
    except DNSError as exc:
        return [_unchecked("MX", exc)]
    if not mx.exists:
        return [Finding("MX", MISSING, f"{facts.domain} does not exist (NXDOMAIN)", fix)]
    if mx.null_mx:
        return [Finding("MX", WRONG, f"{facts.domain} publishes a null MX: it accepts no "
                        "mail (RFC 7505)", fix)]
    if not mx.records:
        return [Finding("MX", MISSING, f"{facts.domain} has no MX record (senders fall back "
                        "to its A/AAAA, RFC 5321 §5.1)", fix)]
    listed = ", ".join(f"{p} {h}" for p, h in mx.records)
    out = [Finding("MX", OK, f"MX records: {listed}",
                   data={"mx": [[p, h] for p, h in mx.records]})]
    ours = [h for h in mx.hosts if h in facts.mx_hosts]
    if not ours:
        out.append(Finding("MX points to us", WRONG,
                           f"the MX records name {', '.join(mx.hosts)}, not "
                           f"{', '.join(facts.mx_hosts)}", fix))
    else:
        others = [h for h in mx.hosts if h not in facts.mx_hosts]
        extra = f" (also listed: {', '.join(others)})" if others else ""
        out.append(Finding("MX points to us", OK, f"{', '.join(ours)}{extra}"))
    for host in ours:
        out.append(await _check_mx_host(resolver, facts, host))
    return out


async def _check_mx_host(resolver: Resolver, facts: DomainFacts, host: str) -> Finding:
    item = f"MX host {host} resolves"
    fix = "; ".join(r.zone_line() for r in records(facts)
                    if r.type in ("A", "AAAA") and _norm(r.name) == host) \
        or f"publish an A and/or AAAA record for {host}"
    try:
        answers = [await resolver.lookup(host, t) for t in ("A", "AAAA")]
    except DNSError as exc:
        return _unchecked(item, exc)
    addrs = [rd.address for a in answers for rd in a.records]
    if not addrs:
        return Finding(item, MISSING, f"{host} has no A or AAAA record", fix)
    cname = next((a.canonical_name for a in answers
                  if a.canonical_name and _norm(a.canonical_name) != host), "")
    if cname:
        return Finding(item, WRONG, f"{host} is a CNAME for {_norm(cname)}; an MX must name "
                       "a host with its own A/AAAA (RFC 2181 §10.3)", fix)
    return Finding(item, OK, f"{host} has {', '.join(addrs)}", data={"addresses": addrs})


async def _check_spf(resolver: Resolver, facts: DomainFacts) -> list[Finding]:
    want = spf_record(facts)
    fix = f'{_fqdn(facts.domain)}\t{DEFAULT_TTL}\tIN\tTXT\t{_txt_rdata(want)}'
    try:
        txts = await resolver.txt(facts.domain)
    except DNSError as exc:
        return [_unchecked("SPF", exc)]
    # RFC 7208 §4.5: records that begin with "v=spf1" followed by a space or the end.
    spf = [t for t in txts if re.match(r"^v=spf1(?: |$)", t, re.IGNORECASE)]
    if not spf:
        return [Finding("SPF", MISSING, f"{facts.domain} has no v=spf1 TXT record", fix)]
    if len(spf) > 1:
        shown = " | ".join(spf)
        return [Finding("SPF", WRONG, f"{len(spf)} v=spf1 records: receivers return "
                        f"permerror (RFC 7208 §4.5): {shown}",
                        "merge them into one record, e.g. " + fix, data={"records": spf})]
    record = spf[0]
    problems = spf_syntax_problems(record)
    out = [Finding("SPF", WRONG if problems else OK,
                   "; ".join(problems) if problems else record,
                   fix if problems else "", data={"record": record})]
    from ..mailauth.spf import check_host
    sender = f"postmaster@{facts.domain}"
    probe = await check_host(resolver, PROBE_IP, facts.domain, sender)
    lookups = int(getattr(probe, "lookups", 0) or 0)
    if probe.result == "temperror":
        out.append(Finding("SPF lookup limit", UNCHECKED,
                           f"DNS failed while evaluating the record: {probe.reason}"))
    elif probe.result == "permerror" or lookups > SPF_LOOKUP_LIMIT:
        out.append(Finding("SPF lookup limit", WRONG,
                           f"evaluation fails with permerror ({probe.reason}); "
                           f"{lookups} DNS-querying terms, the limit is "
                           f"{SPF_LOOKUP_LIMIT} (RFC 7208 §4.6.4)",
                           "flatten includes or use ip4:/ip6: terms: " + fix,
                           data={"lookups": lookups}))
    else:
        out.append(Finding("SPF lookup limit", OK,
                           f"{lookups} of {SPF_LOOKUP_LIMIT} DNS lookups (RFC 7208 §4.6.4)",
                           data={"lookups": lookups}))
        if probe.result == "pass":
            out.append(Finding("SPF", WRONG, f"the record authorises {PROBE_IP}, an address "
                               "nobody uses (RFC 5737): it lets anyone send as the domain",
                               fix))
    if not facts.ips:
        out.append(Finding("SPF authorises our IPs", NOTE,
                           "no outbound IP known: give --ip to check it"))
    for ip in facts.ips:
        item = f"SPF authorises {ip}"
        res = await check_host(resolver, ip, facts.domain, sender)
        if res.result == "pass":
            out.append(Finding(item, OK, f"pass ({res.reason})" if res.reason else "pass"))
        elif res.result == "temperror":
            out.append(Finding(item, UNCHECKED, f"temperror: {res.reason}"))
        else:
            term = f"ip{ipaddress.ip_address(ip).version}:{ip}"
            out.append(Finding(item, WRONG, f"{res.result}: {res.reason}",
                               f"add {term} before the all term of the record, e.g. "
                               + fix, data={"result": res.result}))
    return out


async def _check_dkim(resolver: Resolver, facts: DomainFacts, selector: str,
                      txt: str) -> Finding:
    name = f"{selector}._domainkey.{facts.domain}"
    item = f"DKIM {selector}"
    fix = f"{_fqdn(name)}\t{DEFAULT_TTL}\tIN\tTXT\t{_txt_rdata(txt)}"
    try:
        found = await resolver.txt(name)
    except DNSError as exc:
        return _unchecked(item, exc)
    if not found:
        return Finding(item, MISSING, f"no TXT record at {name}", fix)
    if len(found) > 1:
        return Finding(item, WRONG, f"{len(found)} TXT records at {name}: verifiers may "
                       "pick any (RFC 6376 §3.6.2.2)", "keep only: " + fix)
    ours = dkim_tags(txt).get("p", "")
    try:
        published = parse_key_record(found[0])
    except KeyRecordError as exc:
        return Finding(item, WRONG, f"the record at {name} is unusable: {exc} "
                       "(RFC 6376 §3.6.1)", fix)
    if published.revoked:
        return Finding(item, WRONG, f"the key at {name} is revoked (empty p=)", fix)
    if published.public_key_b64 != ours:
        return Finding(item, WRONG, f"the public key at {name} is not ours (p= differs)", fix)
    return Finding(item, OK, f"{name} publishes our key")


async def _check_dmarc(resolver: Resolver, facts: DomainFacts) -> list[Finding]:
    name = f"_dmarc.{facts.domain}"
    fix = f"{_fqdn(name)}\t{DEFAULT_TTL}\tIN\tTXT\t{_txt_rdata(dmarc_record(facts))}"
    try:
        found = await resolver.txt(name)
    except DNSError as exc:
        return [_unchecked("DMARC", exc)]
    # RFC 7489 §6.6.3: records without v=DMARC1 are discarded; several: no policy. A
    # record with v=DMARC1 elsewhere than first is kept here to be reported as wrong.
    dmarc = [t for t in found if re.search(r"(?:^|;)\s*v\s*=\s*DMARC1\b", t, re.I)]
    if not dmarc:
        return [Finding("DMARC", MISSING, f"no DMARC record at {name}", fix)]
    if len(dmarc) > 1:
        return [Finding("DMARC", WRONG, f"{len(dmarc)} DMARC records at {name}: receivers "
                        "apply none (RFC 7489 §6.6.3)", "keep only one, e.g. " + fix)]
    tags, problems = dmarc_tags(dmarc[0])
    out = [Finding("DMARC", WRONG if problems else OK,
                   "; ".join(problems) if problems else dmarc[0], fix if problems else "",
                   data={"record": dmarc[0]})]
    if not problems and "rua" not in tags:
        out.append(Finding("DMARC reports", NOTE, "no rua=: you get no aggregate reports"))
    org = _org_domain(facts.domain)
    seen: set[str] = set()
    for key in ("rua", "ruf"):
        for uri in _report_uris(tags.get(key, "")):
            rdomain = _mailto_domain(uri)
            if not rdomain or rdomain in seen or _org_domain(rdomain) == org:
                continue
            seen.add(rdomain)
            out.append(await _check_report_auth(resolver, facts.domain, rdomain))
    return out


async def _check_report_auth(resolver: Resolver, domain: str, rdomain: str) -> Finding:
    """RFC 7489 §7.1: an external report domain must publish DOMAIN._report._dmarc.RDOMAIN."""
    name = f"{domain}._report._dmarc.{rdomain}"
    item = f"DMARC report authorisation {rdomain}"
    fix = (f"the owner of {rdomain} must publish: {_fqdn(name)}\t{DEFAULT_TTL}\tIN\tTXT\t"
           '"v=DMARC1"')
    try:
        found = await resolver.txt(name)
    except DNSError as exc:
        return _unchecked(item, exc)
    if any(t.strip().lower().startswith("v=dmarc1") for t in found):
        return Finding(item, OK, f"{name} authorises the reports")
    return Finding(item, MISSING, f"{rdomain} does not accept reports for {domain}: no "
                   f"v=DMARC1 record at {name} (RFC 7489 §7.1); reports will not be sent",
                   fix)


async def _check_fcrdns(resolver: Resolver, facts: DomainFacts, ip: str) -> Finding:
    item = f"reverse DNS {ip}"
    hostname = facts.mx_hosts[0] if facts.mx_hosts else facts.domain
    rev = _reverse_name(ip)
    fix = (f"ask the provider of {ip} to set {rev} PTR {_fqdn(hostname)}, and publish "
           f"{'A' if ipaddress.ip_address(ip).version == 4 else 'AAAA'} {ip} for {hostname}")
    try:
        names = await resolver.ptr(ip)
    except DNSError as exc:
        return _unchecked(item, exc)
    if not names:
        return Finding(item, MISSING, f"{ip} has no PTR record ({rev})", fix)
    seen: dict[str, list[str]] = {}
    for name in names:
        try:
            addrs = await resolver.addresses(name)
        except DNSTemporaryError as exc:
            return _unchecked(item, exc)
        except DNSError:
            addrs = []
        seen[name] = addrs
        if any(ipaddress.ip_address(a) == ipaddress.ip_address(ip) for a in addrs):
            note = "" if name == hostname else \
                f"; note: it differs from our hostname {hostname} (the EHLO name)"
            return Finding(item, OK, f"{ip} -> {name} -> {ip} (forward-confirmed){note}",
                           data={"ptr": names})
    shown = "; ".join(f"{n} -> {', '.join(a) or 'no address'}" for n, a in seen.items())
    return Finding(item, WRONG, f"PTR of {ip} is not forward-confirmed: {shown}", fix,
                   data={"ptr": names})
