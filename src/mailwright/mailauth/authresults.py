"""Authentication-Results header fields (RFC 8601): writing ours, removing forged ones.

What: ``format_header`` writes one ``Authentication-Results:`` field from ``MethodResult``
values (spf, dkim, dmarc, arc, ...); ``strip_forged`` removes the fields in a received
header section that claim our authserv-id (RFC 8601 §5), so downstream filters and mail
readers trust only what we added; ``parse_authserv_id`` reads the authserv-id of a field.

How: the field is built from indivisible pieces ("authserv-id;", "method=result",
"reason=...", "ptype.property=value"), each result on its own continuation line and the
pieces packed greedily so lines stay within 78 columns where a piece allows (RFC 5322
§2.1.1); a piece longer than that stays whole on its own line. Values are written as an
RFC 2045 token when they are one, as a bare ``[local-part] "@" domain`` for the pvalue
forms RFC 8601 §2.2 allows, and as a quoted-string otherwise. Reading skips CFWS (nested
comments, quoted-pairs, folding) the way RFC 5322 §3.2.2 defines it.

Invariants:
  * Output is bytes, lines end in CRLF, and no line break or control character from a
    value ever reaches the header (CTLs are dropped), so a value cannot inject a field.
  * Method, result, ptype and property names must be RFC 8601 keywords; a bad one is a
    programming error (ValueError).
  * ``strip_forged`` changes nothing but whole removed fields: every other byte of the
    header section, including its line endings and the blank line, is kept.
  * authserv-ids compare case-insensitively (RFC 8601 §5, §2.5: they are usually domain
    names), with quoting undone and one trailing dot ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

__all__ = [
    "AuthResultsSyntaxError", "MethodResult", "format_header", "parse_authserv_id",
    "strip_forged",
]

FIELD_NAME = "Authentication-Results"
MAX_LINE = 78
MAX_REASON = 200          # long free text is cut: a field line must stay < 998 octets

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TSPECIALS = set('()<>@,;:\\"/[]?=')
# RFC 8601 §2.2: method / ptype / property / result are Keywords (RFC 5321 Let-dig
# [Ldh-str]); methods may carry a "/version" (§2.2 methodspec).
_KEYWORD_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")
_METHOD_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:/[0-9]+)?$")
_PROPERTY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# RFC 5322 §3.2.3 dot-atom (ASCII) and RFC 1034 domain names, for the bare pvalue form.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM_RE = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")
_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")


class AuthResultsSyntaxError(ValueError):
    """An Authentication-Results value whose authserv-id cannot be read."""


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo (RFC 8601 §2.2): ``method=result [reason=...] ptype.property=value...``.

    ``props`` are (ptype, property, value) triples, e.g. ("smtp", "mailfrom",
    "user@example.com"), ("header", "d", "example.com").
    """

    method: str
    result: str
    reason: str = ""
    props: Sequence[tuple[str, str, str]] = field(default_factory=tuple)


# ---------------------------------------------------------------------- writing

# RFC 2045 §5.1 token: 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TOKEN_RE = re.compile(r'[!#$%&\'*+\-.0-9A-Z^_`a-z{|}~]+')


def _is_token(value: str) -> bool:
    return _TOKEN_RE.fullmatch(value) is not None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _clean(value: str) -> str:
    return _CTL_RE.sub("", value)


def _value(value: str) -> str:
    """RFC 8601 §2.2 ``value``: a token or a quoted-string."""
    value = _clean(value)
    return value if _is_token(value) else _quoted(value)


def _pvalue(value: str) -> str:
    """RFC 8601 §2.2 ``pvalue``: value / [ [ local-part ] "@" ] domain-name."""
    value = _clean(value)
    if _is_token(value):
        return value
    if value.count("@") == 1:
        local, _, domain = value.partition("@")
        if (not local or _DOT_ATOM_RE.match(local)) and _DOMAIN_RE.match(domain):
            return value
    return _quoted(value)


