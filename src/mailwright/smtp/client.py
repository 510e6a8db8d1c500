"""The sans-IO SMTP client protocol core (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, CHUNKING, DSN, STARTTLS and client-side AUTH PLAIN/LOGIN).

What: ``ClientConnection`` turns commands into bytes and the server's bytes into
``ServerReply`` events, each paired with the command it answers.  It decides nothing about
delivery (which host, what to do on 4xx): the driver (net/outbound.py) does.

How (h11 / aioquic style)::

    conn = ClientConnection(ClientConfig(helo_name), now)
    loop:
        ev = conn.next_event()
        NEED_DATA   -> send conn.data_to_send(); read; conn.receive_data(b, now)
                       (EOF: conn.eof_received())
        ServerReply -> ev.command, ev.reply (a smtp.replies.Reply), ev.index (RCPT number)
        TlsReady    -> 220 to STARTTLS: handshake, then conn.tls_established(now)
        Closed      -> the connection is over (421, QUIT answered, EOF, timeout, error)
    commands: conn.ehlo(), helo(), starttls(), auth(mech, user, password), mail(...),
              rcpt(...), data(), send_body(chunk, last), bdat(chunk, last), rset(), noop(),
              quit() queue bytes; conn.data_to_send() takes them.
    timers: conn.get_timer() is the absolute deadline of the oldest unanswered command
            (RFC 5321 §4.5.3.2 per-command timeouts); at it call conn.handle_timer(now).

Invariants:
* Never raises on server input.  A malformed reply (RFC 5321 §4.2: three digits, then
  " " or "-"; every line of a multi-line reply has the same code) or a reply nobody asked
  for is a *remote* protocol error: the core closes with ``Closed(RemoteProtocolError)``.
  Calling a command the state table forbids is a *local* error: ``LocalProtocolError``.
* Replies pair with commands strictly in order (RFC 2920 §3.1).  Without PIPELINING only
  one command is outstanding at a time; with it MAIL, RCPT ... and a final DATA may be
  sent as one group (RFC 2920 §3.1: DATA ends a group; BDAT is sent after the RCPT replies).
* The 220 to STARTTLS ends the plaintext: bytes buffered after it are discarded and
  counted in ``TlsReady.discarded`` (response injection, cf. CVE-2011-0411), later
  plaintext input is dropped, and after ``tls_established()`` the capabilities are
  forgotten and EHLO must be sent again (RFC 3207 §4.2).
* Body bytes leave normalised (``BodyEncoder``): every bare CR, bare LF and CR LF becomes
  CR LF, and with DATA every line starting with "." is dot-stuffed (RFC 5321 §4.5.2), so
  no CR LF "." CR LF leaves before the real end of data and nothing can be smuggled
  (CVE-2023-51764 class).  NUL and 8-bit octets are passed through unchanged.
* All state changes go through ``TRANSITIONS``; command legality through ``SEQUENCE``.
"""
from __future__ import annotations

import base64
import enum
import re
from collections import deque
from dataclasses import dataclass, field

from .events import NEED_DATA
from .replies import Reply

__all__ = [
    "ClientConfig", "ClientConnection", "ClientState", "Command", "ServerReply", "TlsReady",
    "Closed", "Capabilities", "ReplyParser", "BodyEncoder", "LocalProtocolError",
    "RemoteProtocolError", "xtext", "NEED_DATA", "TRANSITIONS", "SEQUENCE",
    "parse_capabilities",
]


class LocalProtocolError(RuntimeError):
    """The driver asked for something the protocol state does not allow (our bug)."""


class RemoteProtocolError(Exception):
    """The server broke the protocol (malformed or unsolicited reply)."""


class Command(enum.Enum):
    GREETING = "greeting"     # the "command" the 220 banner answers
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"             # answered by 354
    END_OF_DATA = "."         # the final dot (or BDAT LAST): answered by the message reply
    BDAT = "BDAT"             # a non-final chunk
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


class ClientState(enum.Enum):
    GREETING = "greeting"     # connected, waiting for the 220 banner
    REFUSED = "refused"       # the banner was not 220: only QUIT makes sense
    CONNECTED = "connected"   # 220 received (or TLS established): needs EHLO/HELO
    READY = "ready"           # EHLO/HELO accepted, no mail transaction
    MAIL = "mail"             # MAIL sent: RCPT, DATA, BDAT may follow
    DATA = "data"             # 354 received: body octets, then the final dot
    BDAT = "bdat"             # inside a BDAT sequence
    TLS = "tls-handshake"     # 220 to STARTTLS received: the driver does the handshake
    CLOSED = "closed"


