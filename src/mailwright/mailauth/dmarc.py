"""DMARC (RFC 7489): policy records, policy discovery and the pure evaluation.

What: ``parse_record`` reads a DMARC TXT record (§6.3, plus "np" from RFC 9091/DMARCbis);
``fetch_policy`` finds the policy that applies to an author domain in DNS (§6.6.3);
``evaluate`` combines that policy with the SPF and DKIM results already obtained into a
``DMARCResult`` (§6.6.2 alignment, §6.6.4 pct sampling); ``author_domain`` picks the one
RFC5322.From domain DMARC is about (§6.6.1).

How (GUIDE idea 9): DNS lives only in ``fetch_policy`` and its result is a plain
``PolicyLookup`` value, so ``evaluate`` is a pure function, table-tested against the RFC's
cases. SPF and DKIM are not run here: their results come in as plain strings, so this
module depends on neither implementation. The pct roll is injectable (``pct_roll``); in
production it is ``random.random()``.

Invariants:
  * A DNS timeout or server failure is ``temperror``, never "no policy" and never a pass.
  * Several DMARC records at the queried name mean no policy (§6.6.3 step 5), without a
    fallback to the organizational domain.
  * Domains are compared in normalized form (lower case, A-labels, no trailing dot,
    ``orgdomain.normalize_domain``).
  * ``disposition`` is what the receiver should do; ``policy`` is what the domain owner
    asked for (before pct). A pass always has disposition "none".
"""
from __future__ import annotations

import asyncio
import email.errors
import email.policy
import logging
import random
import re
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import unquote

from ..net.dns import DNSPermanentError, DNSTemporaryError, Resolver
from .orgdomain import normalize_domain, organizational_domain

__all__ = [
    "AuthorDomainError", "DMARCRecord", "DMARCRecordError", "DMARCResult", "PolicyLookup",
    "ReportURI", "aligned", "author_domain", "evaluate", "fetch_policy", "is_dmarc_record",
    "parse_record",
]

log = logging.getLogger(__name__)

POLICIES = ("none", "quarantine", "reject")
RESULTS = ("pass", "fail", "none", "temperror", "permerror")
FAILURE_OPTIONS = ("0", "1", "d", "s")
DEFAULT_RI = 86400
MAX_RI = 2**32 - 1

# §6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31 ("DMARC1", case
# sensitive); the record starts with it (§6.3: "v" MUST be the first tag).
_VERSION_RE = re.compile(r"^[ \t]*v[ \t]*=[ \t]*DMARC1[ \t]*(;|$)")
# §6.2 / §6.4: dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ]
_SIZE_RE = re.compile(r"^(.*)!([0-9]+)([kmgt]?)$", re.IGNORECASE | re.DOTALL)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class DMARCRecordError(ValueError):
    """The text is not a usable DMARC record (no DMARC processing for this message)."""


class AuthorDomainError(ValueError):
    """The message has no single RFC5322.From domain (RFC 7489 §6.6.1); ``reason`` says
    why. The message is malformed for DMARC's purpose; policy decides (reject is allowed)."""


# ---------------------------------------------------------------------- records

