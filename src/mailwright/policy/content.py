"""Content rules: header and body regular expressions, blocked attachment types, links.

What: ``ContentCheck`` (data step) looks at the message once:

* attachments: every MIME part (RFC 2045/2046) whose file name (Content-Disposition
  ``filename``, or Content-Type ``name``, RFC 2231 decoded) ends in a blocked extension, or
  whose declared type is a blocked MIME type;
* ``header`` rules: each header field of the top-level section as ``Name: value``
  (unfolded, RFC 5322 §2.2.3);
* ``body`` rules: the decoded text parts (text/plain, text/html; transfer encoding and
  charset undone).

Actions (first refusal wins): ``reject`` → ``554 5.7.1 Message content rejected`` or, for
attachments, ``554 5.7.1 Message refused: attachment type not allowed`` (RFC 3463 X.7.1,
delivery not authorized; RFC 5321 §4.2.5 554 after the final dot); ``quarantine`` → held
in the store's quarantine until an operator releases or deletes it (``MessageView.hold``,
``mailwright quarantine``); ``junk`` → delivered to the recipient's Junk folder
(``MessageView.quarantine``); ``tag`` → the rule's score is added and the message is
marked as spam (``X-Spam-Flag: YES`` by policy/spamscore.py).

``links(txn, message, limit)`` gives the host names of http(s) links and ``www.`` names in
the text parts, for the RHSBL link check (policy/dnsbl.py).

How: one parse with the stdlib ``email`` package (``policy.default``), cached in
``txn.facts`` for the link check.  The parser never raises on malformed input (defects
are recorded); a part that cannot be decoded is read raw.  Only the first ``SCAN_LIMIT``
octets of text are searched.

Invariants: archives are not opened; the regex patterns were compiled when the settings
were loaded, so a rule cannot fail at run time.
"""
from __future__ import annotations

import email
import email.parser
import email.policy
import ipaddress
import re
from email.message import EmailMessage
from typing import Iterator, Sequence

from ..config.antiabuse import ContentRule
from ..smtp.replies import Reply
from .context import MessageView, SessionInfo, TransactionInfo
from .spamscore import add_points, mark_spam
from .verdict import CONTINUE, Action, Verdict

__all__ = ["ContentCheck", "links", "attachments", "CONTENT_REJECTED", "ATTACHMENT_REJECTED"]

CONTENT_REJECTED = Reply(554, "5.7.1", "Message content rejected")
ATTACHMENT_REJECTED = Reply(554, "5.7.1", "Message refused: attachment type not allowed")

SCAN_LIMIT = 2 * 1024 * 1024
PARSED_FACT = "antiabuse.parsed"

_URL = re.compile(r"""(?:https?://(?:[^@/\s"'<>]*@)?|(?<![\w.-])(?=www\.))"""
                  r"""([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)""", re.I)


def _parsed(txn: TransactionInfo, message: MessageView) -> EmailMessage:
    msg = txn.facts.get(PARSED_FACT)
    if msg is None:
        msg = email.message_from_bytes(message.read(), policy=email.policy.default)
        txn.facts[PARSED_FACT] = msg
    return msg


def _text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content[:SCAN_LIMIT]
    except (LookupError, ValueError, AssertionError, UnicodeError):
        pass
    raw = part.get_payload(decode=True) or b""
    return raw[:SCAN_LIMIT].decode("utf-8", "replace")


def _texts(msg: EmailMessage) -> Iterator[str]:
    budget = SCAN_LIMIT
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_filename():
            continue                 # an attached file, not the message text
        if budget <= 0:
            return
        text = _text(part)
        budget -= len(text)
        yield text