def _check(kind: str, text: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(text):
        raise ValueError(f"invalid Authentication-Results {kind}: {text!r}")
    return text


def _pieces(result: MethodResult) -> list[str]:
    method = _check("method", result.method, _METHOD_RE)
    outcome = _check("result", result.result, _KEYWORD_RE)
    pieces = [f"{method}={outcome}"]
    if result.reason:
        reason = _clean(result.reason)
        if len(reason) > MAX_REASON:
            reason = reason[:MAX_REASON - 3] + "..."
        pieces.append(f"reason={_value(reason)}")
    for ptype, prop, value in result.props:
        _check("ptype", ptype, _KEYWORD_RE)
        _check("property", prop, _PROPERTY_RE)
        pieces.append(f"{ptype}.{prop}={_pvalue(value)}")
    return pieces


def format_header(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """One complete ``Authentication-Results:`` field, folded, ending in CRLF.

    With no results the payload is ``<authserv-id>; none`` (RFC 8601 §2.2 no-result).
    """
    serv = _value(authserv_id)
    if not results:
        return f"{FIELD_NAME}: {serv}; none\r\n".encode("utf-8")
    lines = [f"{FIELD_NAME}: {serv};"]
    for index, result in enumerate(results):
        pieces = _pieces(result)
        if index < len(results) - 1:
            pieces[-1] += ";"
        line = "\t" + pieces[0]
        for piece in pieces[1:]:
            if len(line.expandtabs(8)) + 1 + len(piece) <= MAX_LINE:
                line += " " + piece
            else:
                lines.append(line)
                line = "\t" + piece
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# ---------------------------------------------------------------------- reading

def _skip_cfws(text: str, pos: int) -> int:
    """Index after any CFWS at ``pos`` (RFC 5322 §3.2.2: FWS and nested comments with
    quoted-pairs). An unclosed comment runs to the end."""
    n = len(text)
    while pos < n:
        c = text[pos]
        if c in " \t\r\n":
            pos += 1
        elif c == "(":
            depth = 0
            while pos < n:
                c = text[pos]
                if c == "\\":
                    pos += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        pos += 1
                        break
                pos += 1
        else:
            break
    return pos


def parse_authserv_id(field_value: str | bytes) -> str:
    """The authserv-id of an Authentication-Results value (the text after the colon).

    RFC 8601 §2.2: ``[CFWS] authserv-id [CFWS authres-version] ...``; authserv-id is a
    token or a quoted-string (returned unquoted). Read leniently: an unquoted id runs to
    the next white space, comment or ";", so odd ids that other readers might accept are
    still recognised. AuthResultsSyntaxError when there is none.
    """
    if isinstance(field_value, bytes):
        field_value = field_value.decode("utf-8", "replace")
    pos = _skip_cfws(field_value, 0)
    n = len(field_value)
    if pos >= n:
        raise AuthResultsSyntaxError("empty Authentication-Results value")
    if field_value[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < n and field_value[pos] != '"':
            c = field_value[pos]
            if c == "\\" and pos + 1 < n:
                pos += 1
                c = field_value[pos]
            if c not in "\r\n":
                out.append(c)
            pos += 1
        if pos >= n:
            raise AuthResultsSyntaxError("unterminated quoted authserv-id")
        ident = "".join(out)
    else:
        end = pos
        while end < n and field_value[end] not in " \t\r\n(;":
            end += 1
        ident = field_value[pos:end]
    if not ident:
        raise AuthResultsSyntaxError("no authserv-id")
    return ident


def _same_id(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        s = s.strip().casefold()
        return s[:-1] if s.endswith(".") else s
    return norm(a) == norm(b)


_LINE_RE = re.compile(rb"[^\n]*\n|[^\n]+")
_NAME_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def strip_forged(header_section: bytes, authserv_id: str) -> tuple[bytes, int]:
    """Remove every Authentication-Results field whose authserv-id is ours (RFC 8601 §5).

    ``header_section``: the raw header lines (CRLF or LF endings, folded fields, the blank
    line optional). Field names match case-insensitively, with white space before the
    colon tolerated (RFC 5322 §4.5 obsolete syntax); the id after CFWS and comments,
    quoted or not, case-insensitively. Fields whose id cannot be read are kept (no
    reader can take them for ours). Returns (new header section, fields removed).
    """
    if b"authentication-results" not in header_section.lower():
        return header_section, 0                # most mail: nothing to look at
    lines = _LINE_RE.findall(header_section)
    fields: list[list[bytes]] = []
    for line in lines:
        if fields and line[:1] in (b" ", b"\t") and fields[-1] and not _is_blank(fields[-1][0]):
            fields[-1].append(line)
        else:
            fields.append([line])
    out: list[bytes] = []
    removed = 0
    body_started = False
    for lines_of_field in fields:
        first = lines_of_field[0]
        if body_started or _is_blank(first):
            body_started = True
            out.extend(lines_of_field)
            continue
        m = _NAME_RE.match(first)
        if m and m.group(1).lower() == FIELD_NAME.lower().encode():
            value = (first[m.end():] + b"".join(lines_of_field[1:]))
            try:
                ident = parse_authserv_id(value)
            except AuthResultsSyntaxError:
                ident = None
            if ident is not None and _same_id(ident, authserv_id):
                removed += 1
                continue
        out.extend(lines_of_field)
    return b"".join(out), removed


def _is_blank(line: bytes) -> bool:
    return line in (b"\r\n", b"\n")
