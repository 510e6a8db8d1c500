"""The sans-IO SMTP server protocol core (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN, STARTTLS and AUTH).

What: ``ServerConnection`` turns bytes from a peer into events (smtp.events) and replies
into bytes.  It answers syntax and sequence errors itself; the driver (net/session)
answers the events that need a decision (EHLO, MAIL, RCPT, end of data).

How (h11 / aioquic style)::

    conn = ServerConnection(config, now)
    conn.greeting()
    loop:
        ev = conn.next_event()
        NEED_DATA       -> send conn.data_to_send(); read; conn.receive_data(b, now)
                           (EOF: conn.eof_received())
        PAUSED          -> a response is owed: conn.respond(reply_or_None)
        Hello/MailFrom/RcptTo/BodyComplete -> decide, then conn.respond(...)
        BodyChunk       -> append to the body sink
        StartTLS        -> send conn.data_to_send(), handshake, conn.tls_established(now)
        AuthStart/AuthResponse -> run the SASL mechanism (smtp.sasl), then respond with
                           catalog.auth_challenge(data) (334), catalog.AUTH_OK or a failure
        CloseConnection -> send conn.data_to_send(), close
    timers: conn.get_timer() is an absolute deadline; at it call conn.handle_timer(now)

Invariants:

* Never raises on peer input.  (API misuse by the driver, such as ``respond()`` with
  nothing pending, raises ``RuntimeError``.)  Should a bug surface anyway, the peer gets
  a generic ``421 4.3.0`` and the connection closes: unknown errors are temporary.
* Replies leave in command order (RFC 2920 §3.1): while an event awaits ``respond()``,
  nothing more is parsed; pipelined input stays buffered.  The driver should stop
  reading while ``next_event()`` says PAUSED (the buffer is otherwise unbounded).
* Every state change goes through ``TRANSITIONS`` below; every sequence check through
  ``SEQUENCE``.  A diagram can be generated from these two tables.
* After STARTTLS is accepted, buffered and later plaintext bytes are discarded until
  ``tls_established()`` (CVE-2011-0411); afterwards the session is "connected, needs
  EHLO" again (RFC 3207 §4.2).
* After ``CloseConnection`` the core ignores input and ``next_event()`` keeps returning
  that same event.

Policies: DATA/BDAT framing, SMTP smuggling and size: see smtp.framing.  Command lines
end with LF, optionally preceded by CR (a bare CR inside a line is an error); lines
longer than ``max_line_length`` (counting the line ending) get ``500 5.5.2 Line too
long``, are discarded, and the session continues.  A malformed BDAT line (bad or missing
size) loses the framing, so the core answers ``501 5.5.4`` then ``421 4.5.0`` and
closes.  Error replies count towards ``max_errors`` except ``452 4.5.3`` too many
recipients, which is flow control (RFC 5321 §4.5.3.1.10; Postfix likewise exempts it up
to ``smtpd_recipient_overshoot_limit``).

AUTH (RFC 4954): offered in EHLO only when ``ServerConfig.auth_mechanisms`` is non-empty
and, if ``auth_requires_tls``, TLS is active; without mechanisms the verb gets 502 (port
25 never offers AUTH).  The core checks the sequence (EHLO first: 503; inside a
transaction or after a success: 503 5.5.1; before TLS: 530 5.7.0), the mechanism name
(504 5.5.4) and the base64 of every response (501 5.5.2), and handles ``*`` (501 5.0.0);
the mechanism itself lives in the driver.  A 334 reply to ``AuthStart``/``AuthResponse``
puts the core in state AUTH, where the next line is a SASL response, not a command
(lines up to ``AUTH_LINE_LIMIT`` octets, RFC 4954 §4); 235 marks the session
authenticated; any other reply ends the exchange.  Credentials never enter an event's
``repr``.  TLS establishment forgets a previous authentication (RFC 3207 §4.2).

LMTP (reserved, ``ServerConfig.lmtp``): LHLO would be one more verb in ``SEQUENCE`` with
the ``hello`` transitions, and ``respond()`` to ``BodyComplete`` would take one reply per
accepted recipient, in RCPT order (RFC 2033 §4.2).  Not implemented yet.
"""
from __future__ import annotations

import base64
import binascii
import enum
from collections import deque
from dataclasses import dataclass

