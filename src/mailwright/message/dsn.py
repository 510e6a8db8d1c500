"""Delivery status notifications: who is owed one, and the RFC 3464 report itself.

What: pure functions, no I/O and no clock (``now`` is passed in).

* ``owed_action(notify, ...)`` -- the RFC 3461 §4.1 NOTIFY rules: which DSN action (if
  any) a recipient's latest result calls for. No NOTIFY means FAILURE and DELAY
  (RFC 3461 §4.1: "the MTA ... MAY send a DSN ... failure or delay"); NOTIFY=NEVER means
  nothing; a success DSN only for NOTIFY=SUCCESS, as "relayed" when the next hop did
  not take the DSN request on (RFC 3461 §5.2.2.3, RFC 3464 §2.3.3). A null reverse-path
  never gets a DSN (RFC 5321 §4.5.5, RFC 3461 §6.2): the caller checks the sender.
* ``enhanced_status(reply)`` -- the RFC 3463 code in an SMTP reply ("550 5.1.1 ..." →
  "5.1.1"), with ``default_status(action)`` (5.0.0 / 4.0.0 / 2.0.0) when there is none.
* ``build_dsn(report, original, now=...)`` -- the notification message as bytes:

    From: Mail Delivery System <MAILER-DAEMON@<reporting host>>
    To: <original envelope sender>
    Subject, Date (RFC 5322 §3.3), Message-ID, Auto-Submitted: auto-replied (RFC 3834 §5)
    Content-Type: multipart/report; report-type=delivery-status (RFC 6522 §3)
      1. text/plain: a human-readable explanation, one paragraph per recipient;
      2. message/delivery-status (RFC 3464 §2): per-message fields Reporting-MTA
         (dns; host), Original-Envelope-Id (ENVID, §2.2.1), Arrival-Date (§2.2.5); then
         one block per recipient: Original-Recipient (ORCPT, §2.3.1, RFC 3461 §4.2),
         Final-Recipient (§2.3.2), Action (§2.3.3), Status (§2.3.4), Remote-MTA
         (§2.3.5), Diagnostic-Code: smtp; <reply> (§2.3.6), Last-Attempt-Date (§2.3.7),
         Will-Retry-Until (§2.3.9, delays only);
      3. the original: message/rfc822 for "failed" DSNs unless RET=HDRS (RFC 3461 §4.3:
         RET=FULL asks for the full message in failed DSNs, and it is our default), else
         text/rfc822-headers (RFC 6522 §4). Delay and success DSNs return headers only.
         Larger than ``max_original_size`` → headers only; no usable original → no part 3.

  The DSN itself is sent with the null reverse-path (the caller's envelope), so a DSN
  that fails is never answered by another DSN.

Internationalised addresses (RFC 6533, simple form): when an address in the report is
not ASCII, part 2 becomes message/global-delivery-status with the "utf-8" address type
and raw UTF-8 addresses, the original is returned as message/global (or
message/global-headers), and ``Dsn.smtputf8`` tells the caller to send it with SMTPUTF8.
Not done: downgrading for a next hop without SMTPUTF8 (RFC 6533 §3.2 "utf-8-addr-xtext"
in a plain delivery-status); such a DSN fails at that hop and, having the null sender,
is dropped.

Invariants (checked by tests/message/test_dsn.py): every line ends in CRLF and is at most
998 octets (RFC 5322 §2.1.1): header text from the peer (replies, addresses, ENVID) is
stripped of controls and capped; an original with longer lines is returned as headers, or
left out. The MIME boundary never occurs in the content. Only the returned original may
carry 8-bit octets (``Dsn.eight_bit`` → send with BODY=8BITMIME).
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Sequence

from .trace import rfc5322_date, sanitize_address, sanitize_text

CRLF = b"\r\n"
MAX_LINE = 998                       # RFC 5322 §2.1.1, excluding CRLF
DEFAULT_MAX_ORIGINAL = 1024 * 1024         # config queue.dsn_max_original_size

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"
EXPANDED = "expanded"
ACTIONS = (FAILED, DELAYED, DELIVERED, RELAYED, EXPANDED)
SUCCESS_ACTIONS = frozenset({DELIVERED, RELAYED, EXPANDED})

_ENHANCED = re.compile(r"^\s*(?:[245]\d\d[ -])?\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$|;|,)")
_LINE_END = re.compile(rb"\r\n|\r|\n")


# ----------------------------------------------------------------------------- policy

def _wants(notify: Sequence[str] | None, word: str) -> bool:
    if notify is None:
        return word in ("FAILURE", "DELAY")    # RFC 3461 §4.1 default
    words = {w.upper() for w in notify}
    return "NEVER" not in words and word in words


def owed_action(notify: Sequence[str] | None, *, ok: bool, permanent: bool,
                relayed: bool = False, delay_due: bool = False,
                delay_already: bool = False) -> str | None:
    """The DSN action a recipient's latest result calls for, or None.

    ``ok`` → "delivered" / "relayed" (NOTIFY=SUCCESS only); ``permanent`` (incl. expired)
    → "failed" (FAILURE or default); otherwise a temporary failure → "delayed" once the
    warning time has passed (``delay_due``) and none was sent before (DELAY or default).
    """
    if ok:
        if _wants(notify, "SUCCESS"):
            return RELAYED if relayed else DELIVERED
        return None
    if permanent:
        return FAILED if _wants(notify, "FAILURE") else None
    if delay_due and not delay_already and _wants(notify, "DELAY"):
        return DELAYED
    return None


def enhanced_status(reply: str) -> str:
    """The RFC 3463 enhanced code at the start of an SMTP reply ("" if none)."""
    m = _ENHANCED.match(reply or "")
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else ""


def default_status(action: str) -> str:
    if action == FAILED:
        return "5.0.0"
    if action == DELAYED:
        return "4.0.0"
    return "2.0.0"


def status_for(action: str, status: str, reply: str) -> str:
    """The Status field: the agent's code, else the reply's, else the action's default.
    A code whose class contradicts the action (e.g. 2.x.x for failed) is not used, except
    4.x.x for failed (RFC 3464 §2.3.4: an expired message is "failed" with 4.4.7)."""
    for code in (status, enhanced_status(reply)):
        if not code or not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", code):
            continue
        klass = code[0]
        if action == FAILED and klass in "45":
            return code
        if action == DELAYED and klass == "4":
            return code
        if action in SUCCESS_ACTIONS and klass == "2":
            return code
    return default_status(action)


# ----------------------------------------------------------------------------- the report

@dataclass(frozen=True, slots=True)
class RecipientReport:
    """One recipient's block of a DSN (RFC 3464 §2.3)."""
    final_recipient: str                 # the address we tried (RFC 3464 §2.3.2)
    action: str                          # one of ACTIONS
    status: str = ""                     # enhanced code; "" = from ``diagnostic``/default
    original_recipient: str | None = None  # ORCPT "addr-type;address" (decoded)
    remote_mta: str = ""                 # host name of the MTA that gave ``diagnostic``
    diagnostic: str = ""                 # the SMTP reply, e.g. "550 5.1.1 No such user"
    last_attempt: float | None = None
    will_retry_until: float | None = None   # delays only


