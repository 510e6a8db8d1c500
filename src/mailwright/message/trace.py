"""Trace fields prepended to a message at final delivery: Return-Path, Delivered-To, Received.

What: pure functions from an ``Envelope`` (queue/model.py) to header bytes. No I/O, no clock:
the Received date is the envelope's acceptance time.

How:
* ``Return-Path: <reverse-path>`` (RFC 5321 §4.4, RFC 5322 §3.6.7): added by the final
  delivery agent only; the null sender gives ``Return-Path: <>``.
* ``Delivered-To: user@domain`` (the Postfix/Dovecot convention, used for mail-loop
  detection; not standardised).
* ``Received:`` (RFC 5321 §4.4 "Stamp", RFC 5322 §3.6.7 ``received``), Postfix-like::

    Received: from mail.example.com (mail.example.com [192.0.2.1])
    \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)
    \tby mx.example.org (Mailwright) with ESMTPS id 1A2B3C
    \tfor <user@example.org>; Mon, 02 Jan 2006 15:04:05 +0000

  ``from`` carries the HELO/EHLO argument, then a TCP-info comment with the reverse DNS
  name (``unknown`` when there is none) and the address literal (RFC 5321 §4.1.3: IPv6 as
  ``[IPv6:...]``). ``with`` is the RFC 3848 protocol keyword. A TLS comment follows the
  ``from`` clause when the session used TLS. The date is RFC 5322 §3.3 ``date-time`` in UTC.

Invariants:
* Every returned header ends in CRLF and folds only as CRLF + TAB (RFC 5322 §2.2.3);
  lines stay within 78 characters wherever a fold point allows it.
* Client-controlled strings (HELO, reverse DNS, TLS description, addresses) never carry
  CR, LF or other control characters into a header; HELO and rDNS are additionally limited
  to characters that cannot break the comment or the ``;`` before the date.
"""
from __future__ import annotations

import functools
import ipaddress
import re
import time

from ..queue.model import Envelope

CRLF = "\r\n"
FOLD = "\r\n\t"
LINE_LIMIT = 78          # RFC 5322 §2.1.1 "SHOULD" line length, excluding CRLF
_MAX_TOKEN = 255         # longest HELO/rDNS/TLS string we copy into a header

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# HELO / rDNS: domain or address-literal characters only. Anything else ('(', ')', ';',
# '\\', quotes, spaces, non-ASCII...) is replaced by '?', as Postfix's printable() does.
_NOT_HOSTISH = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
# TLS description: protocol and cipher names; parentheses would break the comment.
_NOT_TLSISH = re.compile(r"[^A-Za-z0-9.\-_/+= ]")


def sanitize_text(value: str, limit: int = 998) -> str:
    """Strip a string for use in a header: controls (incl. CR, LF, TAB) become spaces,
    runs of whitespace collapse, ends are trimmed, length is capped."""
    cleaned = " ".join(_CONTROL.sub(" ", value).split())
    return cleaned[:limit]


def sanitize_host(value: str) -> str:
    """A HELO argument or reverse DNS name, safe inside the ``from`` clause and its comment."""
    cleaned = _NOT_HOSTISH.sub("?", value.strip())[:_MAX_TOKEN]
    return cleaned


def sanitize_address(value: str) -> str:
    """An envelope address for ``<...>``: no controls, no whitespace, no angle brackets."""
    return re.sub(r"[\x00-\x20\x7f<>]", "", value)[:_MAX_TOKEN * 4]