@dataclass(frozen=True, slots=True)
class ReportURI:
    """One rua/ruf destination (§6.2): ``uri`` without the size suffix, ``max_size`` in
    bytes (None: no limit)."""

    uri: str
    max_size: int | None = None

    @property
    def scheme(self) -> str:
        return self.uri.split(":", 1)[0].lower()

    @property
    def address(self) -> str | None:
        """The mailbox of a mailto: URI (percent-decoded, query dropped), else None."""
        if self.scheme != "mailto":
            return None
        target = self.uri.split(":", 1)[1].split("?", 1)[0]
        return unquote(target) or None

    @property
    def domain(self) -> str | None:
        """The domain of a mailto: address, normalized; None otherwise."""
        addr = self.address
        if not addr or "@" not in addr:
            return None
        try:
            return normalize_domain(addr.rsplit("@", 1)[1])
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.uri if self.max_size is None else f"{self.uri}!{self.max_size}"


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    """A parsed DMARC record (§6.3). Absent tags hold their defaults; ``sp``/``np`` are None
    when not published (then they fall back: np -> sp -> p, RFC 9091 §4.1). ``warnings``
    lists what was ignored or replaced by a default (§6.3: syntax errors in the remainder
    of the record are discarded in favour of defaults)."""

    p: str
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: tuple[ReportURI, ...] = ()
    ruf: tuple[ReportURI, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = DEFAULT_RI
    raw: str = ""
    p_invalid: bool = False        # p was absent/invalid and replaced by "none" (§6.6.3 step 6)
    warnings: tuple[str, ...] = ()

    @property
    def subdomain_policy(self) -> str:
        return self.sp or self.p

    @property
    def nonexistent_policy(self) -> str:
        return self.np or self.sp or self.p


def is_dmarc_record(text: str) -> bool:
    """True when ``text`` starts with the "v=DMARC1" tag (§6.6.3 step 2)."""
    return bool(_VERSION_RE.match(text))


def _parse_uris(value: str, tag: str, warnings: list[str]) -> tuple[ReportURI, ...]:
    uris: list[ReportURI] = []
    for item in value.split(","):          # §6.4: dmarc-uri *(*WSP "," *WSP dmarc-uri)
        item = item.strip(" \t")
        if not item:
            continue
        size: int | None = None
        m = _SIZE_RE.match(item)
        if m:
            item, digits, unit = m.group(1), m.group(2), m.group(3).lower()
            size = int(digits) * _UNITS[unit]
        if not _SCHEME_RE.match(item):
            warnings.append(f"{tag}: ignored invalid URI {item!r}")
            continue
        uris.append(ReportURI(item, size))
    return tuple(uris)


def parse_record(text: str) -> DMARCRecord:
    """Parse one DMARC record (§6.3, §6.4).

    "v=DMARC1" must be the first tag (DMARCRecordError otherwise). Tag names are
    case-insensitive, unknown tags are ignored, a repeated tag keeps its first value.
    Invalid values of optional tags fall back to their defaults with a warning. An absent
    or invalid "p" (or an invalid "sp") follows §6.6.3 step 6: with at least one valid rua
    URI the record acts as "p=none" (``p_invalid`` set); without, DMARCRecordError. RFC
    7489 §6.3 also wants "p" second; DMARCbis drops that rule, and so does this parser.
    """
    if not is_dmarc_record(text):
        raise DMARCRecordError("record does not start with v=DMARC1")
    tags: dict[str, str] = {}
    warnings: list[str] = []
    parts = text.split(";")
    for part in parts[1:]:
        part = part.strip(" \t\r\n")
        if not part:
            continue                    # §6.4 allows a trailing ";" and empty tag-specs
        name, eq, value = part.partition("=")
        name = name.strip(" \t").lower()
        if not eq or not name:
            warnings.append(f"ignored malformed tag {part!r}")
            continue
        if name in tags:
            warnings.append(f"ignored repeated tag {name!r}")
            continue
        tags[name] = value.strip(" \t")

    def keyword(tag: str, allowed: Sequence[str], default: str | None) -> str | None:
        if tag not in tags:
            return default
        val = tags[tag].lower()
        if val in allowed:
            return val
        warnings.append(f"{tag}: invalid value {tags[tag]!r}")
        return default

    rua = _parse_uris(tags["rua"], "rua", warnings) if "rua" in tags else ()
    ruf = _parse_uris(tags["ruf"], "ruf", warnings) if "ruf" in tags else ()

    p = keyword("p", POLICIES, None)
    sp_invalid = "sp" in tags and tags["sp"].lower() not in POLICIES
    sp = keyword("sp", POLICIES, None)
    p_invalid = False
    if p is None or sp_invalid:
        # §6.6.3 step 6: act as "p=none" when a valid rua is present, else no DMARC.
        if not rua:
            raise DMARCRecordError("no valid p (or invalid sp) and no valid rua")
        p, sp, p_invalid = "none", None, True
        warnings.append("invalid or missing p/sp: acting as p=none (RFC 7489 §6.6.3)")
    np_ = keyword("np", POLICIES, None)
    adkim = keyword("adkim", ("r", "s"), "r") or "r"
    aspf = keyword("aspf", ("r", "s"), "r") or "r"

    pct = 100
    if "pct" in tags:
        raw = tags["pct"]
        if raw.isdigit() and 0 <= int(raw) <= 100:
            pct = int(raw)
        else:
            warnings.append(f"pct: invalid value {raw!r}")

    fo: tuple[str, ...] = ("0",)
    if "fo" in tags:
        opts = [o.strip(" \t").lower() for o in tags["fo"].split(":")]
        good = tuple(o for o in opts if o in FAILURE_OPTIONS)
        if len(good) != len(opts):
            warnings.append(f"fo: ignored invalid options in {tags['fo']!r}")
        fo = good or ("0",)

    rf: tuple[str, ...] = ("afrf",)
    if "rf" in tags:
        fmts = tuple(f.strip(" \t").lower() for f in tags["rf"].split(":") if f.strip(" \t"))
        if fmts:
            rf = fmts
        else:
            warnings.append("rf: empty value")

    ri = DEFAULT_RI
    if "ri" in tags:
        raw = tags["ri"]
        if raw.isdigit() and int(raw) <= MAX_RI:
            ri = int(raw)
        else:
            warnings.append(f"ri: invalid value {raw!r}")

    return DMARCRecord(p=p, sp=sp, np=np_, adkim=adkim, aspf=aspf, pct=pct, rua=rua,
                       ruf=ruf, fo=fo, rf=rf, ri=ri, raw=text, p_invalid=p_invalid,
                       warnings=tuple(warnings))


# ---------------------------------------------------------------------- discovery

@dataclass(frozen=True, slots=True)
class PolicyLookup:
    """The outcome of policy discovery for one author domain.

    ``status``: "found" (``record`` and ``policy_domain`` set), "none" (no usable policy:
    no record, several records, or an unusable one), "temperror" (DNS failed temporarily),
    "permerror" (the author domain cannot be looked up). ``from_domain_exists`` is False
    only when the record came from the organizational domain, carries "np", and the author
    domain is NXDOMAIN for A, AAAA and MX (RFC 9091 §2.1); None when not checked.
    """

    status: str
    from_domain: str
    org_domain: str = ""
    record: DMARCRecord | None = None
    policy_domain: str | None = None
    from_domain_exists: bool | None = None
    reason: str = ""


def _dmarc_records(texts: Sequence[str]) -> list[str]:
    return [t for t in texts if is_dmarc_record(t)]


async def _domain_exists(resolver: Resolver, domain: str) -> bool:
    """False when ``domain`` is NXDOMAIN for A, AAAA and MX (RFC 9091 §2.1 "non-existent")."""
    answers = await asyncio.gather(*(resolver.lookup(domain, t) for t in ("A", "AAAA", "MX")))
    return not all(ans.nxdomain for ans in answers)


async def fetch_policy(resolver: Resolver, from_domain: str) -> PolicyLookup:
    """Policy discovery (RFC 7489 §6.6.3).

    1. TXT at ``_dmarc.<from-domain>``; keep the records that start with v=DMARC1.
    2. If none are left and the author domain is not its own organizational domain, TXT at
       ``_dmarc.<org-domain>``, same filter.
    3. Exactly one record must remain; zero or several: status "none".
    4. The record is parsed; an unusable one (§6.6.3 step 6) is "none" as well.
    ``DNSTemporaryError`` anywhere gives "temperror"; an author domain that is no DNS name
    gives "permerror".
    """
    try:
        domain = normalize_domain(from_domain)
        org = organizational_domain(domain)
    except ValueError as exc:
        return PolicyLookup("permerror", from_domain, reason=f"bad author domain: {exc}")
    try:
        found_at = domain
        records = _dmarc_records(await resolver.txt(f"_dmarc.{domain}"))
        if not records and org != domain:
            found_at = org
            records = _dmarc_records(await resolver.txt(f"_dmarc.{org}"))
        if not records:
            return PolicyLookup("none", domain, org, reason="no DMARC record")
        if len(records) > 1:
            return PolicyLookup("none", domain, org,
                                reason=f"{len(records)} DMARC records at _dmarc.{found_at}")
        try:
            record = parse_record(records[0])
        except DMARCRecordError as exc:
            return PolicyLookup("none", domain, org, reason=f"unusable record: {exc}")
        exists: bool | None = None
        if found_at != domain and record.np is not None:
            exists = await _domain_exists(resolver, domain)
    except DNSTemporaryError as exc:
        return PolicyLookup("temperror", domain, org, reason=f"DNS: {exc}")
    except DNSPermanentError as exc:
        return PolicyLookup("permerror", domain, org, reason=f"DNS: {exc}")
    for warning in record.warnings:
        log.debug("DMARC record at _dmarc.%s: %s", found_at, warning)
    return PolicyLookup("found", domain, org, record, found_at, exists)


# ---------------------------------------------------------------------- evaluation

@dataclass(frozen=True, slots=True)
class DMARCResult:
    """The DMARC verdict for one message.

    ``result``: "pass", "fail", "none", "temperror" or "permerror". ``policy``: what the
    domain owner requests for this message (p, sp or np; "none" without a policy).
    ``disposition``: what to apply after pct sampling (§6.6.4). ``override``: an RFC 7489
    Appendix C PolicyOverrideType ("sampled_out") when the disposition is weaker than the
    policy. ``spf_aligned``/``dkim_aligned``: the identifier-alignment results (§3.1)
    that aggregate reports carry as policy_evaluated spf/dkim.
    """

    result: str
    policy: str
    disposition: str
    from_domain: str
    policy_domain: str | None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    record: DMARCRecord | None = None
    override: str | None = None
    dkim_domain: str | None = None       # the d= of the first aligned passing signature


def aligned(domain: str, author: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 §3.1): strict "s" needs the same domain, relaxed "r"
    the same organizational domain. Malformed domains never align."""
    try:
        a, b = normalize_domain(domain), normalize_domain(author)
    except ValueError:
        return False
    if mode == "s":
        return a == b
    return a == b or organizational_domain(a) == organizational_domain(b)


_DOWNGRADE = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def evaluate(from_domain: str, lookup: PolicyLookup, *, spf_result: str, spf_domain: str,
             dkim: Sequence[tuple[str, str]], pct_roll: float | None = None) -> DMARCResult:
    """Apply the DMARC policy of ``lookup`` to one message (RFC 7489 §6.6.2 - §6.6.4).

    ``spf_result``/``spf_domain``: the SPF result and the domain SPF authenticated (the
    RFC5321.MailFrom domain; for the null reverse-path, the HELO identity SPF checked,
    §3.1.2). ``dkim``: (result, d=) of every DKIM signature. Only "pass" results count.
    ``pct_roll`` in [0, 1): the message is subject to the policy when roll * 100 < pct
    (§6.6.4); None draws ``random.random()``.
    """
    try:
        author = normalize_domain(from_domain)
    except ValueError as exc:
        return DMARCResult("permerror", "none", "none", from_domain, None,
                           reason=f"bad author domain: {exc}")
    if lookup.status != "found" or lookup.record is None:
        result = lookup.status if lookup.status in ("temperror", "permerror") else "none"
        return DMARCResult(result, "none", "none", author, lookup.policy_domain,
                           reason=lookup.reason or "no policy")
    if lookup.from_domain != author:
        raise ValueError(f"lookup is for {lookup.from_domain!r}, not {author!r}")
    record = lookup.record
    policy_domain = lookup.policy_domain or author

    spf_ok = spf_result.strip().lower() == "pass" and aligned(spf_domain, author, record.aspf)
    dkim_domain = next((d for res, d in dkim
                        if res.strip().lower() == "pass" and aligned(d, author, record.adkim)),
                       None)
    dkim_ok = dkim_domain is not None

    # §6.3: p for the domain the record was found at, sp for its subdomains when the
    # record came from the organizational domain; np for non-existent ones (RFC 9091).
    if policy_domain == author:
        policy = record.p
    elif lookup.from_domain_exists is False:
        policy = record.nonexistent_policy
    else:
        policy = record.subdomain_policy

    if spf_ok or dkim_ok:
        via = " and ".join(n for n, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok)
        return DMARCResult("pass", policy, "none", author, policy_domain, spf_ok, dkim_ok,
                           reason=f"aligned {via} pass", record=record,
                           dkim_domain=dkim_domain)

    disposition, override = policy, None
    if record.pct < 100 and policy != "none":
        roll = random.random() if pct_roll is None else pct_roll
        if not roll * 100 < record.pct:
            # §6.6.4: messages outside the sample get the next weaker policy.
            disposition, override = _DOWNGRADE[policy], "sampled_out"
    reason = "no aligned SPF or DKIM pass"
    if override:
        reason += f"; not sampled (pct={record.pct}): {policy} applied as {disposition}"
    return DMARCResult("fail", policy, disposition, author, policy_domain, False, False,
                       reason=reason, record=record, override=override)


# ---------------------------------------------------------------------- author domain

# "local@domain" or "Display Name <local@domain>" with a display name of plain words
# (no RFC 5322 specials, quotes or comments) and a dot-atom local part: the shapes nearly
# all mail has, whose domain needs no full parse.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LDH = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_FROM = re.compile(
    rf"{_DOT_ATOM}@(?P<bare>{_LDH}(?:\.{_LDH})+)"
    rf"|[A-Za-z0-9 ._-]*<{_DOT_ATOM}@(?P<angle>{_LDH}(?:\.{_LDH})+)>")


def author_domain(header_from_values: list[str]) -> str | None:
    """The one RFC5322.From domain DMARC evaluates (RFC 7489 §6.6.1), normalized.

    ``header_from_values``: the values of every From field of the message (folded or not).
    Returns None when there is no From field at all (RFC 5322 §3.6 requires one: the
    message is malformed and the header checks should refuse it).

    Choices, made so that a crafted header can never switch DMARC off or make it judge a
    different domain than the one a mail reader shows:
      * several From fields (RFC 5322 §3.6 allows one) -> AuthorDomainError, even when the
        domains agree: RFC 7489 §6.6.1 lets receivers reject these;
      * one field with several mailboxes (RFC 5322 §3.6.2) -> their common domain when they
        all share it, else AuthorDomainError (§6.6.1 would evaluate each and apply the
        strictest policy; refusing is the simpler and equally safe choice);
      * a field the RFC 5322 parser finds invalid (``email`` InvalidHeaderDefect, e.g.
        "a@x.example <b@y.example>", whose domain readers disagree on), no address, an
        empty domain, a domain literal or a domain that is no DNS name ->
        AuthorDomainError.
    """
    if not header_from_values:
        return None
    if len(header_from_values) > 1:
        raise AuthorDomainError(f"{len(header_from_values)} From fields")
    value = _FOLD_RE.sub("", header_from_values[0]).strip()
    simple = _SIMPLE_FROM.fullmatch(value)
    if simple:
        # The common shapes ("a@b.example", "<a@b.example>", "Name <a@b.example>" with a
        # plain display name) need no full RFC 5322 parse; anything else (quotes,
        # comments, groups, several mailboxes, encoded words) takes the parser below.
        try:
            return normalize_domain(simple.group("bare") or simple.group("angle"))
        except ValueError as exc:
            raise AuthorDomainError(f"From domain is not a DNS name: {exc}") from None
    header = email.policy.default.header_factory("from", value)
    bad = [d for d in header.defects
           if isinstance(d, (email.errors.InvalidHeaderDefect, email.errors.NonPrintableDefect))]
    if bad:
        raise AuthorDomainError(f"unparsable From: {bad[0]}")
    addresses = header.addresses
    if not addresses:
        raise AuthorDomainError("no address in From")
    domains: set[str] = set()
    for addr in addresses:
        if not addr.domain:
            raise AuthorDomainError(f"From address without a domain: {addr.addr_spec!r}")
        if addr.domain.startswith("["):
            raise AuthorDomainError("From domain is an address literal")
        try:
            domains.add(normalize_domain(addr.domain))
        except ValueError as exc:
            raise AuthorDomainError(f"From domain is not a DNS name: {exc}") from None
    if len(domains) > 1:
        raise AuthorDomainError(f"From has mailboxes in {len(domains)} domains")
    return domains.pop()