@dataclass(frozen=True, slots=True)
class Report:
    """One DSN about one message (RFC 3464 §2.2 per-message fields + recipients)."""
    reporting_mta: str                   # our host name
    sender: str                          # the original envelope sender: the DSN goes there
    arrival_date: float
    recipients: Sequence[RecipientReport]
    envid: str | None = None             # RFC 3461 ENVID (xtext-decoded)
    ret: str | None = None               # RFC 3461 RET: "FULL", "HDRS" or None
    queue_id: str = ""                   # mentioned in the human-readable part
    smtputf8: bool = False               # the original was received with SMTPUTF8


@dataclass(frozen=True, slots=True)
class Dsn:
    data: bytes                          # the complete message, CRLF line ends
    message_id: str
    returned: str                        # "full", "headers" or "none"
    eight_bit: bool = False              # send with BODY=8BITMIME
    smtputf8: bool = False               # send with SMTPUTF8
    actions: tuple[str, ...] = field(default_factory=tuple)


def _ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)


def _clean(text: str, limit: int = 900) -> str:
    return sanitize_text(text, limit)


def _split_orcpt(orcpt: str) -> tuple[str, str]:
    addr_type, sep, address = orcpt.partition(";")
    if not sep:
        return "rfc822", orcpt
    return (re.sub(r"[^A-Za-z0-9\-]", "", addr_type) or "rfc822"), address


