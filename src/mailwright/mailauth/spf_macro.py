"""SPF macro strings (RFC 7208 §7): parsed once, expanded against one check's values.

What: the ``macro-string`` grammar of RFC 7208 §7.1 in its three uses: a ``domain-spec``
(mechanism and modifier targets, which must end in a macro or a ``.toplabel``), an
``explain-string`` (the TXT record an ``exp=`` modifier points to, where spaces and the
``c``, ``r``, ``t`` letters are allowed, §7.3), and the value of an unknown modifier.

How: ``parse_*`` turn text into a ``MacroString`` (a tuple of literal strings and ``Macro``
parts) or raise ``MacroSyntaxError``; ``expand`` substitutes ``MacroValues`` and applies the
transformers of §7.3 (split on delimiters, optional reversal, keep the N right-hand parts,
join with "."; an upper-case letter URL-escapes the result); ``expand_domain`` also drops a
trailing dot and truncates the left side to 253 characters (§7.3, last paragraphs).

Invariants:
  * Pure: no DNS, no clock. The ``p`` value (validated PTR name) and the timestamp are
    fields of ``MacroValues``; the evaluator looks ``p`` up only when ``letters`` has it.
  * Only visible US-ASCII (and SP in explain-strings) is ever accepted, so an expansion
    can never smuggle CR/LF or control characters into a reply or header.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "DOMAIN_LETTERS", "EXPLAIN_LETTERS", "Macro", "MacroString", "MacroSyntaxError",
    "MacroValues", "expand", "expand_domain", "parse_domain_spec", "parse_explain_string",
    "parse_macro_string", "truncate_domain",
]

#: §7.1 macro-letter; c, r and t are allowed only in "exp" text (§7.3)
EXPLAIN_LETTERS = frozenset("slodiphvcrt")
DOMAIN_LETTERS = frozenset("slodiphv")
DELIMITERS = frozenset(".-+,/_=")
MAX_DOMAIN = 253

# §7.1 domain-end = ( "." toplabel [ "." ] ) / macro-expand
# toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_DOMAIN_END = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?\Z")
_MACRO_BODY = re.compile(r"([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\Z")


class MacroSyntaxError(ValueError):
    """The text is not a valid macro-string of RFC 7208 §7.1 (a permerror in a record)."""


@dataclass(frozen=True, slots=True)
class Macro:
    """One ``%{...}`` expansion: letter (lower case), transformers and delimiters."""

    letter: str
    digits: int | None = None       # keep this many right-hand parts (§7.3)
    reverse: bool = False
    delimiters: str = ""            # "" means "." (§7.3)
    url_escape: bool = False        # the letter was upper case (§7.3)


@dataclass(frozen=True, slots=True)
class MacroString:
    """A parsed macro-string: ``parts`` are literal ``str`` or ``Macro``; ``text`` as written."""

    text: str
    parts: tuple[str | Macro, ...]
    #: the literal characters after the last macro-expand, as written ("" if it ends in one)
    tail: str = ""

    @property
    def letters(self) -> frozenset[str]:
        return frozenset(p.letter for p in self.parts if isinstance(p, Macro))


@dataclass(frozen=True, slots=True)
class MacroValues:
    """The values macros expand to (§7.3) for one check_host() call.

    ``sender`` is the full <sender> (local-part@domain, local-part already defaulted to
    "postmaster"); ``ip`` an IPv4 address for IPv4 and IPv4-mapped clients (§5, last
    paragraph), else IPv6; ``validated`` the ``p`` value; ``receiver`` the ``r`` value.
    """

    sender: str
    domain: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    helo: str = ""
    receiver: str = ""
    now: int = 0
    validated: str = "unknown"

    def value(self, letter: str) -> str:
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.sender.rpartition("@")[0]
        if letter == "o":
            return self.sender.rpartition("@")[2]
        if letter == "d":
            return self.domain
        if letter == "i":
            # §7.3: dotted quad for IPv4, dot-separated nibbles for IPv6
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        if letter == "p":
            return self.validated
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(self.ip)         # RFC 5952 form for IPv6
        if letter == "r":
            return self.receiver or "unknown"
        if letter == "t":
            return str(self.now)
        raise MacroSyntaxError(f"unknown macro letter {letter!r}")


def parse_macro_string(text: str, *, letters: frozenset[str] = EXPLAIN_LETTERS,
                       allow_space: bool = False) -> MacroString:
    """Parse ``macro-string`` (§7.1); ``allow_space`` for ``explain-string``."""
    parts: list[str | Macro] = []
    literal: list[str] = []
    tail: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt in ("%", "_", "-"):
                # §7.1: "%%" is "%", "%_" a space, "%-" the URL-encoded space
                literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
                tail = []
                i += 2
                continue
            if nxt != "{":
                raise MacroSyntaxError(f"'%' not followed by '{{', '%', '_' or '-' in {text!r}")
            end = text.find("}", i + 2)
            if end < 0:
                raise MacroSyntaxError(f"unterminated macro in {text!r}")
            parts_macro = _parse_macro(text[i + 2:end], letters, text)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(parts_macro)
            tail = []
            i = end + 1
            continue
        code = ord(ch)
        if not (0x21 <= code <= 0x7E or (allow_space and ch == " ")):
            raise MacroSyntaxError(f"character {ch!r} not allowed in {text!r}")
        literal.append(ch)
        tail.append(ch)
        i += 1
    if literal:
        parts.append("".join(literal))
    return MacroString(text=text, parts=tuple(parts), tail="".join(tail))


def _parse_macro(body: str, letters: frozenset[str], text: str) -> Macro:
    m = _MACRO_BODY.match(body)
    if m is None:
        raise MacroSyntaxError(f"bad macro %{{{body}}} in {text!r}")
    letter, digits, reverse, delimiters = m.groups()
    if letter.lower() not in letters:
        raise MacroSyntaxError(f"macro letter {letter!r} not allowed here in {text!r}")
    count = None
    if digits:
        count = int(digits)
        if count == 0:      # §7.3: "If a DIGIT is specified, the value MUST be nonzero"
            raise MacroSyntaxError(f"zero transformer in {text!r}")
    return Macro(letter=letter.lower(), digits=count, reverse=bool(reverse),
                 delimiters=delimiters, url_escape=letter.isupper())


def parse_domain_spec(text: str) -> MacroString:
    """Parse ``domain-spec`` (§7.1): a non-empty macro-string without c/r/t that ends in
    a macro-expand or in "." toplabel [ "." ]."""
    if not text:
        raise MacroSyntaxError("empty domain-spec")
    ms = parse_macro_string(text, letters=DOMAIN_LETTERS)
    if ms.tail and _DOMAIN_END.search(ms.tail) is None:
        raise MacroSyntaxError(f"domain-spec {text!r} does not end in a macro or top-label")
    return ms


def parse_explain_string(text: str) -> MacroString:
    """Parse ``explain-string = *( macro-string / SP )`` (§6.2, §7.1)."""
    return parse_macro_string(text, letters=EXPLAIN_LETTERS, allow_space=True)


def _transform(value: str, macro: Macro) -> str:
    """§7.3 transformers: split, reverse, keep right-hand parts, join with "."."""
    if macro.digits is None and not macro.reverse and not macro.delimiters:
        return value
    parts = re.split("[" + re.escape(macro.delimiters or ".") + "]", value)
    if macro.reverse:
        parts.reverse()
    if macro.digits is not None and macro.digits < len(parts):
        parts = parts[-macro.digits:]
    return ".".join(parts)


def expand(ms: MacroString, values: MacroValues) -> str:
    """The text of ``ms`` with every macro replaced (§7.3)."""
    out: list[str] = []
    for part in ms.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        text = _transform(values.value(part.letter), part)
        if part.url_escape:
            # §7.3: upper-case macros are URL-escaped; unreserved (RFC 3986) stay as they are
            text = quote(text, safe="")
        out.append(text)
    return "".join(out)


def truncate_domain(name: str) -> str:
    """Drop one trailing dot, then remove left-hand labels until at most 253 characters
    remain (§7.3: domain names built by expansion)."""
    if name.endswith("."):
        name = name[:-1]
    while len(name) > MAX_DOMAIN and "." in name:
        name = name.split(".", 1)[1]
    return name


def expand_domain(ms: MacroString, values: MacroValues) -> str:
    """Expand a domain-spec into the name to query."""
    return truncate_domain(expand(ms, values))
