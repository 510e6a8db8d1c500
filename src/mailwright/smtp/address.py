"""Parsing of MAIL FROM / RCPT TO arguments: the path and the ESMTP parameters.

What: turns the text after ``MAIL FROM:`` or ``RCPT TO:`` into an ``Address`` plus
``MailParams`` / ``RcptParams`` (smtp.events), or a ``ParseError`` that carries the exact
catalog reply to send.

How: ``split_argument`` separates the path from the parameter list; ``parse_path``
checks the path against the RFC 5321 §4.1.2 grammar; ``parse_mail_params`` and
``parse_rcpt_params`` check parameters (RFC 1870, 6152, 6531, 3461, 4954).  Everything
works on ``str`` (the server decoded the line as UTF-8 already) and is pure.

Invariants:

* Only ``ParseError`` escapes; its ``reply`` is a catalog value.  Nothing echoes input.
* Leniencies, all deliberate: a space after the colon (``MAIL FROM: <a@b>``); missing
  angle brackets when the argument is a single word without parameters
  (``RCPT TO: user@host``); dots anywhere in an unquoted local part (``a..b``, ``a.`` are
  still used by some mobile carriers; Postfix accepts them too); ``_`` in domain labels;
  lower-case hex in xtext.  Domain labels follow RFC 5321 (no leading or trailing "-",
  at most 63 octets), so ``a@xn---`` is refused.
* Strictness: the null path ``<>`` only for MAIL; ``<postmaster>`` without a domain only
  for RCPT (RFC 5321 §4.5.1); length limits of RFC 5321 §4.5.3.1 (local part 64, domain
  255, path 256 octets including the brackets); non-ASCII only with SMTPUTF8 (RFC 6531).
* Source routes (``<@a,@b:user@c>``) are accepted and stripped, RFC 5321 §4.1.1.3 and
  Appendix C; the route is kept in ``Address.source_route`` and never used.
"""
from __future__ import annotations

import ipaddress
import re

from . import catalog
from .events import Address, MailParams, RcptParams
from .replies import Reply

__all__ = [
    "ParseError", "split_argument", "parse_path", "parse_mail_params",
    "parse_rcpt_params", "decode_xtext", "is_valid_helo",
]