_G, _F, _C, _R, _M, _D, _B, _T, _X = ClientState

# ---------------------------------------------------------------- the state machine
#
# On sending a command: (command, from-states, to-state); to-state None = unchanged.
_SEND_RULES: tuple[tuple[Command, tuple[ClientState, ...], ClientState | None], ...] = (
    (Command.EHLO,        (_C, _R),          None),
    (Command.HELO,        (_C, _R),          None),
    (Command.STARTTLS,    (_R,),             None),
    (Command.AUTH,        (_R,),             None),
    (Command.MAIL,        (_R,),             _M),
    (Command.RCPT,        (_M,),             None),
    (Command.DATA,        (_M,),             None),
    (Command.BDAT,        (_M, _B),          _B),
    (Command.END_OF_DATA, (_D, _M, _B),      None),   # from _M/_B: BDAT LAST
    (Command.RSET,        (_C, _R, _M, _B),  _R),
    (Command.NOOP,        (_C, _R, _M, _B),  None),
    (Command.QUIT,        (_F, _C, _R, _M, _B, _D), None),
)
#: Which commands may be sent in which state (RFC 5321 §4.1.4, RFC 3030 §2, RFC 3207 §4).
SEQUENCE: dict[Command, frozenset[ClientState]] = {
    cmd: frozenset(states) for cmd, states, _ in _SEND_RULES
}
_SEND_TO: dict[Command, ClientState | None] = {cmd: to for cmd, _, to in _SEND_RULES}

# On a reply: (command, outcome, to-state); outcome "ok" = the expected code, "fail" =
# anything else.  A 421 to anything closes (RFC 5321 §3.8), checked before this table.
# None = unchanged.  A failed RCPT leaves the transaction open (other recipients).
TRANSITIONS: dict[tuple[Command, str], ClientState | None] = {
    (Command.GREETING, "ok"): _C,       (Command.GREETING, "fail"): _F,
    (Command.EHLO, "ok"): _R,           (Command.EHLO, "fail"): None,
    (Command.HELO, "ok"): _R,           (Command.HELO, "fail"): None,
    (Command.STARTTLS, "ok"): _T,       (Command.STARTTLS, "fail"): None,
    (Command.AUTH, "ok"): None,         (Command.AUTH, "fail"): None,
    (Command.MAIL, "ok"): None,         (Command.MAIL, "fail"): _R,
    (Command.RCPT, "ok"): None,         (Command.RCPT, "fail"): None,
    (Command.DATA, "ok"): _D,           (Command.DATA, "fail"): _R,
    (Command.BDAT, "ok"): None,         (Command.BDAT, "fail"): _R,
    (Command.END_OF_DATA, "ok"): _R,    (Command.END_OF_DATA, "fail"): _R,
    (Command.RSET, "ok"): _R,           (Command.RSET, "fail"): None,
    (Command.NOOP, "ok"): None,         (Command.NOOP, "fail"): None,
    (Command.QUIT, "ok"): _X,           (Command.QUIT, "fail"): _X,
}

#: The reply code each command expects (RFC 5321 §4.3.2, RFC 3207 §4, RFC 4954 §4).
EXPECTED: dict[Command, frozenset[int]] = {
    Command.GREETING: frozenset({220}), Command.EHLO: frozenset({250}),
    Command.HELO: frozenset({250}), Command.STARTTLS: frozenset({220}),
    Command.AUTH: frozenset({235}), Command.MAIL: frozenset({250}),
    Command.RCPT: frozenset({250, 251}), Command.DATA: frozenset({354}),
    Command.END_OF_DATA: frozenset({250}), Command.BDAT: frozenset({250}),
    Command.RSET: frozenset({250}), Command.NOOP: frozenset({250}),
    Command.QUIT: frozenset({221}),
}

#: Default reply timeouts in seconds, RFC 5321 §4.5.3.2 (the driver may pass others).
DEFAULT_TIMEOUTS: dict[Command, float] = {
    Command.GREETING: 300.0, Command.MAIL: 300.0, Command.RCPT: 300.0,
    Command.DATA: 120.0, Command.END_OF_DATA: 600.0, Command.BDAT: 600.0,
    Command.EHLO: 300.0, Command.HELO: 300.0, Command.STARTTLS: 300.0,
    Command.AUTH: 300.0, Command.RSET: 300.0, Command.NOOP: 300.0, Command.QUIT: 60.0,
}

# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ServerReply:
    """The server's reply to ``command`` (``index``: which RCPT, 0-based)."""
    command: Command
    reply: Reply
    index: int = 0

    @property
    def ok(self) -> bool:
        return self.reply.code in EXPECTED[self.command]


@dataclass(frozen=True, slots=True)
class TlsReady:
    """220 to STARTTLS: do the handshake, then ``tls_established()``.  ``discarded`` counts
    plaintext octets that followed the 220 (a response-injection attempt if non-zero)."""
    reply: Reply
    discarded: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; ``error`` is None for an orderly QUIT."""
    reason: str
    error: Exception | None = None
    reply: Reply | None = None       # the 421 that closed it, if any


# ---------------------------------------------------------------- replies

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class ReplyParser:
    """Split server bytes into replies (RFC 5321 §4.2).  Lines end with CRLF (a bare LF
    is tolerated); ``code-text`` continues a reply, ``code text`` or ``code`` ends it.
    The enhanced status code (RFC 2034 §4) is taken from the first line when its class
    matches the reply code, and removed from every line that carries it."""

    MAX_LINE = 4096        # RFC 5321 §4.5.3.1.5 says 512; be lenient, but bounded
    MAX_LINES = 1000

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) + sum(len(x) for x in self._lines)

    def clear(self) -> int:
        """Drop everything buffered; returns how many octets were dropped."""
        n = len(self._buf) + (sum(len(x) + 6 for x in self._lines) if self._lines else 0)
        self._buf.clear()
        self._lines, self._code = [], None
        return n

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None.  Raises RemoteProtocolError."""
        while True:
            lf = self._buf.find(b"\n")
            if lf < 0:
                if len(self._buf) > self.MAX_LINE:
                    raise RemoteProtocolError("reply line too long")
                return None
            if lf + 1 > self.MAX_LINE:
                raise RemoteProtocolError("reply line too long")
            raw = bytes(self._buf[:lf])
            del self._buf[:lf + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            line = raw.decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or not line[:3].isascii() \
                    or (len(line) > 3 and line[3] not in " -") or line[0] not in "12345":
                raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
            code = int(line[:3])
            if self._code is not None and code != self._code:
                raise RemoteProtocolError("reply code changed within a multi-line reply")
            self._code = code
            self._lines.append(line[4:] if len(line) > 3 else "")
            if len(self._lines) > self.MAX_LINES:
                raise RemoteProtocolError("too many reply lines")
            if len(line) > 3 and line[3] == "-":
                continue
            lines, self._lines, self._code = self._lines, [], None
            return _make_reply(code, lines)


def _make_reply(code: int, lines: list[str]) -> Reply:
    enhanced = ""
    m = _ENHANCED.match(lines[0])
    if m and int(m.group(1)) == code // 100:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        prefix = enhanced
        lines = [ln[len(prefix):].lstrip(" ") if ln.startswith(prefix) else ln for ln in lines]
    text = lines[0] if len(lines) == 1 else tuple(lines)
    return Reply(code, enhanced, text)


# ---------------------------------------------------------------- capabilities


@dataclass(frozen=True, slots=True)
class Capabilities:
    """EHLO keywords (RFC 5321 §4.1.1.1), upper-cased, with their parameters."""
    esmtp: bool = False
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)
    greeting_name: str = ""

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int | None:
        """SIZE n (RFC 1870 §4); 0 or absent = no limit announced."""
        params = self.keywords.get("SIZE")
        if params and params[0].isdigit():
            return int(params[0]) or None
        return None

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        mechs = set(self.keywords.get("AUTH", ()))
        mechs.update(self.keywords.get("AUTH=", ()))     # pre-RFC 4954 "AUTH=LOGIN PLAIN"
        return frozenset(m.upper() for m in mechs)


def parse_capabilities(reply: Reply) -> Capabilities:
    """The EHLO reply's lines after the first are "keyword [params]" (RFC 5321 §4.1.1.1)."""
    lines = reply.lines()
    keywords: dict[str, tuple[str, ...]] = {}
    for line in lines[1:]:
        parts = line.split()
        if not parts:
            continue
        key = parts[0].upper()
        if key.startswith("AUTH="):             # "AUTH=LOGIN PLAIN" (old Microsoft form)
            keywords["AUTH="] = tuple(p.upper() for p in [key[5:], *parts[1:]] if p)
            continue
        keywords[key] = tuple(parts[1:])
    name = lines[0].split(" ", 1)[0] if lines and lines[0] else ""
    return Capabilities(True, keywords, name)