def headers_of(original: bytes) -> bytes:
    """The header section of a message (up to, not including, the empty line)."""
    m = re.search(rb"\r?\n\r?\n", original)
    if m is None:
        return original if original.endswith(b"\n") else original + b"\n"
    return original[:m.start() + (2 if original[m.start()] == 13 else 1)]


def _normalise(data: bytes) -> bytes:
    """CRLF line ends; a final line break is ensured."""
    out = _LINE_END.sub(CRLF, data)
    return out if out.endswith(CRLF) or not out else out + CRLF


def _lines_ok(data: bytes) -> bool:
    return all(len(line) <= MAX_LINE for line in data.split(CRLF))


def choose_original(action_kind: str, ret: str | None, original: bytes | None,
                    max_size: int) -> tuple[str, bytes]:
    """What to return: ("full", message), ("headers", header section) or ("none", b"")."""
    if original is None:
        return "none", b""
    want_full = action_kind == FAILED and (ret or "FULL").upper() != "HDRS"
    if want_full and len(original) <= max_size:
        full = _normalise(original)
        if _lines_ok(full):
            return "full", full
    hdrs = _normalise(headers_of(original))
    if hdrs.strip() and _lines_ok(hdrs) and len(hdrs) <= max(max_size, 64 * 1024):
        return "headers", hdrs
    return "none", b""


def _subject(kind: str) -> str:
    if kind == FAILED:
        return "Undelivered Mail Returned to Sender"
    if kind == DELAYED:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _human(report: Report, kind: str, returned: str) -> str:
    host = _clean(report.reporting_mta, 255)
    qid = f" (queue id {_clean(report.queue_id, 64)})" if report.queue_id else ""
    lines = [f"This is the mail system at host {host}.", ""]
    if kind == FAILED:
        lines += [f"Your message{qid} could not be delivered to one or more recipients.",
                  "It has been returned below. The problems were:"]
    elif kind == DELAYED:
        lines += [f"Your message{qid} has not yet been delivered to one or more recipients.",
                  "The mail system will keep trying; you do not need to send it again."]
    else:
        lines += [f"Your message{qid} was successfully delivered as requested:"]
    lines.append("")
    for r in report.recipients:
        addr = _clean(r.final_recipient, 500)
        what = {FAILED: "delivery failed", DELAYED: "delivery delayed",
                DELIVERED: "delivered", RELAYED: "relayed to a system that does not send "
                "delivery notifications", EXPANDED: "delivered to a list"}.get(r.action,
                                                                               r.action)
        lines.append(f"<{addr}>: {what}")
        if r.diagnostic:
            by = f" from {_clean(r.remote_mta, 255)}" if r.remote_mta else ""
            lines.append(f"    reply{by}: {_clean(r.diagnostic, 800)}")
        if r.will_retry_until is not None:
            lines.append(f"    will retry until {rfc5322_date(r.will_retry_until)}")
    lines.append("")
    if returned == "full":
        lines.append("The original message is attached.")
    elif returned == "headers":
        lines.append("The headers of the original message are attached.")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(report: Report, kind: str, utf8: bool) -> str:
    addr_type = "utf-8" if utf8 else "rfc822"
    host = _clean(report.reporting_mta, 255) or "localhost"
    msg = [f"Reporting-MTA: dns; {host}"]
    if report.envid:
        msg.append(f"Original-Envelope-Id: {_clean(report.envid, 200)}")
    msg.append(f"Arrival-Date: {rfc5322_date(report.arrival_date)}")
    blocks = ["\r\n".join(msg)]
    for r in report.recipients:
        f: list[str] = []
        if r.original_recipient:
            otype, oaddr = _split_orcpt(r.original_recipient)
            if not _ascii(oaddr):
                otype = "utf-8" if utf8 else otype
            f.append(f"Original-Recipient: {otype}; {_clean(sanitize_address(oaddr), 500)}")
        f.append(f"Final-Recipient: {addr_type}; "
                 f"{_clean(sanitize_address(r.final_recipient), 500)}")
        f.append(f"Action: {r.action}")
        f.append(f"Status: {status_for(r.action, r.status, r.diagnostic)}")
        if r.remote_mta:
            f.append(f"Remote-MTA: dns; {_clean(r.remote_mta, 255)}")
        if r.diagnostic:
            f.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic, 900)}")
        if r.last_attempt is not None:
            f.append(f"Last-Attempt-Date: {rfc5322_date(r.last_attempt)}")
        if r.will_retry_until is not None and r.action == DELAYED:
            f.append(f"Will-Retry-Until: {rfc5322_date(r.will_retry_until)}")
        blocks.append("\r\n".join(f))
    return "\r\n\r\n".join(blocks) + "\r\n"


