"""rspamd: ask an rspamd normal worker about the message and apply its action.

What: ``RspamdCheck`` (data step) POSTs the message to ``<url>/checkv2`` (rspamd's HTTP
protocol, "Protocol basics" in the rspamd docs) with the envelope as request headers
(``IP``, ``Helo``, ``From``, one ``Rcpt`` per recipient, ``User`` when authenticated,
``Hostname`` of the client is not known to us and not sent) and reads the JSON reply
(``action``, ``score``, ``required_score``, ``symbols``).  The score is added to the spam
score as rule ``rspamd``; the action is applied:

==================  ===========================================================
rspamd action       what we do
==================  ===========================================================
reject              ``554 5.7.1 Message rejected as spam`` (RFC 3463 X.7.1)
soft reject         ``451 4.7.1 Try again later`` (temporary, RFC 5321 §4.2.5)
greylist            ``451 4.7.1 Greylisted, try again later`` (RFC 6647)
quarantine          held in the store's quarantine (``MessageView.hold``; rspamd >= 1.9
                    sends it when its ``quarantine`` action is configured)
add header /        marked as spam (``X-Spam-Flag: YES`` by policy/spamscore.py)
rewrite subject
no action           nothing
==================  ===========================================================

How: plain asyncio streams, HTTP/1.1 with ``Connection: close`` and ``Content-Length``;
the whole exchange runs under ``timeout``.  No dependency beyond the stdlib.

Invariants: an unreachable or failing rspamd (connection error, timeout, non-200, bad JSON)
never loses mail: ``failure="accept"`` accepts (logged), ``"tempfail"`` answers 451 4.7.0.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..smtp.replies import Reply
from .context import MessageView, SessionInfo, TransactionInfo
from .spamscore import SPAM_REJECTED, add_points, mark_spam
from .verdict import CONTINUE, Action, Verdict

__all__ = ["RspamdCheck", "RspamdResult", "RspamdError", "parse_reply"]

log = logging.getLogger("mailwright.policy.rspamd")

SOFT_REJECT = Reply(451, "4.7.1", "Try again later")
GREYLISTED = Reply(451, "4.7.1", "Greylisted, try again later")
UNAVAILABLE = Reply(451, "4.7.0", "Temporary content scanning failure, try again later")
MAX_REPLY = 4 * 1024 * 1024


class RspamdError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RspamdResult:
    action: str
    score: float
    required_score: float = 0.0
    symbols: tuple[str, ...] = field(default_factory=tuple)


def parse_reply(body: bytes) -> RspamdResult:
    try:
        data = json.loads(body)
        action = str(data["action"]).lower()
        score = float(data.get("score", 0.0))
        required = float(data.get("required_score", 0.0))
    except (ValueError, KeyError, TypeError) as exc:
        raise RspamdError(f"bad reply: {exc!r}") from None
    symbols = tuple(sorted(data.get("symbols", {}) or {})) \
        if isinstance(data.get("symbols"), dict) else ()
    return RspamdResult(action, score, required, symbols)


class RspamdCheck:
    name = "rspamd"

    def __init__(self, url: str, *, timeout: float, failure: str = "accept") -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 11333
        self.path = (parts.path.rstrip("/") or "") + "/checkv2"
        self.timeout = timeout
        self.failure = failure

    def _request(self, session: SessionInfo, txn: TransactionInfo, body: bytes) -> bytes:
        def clean(v: str) -> str:
            return v.replace("\r", "").replace("\n", "")[:998]
        headers = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                   "Connection: close", f"Content-Length: {len(body)}",
                   f"IP: {clean(session.client_ip)}", f"From: {clean(txn.sender)}"]
        if session.helo:
            headers.append(f"Helo: {clean(session.helo)}")
        if session.auth_user:
            headers.append(f"User: {clean(session.auth_user)}")
        headers += [f"Rcpt: {clean(r)}" for r in txn.recipients]
        return ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8", "replace") + body

    async def _exchange(self, request: bytes) -> RspamdResult:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.read(MAX_REPLY)
            while True:
                more = await reader.read(MAX_REPLY)
                if not more:
                    break
                raw += more
                if len(raw) > MAX_REPLY:
                    raise RspamdError("reply too large")
        finally:
            writer.close()
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise RspamdError("incomplete HTTP reply")
        status_line = head.split(b"\r\n", 1)[0]
        status = status_line.split()
        if len(status) < 2 or status[1] != b"200":
            raise RspamdError(f"HTTP status {status_line[:80]!r}")
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)
        return parse_reply(body)

    async def scan(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> RspamdResult:
        request = self._request(session, txn, message.prefix() + message.read())
        return await asyncio.wait_for(self._exchange(request), self.timeout)

    async def check_data(self, session: SessionInfo, txn: TransactionInfo,
                         message: MessageView) -> Verdict:
        if session.trusted:
            return CONTINUE
        try:
            result = await self.scan(session, txn, message)
        except (OSError, asyncio.TimeoutError, RspamdError) as exc:
            log.warning("rspamd at %s:%s failed: %r", self.host, self.port, exc)
            if self.failure == "tempfail":
                return Verdict(Action.TEMPFAIL, self.name, UNAVAILABLE,
                               f"rspamd unavailable: {exc!r}"[:200])
            return Verdict(Action.CONTINUE, self.name, reason=f"rspamd unavailable: {exc!r}"[:200])
        txn.facts["rspamd"] = result
        why = (f"rspamd {result.action} score {result.score:.2f}/{result.required_score:.2f} "
               f"symbols={','.join(result.symbols[:20])}")
        add_points(txn.facts, "rspamd", result.score)
        if result.action == "reject":
            return Verdict(Action.REJECT, self.name, SPAM_REJECTED, why)
        if result.action == "soft reject":
            return Verdict(Action.TEMPFAIL, self.name, SOFT_REJECT, why)
        if result.action == "greylist":
            return Verdict(Action.TEMPFAIL, self.name, GREYLISTED, why)
        if result.action == "quarantine":
            message.hold(f"rspamd quarantine score {result.score:.2f}")
            mark_spam(txn.facts, "rspamd")
        if result.action in ("add header", "rewrite subject"):
            mark_spam(txn.facts, "rspamd")
        return Verdict(Action.CONTINUE, self.name, reason=why)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise RspamdError("bad chunked body")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)