def attachments(msg: EmailMessage) -> Iterator[tuple[str, str]]:
    """(file name, lower-case MIME type) of every non-multipart part."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        try:
            filename = part.get_filename() or ""
        except (ValueError, LookupError):
            filename = ""
        yield str(filename), part.get_content_type().lower()


def links(txn: TransactionInfo, message: MessageView, limit: int) -> list[str]:
    """Distinct host names of links in the text parts (first ``limit``), lower case; IP
    literals and names without a dot are left out."""
    hosts: list[str] = []
    for text in _texts(_parsed(txn, message)):
        for m in _URL.finditer(text):
            host = m.group(1).lower().rstrip(".")
            if "." not in host or host in hosts:
                continue
            try:
                ipaddress.ip_address(host)
                continue
            except ValueError:
                pass
            hosts.append(host)
            if len(hosts) >= limit:
                return hosts
    return hosts


_MIME_FIELD = re.compile(rb"^content-(type|disposition)[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                         re.I | re.M)


def _plain_text(header: bytes) -> bool:
    """True when the top-level header makes the message one text part without a file
    name (RFC 2045 §5.2: no Content-Type means text/plain): no attachment is possible,
    so the MIME parse can be skipped. Anything else (multipart, another type, a name or
    filename parameter, an unusual header) is parsed."""
    for kind, value in _MIME_FIELD.findall(header):
        v = value.strip().lower()
        if b"name" in v:
            return False
        if kind.lower() == b"type" and not v.startswith(b"text/"):
            return False
    return True


def _header_lines(header: bytes) -> list[str]:
    text = header.decode("utf-8", "replace")
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", text)
    return [line for line in unfolded.splitlines() if line and ":" in line]


class ContentCheck:
    name = "content"

    def __init__(self, rules: Sequence[ContentRule], *, extensions: Sequence[str],
                 mime_types: Sequence[str], attachment_action: str) -> None:
        self.rules = [(r, r.regex) for r in rules]
        self.extensions = frozenset(extensions)
        self.mime_types = frozenset(mime_types)
        self.attachment_action = attachment_action

    def _blocked_attachment(self, msg: EmailMessage) -> str | None:
        for filename, ctype in attachments(msg):
            ext = filename.rsplit(".", 1)[1].lower().strip() if "." in filename else ""
            if ext and ext in self.extensions:
                return f"attachment {filename[:100]!r} (.{ext})"
            if ctype in self.mime_types:
                return f"attachment of type {ctype}"
        return None

    def _apply(self, action: str, rule: str, score: float, why: str, reply: Reply,
               txn: TransactionInfo, message: MessageView) -> Verdict | None:
        if action == "reject":
            return Verdict(Action.REJECT, self.name, reply, why)
        if action == "quarantine":
            message.hold(f"content rule {rule}")
        elif action == "junk":
            message.quarantine(f"content rule {rule}")
        else:       # tag
            mark_spam(txn.facts, rule)
        if score:
            add_points(txn.facts, rule, score)
        return None

    def _single_part(self, message: MessageView) -> EmailMessage | None:
        """The top-level header alone, when it says the message is one non-multipart
        part and no rule needs the body: then the body need not be read or parsed."""
        if any(rule.part == "body" for rule, _ in self.rules):
            return None
        head = email.parser.BytesHeaderParser(policy=email.policy.default) \
            .parsebytes(message.header)
        return None if head.get_content_maintype() == "multipart" else head

    def check_data(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> Verdict:
        if session.trusted:
            return CONTINUE
        if not self.rules and _plain_text(message.header):
            return CONTINUE         # one text part, no file name: nothing here to judge
        msg = self._single_part(message) or _parsed(txn, message)
        notes: list[str] = []
        if self.attachment_action != "off" and (self.extensions or self.mime_types):
            found = self._blocked_attachment(msg)
            if found is not None:
                refusal = self._apply(self.attachment_action, "attachment", 0.0,
                                      f"blocked {found}", ATTACHMENT_REJECTED, txn, message)
                if refusal is not None:
                    return refusal
                notes.append(f"attachment: {found}")
        header_lines: list[str] | None = None
        body: list[str] | None = None
        for rule, regex in self.rules:
            if rule.part == "header":
                if header_lines is None:
                    header_lines = _header_lines(message.header)
                hit = any(regex.search(line) for line in header_lines)
            else:
                if body is None:
                    body = list(_texts(msg))
                hit = any(regex.search(text) for text in body)
            if not hit:
                continue
            refusal = self._apply(rule.action, rule.name, rule.score,
                                  f"content rule {rule.name} ({rule.part}) matched",
                                  CONTENT_REJECTED, txn, message)
            if refusal is not None:
                return refusal
            notes.append(f"rule {rule.name}: {rule.action}")
        if notes:
            return Verdict(Action.CONTINUE, self.name, reason="; ".join(notes))
        return CONTINUE