class ParseError(Exception):
    """A MAIL/RCPT argument was rejected; ``reply`` says how to answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


MAX_LOCAL = 64      # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255    # RFC 5321 §4.5.3.1.2
MAX_PATH = 256      # RFC 5321 §4.5.3.1.3, including "<" and ">"

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_LOCAL_ASCII = re.compile(rf"[{_ATEXT}.]+")
_LOCAL_UTF8 = re.compile(rf"(?:[{_ATEXT}.]|[^\x00-\x7f])+")
# sub-domain = Let-dig [Ldh-str] (RFC 5321 §4.1.2), at most 63 octets (RFC 1035 §2.3.4);
# "_" is tolerated anywhere in a label.  U-labels (RFC 6531) take any non-ASCII character.
_LABEL_ASCII = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_LABEL_UTF8 = r"(?:[A-Za-z0-9_]|[^\x00-\x7f])(?:(?:[A-Za-z0-9_-]|[^\x00-\x7f]){0,61}(?:[A-Za-z0-9_]|[^\x00-\x7f]))?"
_DOMAIN_ASCII = re.compile(rf"{_LABEL_ASCII}(?:\.{_LABEL_ASCII})*")
_DOMAIN_UTF8 = re.compile(rf"{_LABEL_UTF8}(?:\.{_LABEL_UTF8})*")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")  # §4.1.3
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")                                # §4.1.2
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")                               # §4.1.2
_ESMTP_VALUE_UTF8 = re.compile(r"(?:[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f])+")          # RFC 6531 §3.3
_ADDR_TYPE = re.compile(rf"[{_ATEXT}]+")


# ----------------------------------------------------------------- argument split


def split_argument(arg: str, bad: Reply) -> tuple[str, str]:
    """Split ``<path> params`` into (text between brackets, parameter text).

    ``arg`` is what follows ``FROM:``/``TO:``.  Returns the path without brackets
    (``""`` for ``<>``).  ``bad`` is the reply for a malformed path.
    """
    arg = arg.lstrip(" ")
    if not arg.startswith("<"):
        # Lenient form without brackets, only when there is nothing else on the line.
        if not arg or " " in arg or ">" in arg:
            raise ParseError(bad)
        return arg, ""
    if '"' not in arg:
        end = arg.find(">")
    else:
        end = _find_closing_bracket(arg)
    if end < 0:
        raise ParseError(bad)
    rest = arg[end + 1:]
    if rest and rest[0] != " ":
        raise ParseError(bad)
    return arg[1:end], rest.strip(" ")


def _find_closing_bracket(arg: str) -> int:
    """Index of the ">" closing the path, skipping quoted strings; -1 if none."""
    in_quotes = False
    i, n = 1, len(arg)
    while i < n:
        c = arg[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == ">":
            return i
        i += 1
    return -1


# ----------------------------------------------------------------- path


def parse_path(path: str, *, sender: bool, smtputf8: bool) -> Address:
    """Parse the text between the angle brackets (RFC 5321 §4.1.2).

    ``sender`` selects the MAIL rules (null path allowed, 5.1.7 codes) or the RCPT
    rules (``postmaster`` allowed, 5.1.3 codes).  ``smtputf8`` allows non-ASCII.
    """
    bad = catalog.BAD_SENDER_SYNTAX if sender else catalog.BAD_RECIPIENT_SYNTAX
    too_long = catalog.SENDER_TOO_LONG if sender else catalog.RECIPIENT_TOO_LONG
    utf8 = not path.isascii()
    if utf8 and not smtputf8:
        raise ParseError(catalog.NON_ASCII_SENDER if sender else catalog.NON_ASCII_RECIPIENT)
    if not path:
        if sender:
            return Address("", "", raw="")
        raise ParseError(bad)
    if len(path.encode("utf-8")) + 2 > MAX_PATH:
        raise ParseError(too_long)
    if not sender and path.lower() == "postmaster":
        # RFC 5321 §4.5.1: "<Postmaster>" without a domain, case-insensitive.
        return Address("postmaster", "", raw=path)

    route = ""
    mailbox = path
    if path.startswith("@"):
        end = _source_route_end(path)
        if end < 0:
            raise ParseError(bad)
        route, mailbox = path[:end], path[end + 1:]

    if mailbox.startswith('"'):
        local, rest = _parse_quoted(mailbox, bad)
        quoted = True
        if not rest.startswith("@"):
            raise ParseError(bad)
        domain = rest[1:]
    else:
        local, at, domain = mailbox.partition("@")
        quoted = False
        if not at or not (_LOCAL_UTF8 if utf8 else _LOCAL_ASCII).fullmatch(local):
            raise ParseError(bad)
    is_literal = _check_domain(domain, utf8, bad)
    if len(local.encode("utf-8")) > MAX_LOCAL or len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise ParseError(too_long)
    return Address(local, domain, raw=path, quoted=quoted, source_route=route,
                   is_literal=is_literal, utf8=utf8)


def _source_route_end(path: str) -> int:
    """Index of the ":" ending an A-d-l (RFC 5321 §4.1.2), or -1 if malformed."""
    i, n = 0, len(path)
    while i < n and path[i] == "@":
        i += 1
        if i < n and path[i] == "[":
            close = path.find("]", i)
            if close < 0:
                return -1
            domain, i = path[i:close + 1], close + 1
        else:
            j = i
            while j < n and path[j] not in ",:":
                j += 1
            domain, i = path[i:j], j
        try:
            _check_domain(domain, not domain.isascii(), catalog.BAD_SENDER_SYNTAX)
        except ParseError:
            return -1
        if i < n and path[i] == ":":
            return i
        if i < n and path[i] == ",":
            i += 1
            continue
        return -1
    return -1


def _parse_quoted(text: str, bad: Reply) -> tuple[str, str]:
    """Parse a Quoted-string at the start of ``text`` (RFC 5321 §4.1.2):
    returns (unquoted content, remaining text)."""
    out = []
    i, n = 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt < " " or nxt == "\x7f":      # quoted-pairSMTP = %d92 %d32-126
                raise ParseError(bad)
            out.append(nxt)
            i += 2
            continue
        if c == '"':
            local = "".join(out)
            if not local:
                raise ParseError(bad)          # "" is not a usable local part
            return local, text[i + 1:]
        if c < " " or c == "\x7f":
            raise ParseError(bad)
        out.append(c)
        i += 1
    raise ParseError(bad)


def _check_domain(domain: str, utf8: bool, bad: Reply) -> bool:
    """Validate a Domain or address-literal; return True for a literal."""
    if domain.startswith("[") and domain.endswith("]"):
        inner = domain[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            elif inner and inner[0].isdigit() and ":" not in inner:
                ipaddress.IPv4Address(inner)
            elif not _GENERAL_LITERAL.fullmatch(inner):
                raise ParseError(bad)
        except ValueError:
            raise ParseError(bad) from None
        return True
    if not (_DOMAIN_UTF8 if utf8 else _DOMAIN_ASCII).fullmatch(domain):
        raise ParseError(bad)
    return False


def is_valid_helo(arg: str) -> bool:
    """EHLO/HELO argument: one Domain or address-literal (RFC 5321 §4.1.1.1).

    Only syntax: whether the name resolves or matches the client is policy's business.
    Unqualified names ("EHLO DESKTOP-1") and bare IPs pass the Domain grammar."""
    if len(arg) > MAX_DOMAIN or not arg.isascii():
        return False
    try:
        _check_domain(arg, False, catalog.SYNTAX_EHLO)
    except ParseError:
        return False
    return True


# ----------------------------------------------------------------- parameters


def decode_xtext(text: str) -> str:
    """Decode RFC 3461 §4 xtext ("+" HEX HEX escapes).  Raises ValueError."""
    if not text.isascii():
        raise ValueError("non-ASCII xtext")
    if "+" not in text:
        if any(c < "!" or c > "~" or c == "=" for c in text):
            raise ValueError("bad xchar")
        return text
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "+":
            hx = text[i + 1:i + 3]
            if len(hx) != 2 or not all(h in "0123456789ABCDEFabcdef" for h in hx):
                raise ValueError("bad hexchar")
            out.append(chr(int(hx, 16)))
            i += 3
            continue
        if c < "!" or c > "~" or c == "=":
            raise ValueError("bad xchar")
        out.append(c)
        i += 1
    return "".join(out)


def _split_params(text: str, smtputf8: bool) -> list[tuple[str, str | None]]:
    """``KEY[=VALUE]`` tokens (RFC 5321 §4.1.2 esmtp-param) with duplicate check."""
    seen: set[str] = set()
    result = []
    for token in text.split():
        key, eq, value = token.partition("=")
        if not _KEYWORD.fullmatch(key):
            raise ParseError(catalog.BAD_PARAMETER)
        key = key.upper()
        if key in seen:
            raise ParseError(catalog.DUPLICATE_PARAMETER)
        seen.add(key)
        if eq:
            # RFC 6531 §3.3 extends esmtp-value with UTF-8 when SMTPUTF8 is used.
            if not (_ESMTP_VALUE_UTF8 if smtputf8 else _ESMTP_VALUE).fullmatch(value):
                raise ParseError(catalog.BAD_PARAMETER)
            result.append((key, value))
        else:
            result.append((key, None))
    return result


def _xtext_param(value: str | None, max_len: int) -> str:
    if value is None or len(value) > max_len:
        raise ParseError(catalog.BAD_PARAMETER)
    try:
        decoded = decode_xtext(value)
    except ValueError:
        raise ParseError(catalog.BAD_PARAMETER) from None
    return decoded


def parse_mail_params(text: str) -> MailParams:
    """MAIL FROM parameters.  SIZE is parsed here; the limit is checked by the server."""
    if not text:
        return MailParams()
    smtputf8_present = any(t.upper() == "SMTPUTF8" for t in text.split())
    values: dict[str, object] = {}
    for key, value in _split_params(text, smtputf8_present):
        if key == "SIZE":                                   # RFC 1870 §3
            if value is None or not value.isdigit() or not value.isascii() or len(value) > 20:
                raise ParseError(catalog.BAD_PARAMETER)
            values["size"] = int(value)
        elif key == "BODY":                                 # RFC 6152 §2
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise ParseError(catalog.BAD_PARAMETER)
            values["body"] = value.upper()
        elif key == "SMTPUTF8":                             # RFC 6531 §3.4
            if value is not None:
                raise ParseError(catalog.BAD_PARAMETER)
            values["smtputf8"] = True
        elif key == "RET":                                  # RFC 3461 §4.3
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise ParseError(catalog.BAD_PARAMETER)
            values["ret"] = value.upper()
        elif key == "ENVID":                                # RFC 3461 §4.4: max 100
            envid = _xtext_param(value, 100)
            if not envid or any(c < " " or c > "~" for c in envid):
                raise ParseError(catalog.BAD_PARAMETER)
            values["envid"] = envid
        elif key == "AUTH":                                 # RFC 4954 §5, ignored
            if value == "<>":
                values["auth"] = "<>"
            else:
                values["auth"] = _xtext_param(value, 500)
        else:
            raise ParseError(catalog.UNSUPPORTED_PARAMETER)
    return MailParams(**values)  # type: ignore[arg-type]


_NOTIFY_WORDS = frozenset(("SUCCESS", "FAILURE", "DELAY"))


def parse_rcpt_params(text: str) -> RcptParams:
    """RCPT TO parameters: NOTIFY and ORCPT (RFC 3461 §4.1, §4.2)."""
    if not text:
        return RcptParams()
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for key, value in _split_params(text, False):
        if key == "NOTIFY":
            if value is None:
                raise ParseError(catalog.BAD_PARAMETER)
            words = tuple(w.upper() for w in value.split(","))
            if words == ("NEVER",):
                notify = words
            elif (not words or len(set(words)) != len(words)
                  or not all(w in _NOTIFY_WORDS for w in words)):
                raise ParseError(catalog.BAD_PARAMETER)
            else:
                notify = words
        elif key == "ORCPT":
            if value is None or len(value) > 500:
                raise ParseError(catalog.BAD_PARAMETER)
            addr_type, semi, xtext = value.partition(";")
            if not semi or not _ADDR_TYPE.fullmatch(addr_type) or not xtext:
                raise ParseError(catalog.BAD_PARAMETER)
            orcpt = f"{addr_type};{_xtext_param(xtext, 500)}"
        else:
            raise ParseError(catalog.UNSUPPORTED_PARAMETER)
    return RcptParams(notify=notify, orcpt=orcpt)