def new_message_id(hostname: str, now: float) -> str:
    host = re.sub(r"[^A-Za-z0-9.\-]", "", hostname) or "localhost"
    return f"<{int(now)}.{secrets.token_hex(8)}.dsn@{host}>"


def build_dsn(report: Report, original: bytes | None, *, now: float,
              max_original_size: int = DEFAULT_MAX_ORIGINAL, message_id: str | None = None,
              boundary: str | None = None) -> Dsn:
    """The RFC 3464 / RFC 6522 notification for ``report`` (see the module docstring).

    ``original`` is the stored message (None if no longer available). All recipients
    should share one kind (failed, delayed, or success actions); the first decides the
    subject and what is returned."""
    if not report.recipients:
        raise ValueError("a DSN needs at least one recipient")
    for r in report.recipients:
        if r.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {r.action!r}")
    kind = report.recipients[0].action
    kind = kind if kind in (FAILED, DELAYED) else DELIVERED
    addresses = [report.sender] + [r.final_recipient for r in report.recipients] + \
        [_split_orcpt(r.original_recipient)[1] for r in report.recipients
         if r.original_recipient]
    utf8 = not all(_ascii(a) for a in addresses)
    returned, content = choose_original(kind, report.ret, original, max_original_size)
    content_utf8 = returned != "none" and (utf8 or report.smtputf8)
    eight_bit = not content.isascii()

    human = _human(report, kind, returned)
    status = _status_fields(report, kind, utf8)
    human_bytes = human.encode("utf-8")
    status_bytes = status.encode("utf-8")
    any_8bit = eight_bit or not human_bytes.isascii() or not status_bytes.isascii()
    host = _clean(report.reporting_mta, 255) or "localhost"
    mid = message_id or new_message_id(host, now)
    if boundary is None:
        boundary = f"{int(now)}.{secrets.token_hex(12)}/{host}"
    while (b"--" + boundary.encode()) in content or boundary in human or boundary in status:
        boundary = f"{int(now)}.{secrets.token_hex(12)}/{host}"

    to = sanitize_address(report.sender)
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{to}>",
        f"Subject: {_subject(kind)}",
        f"Date: {rfc5322_date(now)}",
        f"Message-ID: {mid}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n'
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if any_8bit else '7bit'}",
    ]
    b = boundary.encode()
    text_charset = "us-ascii" if _ascii(human) else "utf-8"
    parts = [
        ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8"),
        b"This is a MIME-encapsulated message.\r\n\r\n",
        b"--" + b + CRLF,
        f"Content-Type: text/plain; charset={text_charset}\r\n"
        f"Content-Description: Notification\r\n"
        f"Content-Transfer-Encoding: {'7bit' if text_charset == 'us-ascii' else '8bit'}"
        "\r\n\r\n".encode(),
        human_bytes,
        CRLF + b"--" + b + CRLF,
        (b"Content-Type: message/global-delivery-status\r\n" if utf8 else
         b"Content-Type: message/delivery-status\r\n"),
        b"Content-Description: Delivery report\r\n\r\n",
        status_bytes,
    ]
    if returned != "none":
        if returned == "full":
            ctype = "message/global" if content_utf8 and eight_bit else "message/rfc822"
            desc = "Undelivered Message" if kind == FAILED else "Message"
        else:
            ctype = ("message/global-headers" if content_utf8 and eight_bit
                     else "text/rfc822-headers")
            desc = ("Undelivered Message Headers" if kind == FAILED else "Message Headers")
        parts += [
            CRLF + b"--" + b + CRLF,
            f"Content-Type: {ctype}\r\nContent-Description: {desc}\r\n".encode(),
            (b"Content-Transfer-Encoding: 8bit\r\n" if eight_bit else b""),
            CRLF,
            content,
        ]
    parts += [CRLF + b"--" + b + b"--" + CRLF]
    data = b"".join(parts)
    return Dsn(data=data, message_id=mid, returned=returned,
               eight_bit=any_8bit, smtputf8=utf8 or (returned != "none" and report.smtputf8
                                                      and not content.isascii()),
               actions=tuple(r.action for r in report.recipients))
