"""SPF record selection and syntax (RFC 7208 §4.5, §4.6, §5, §6, §12 ABNF).

What: ``select_record`` picks the one "v=spf1" record among a name's TXT strings;
``parse_record`` turns its text into a ``Record``: mechanisms in order, with their
qualifier, target ``domain-spec`` (a parsed ``MacroString``), networks and dual-cidr
lengths, and the ``redirect``/``exp`` modifiers.

How: terms are separated by SP only (§4.6.1); a term is a modifier when it starts with a
``name`` immediately followed by "=" (§4.6.1, before any ":" or "/"), otherwise a
mechanism. Every term is checked against the ABNF before evaluation starts, so a syntax
error anywhere gives permerror even when an earlier mechanism would match (§4.6).

Invariants:
  * Pure: no DNS. Errors are ``SPFSyntaxError`` (a permerror for the evaluator).
  * Mechanism and modifier names are case-insensitive (ABNF strings, RFC 5234 §2.3).
  * ``redirect`` and ``exp`` appear at most once each (§6); unknown modifiers are kept
    (and their macro syntax checked) but have no effect (§6).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from mailwright.mailauth.spf_macro import (
    EXPLAIN_LETTERS, MacroString, MacroSyntaxError, parse_domain_spec, parse_macro_string)

__all__ = [
    "MECHANISMS", "Mechanism", "Record", "SPFSyntaxError", "parse_record", "select_record",
]

MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
QUALIFIERS = "+-~?"
#: mechanisms and modifiers that cost a DNS query (§4.6.4)
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})

_VERSION = "v=spf1"
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9\-_.]*)=(.*)\Z", re.S)
# §5.6 ip4-network: qnum "." qnum "." qnum "." qnum, qnum without leading zeros
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}\Z")
_IP6_CHARS = re.compile(r"[0-9A-Fa-f:.]+\Z")
# §5.6: ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT); ip6 the same with 0*2DIGIT
_CIDR_VALUE = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_DUAL_CIDR_TAIL = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?\Z")


class SPFSyntaxError(ValueError):
    """The record (or the set of records) is invalid: check_host() returns permerror."""


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One directive: qualifier + mechanism (§4.6.2, §5)."""

    qualifier: str                       # "+", "-", "~" or "?"
    kind: str                            # one of MECHANISMS, lower case
    text: str                            # the term as written
    domain: MacroString | None = None    # target domain-spec (None: the current <domain>)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None   # ip4/ip6
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed SPF record."""

    text: str
    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None = None
    exp: MacroString | None = None
    unknown: tuple[tuple[str, str], ...] = field(default=())

    @property
    def dns_terms(self) -> int:
        """How many terms of this record would cost a DNS query if all were evaluated."""
        return sum(m.kind in DNS_MECHANISMS for m in self.mechanisms) + (self.redirect is not None)


def is_spf_record(text: str) -> bool:
    """§4.5: the record starts with "v=spf1" (any case) followed by SP or its end."""
    return text[:6].lower() == _VERSION and (len(text) == 6 or text[6] == " ")


def select_record(texts: list[str]) -> str | None:
    """The single SPF record among TXT strings, None when there is none (§4.5).

    More than one record is an error (§4.5: permerror), even if they are identical.
    """
    found = [t for t in texts if is_spf_record(t)]
    if len(found) > 1:
        raise SPFSyntaxError(f"{len(found)} SPF records published")
    return found[0] if found else None


def parse_record(text: str) -> Record:
    """Parse a whole record (§4.6, §12); raise ``SPFSyntaxError`` at the first error."""
    if not is_spf_record(text):
        raise SPFSyntaxError("not an SPF record")
    if not text.isascii():
        # §3 / §4.5: records are US-ASCII; non-ASCII anywhere is a syntax error
        raise SPFSyntaxError("non-ASCII character in record")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    unknown: list[tuple[str, str]] = []
    for term in text[6:].split(" "):       # §4.6.1: 1*SP between terms, *SP at the end
        if not term:
            continue
        mod = _MODIFIER.match(term)
        if mod is not None:
            name, value = mod.group(1).lower(), mod.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:      # §6: at most once each
                    raise SPFSyntaxError(f"{name}= appears more than once")
                modifiers[name] = _domain_spec(value, term)
            else:
                try:                       # §6 / §12: unknown-modifier = name "=" macro-string
                    parse_macro_string(value, letters=EXPLAIN_LETTERS)
                except MacroSyntaxError as exc:
                    raise SPFSyntaxError(f"bad modifier {term!r}: {exc}") from None
                unknown.append((name, value))
            continue
        mechanisms.append(parse_mechanism(term))
    return Record(text=text, mechanisms=tuple(mechanisms), redirect=modifiers.get("redirect"),
                  exp=modifiers.get("exp"), unknown=tuple(unknown))


def parse_mechanism(term: str) -> Mechanism:
    """One directive: [qualifier] mechanism (§4.6.2, §5)."""
    qualifier = "+"
    body = term
    if body and body[0] in QUALIFIERS:
        qualifier, body = body[0], body[1:]
    cut = len(body)
    for sep in (":", "/"):
        pos = body.find(sep)
        if 0 <= pos < cut:
            cut = pos
    kind, args = body[:cut].lower(), body[cut:]
    if kind not in MECHANISMS:
        raise SPFSyntaxError(f"unknown mechanism {term!r}")
    if kind == "all":                                  # §5.1: "all", nothing more
        if args:
            raise SPFSyntaxError(f"bad mechanism {term!r}")
        return Mechanism(qualifier, kind, term)
    if kind in ("include", "exists"):                  # §5.2, §5.7: ":" domain-spec
        if not args.startswith(":"):
            raise SPFSyntaxError(f"{kind} needs a domain in {term!r}")
        return Mechanism(qualifier, kind, term, domain=_domain_spec(args[1:], term))
    if kind == "ptr":                                  # §5.5: [ ":" domain-spec ]
        if not args:
            return Mechanism(qualifier, kind, term)
        if not args.startswith(":"):
            raise SPFSyntaxError(f"bad mechanism {term!r}")
        return Mechanism(qualifier, kind, term, domain=_domain_spec(args[1:], term))
    if kind in ("a", "mx"):                            # §5.3, §5.4: [":" domain-spec] [dual-cidr]
        domain = None
        cidr_text = args
        if args.startswith(":"):
            spec = args[1:]
            tail = _DUAL_CIDR_TAIL.search(spec)
            assert tail is not None        # the pattern matches the empty string at the end
            domain = _domain_spec(spec[:tail.start()], term)
            cidr_text = spec[tail.start():]
        cidr4, cidr6 = _dual_cidr(cidr_text, term)
        return Mechanism(qualifier, kind, term, domain=domain, cidr4=cidr4, cidr6=cidr6)
    # ip4 / ip6 (§5.6): ":" network [ "/" length ]
    if not args.startswith(":"):
        raise SPFSyntaxError(f"{kind} needs an address in {term!r}")
    address, slash, length = args[1:].partition("/")
    bits = 32 if kind == "ip4" else 128
    if slash:
        bits = _cidr(length, 32 if kind == "ip4" else 128, term)
    network = _network(kind, address, bits, term)
    return Mechanism(qualifier, kind, term, network=network)


def _domain_spec(text: str, term: str) -> MacroString:
    try:
        return parse_domain_spec(text)
    except MacroSyntaxError as exc:
        raise SPFSyntaxError(f"bad domain-spec in {term!r}: {exc}") from None


def _cidr(text: str, limit: int, term: str) -> int:
    if _CIDR_VALUE.match(text) is None or int(text) > limit:
        raise SPFSyntaxError(f"bad CIDR length in {term!r}")
    return int(text)


def _dual_cidr(text: str, term: str) -> tuple[int, int]:
    """§5.3 dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]."""
    if not text:
        return 32, 128
    m = _DUAL_CIDR_TAIL.match(text)
    if m is None:
        raise SPFSyntaxError(f"bad CIDR length in {term!r}")
    four, six = m.groups()
    cidr4 = _cidr(four, 32, term) if four is not None else 32
    cidr6 = _cidr(six, 128, term) if six is not None else 128
    return cidr4, cidr6


def _network(kind: str, address: str, bits: int, term: str
             ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        if kind == "ip4":
            if _IP4.match(address) is None:
                raise ValueError(address)
            return ipaddress.IPv4Network(f"{address}/{bits}", strict=False)
        if _IP6_CHARS.match(address) is None:      # no zone ids ("%eth0") or other text
            raise ValueError(address)
        return ipaddress.IPv6Network(f"{address}/{bits}", strict=False)
    except ValueError:
        raise SPFSyntaxError(f"bad address in {term!r}") from None
