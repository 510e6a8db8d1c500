"""Test driver for smtp.server.ServerConnection (no tests here, only helpers).

``Peer`` plays the session driver: it feeds bytes, answers events that need a response
(default: accept everything, queue every message), and records events, replies and
completed message bodies.
"""
from __future__ import annotations

import re
from typing import Callable

from mailwright.smtp.events import (
    NEED_DATA, NEEDS_RESPONSE, PAUSED, BodyChunk, BodyComplete, BodyRejected,
    CloseConnection, DataStarted, StartTLS,
)
from mailwright.smtp.replies import Reply
from mailwright.smtp.server import ServerConfig, ServerConnection

QUEUED = Reply(250, "2.0.0", "Ok: queued as TEST")

_REPLY_LINE = re.compile(rb"(\d{3})([ -])(?:(\d\.\d{1,3}\.\d{1,3}) )?(.*)")


def parse_replies(data: bytes) -> list[str]:
    """Split server output into replies, each as "code enhanced" (or just "code")."""
    replies = []
    for line in data.split(b"\r\n")[:-1]:
        m = _REPLY_LINE.fullmatch(line)
        assert m, f"malformed reply line {line!r}"
        if m.group(2) == b" ":
            code = m.group(1).decode()
            enh = (m.group(3) or b"").decode()
            replies.append(f"{code} {enh}".strip())
    assert data.endswith(b"\r\n") or not data
    return replies


class Peer:
    def __init__(self, decide: Callable[[object], Reply | None] | None = None,
                 greet: bool = True, now: float = 0.0, **config) -> None:
        config.setdefault("hostname", "mx.test")
        self.conn = ServerConnection(ServerConfig(**config), now)
        self.decide = decide or (lambda ev: QUEUED if isinstance(ev, BodyComplete) else None)
        self.events: list[object] = []
        self.out = b""
        self.messages: list[bytes] = []      # bodies answered positively
        self.rejected: list[str] = []        # BodyRejected reasons
        self._body: list[bytes] | None = None
        self.now = now
        if greet:
            self.conn.greeting()
            self.out += self.conn.data_to_send()

    # -------------------------------------------------------------- driving

    def send(self, data: bytes, now: float | None = None) -> list[object]:
        """Feed data, run until NEED_DATA/close; return the new events."""
        if now is not None:
            self.now = now
        self.conn.receive_data(data, self.now)
        return self.pump()

    def send_bytewise(self, data: bytes) -> list[object]:
        new = []
        for i in range(len(data)):
            new += self.send(data[i:i + 1])
        return new

    def pump(self) -> list[object]:
        start = len(self.events)
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                break
            assert ev is not PAUSED, "driver always responds immediately"
            if self.events and ev is self.events[-1]:
                break                        # the sticky CloseConnection, seen already
            self.events.append(ev)
            if isinstance(ev, CloseConnection):
                break
            if isinstance(ev, DataStarted):
                self._body = []
            elif isinstance(ev, BodyChunk):
                assert self._body is not None
                self._body.append(ev.data)
            elif isinstance(ev, BodyRejected):
                self.rejected.append(ev.reason)
                self._body = None
            elif isinstance(ev, StartTLS):
                pass
            if isinstance(ev, NEEDS_RESPONSE):
                reply = self.decide(ev)
                if isinstance(ev, BodyComplete):
                    body = b"".join(self._body or [])
                    assert len(body) == ev.size
                    if reply is not None and reply.is_positive:
                        self.messages.append(body)
                    self._body = None
                self.conn.respond(reply)
        self.out += self.conn.data_to_send()
        return self.events[start:]

    def eof(self) -> list[object]:
        self.conn.eof_received()
        return self.pump()

    # -------------------------------------------------------------- inspection

    def replies(self) -> list[str]:
        return parse_replies(self.out)

    def take_replies(self) -> list[str]:
        r = parse_replies(self.out)
        self.out = b""
        return r

    def types(self, events: list[object] | None = None) -> list[str]:
        return [type(e).__name__ for e in (self.events if events is None else events)]


def session(data: bytes, **kw) -> Peer:
    p = Peer(**kw)
    p.send(data)
    return p


ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@rcpt.test>\r\n"