from . import catalog
from .address import (
    ParseError, is_valid_helo, parse_mail_params, parse_path, parse_rcpt_params, split_argument,
)
from .events import (
    NEED_DATA, NEEDS_RESPONSE, PAUSED, AuthResponse, AuthStart, BdatChunkAccepted, BodyChunk, BodyComplete,
    BodyRejected, CloseConnection, DataStarted, Hello, MailFrom, RcptTo, StartTLS,
    TransactionReset,
)
from .framing import (
    REJECT_BARE_LINE_ENDING, REJECT_NUL, REJECT_SIZE, BdatReader, BodyInspector, DataDecoder,
)
from .replies import Reply

__all__ = ["ServerConfig", "ServerConnection", "State", "TRANSITIONS", "SEQUENCE",
           "transition_diagram"]


class State(enum.Enum):
    __hash__ = object.__hash__   # members are singletons; skip Enum's Python-level hash

    CONNECTED = "connected"      # greeting sent (or TLS just established): needs EHLO/HELO
    GREETED = "greeted"          # EHLO/HELO accepted, no mail transaction
    MAIL = "mail"                # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"                # at least one recipient accepted
    DATA = "data"                # 354 sent: reading the dot-stuffed body
    BDAT = "bdat"                # inside a BDAT transaction (reading or between chunks)
    TLS = "tls-handshake"        # 220 to STARTTLS sent; waiting for tls_established()
    CLOSED = "closed"            # last reply queued; nothing more is read
    AUTH = "auth"                # 334 sent: the next line is a SASL response (RFC 4954)


_C, _G, _M, _R, _D, _B, _T, _X, _A = State

# ---------------------------------------------------------------- the state machine
#
# (trigger, from-states, to-state).  "hello" etc. happen when the driver answers the
# event positively; "rset" also ends a transaction for a re-issued EHLO/HELO.
_RULES: tuple[tuple[str, tuple[State, ...], State], ...] = (
    ("hello",           (_C, _G),                   _G),   # 250 to EHLO/HELO
    ("hello-rejected",  (_C, _G),                   _C),   # app refused EHLO/HELO
    ("mail",            (_G,),                      _M),   # 250 to MAIL
    ("rcpt",            (_M, _R),                   _R),   # 250 to RCPT
    ("data",            (_R,),                      _D),   # 354 to DATA
    ("bdat",            (_R, _B),                   _B),   # BDAT chunk header accepted
    ("end-of-message",  (_D, _B),                   _G),   # reply to BodyComplete, or BodyRejected
    ("rset",            (_C,),                      _C),   # RSET, re-issued EHLO/HELO
    ("rset",            (_G, _M, _R, _B),           _G),
    ("starttls",        (_G,),                      _T),   # 220 to STARTTLS
    ("tls-established", (_T,),                      _C),   # RFC 3207 §4.2: forget all
    ("auth-continue",   (_G, _A),                   _A),   # 334 to AuthStart/AuthResponse
    ("auth-end",        (_G, _A),                   _G),   # 235, a failure, "*", bad base64
    ("close",           tuple(State),               _X),   # 221, any 421, EOF
)
TRANSITIONS: dict[tuple[State, str], State] = {
    (src, trigger): dst for trigger, sources, dst in _RULES for src in sources
}


def transition_diagram() -> str:
    """The state machine as a Mermaid ``stateDiagram-v2`` (for docs), from TRANSITIONS."""
    lines = ["stateDiagram-v2", f"    [*] --> {_C.name}"]
    for trigger, sources, dst in _RULES:
        if trigger == "close":
            lines.append(f"    {dst.name} --> [*]")
            lines.append(f"    note left of {dst.name}: from any state on QUIT, 421, EOF")
            continue
        lines.extend(f"    {src.name} --> {dst.name}: {trigger}" for src in sources)
    return "\n".join(lines) + "\n"