@functools.lru_cache(maxsize=4096)     # pure; a few client addresses recur a lot
def address_literal(ip: str) -> str:
    """RFC 5321 §4.1.3 address literal: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``.
    An unparseable value is sanitised and bracketed as is."""
    try:
        addr = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return f"[{sanitize_host(ip) or 'unknown'}]"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"[{addr.ipv4_mapped}]"
        return f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time in UTC, e.g. ``Mon, 02 Jan 2006 15:04:05 +0000`` (what
    ``email.utils.format_datetime`` gives for a UTC datetime, at a fraction of the cost:
    it is written once per delivery)."""
    t = time.gmtime(int(timestamp))
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


def fold(name: str, groups: list[list[str]], limit: int = LINE_LIMIT) -> str:
    """Render ``name: ...`` from token groups. Each group after the first starts a new
    continuation line; inside a group tokens join with a space and fold (CRLF TAB) only
    when the line would exceed ``limit``. A single over-long token stays whole (folding
    inside it would change its meaning). Returns the header with a trailing CRLF."""
    lines: list[str] = []
    current = f"{name}:"
    for gi, group in enumerate(groups):
        for ti, token in enumerate(group):
            if gi > 0 and ti == 0:
                lines.append(current)
                current = "\t" + token
            elif len(current) + 1 + len(token) > limit and current.strip() not in ("", f"{name}:"):
                lines.append(current)
                current = "\t" + token
            else:
                current += " " + token
    lines.append(current)
    return "\r\n".join(lines) + CRLF


def tls_comment(tls: str) -> str:
    """``(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)`` from Envelope.tls
    ("<version> <cipher>"), or "" for a cleartext session."""
    clean = _NOT_TLSISH.sub("?", sanitize_text(tls, _MAX_TOKEN))
    if not clean:
        return ""
    version, _, cipher = clean.partition(" ")
    if cipher:
        return f"(using {version} with cipher {cipher.strip()})"
    return f"(using {version})"


def received_header(envelope: Envelope, *, queue_id: str, hostname: str,
                    recipient: str | None = None, product: str = "Mailwright") -> str:
    """The ``Received:`` field for a message accepted by ``hostname`` (RFC 5321 §4.4).

    ``recipient`` adds a ``for <addr>`` clause; give it only when the copy goes to exactly
    one recipient (RFC 5321 §7.2: do not disclose the other recipients).
    """
    helo = sanitize_host(envelope.helo) or "unknown"
    rdns = sanitize_host(envelope.client_name) or "unknown"
    by_host = sanitize_host(hostname) or "localhost"
    protocol = re.sub(r"[^A-Za-z0-9]", "", envelope.protocol)[:16] or "SMTP"
    qid = re.sub(r"[^A-Za-z0-9.\-_]", "", queue_id)[:64] or "unknown"

    groups: list[list[str]] = []
    if envelope.client_ip or envelope.helo:
        # TCP-info comment as two tokens: FWS inside a comment is a legal fold point.
        tcp_info = [f"({rdns}", f"{address_literal(envelope.client_ip)})"] \
            if envelope.client_ip else [f"({rdns})"]
        groups.append([f"from {helo}", *tcp_info])
    tls = tls_comment(envelope.tls)
    if tls:
        groups.append([tls])
    groups.append([f"by {by_host}", f"({sanitize_text(product, 64)})",
                   f"with {protocol}", f"id {qid}"])
    date = rfc5322_date(envelope.received_at)
    if recipient is not None:
        groups.append([f"for <{sanitize_address(recipient)}>;", date])
    else:
        groups[-1][-1] += ";"
        groups[-1].append(date)
    return fold("Received", groups)


def return_path_header(sender: str) -> str:
    """``Return-Path: <reverse-path>`` (RFC 5321 §4.4); ``<>`` for the null sender."""
    return f"Return-Path: <{sanitize_address(sender)}>{CRLF}"


def delivered_to_header(address: str) -> str:
    """``Delivered-To: user@domain`` as Postfix local(8) and Dovecot LDA write it."""
    return f"Delivered-To: {sanitize_address(address)}{CRLF}"


def local_delivery_headers(envelope: Envelope, *, queue_id: str, hostname: str,
                           recipient: str, delivered_to: str) -> bytes:
    """The block prepended to the stored body at final delivery, in Postfix's order:
    Return-Path, Delivered-To, Received. UTF-8 (RFC 6532) when addresses are non-ASCII."""
    text = (return_path_header(envelope.sender)
            + delivered_to_header(delivered_to)
            + received_header(envelope, queue_id=queue_id, hostname=hostname,
                              recipient=recipient))
    return text.encode("utf-8")