# ---------------------------------------------------------------- body encoding


class BodyEncoder:
    """Normalise line endings and (for DATA) dot-stuff a message body, chunk by chunk.

    ``feed(chunk)`` returns the bytes to send so far; ``finish()`` the rest (for DATA
    including the terminating ``.CRLF``, preceded by a CRLF if the body did not end with
    one).  A CR at the end of a chunk is held back until the next chunk shows whether an
    LF follows.  CR LF, bare CR and bare LF all become CR LF (RFC 5321 §2.3.8)."""

    __slots__ = ("dot_stuff", "_at_line_start", "_pending_cr", "size")

    def __init__(self, dot_stuff: bool) -> None:
        self.dot_stuff = dot_stuff
        self._at_line_start = True
        self._pending_cr = False
        self.size = 0                       # octets produced (excluding the terminator)

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return self._encode(chunk)

    def finish(self) -> bytes:
        out = b""
        if self._pending_cr:
            self._pending_cr = False
            out = self._encode(b"\r")
        if self.dot_stuff:
            if not self._at_line_start:
                out += b"\r\n"
            out += b".\r\n"
        return out

    def _encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
            # some bare CR or LF (the common all-CRLF case skips these copies)
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            data = data.replace(b"\n", b"\r\n")
        if self.dot_stuff:
            if b"\n." in data:
                data = data.replace(b"\r\n.", b"\r\n..")
            if self._at_line_start and data.startswith(b"."):
                data = b"." + data
        self._at_line_start = data.endswith(b"\r\n")
        self.size += len(data)
        return data


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext: "+" HH for "+", "=", controls, space and non-ASCII octets."""
    out = []
    for b in value.encode("utf-8"):
        out.append(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}")
    return "".join(out)


# ---------------------------------------------------------------- the connection


@dataclass
class ClientConfig:
    helo_name: str
    timeouts: dict[Command, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))


@dataclass(slots=True)
class _Pending:
    command: Command
    index: int
    sent_at: float


_SASL_MECHS = ("PLAIN", "LOGIN")


class ClientConnection:
    """One SMTP client session, without I/O.  See the module docstring."""

    def __init__(self, config: ClientConfig, now: float) -> None:
        self.config = config
        self._state = ClientState.GREETING
        self._parser = ReplyParser()
        self._out = bytearray()
        self._events: deque = deque()
        self._pending: deque[_Pending] = deque([_Pending(Command.GREETING, 0, now)])
        self._now = now
        self._closed: Closed | None = None
        self._eof = False
        self._rcpt_count = 0
        self._encoder: BodyEncoder | None = None
        self._sasl: list[bytes] = []         # responses still to send to 334 challenges
        self.capabilities = Capabilities()
        self.tls_active = False
        self.injected_octets = 0             # plaintext discarded after a 220 to STARTTLS

    # ------------------------------------------------------------ properties

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is ClientState.CLOSED

    @property
    def pipelining(self) -> bool:
        return self.capabilities.has("PIPELINING")

    @property
    def pending_output(self) -> int:
        """Octets queued for ``data_to_send()``."""
        return len(self._out)

    @property
    def outstanding(self) -> int:
        """Commands sent and not yet answered."""
        return len(self._pending)

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self._state in (ClientState.CLOSED, ClientState.TLS) or not data:
            return                    # plaintext after 220 to STARTTLS is never read
        self._parser.feed(data)

    def eof_received(self) -> None:
        self._eof = True

    def next_event(self):
        if self._events:
            return self._events.popleft()
        if self._closed is not None:
            return self._closed
        try:
            while not self._events and self._step():
                pass
        except RemoteProtocolError as exc:
            self._close(f"protocol error: {exc}", exc)
        except Exception as exc:  # noqa: BLE001 - never raise on server input
            self._close(f"internal error: {exc!r}", exc)
        if self._events:
            return self._events.popleft()
        if self._closed is not None:
            return self._closed
        if self._eof:
            self._close("connection closed by server",
                        ConnectionError("connection closed by server"))
            return self._events.popleft()
        return NEED_DATA

    def _step(self) -> bool:
        if self._state in (ClientState.CLOSED, ClientState.TLS):
            return False
        reply = self._parser.next_reply()
        if reply is None:
            return False
        self._on_reply(reply)
        return True

    def _on_reply(self, reply: Reply) -> None:
        if not self._pending:
            if reply.code == 421:                   # RFC 5321 §3.8: unsolicited shutdown
                self._close("server closing (421)", None, reply)
                return
            raise RemoteProtocolError(f"unsolicited reply {reply.code}")
        head = self._pending[0]
        if head.command is Command.AUTH and reply.code == 334:
            self._sasl_step(reply)                  # the same command continues
            head.sent_at = self._now
            return
        self._pending.popleft()
        if self._pending:
            self._pending[0].sent_at = max(self._pending[0].sent_at, self._now)
        event = ServerReply(head.command, reply, head.index)
        if head.command is Command.AUTH:
            self._sasl = []
        if reply.code == 421 and head.command is not Command.QUIT:
            self._events.append(event)
            self._close("server closing (421)", None, reply)
            return
        outcome = "ok" if event.ok else "fail"
        to = TRANSITIONS[(head.command, outcome)]
        if head.command in (Command.EHLO, Command.HELO) and event.ok:
            self.capabilities = (parse_capabilities(reply) if head.command is Command.EHLO
                                 else Capabilities(False, {}, ""))
        if head.command is Command.MAIL and self._state is not ClientState.MAIL:
            to = None                              # a pipelined later state already applies
        if head.command is Command.RSET and self._pending:
            to = None                              # RSET opened a group (RFC 2920 §3.1): the
                                                   # later commands' state stands
        if to is not None:
            self._state = to
        if head.command is Command.STARTTLS and event.ok:
            # RFC 3207 §4.2 / CVE-2011-0411 (client side): nothing after the 220 is trusted.
            discarded = self._parser.clear()
            self.injected_octets += discarded
            self._pending.clear()
            self._events.append(TlsReady(reply, discarded))
            return
        self._events.append(event)
        if head.command is Command.QUIT:
            self._close("quit", None)

    # ------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """Absolute deadline for the oldest unanswered command, or None."""
        if self._state is ClientState.CLOSED or not self._pending:
            return None
        head = self._pending[0]
        return head.sent_at + self.config.timeouts.get(head.command, 300.0)

    def handle_timer(self, now: float) -> None:
        self._now = now
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            cmd = self._pending[0].command
            self._close(f"timeout waiting for the reply to {cmd.value}",
                        TimeoutError(f"no reply to {cmd.value}"))

    # ------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _command(self, cmd: Command, line: str | bytes, index: int = 0) -> None:
        if self._state not in SEQUENCE[cmd]:
            raise LocalProtocolError(f"{cmd.value} not allowed in state {self._state.value}")
        pipelinable = cmd in (Command.MAIL, Command.RCPT, Command.DATA, Command.RSET,
                              Command.NOOP, Command.QUIT)
        if self._pending and not (self.pipelining and pipelinable
                                  and self._pending[-1].command is not Command.DATA):
            # RFC 2920 §3.1: without PIPELINING wait for each reply; DATA ends a group.
            raise LocalProtocolError(f"{cmd.value} sent while a reply is outstanding")
        raw = line if isinstance(line, bytes) else line.encode("utf-8")
        if b"\r" in raw or b"\n" in raw:
            raise LocalProtocolError("line break in a command argument")
        self._out += raw + b"\r\n"
        self._pending.append(_Pending(cmd, index, self._now))
        to = _SEND_TO[cmd]
        if to is not None:
            self._state = to

    def ehlo(self, now: float | None = None) -> None:
        self._tick(now)
        self._command(Command.EHLO, f"EHLO {self.config.helo_name}")

    def helo(self, now: float | None = None) -> None:
        self._tick(now)
        self._command(Command.HELO, f"HELO {self.config.helo_name}")

    def starttls(self, now: float | None = None) -> None:
        self._tick(now)
        if self.tls_active:
            raise LocalProtocolError("TLS is already active")
        self._command(Command.STARTTLS, "STARTTLS")

    def tls_established(self, now: float) -> None:
        """RFC 3207 §4.2: forget the capabilities; the session needs EHLO again."""
        if self._state is not ClientState.TLS:
            raise LocalProtocolError("tls_established() without a 220 to STARTTLS")
        self._now = now
        self.tls_active = True
        self.capabilities = Capabilities()
        self._parser.clear()
        self._state = ClientState.CONNECTED

    def auth(self, mechanism: str, username: str, password: str,
             now: float | None = None) -> None:
        """AUTH PLAIN (RFC 4616, initial response per RFC 4954 §4) or AUTH LOGIN
        (draft-murchison-sasl-login).  334 challenges are answered inside the core; the
        driver sees one ServerReply(AUTH) with the final 235/5xx.  Only call over TLS."""
        self._tick(now)
        mech = mechanism.upper()
        if mech not in _SASL_MECHS:
            raise LocalProtocolError(f"unsupported SASL mechanism {mechanism}")
        user, pw = username.encode("utf-8"), password.encode("utf-8")
        if mech == "PLAIN":
            initial = base64.b64encode(b"\0" + user + b"\0" + pw).decode("ascii")
            self._command(Command.AUTH, f"AUTH PLAIN {initial}")
            self._sasl = []
        else:
            self._command(Command.AUTH, "AUTH LOGIN")
            self._sasl = [base64.b64encode(user), base64.b64encode(pw)]

    def _sasl_step(self, challenge: Reply) -> None:
        if self._sasl:
            self._out += self._sasl.pop(0) + b"\r\n"
        else:
            self._out += b"*\r\n"            # RFC 4954 §4: cancel an unexpected exchange

    def mail(self, sender: str, params: list[str] | tuple[str, ...] = (),
             now: float | None = None) -> None:
        """``MAIL FROM:<sender> params`` (RFC 5321 §4.1.1.2).  ``params`` are
        "KEY=value" strings already encoded (see ``xtext``)."""
        self._tick(now)
        self._rcpt_count = 0
        line = " ".join([f"MAIL FROM:<{sender}>", *params])
        self._command(Command.MAIL, line)

    def rcpt(self, recipient: str, params: list[str] | tuple[str, ...] = (),
             now: float | None = None) -> int:
        """``RCPT TO:<recipient> params``; returns the RCPT index its reply will carry."""
        self._tick(now)
        index = self._rcpt_count
        line = " ".join([f"RCPT TO:<{recipient}>", *params])
        self._command(Command.RCPT, line, index)
        self._rcpt_count += 1
        return index

    def data(self, now: float | None = None) -> None:
        self._tick(now)
        self._command(Command.DATA, "DATA")

    def send_body(self, chunk: bytes, last: bool = False, now: float | None = None) -> None:
        """After the 354: dot-stuffed, normalised body bytes; ``last`` adds the final dot."""
        self._tick(now)
        if self._state is not ClientState.DATA:
            raise LocalProtocolError("body data before a 354 reply to DATA")
        if self._encoder is None:
            self._encoder = BodyEncoder(dot_stuff=True)
        self._out += self._encoder.feed(chunk)
        if last:
            self._out += self._encoder.finish()
            self._encoder = None
            self._pending.append(_Pending(Command.END_OF_DATA, 0, self._now))

    def bdat(self, chunk: bytes, last: bool = False, now: float | None = None) -> int:
        """RFC 3030 §2: ``BDAT <size> [LAST]`` then exactly that many normalised octets.
        Line endings are normalised across chunks; returns the octets sent in this chunk."""
        self._tick(now)
        if self._state not in (ClientState.MAIL, ClientState.BDAT):
            raise LocalProtocolError(f"BDAT not allowed in state {self._state.value}")
        if self._pending:
            raise LocalProtocolError("BDAT sent while a reply is outstanding")
        if self._encoder is None:
            self._encoder = BodyEncoder(dot_stuff=False)
        data = self._encoder.feed(chunk)
        if last:
            data += self._encoder.finish()
            self._encoder = None
        self._out += f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode("ascii") + data
        cmd = Command.END_OF_DATA if last else Command.BDAT
        self._pending.append(_Pending(cmd, 0, self._now))
        self._state = ClientState.BDAT
        return len(data)

    def rset(self, now: float | None = None) -> None:
        self._tick(now)
        self._encoder = None
        self._command(Command.RSET, "RSET")

    def noop(self, now: float | None = None) -> None:
        self._tick(now)
        self._command(Command.NOOP, "NOOP")

    def quit(self, now: float | None = None) -> None:
        self._tick(now)
        self._command(Command.QUIT, "QUIT")

    def abort(self, reason: str) -> None:
        """The driver gives up (I/O error, TLS failure): the core is closed."""
        self._close(reason, ConnectionError(reason))

    # ------------------------------------------------------------ plumbing

    def _tick(self, now: float | None) -> None:
        if now is not None:
            self._now = now
        if self._state is ClientState.CLOSED:
            raise LocalProtocolError("the connection is closed")

    def _close(self, reason: str, error: Exception | None, reply: Reply | None = None) -> None:
        if self._closed is not None:
            return
        self._state = ClientState.CLOSED
        self._pending.clear()
        self._parser.clear()
        self._closed = Closed(reason, error, reply)
        self._events.append(self._closed)