#: Sequence rules for verbs whose legality depends on the state (RFC 5321 §4.1.4,
#: RFC 3030 §2, RFC 3207 §4).  ``None`` = legal; a Reply = refuse with it.  Verbs not
#: listed (EHLO, HELO, RSET, NOOP, QUIT, VRFY, EXPN, HELP) are legal in every state in
#: which commands are read (CONNECTED, GREETED, MAIL, RCPT, BDAT).
SEQUENCE: dict[str, dict[State, Reply | None]] = {
    "MAIL": {_C: catalog.NEED_HELO, _G: None, _M: catalog.NESTED_MAIL,
             _R: catalog.NESTED_MAIL, _B: catalog.NESTED_MAIL},
    "RCPT": {_C: catalog.NEED_HELO, _G: catalog.NEED_MAIL, _M: None, _R: None,
             _B: catalog.RCPT_AFTER_BDAT},
    "DATA": {_C: catalog.NEED_HELO, _G: catalog.NEED_MAIL, _M: catalog.NO_VALID_RECIPIENTS,
             _R: None, _B: catalog.DATA_AFTER_BDAT},
    "BDAT": {_C: catalog.NEED_HELO, _G: catalog.NEED_MAIL, _M: catalog.NO_VALID_RECIPIENTS,
             _R: None, _B: None},
    "STARTTLS": {_C: catalog.NEED_EHLO, _G: None, _M: catalog.TLS_IN_TRANSACTION,
                 _R: catalog.TLS_IN_TRANSACTION, _B: catalog.TLS_IN_TRANSACTION},
    "AUTH": {_C: catalog.NEED_EHLO, _G: None, _M: catalog.AUTH_IN_TRANSACTION,
             _R: catalog.AUTH_IN_TRANSACTION, _B: catalog.AUTH_IN_TRANSACTION},
}

#: Longest AUTH command or SASL response line accepted (RFC 4954 §4: 12288 octets).
AUTH_LINE_LIMIT = 12288

#: Verbs we know but do not offer on this core (RFC 5321 §4.2.4: 502).
_NOT_IMPLEMENTED = frozenset((
    "EXPN", "XCLIENT", "XFORWARD", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML",
    "BURL", "LHLO", "VERB", "XEXCH50",
))

_REJECTION_REPLIES = {
    REJECT_BARE_LINE_ENDING: catalog.BARE_LINE_ENDING,
    REJECT_NUL: catalog.NUL_IN_DATA,
    REJECT_SIZE: catalog.MESSAGE_TOO_BIG,
}

_INTERNAL_ERROR = Reply(421, "4.3.0", "Internal error, closing connection")

#: Serialised catalog replies, by identity (catalog values live as long as the process).
_WIRE: dict[int, bytes] = {id(v): v.to_bytes() for v in vars(catalog).values()
                           if isinstance(v, Reply)}
#: Default EHLO/HELO replies, by (hostname, size, offer STARTTLS, AUTH offer, extended).
_HELLO_WIRE: dict[tuple[str, int, bool, str, bool], bytes] = {}


@dataclass
class ServerConfig:
    hostname: str
    max_message_size: int = 25 * 1024 * 1024   # advertised as SIZE (RFC 1870)
    max_recipients: int = 100                  # RFC 5321 §4.5.3.1.8 requires >= 100
    max_line_length: int = 2048                # command line including CRLF
    max_errors: int = 10                       # error replies before 421 and close
    command_timeout: float = 300.0             # RFC 5321 §4.5.3.2.7
    data_timeout: float = 300.0                # restarts on every block received (§4.5.3.2.7)
    tls_available: bool = False                # offer STARTTLS
    tls_active: bool = False                   # implicit TLS (port 465)
    greeting_text: str | None = None           # after the host name in the 220 banner
    auth_mechanisms: tuple[str, ...] = ()      # SASL mechanisms offered; () = no AUTH
    auth_requires_tls: bool = True             # AUTH only once TLS is active
    lmtp: bool = False                         # reserved; see module docstring


class ServerConnection:
    """One SMTP server session, without I/O.  See the module docstring."""

    def __init__(self, config: ServerConfig, now: float) -> None:
        if config.lmtp:
            raise NotImplementedError("LMTP mode is reserved and not implemented yet")
        self.config = config
        self._state = State.CONNECTED
        self._buf = b""                 # input; bytes before _pos are consumed
        self._pos = 0
        self._out = bytearray()
        self._events: deque = deque()
        self._awaiting: object | None = None
        self._close_event: CloseConnection | None = None
        self._eof = False
        self._now = now
        self._timer_base = now          # the deadline counts from here
        self._errors = 0
        self._skipping_line = False     # dropping the rest of an over-long command line
        self._discard = 0               # octets of a refused BDAT chunk still to skip
        self.helo_name: str | None = None
        self.esmtp = False
        self._tls_active = config.tls_active
        self.authenticated = False      # a 235 was sent (RFC 4954 §4: AUTH only once)
        # the mail transaction
        self._mail_utf8 = False
        self._accepted = 0              # recipients accepted by the driver
        self._decoder: DataDecoder | None = None
        self._bdat: BdatReader | None = None
        self._in_chunk = False          # reading BDAT octets

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def awaiting_response(self) -> bool:
        """True while an event from NEEDS_RESPONSE waits for ``respond()``."""
        return self._awaiting is not None

    @property
    def error_count(self) -> int:
        return self._errors

    @property
    def accepted_recipients(self) -> int:
        return self._accepted

    def greeting(self, refusal: Reply | None = None) -> None:
        """Queue the 220 banner (RFC 5321 §4.3.1), or a ``refusal`` (554, or 421) instead:
        the connection is then closed (§3.1 allows waiting for QUIT; we do not listen to
        a client we refused)."""
        if refusal is None:
            self._send(catalog.greeting(self.config.hostname, self.config.greeting_text))
            return
        self._send(refusal, count=False)
        self._close(f"refused at connect: {refusal.code} {refusal.enhanced}")

    def ehlo_reply(self) -> Reply:
        """The default EHLO reply; a driver may extend it and pass it to ``respond``."""
        cfg = self.config
        caps = ["PIPELINING", f"SIZE {cfg.max_message_size}", "8BITMIME", "SMTPUTF8",
                "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if cfg.tls_available and not self._tls_active:
            caps.append("STARTTLS")
        auth = self._auth_offer()
        if auth:
            caps.append(auth)
        return catalog.ehlo_ok(cfg.hostname, tuple(caps))

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self._state is State.CLOSED or self._state is State.TLS or not data:
            return                      # TLS: plaintext after STARTTLS is dropped (CVE-2011-0411)
        if self._pos:
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
        else:
            self._buf += data
        if self._reading_octets():
            self._timer_base = now      # data timeout restarts per block received

    def eof_received(self) -> None:
        """The peer closed its side.  Complete buffered commands are still processed."""
        self._eof = True

    def next_event(self):
        if self._events:
            return self._pop()
        if self._awaiting is not None:
            return PAUSED
        if self._close_event is not None:
            return self._close_event
        try:
            while not self._events and self._step():
                pass
        except Exception:  # noqa: BLE001 - safety net: never raise on peer input
            self._internal_error()
        if self._events:
            return self._pop()
        if self._eof:
            self._close("peer closed the connection")
            return self._pop()
        return NEED_DATA

    def respond(self, reply: Reply | None = None, now: float | None = None) -> None:
        """Answer the event returned last that needs a response (``NEEDS_RESPONSE``).
        ``None`` is the default positive reply; BodyComplete needs an explicit reply.
        A 421 reply closes the connection (RFC 5321 §3.8)."""
        ev = self._awaiting
        if ev is None:
            raise RuntimeError("respond() called with no event awaiting a response")
        if reply is None and isinstance(ev, (BodyComplete, AuthStart, AuthResponse)):
            raise ValueError(f"{type(ev).__name__} needs an explicit reply")
        self._awaiting = None
        if now is not None:
            self._now = now
        self._timer_base = self._now
        if isinstance(ev, Hello):
            if reply is None or reply.is_positive:
                self.helo_name, self.esmtp = ev.hostname, ev.extended
                self._goto("hello")
            else:
                self.helo_name, self.esmtp = None, False
                self._goto("hello-rejected")
            if reply is None:
                self._out += self._hello_wire(ev.extended)
            else:
                self._send(reply)
        elif isinstance(ev, MailFrom):
            reply = reply or catalog.SENDER_OK
            if reply.is_positive:
                self._mail_utf8 = ev.params.smtputf8
                self._accepted = 0
                self._goto("mail")
            self._send(reply)
        elif isinstance(ev, RcptTo):
            reply = reply or catalog.RECIPIENT_OK
            if reply.is_positive:
                self._accepted += 1
                self._goto("rcpt")
            self._send(reply)
        elif isinstance(ev, (AuthStart, AuthResponse)):
            assert reply is not None
            if reply.code == 334:
                self._goto("auth-continue")
                self._send(reply, count=False)
            else:
                if reply.code == 235:
                    self.authenticated = True
                self._goto("auth-end")
                self._send(reply)
        else:  # BodyComplete: success or failure, the transaction is over
            self._end_transaction("end-of-message")
            self._send(reply)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """Absolute deadline, or None (closed, or waiting for the driver)."""
        if self._state is State.CLOSED or self._awaiting is not None:
            return None
        if self._reading_octets():
            return self._timer_base + self.config.data_timeout
        return self._timer_base + self.config.command_timeout

    def handle_timer(self, now: float) -> None:
        self._now = now
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            self._send(catalog.timeout(self.config.hostname), reason="timeout")

    def tls_established(self, now: float) -> None:
        """The driver finished the STARTTLS handshake: forget everything (RFC 3207 §4.2)."""
        if self._state is not State.TLS:
            raise RuntimeError("tls_established() without an accepted STARTTLS")
        self._now = self._timer_base = now
        self._tls_active = True
        self.authenticated = False
        self.helo_name, self.esmtp = None, False
        self._buf, self._pos = b"", 0
        self._clear_transaction()
        self._goto("tls-established")
        self._emit(TransactionReset())

    # ------------------------------------------------------------ plumbing

    def _goto(self, trigger: str) -> None:
        if self._state is State.CLOSED:
            return
        self._state = TRANSITIONS[(self._state, trigger)]

    def _emit(self, event: object) -> None:
        if self._state is not State.CLOSED:
            self._events.append(event)

    def _pop(self):
        ev = self._events.popleft()
        if isinstance(ev, NEEDS_RESPONSE):
            self._awaiting = ev
        return ev

    def _auth_offer(self) -> str:
        """The EHLO ``AUTH`` keyword line, or "" when AUTH is not offered now."""
        cfg = self.config
        if not cfg.auth_mechanisms or (cfg.auth_requires_tls and not self._tls_active):
            return ""
        return "AUTH " + " ".join(cfg.auth_mechanisms)

    def _hello_wire(self, extended: bool) -> bytes:
        cfg = self.config
        key = (cfg.hostname, cfg.max_message_size,
               cfg.tls_available and not self._tls_active, self._auth_offer(), extended)
        wire = _HELLO_WIRE.get(key)
        if wire is None:
            reply = self.ehlo_reply() if extended else catalog.helo_ok(cfg.hostname)
            wire = reply.to_bytes()
            if len(_HELLO_WIRE) < 64:
                _HELLO_WIRE[key] = wire
        return wire

    def _send(self, reply: Reply, count: bool = True, reason: str | None = None) -> None:
        if self._state is _X:
            return
        wire = _WIRE.get(id(reply))
        self._out += wire if wire is not None else reply.to_bytes()
        if reply.code == 421:                       # RFC 5321 §3.8: closing
            self._close(reason or f"421 {reply.enhanced} reply")
            return
        if count and reply.code >= 400 and reply is not catalog.TOO_MANY_RECIPIENTS:
            self._errors += 1
            if self._errors >= self.config.max_errors:
                self._out += catalog.too_many_errors(self.config.hostname).to_bytes()
                self._close("too many errors")

    def _close(self, reason: str) -> None:
        if self._state is State.CLOSED:
            return
        self._goto("close")
        self._buf, self._pos = b"", 0
        self._awaiting = None
        self._close_event = CloseConnection(reason)
        self._events.append(self._close_event)

    def _internal_error(self) -> None:
        self._events.clear()
        self._send(_INTERNAL_ERROR, reason="internal error")

    def _reading_octets(self) -> bool:
        return self._state is State.DATA or self._in_chunk or self._discard > 0

    def _clear_transaction(self) -> None:
        self._mail_utf8 = False
        self._accepted = 0
        self._decoder = None
        self._bdat = None
        self._in_chunk = False

    def _end_transaction(self, trigger: str) -> None:
        self._clear_transaction()
        self._goto(trigger)

    def _refused(self, verb: str) -> bool:
        """Apply SEQUENCE; True if a 503/554 was sent."""
        reply = SEQUENCE[verb].get(self._state)
        if reply is not None:
            self._send(reply)
            return True
        return False

    # ------------------------------------------------------------ input steps

    def _step(self) -> bool:
        """Make one unit of progress.  False = nothing to do until more input."""
        state = self._state
        if state is State.CLOSED or state is State.TLS:
            return False
        if self._discard:
            return self._step_discard()
        if state is State.DATA:
            return self._step_data()
        if self._in_chunk:
            return self._step_bdat()
        return self._step_command()

    def _step_command(self) -> bool:
        buf, pos = self._buf, self._pos
        lf = buf.find(b"\n", pos)
        limit = self.config.max_line_length
        if self.config.auth_mechanisms and (self._state is State.AUTH
                                            or buf[pos:pos + 5].upper() == b"AUTH "):
            limit = max(limit, AUTH_LINE_LIMIT)
        if self._skipping_line:
            if lf < 0:
                self._buf, self._pos = b"", 0
                return False
            self._pos = lf + 1
            self._skipping_line = False
            self._timer_base = self._now
            self._send(catalog.LINE_TOO_LONG)
            return True
        if lf < 0:
            if len(buf) - pos > limit:               # RFC 5321 §4.5.3.1.4
                self._skipping_line = True
                self._buf, self._pos = b"", 0
            return False
        self._pos = lf + 1
        self._timer_base = self._now
        if lf + 1 - pos > limit:
            self._send(catalog.LINE_TOO_LONG)
            return True
        end = lf - 1 if lf > pos and buf[lf - 1] == 0x0D else lf
        if self._state is State.AUTH:
            self._auth_response(buf[pos:end])
        else:
            self._command(buf[pos:end])
        return True

    def _step_data(self) -> bool:
        decoder = self._decoder
        assert decoder is not None
        pos = self._pos
        new_pos, content, done = decoder.feed(self._buf, pos)
        self._pos = new_pos
        if content:
            self._emit(BodyChunk(content))
        if done:
            self._message_end(decoder.inspector)
        return new_pos != pos or done

    def _step_bdat(self) -> bool:
        reader = self._bdat
        assert reader is not None
        pos = self._pos
        new_pos, content, done = reader.feed(self._buf, pos)
        self._pos = new_pos
        if content:
            self._emit(BodyChunk(content))
        if done:
            self._in_chunk = False
            self._bdat_chunk_end()
        return new_pos != pos or done

    def _step_discard(self) -> bool:
        take = min(self._discard, len(self._buf) - self._pos)
        if take <= 0:
            return False
        self._pos += take
        self._discard -= take
        return True

    def _message_end(self, inspector: BodyInspector) -> None:
        """CRLF.CRLF seen, or the LAST BDAT chunk fully read."""
        if inspector.rejection is not None:
            self._reject_message(inspector.rejection)
        else:
            self._emit(BodyComplete(inspector.size))

    def _reject_message(self, reason: str) -> None:
        self._emit(BodyRejected(reason))
        self._end_transaction("end-of-message")
        self._send(_REJECTION_REPLIES[reason])

    def _bdat_chunk_end(self) -> None:
        reader = self._bdat
        assert reader is not None
        inspector = reader.inspector
        if reader.last:
            inspector.finish()
            self._message_end(inspector)
        elif inspector.rejection is not None:
            # RFC 3030 §2: a failed chunk fails the transaction; later BDATs get 503.
            self._reject_message(inspector.rejection)
        else:
            self._send(catalog.bdat_chunk_ok(reader.chunk_size))
            self._emit(BdatChunkAccepted(reader.chunk_size))

    # ------------------------------------------------------------ commands

    def _command(self, line: bytes) -> None:
        if b"\0" in line:
            self._send(catalog.NUL_IN_COMMAND)
            return
        if b"\r" in line:                            # RFC 5321 §2.3.8
            self._send(catalog.BARE_CR_IN_COMMAND)
            return
        if line.isascii():
            text = line.decode("ascii")
            ascii_only = True
        else:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self._send(catalog.INVALID_UTF8)
                return
            ascii_only = False
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if not ascii_only and verb not in ("MAIL", "RCPT"):
            # RFC 6531: UTF-8 is allowed in MAIL/RCPT addresses only.
            self._send(catalog.NON_ASCII_COMMAND)
            return
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._send(catalog.NOT_IMPLEMENTED if verb in _NOT_IMPLEMENTED
                       else catalog.UNRECOGNIZED)
            return
        handler(self, arg.strip(" "))

    def _ehlo(self, arg: str) -> None:
        self._hello(arg, True)

    def _helo(self, arg: str) -> None:
        self._hello(arg, False)

    def _hello(self, arg: str, extended: bool) -> None:
        """RFC 5321 §4.1.1.1.  A re-issued EHLO/HELO resets the transaction.
        The argument must be one Domain or address-literal (syntax only)."""
        if not is_valid_helo(arg):
            self._send(catalog.SYNTAX_EHLO if extended else catalog.SYNTAX_HELO)
            return
        if self._state is not State.CONNECTED:
            self._end_transaction("rset")
            self._emit(TransactionReset())
        self._emit(Hello(arg, extended))

    def _mail(self, arg: str) -> None:
        """RFC 5321 §4.1.1.2, parameters per RFC 1870/6152/6531/3461/4954."""
        if self._refused("MAIL"):
            return
        if arg[:5].upper() != "FROM:":
            self._send(catalog.SYNTAX_MAIL)
            return
        try:
            path, params_text = split_argument(arg[5:], catalog.BAD_SENDER_SYNTAX)
            if params_text and not self.esmtp:
                raise ParseError(catalog.PARAMETERS_NEED_EHLO)
            params = parse_mail_params(params_text)
            address = parse_path(path, sender=True, smtputf8=params.smtputf8)
        except ParseError as exc:
            self._send(exc.reply)
            return
        if params.size is not None and params.size > self.config.max_message_size:
            self._send(catalog.MESSAGE_TOO_BIG)      # RFC 1870 §6
            return
        self._emit(MailFrom(address, params))

    def _rcpt(self, arg: str) -> None:
        """RFC 5321 §4.1.1.3, parameters per RFC 3461 §4."""
        if self._refused("RCPT"):
            return
        if arg[:3].upper() != "TO:":
            self._send(catalog.SYNTAX_RCPT)
            return
        try:
            path, params_text = split_argument(arg[3:], catalog.BAD_RECIPIENT_SYNTAX)
            if params_text and not self.esmtp:
                raise ParseError(catalog.PARAMETERS_NEED_EHLO)
            params = parse_rcpt_params(params_text)
            address = parse_path(path, sender=False, smtputf8=self._mail_utf8)
        except ParseError as exc:
            self._send(exc.reply)
            return
        if self._accepted >= self.config.max_recipients:
            self._send(catalog.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
            return
        self._emit(RcptTo(address, params))

    def _data(self, arg: str) -> None:
        """RFC 5321 §4.1.1.4."""
        if self._refused("DATA"):
            return
        if arg:
            self._send(catalog.SYNTAX_NO_ARGUMENTS)
            return
        self._send(catalog.START_DATA)
        self._decoder = DataDecoder(self.config.max_message_size)
        self._goto("data")
        self._emit(DataStarted(chunking=False))

    def _bdat_cmd(self, arg: str) -> None:
        """RFC 3030 §2: ``BDAT <size> [LAST]``; the octets follow the line directly."""
        parts = arg.split(" ")
        if (not 1 <= len(parts) <= 2 or not parts[0].isdigit() or not parts[0].isascii()
                or len(parts[0]) > 18 or (len(parts) == 2 and parts[1].upper() != "LAST")):
            # The octet count is unknown, so the next command cannot be found.
            self._send(catalog.SYNTAX_BDAT)
            self._send(catalog.bdat_framing_lost(self.config.hostname), reason="BDAT framing lost")
            return
        size, last = int(parts[0]), len(parts) == 2
        if self._refused("BDAT"):
            self._discard = size                     # still consume the chunk
            return
        if self._state is State.RCPT:
            self._bdat = BdatReader(self.config.max_message_size)
            self._emit(DataStarted(chunking=True))
        self._goto("bdat")
        assert self._bdat is not None
        self._bdat.start_chunk(size, last)
        if size == 0:
            self._bdat_chunk_end()
        else:
            self._in_chunk = True
            self._timer_base = self._now

    def _rset(self, arg: str) -> None:
        """RFC 5321 §4.1.1.5."""
        if arg:
            self._send(catalog.SYNTAX_NO_ARGUMENTS)
            return
        self._end_transaction("rset")
        self._emit(TransactionReset())
        self._send(catalog.OK)

    def _noop(self, arg: str) -> None:
        self._send(catalog.OK)                      # RFC 5321 §4.1.1.9: argument ignored

    def _quit(self, arg: str) -> None:
        if arg:
            self._send(catalog.SYNTAX_NO_ARGUMENTS)
            return
        self._send(catalog.BYE)
        self._close("quit")

    def _vrfy(self, arg: str) -> None:
        self._send(catalog.CANNOT_VRFY if arg else catalog.SYNTAX_VRFY)

    def _help(self, arg: str) -> None:
        self._send(catalog.HELP)

    def _auth(self, arg: str) -> None:
        """RFC 4954 §4: ``AUTH mechanism [initial-response]``."""
        cfg = self.config
        if not cfg.auth_mechanisms:
            self._send(catalog.NOT_IMPLEMENTED)
            return
        if self._refused("AUTH"):
            return
        if not self.esmtp:
            self._send(catalog.NEED_EHLO)
            return
        if self.authenticated:
            self._send(catalog.ALREADY_AUTHENTICATED)
            return
        if cfg.auth_requires_tls and not self._tls_active:
            self._send(catalog.TLS_REQUIRED)
            return
        parts = arg.split(" ")
        if not arg or len(parts) > 2 or not parts[0]:
            self._send(catalog.SYNTAX_AUTH)
            return
        mechanism = parts[0].upper()
        if mechanism not in cfg.auth_mechanisms:
            self._send(catalog.UNKNOWN_MECHANISM)
            return
        initial: bytes | None = None
        if len(parts) == 2:
            if parts[1] == "=":                      # an empty initial response
                initial = b""
            else:
                initial = _decode_base64(parts[1])
                if initial is None:
                    self._send(catalog.AUTH_BAD_BASE64)
                    return
        self._emit(AuthStart(mechanism, initial))

    def _auth_response(self, line: bytes) -> None:
        """A line read in state AUTH: ``*`` cancels, else base64 (RFC 4954 §4)."""
        if line == b"*":
            self._goto("auth-end")
            self._send(catalog.AUTH_CANCELLED)
            return
        data = _decode_base64(line.decode("ascii")) if line.isascii() else None
        if data is None:
            self._goto("auth-end")
            self._send(catalog.AUTH_BAD_BASE64)
            return
        self._emit(AuthResponse(data))

    def _starttls(self, arg: str) -> None:
        """RFC 3207 §4."""
        if not self.config.tls_available:
            self._send(catalog.TLS_NOT_AVAILABLE)
            return
        if self._tls_active:
            self._send(catalog.TLS_ALREADY_ACTIVE)
            return
        if self._refused("STARTTLS"):
            return
        if not self.esmtp:
            self._send(catalog.NEED_EHLO)
            return
        if arg:
            self._send(catalog.SYNTAX_NO_ARGUMENTS)
            return
        self._send(catalog.STARTTLS_READY)
        self._buf, self._pos = b"", 0                # CVE-2011-0411: drop pipelined bytes
        self._goto("starttls")
        self._emit(StartTLS())


_HANDLERS = {
    "EHLO": ServerConnection._ehlo, "HELO": ServerConnection._helo,
    "MAIL": ServerConnection._mail, "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data, "BDAT": ServerConnection._bdat_cmd,
    "RSET": ServerConnection._rset, "NOOP": ServerConnection._noop,
    "QUIT": ServerConnection._quit, "VRFY": ServerConnection._vrfy,
    "HELP": ServerConnection._help, "STARTTLS": ServerConnection._starttls,
    "AUTH": ServerConnection._auth,
}


def _decode_base64(text: str) -> bytes | None:
    """Strict base64 (RFC 4648 §4, padding required), or None."""
    if not text:
        return b""
    if len(text) % 4:
        return None
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        return None
    # b64decode(validate=True) still accepts surplus padding after a complete quantum
    # ("AAAA==" decodes); only the canonical encoding of the result is valid.
    if base64.b64encode(data).decode("ascii") != text:
        return None
    return data
