"""The asyncio driver of outbound SMTP sessions, their pool and per-destination limits.

What:
* ``ClientSession`` runs one connection to one server address: connect (with a timeout,
  IPv4 or IPv6), greeting, EHLO (HELO after a 5xx to EHLO, RFC 5321 §4.1.4), STARTTLS per
  ``TlsPolicy``, AUTH PLAIN/LOGIN for smarthosts, mail transactions (``send_message``),
  RSET and QUIT.  The protocol itself is ``smtp.client.ClientConnection`` (sans-IO); this
  module only moves bytes and time.
* ``open_session(...)`` sets a session up per policy and raises ``SessionError`` (reply,
  permanent?, stage) when it cannot be used.
* ``ConnectionPool`` keeps idle sessions keyed by (address, port, TLS policy, AUTH user) so
  the next message to the same destination reuses one, up to ``max_messages`` per
  connection, each idle at most ``idle_timeout`` seconds. A reused session is checked with
  RSET (RFC 5321 §4.1.1.5), as Postfix checks its cached sessions: with PIPELINING the RSET
  opens the next transaction's command group (RFC 2920 §3.1) instead of costing a round
  trip, and a refusal or a dead connection ends that session before any body is sent (the
  SMTP agent then opens a new one); without PIPELINING it is a round trip in ``acquire``.
* ``DestinationLimiter`` bounds concurrent deliveries per destination domain.

How: an ``asyncio.Protocol`` feeds every received byte straight into the core (no stream
buffer in between) and resolves the one future a waiting ``_next_event`` holds, so after
a 220 to STARTTLS nothing read in plaintext can survive into the TLS session: the core
discards it (response injection, the client side of
CVE-2011-0411) and ``loop.start_tls`` wraps the same protocol.  After the handshake EHLO is
sent again and only its answer counts (RFC 3207 §4.2).  Writes are few: a pipelined
command group is one write, a small body with its final dot another.

Timeouts (RFC 5321 §4.5.3.2): each outstanding command has the deadline the core computes
from ``ClientConfig.timeouts`` (greeting 5 min, MAIL 5 min, RCPT 5 min, DATA 2 min, final
dot 10 min by default); writing one block of body data may take ``data_block_timeout``
(3 min); connect and TLS handshake ``connect_timeout``.  A timeout closes the session.

TLS policy: "opportunistic" uses STARTTLS when offered with an unverified certificate
(RFC 7435; strict policies come with MTA-STS/DANE) and continues in plaintext, logged,
when it is not offered or refused; a failed handshake raises ``SessionError`` with
``retry_plaintext`` so the caller can reconnect without TLS.  "require" never sends a MAIL
in plaintext: no STARTTLS, a refusal or a failed handshake is a temporary failure.  AUTH
is only ever sent over TLS.

Invariants: nothing here raises past ``open_session``/``send_message`` except
``SessionError``; every socket opened is closed (``close()`` is idempotent); a session
whose core is not in the READY state after a transaction is never pooled.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

from ..smtp.client import (
    NEED_DATA, ClientConfig, ClientConnection, ClientState, Closed, Command, ServerReply,
    TlsReady,
)
from ..smtp.replies import Reply
from .tls import describe

log = logging.getLogger("mailwright.outbound")

__all__ = [
    "TlsPolicy", "Credentials", "SessionError", "ClientSession", "TransactionOutcome",
    "Timeouts", "open_session", "ConnectionPool", "DestinationLimiter", "PoolKey",
    "client_tls_context",
]

BODY_CHUNK = 64 * 1024
BDAT_CHUNK = 1024 * 1024
QUIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; defaults per RFC 5321 §4.5.3.2."""
    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_done: float = 600.0

    def per_command(self) -> dict[Command, float]:
        return {
            Command.GREETING: self.greeting, Command.EHLO: self.command,
            Command.HELO: self.command, Command.STARTTLS: self.command,
            Command.AUTH: self.command, Command.RSET: self.command,
            Command.NOOP: self.command, Command.QUIT: min(self.command, QUIT_TIMEOUT),
            Command.MAIL: self.mail, Command.RCPT: self.rcpt, Command.DATA: self.data_init,
            Command.BDAT: self.data_done, Command.END_OF_DATA: self.data_done,
        }


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    mode: str = "opportunistic"      # "opportunistic" | "require" | "none"
    verify: bool = False             # check the certificate chain and name
    ca_file: str = ""                # CA bundle for verify ("" = system store)
    server_name: str = ""            # SNI and the name verified ("" = the host name)


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str = field(repr=False)


class SessionError(Exception):
    """A session could not be set up or broke.  ``reply`` is the remote reply when the
    server said something (``remote``), else our own description; ``permanent`` follows
    RFC 5321 §4.2.1 (5xx) for remote replies and is False for everything local."""

    def __init__(self, reply: Reply, *, permanent: bool, stage: str, remote: bool,
                 retry_plaintext: bool = False) -> None:
        super().__init__(f"{stage}: {reply}")
        self.reply = reply
        self.permanent = permanent
        self.stage = stage
        self.remote = remote
        self.retry_plaintext = retry_plaintext


def _local(code: int, enhanced: str, text: str, stage: str, **kw) -> SessionError:
    return SessionError(Reply(code, enhanced, text), permanent=False, stage=stage,
                        remote=False, **kw)


def _remote(reply: Reply, stage: str, expected: bool = False) -> SessionError:
    """A remote reply that stops the session: 5xx permanent, 4xx temporary; any other
    unexpected code (a 220 to HELO, a 354 to EHLO...) is a temporary protocol error."""
    if reply.code >= 500:
        return SessionError(reply, permanent=True, stage=stage, remote=True)
    if reply.code >= 400:
        return SessionError(reply, permanent=False, stage=stage, remote=True)
    return SessionError(Reply(451, "4.5.0", f"Unexpected reply in {stage}: {reply}"),
                        permanent=False, stage=stage, remote=True)


_CONTEXTS: dict[tuple[bool, str], ssl.SSLContext] = {}


def client_tls_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """Shared client contexts: unverified (opportunistic, RFC 7435) or verified."""
    key = (verify, ca_file)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        if verify:
            ctx = ssl.create_default_context(cafile=ca_file or None)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.options |= ssl.OP_NO_COMPRESSION
        _CONTEXTS[key] = ctx
    return ctx


class _Protocol(asyncio.Protocol):
    def __init__(self, session: "ClientSession") -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.session._on_data(data)

    def eof_received(self) -> bool:
        self.session._on_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session._on_lost(exc)

    def pause_writing(self) -> None:
        self.session._can_write.clear()

    def resume_writing(self) -> None:
        self.session._can_write.set()


@dataclass
class TransactionOutcome:
    """Replies of one mail transaction; None = never answered (session broke first)."""
    mail: Reply | None = None
    rcpts: list[Reply | None] = field(default_factory=list)
    data: Reply | None = None          # the 354 (or its refusal); None with BDAT
    final: Reply | None = None         # reply to the final dot / BDAT LAST (or a failed chunk)
    error: SessionError | None = None  # the session broke; unanswered recipients are open


class ClientSession:
    """One outbound SMTP connection (see the module docstring)."""

    def __init__(self, host: str, ip: str, port: int, helo_name: str,
                 timeouts: Timeouts) -> None:
        self.host = host                  # the MX / next-hop name ("" for an IP literal)
        self.ip = ip
        self.port = port
        self.timeouts = timeouts
        self.loop = asyncio.get_running_loop()
        self.core = ClientConnection(
            ClientConfig(helo_name, timeouts.per_command()), self.loop.time())
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future | None = None    # _next_event waiting for input
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost = False
        self.tls = ""                     # "TLSv1.3 TLS_AES_256_GCM_SHA384" once encrypted
        self.messages = 0                 # transactions completed on this connection
        self.idle_since = 0.0
        #: a reused session's RSET probe goes in front of the next MAIL, in the same
        #: pipelined group (set by ConnectionPool.acquire, only with PIPELINING)
        self.rset_due = False

    # ------------------------------------------------------------ description

    @property
    def peer(self) -> str:
        """"mx1.example.test[192.0.2.1]" (Postfix style) for logs and result texts."""
        return f"{self.host or self.ip}[{self.ip}]"

    def describe(self) -> str:
        return f"{self.peer} {self.tls}" if self.tls else self.peer

    @property
    def usable(self) -> bool:
        return (not self._lost and self.core.state is ClientState.READY
                and self._transport is not None and not self._transport.is_closing())

    # ------------------------------------------------------------ connection

    async def connect(self, connect_timeout: float) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: _Protocol(self), self.ip, self.port),
                connect_timeout)
        except asyncio.TimeoutError:
            raise _local(451, "4.4.1", f"Connection to {self.peer} timed out",
                         "connect") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise _local(451, "4.4.1", f"Connection to {self.peer} failed: {reason}",
                         "connect") from None

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort() if self._lost else self._transport.close()
        self._lost = True
        if not self.core.closed:
            self.core.abort("closed by client")

    async def quit(self) -> None:
        """Best effort QUIT (RFC 5321 §4.1.1.10) with a short timeout, then close."""
        try:
            if not self._lost and self.core.state in (ClientState.READY, ClientState.CONNECTED,
                                                      ClientState.REFUSED, ClientState.MAIL):
                if self.core.outstanding == 0:
                    self.core.quit(self.loop.time())
                    self._flush()
                    await asyncio.wait_for(self._next_reply("quit"), QUIT_TIMEOUT)
        except (SessionError, asyncio.TimeoutError, OSError):
            pass
        finally:
            self.close()

    # ------------------------------------------------------------ protocol callbacks

    def _on_data(self, data: bytes) -> None:
        self.core.receive_data(data, self.loop.time())
        self._wake()

    def _on_eof(self) -> None:
        self.core.eof_received()
        self._wake()

    def _on_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.core.eof_received()
        self._wake()
        self._can_write.set()

    def _wake(self, timed_out: bool = False) -> None:
        """Resume ``_next_event`` (input arrived, or its deadline passed)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(timed_out)

    # ------------------------------------------------------------ I/O plumbing

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def _drain(self, stage: str) -> None:
        if self._can_write.is_set():
            return
        try:
            await asyncio.wait_for(self._can_write.wait(), self.timeouts.data_block)
        except asyncio.TimeoutError:
            self.close()
            raise _local(451, "4.4.2", f"Timeout sending data to {self.peer}", stage) from None
        if self._lost:
            raise _local(451, "4.4.2", f"Connection to {self.peer} lost", stage)

    async def _next_event(self):
        """The next core event, reading (under the core's deadline) as needed.

        Waiting is one future per wait, resolved by the protocol callbacks or by a timer at
        the core's deadline (cheaper than ``wait_for`` around an Event: no extra task)."""
        core = self.core
        loop = self.loop
        while True:
            self._flush()
            ev = core.next_event()
            if ev is not NEED_DATA:
                return ev
            if self._lost:
                core.eof_received()
                continue
            deadline = core.get_timer()
            if deadline is None:
                core.abort("waiting with no command outstanding")
                continue
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, self._wake, True)
            try:
                timed_out = await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if timed_out:
                core.handle_timer(loop.time())

    async def _next_reply(self, stage: str) -> ServerReply:
        return self._as_reply(await self._next_event(), stage)

    def _as_reply(self, ev: object, stage: str) -> ServerReply:
        """``ev`` if it is a ServerReply; else close and raise the matching SessionError."""
        if isinstance(ev, ServerReply):
            return ev
        if isinstance(ev, Closed):
            self.close()
            if ev.reply is not None:                 # 421: service closing (RFC 5321 §3.8)
                raise SessionError(ev.reply, permanent=False, stage=stage, remote=True)
            if isinstance(ev.error, TimeoutError):
                raise _local(451, "4.4.2", f"Timeout in {stage} with {self.peer}", stage)
            if ev.error is not None and "protocol error" in ev.reason:
                raise SessionError(Reply(451, "4.5.0", f"Protocol error from {self.peer}: "
                                         f"{ev.error}"), permanent=False, stage=stage,
                                   remote=True)
            raise _local(451, "4.4.2", f"Connection to {self.peer} lost in {stage}", stage)
        self.close()
        raise _local(451, "4.5.0", f"Unexpected event {type(ev).__name__} in {stage}", stage)

    async def command(self, send: Callable[..., object], *args, stage: str) -> ServerReply:
        send(*args, now=self.loop.time())
        return await self._next_reply(stage)

    # ------------------------------------------------------------ session setup

    async def greeting(self) -> Reply:
        ev = await self._next_reply("greeting")
        if not ev.ok:
            await self.quit()
            raise _remote(ev.reply, "greeting")
        return ev.reply

    async def hello(self) -> None:
        """EHLO; after a 5xx to it, HELO (RFC 5321 §4.1.4, §3.2)."""
        ev = await self.command(self.core.ehlo, stage="EHLO")
        if ev.ok:
            return
        if ev.reply.code < 500 or ev.reply.code >= 600:
            await self.quit()
            raise _remote(ev.reply, "EHLO")
        ev = await self.command(self.core.helo, stage="HELO")
        if not ev.ok:
            await self.quit()
            raise _remote(ev.reply, "HELO")

    async def _tls_handshake(self, policy: TlsPolicy, connect_timeout: float) -> None:
        ctx = client_tls_context(policy.verify, policy.ca_file)
        # SNI / the name verified: the configured name, the MX or next-hop name, or (when
        # verifying a "[ip]" next hop) the IP address itself, matched against IP SANs.
        server_name = policy.server_name or self.host or (self.ip if policy.verify else None)
        transport = self._transport
        assert transport is not None
        try:
            new = await asyncio.wait_for(
                self.loop.start_tls(transport, transport.get_protocol(), ctx,
                                    server_hostname=server_name,
                                    ssl_handshake_timeout=connect_timeout),
                connect_timeout + 1)
        except (ssl.SSLError, ssl.CertificateError, OSError, asyncio.TimeoutError,
                ConnectionError, ValueError) as exc:
            self.close()
            if isinstance(exc, ssl.SSLCertVerificationError):
                text = f"TLS certificate of {self.peer} not trusted: {exc.verify_message}"
            else:
                text = f"TLS handshake with {self.peer} failed: {type(exc).__name__}"
            raise _local(451, "4.7.5", text, "TLS handshake",
                         retry_plaintext=policy.mode == "opportunistic"
                         and not policy.verify) from None
        if new is None:
            self.close()
            raise _local(451, "4.7.5", f"TLS handshake with {self.peer} failed", "TLS handshake",
                         retry_plaintext=policy.mode == "opportunistic")
        self._transport = new  # type: ignore[assignment]
        self.tls = describe(new.get_extra_info("ssl_object"))
        self.core.tls_established(self.loop.time())

    async def negotiate_tls(self, policy: TlsPolicy, connect_timeout: float) -> None:
        """Apply the TLS policy after the first EHLO/HELO."""
        if policy.mode == "none" or self.core.tls_active:
            return
        offered = self.core.capabilities.has("STARTTLS")
        if not offered:
            if policy.mode == "require":
                await self.quit()
                raise _local(451, "4.7.10", f"TLS required but {self.peer} does not offer "
                             "STARTTLS", "STARTTLS")
            log.info("%s offers no STARTTLS: continuing without TLS", self.peer)
            return
        self.core.starttls(self.loop.time())
        ev = await self._next_event()
        if isinstance(ev, TlsReady):
            if ev.discarded:
                log.warning("%s sent %d octets after its 220 to STARTTLS: discarded "
                            "(response injection?)", self.peer, ev.discarded)
            await self._tls_handshake(policy, connect_timeout)
            await self.hello()                 # RFC 3207 §4.2: EHLO again, forget the rest
            return
        ev = self._as_reply(ev, "STARTTLS")
        if 400 <= ev.reply.code < 600 and ev.reply.code != 421:
            if policy.mode == "require":
                await self.quit()
                raise SessionError(Reply(451, "4.7.10", f"TLS required but {self.peer} "
                                         f"refused STARTTLS: {ev.reply}"),
                                   permanent=False, stage="STARTTLS", remote=True)
            log.warning("%s refused STARTTLS (%s): continuing without TLS", self.peer, ev.reply)
            return
        await self.quit()
        raise _remote(ev.reply, "STARTTLS")

    async def authenticate(self, creds: Credentials) -> None:
        """AUTH PLAIN, else LOGIN (RFC 4954), never in plaintext.  A refusal is temporary:
        a configuration problem should hold mail, not bounce it."""
        if not self.core.tls_active:
            await self.quit()
            raise _local(451, "4.7.10", f"Refusing to send AUTH to {self.peer} without TLS",
                         "AUTH")
        mechs = self.core.capabilities.auth_mechanisms
        mech = "PLAIN" if "PLAIN" in mechs else "LOGIN" if "LOGIN" in mechs else ""
        if not mech:
            await self.quit()
            raise _local(451, "4.7.8", f"{self.peer} offers no AUTH PLAIN or LOGIN", "AUTH")
        ev = await self.command(self.core.auth, mech, creds.user, creds.password, stage="AUTH")
        if not ev.ok:
            await self.quit()
            raise SessionError(Reply(451, "4.7.8", f"Authentication to {self.peer} failed: "
                                     f"{ev.reply}"), permanent=False, stage="AUTH", remote=True)

    async def rset(self) -> bool:
        """RFC 5321 §4.1.1.5 between messages on a reused connection."""
        if self._lost or self.core.state not in (ClientState.READY, ClientState.MAIL,
                                                 ClientState.BDAT) \
                or self.core.outstanding:
            return False
        try:
            ev = await self.command(self.core.rset, stage="RSET")
        except SessionError:
            return False
        return ev.ok and self.core.state is ClientState.READY

    # ------------------------------------------------------------ the transaction

    async def send_message(self, sender: str, mail_params: Sequence[str],
                           rcpts: Sequence[tuple[str, Sequence[str]]],
                           body: AsyncIterator[bytes], use_bdat: bool) -> TransactionOutcome:
        """One mail transaction.  With PIPELINING, MAIL, every RCPT and DATA go as one
        group (RFC 2920 §3.1); else one command per reply.  The body is sent only if at
        least one RCPT was accepted.  Never raises; a broken session sets ``error``."""
        out = TransactionOutcome(rcpts=[None] * len(rcpts))
        core = self.core
        try:
            pipelining = core.pipelining
            probe = self.rset_due and pipelining
            self.rset_due = False
            if probe:
                # RFC 2920 §3.1: RSET may open a group. It checks a pooled connection
                # (RFC 5321 §4.1.1.5) without a round trip of its own; a refusal or a dead
                # connection ends the session before any body is sent.
                core.rset(now=self.loop.time())
            core.mail(sender, list(mail_params), now=self.loop.time())
            if pipelining:
                for addr, params in rcpts:
                    core.rcpt(addr, list(params), now=self.loop.time())
                if not use_bdat:
                    core.data(now=self.loop.time())
                self._flush()
                if probe:
                    ev = await self._next_reply("RSET")
                    if not ev.ok:
                        raise _remote(ev.reply, "RSET")
                out.mail = (await self._next_reply("MAIL")).reply
                for i in range(len(rcpts)):
                    out.rcpts[i] = (await self._next_reply("RCPT")).reply
                if not use_bdat:
                    out.data = (await self._next_reply("DATA")).reply
            else:
                out.mail = (await self._next_reply("MAIL")).reply
                if out.mail.code != 250:
                    return out
                for i, (addr, params) in enumerate(rcpts):
                    out.rcpts[i] = (await self.command(core.rcpt, addr, list(params),
                                                       stage="RCPT")).reply
                if not any(r is not None and r.code in (250, 251) for r in out.rcpts):
                    return out
                if not use_bdat:
                    out.data = (await self.command(core.data, stage="DATA")).reply
            accepted = out.mail is not None and out.mail.code == 250 and any(
                r is not None and r.code in (250, 251) for r in out.rcpts)
            if use_bdat:
                if accepted:
                    out.final = await self._send_bdat(body)
            elif out.data is not None and out.data.code == 354:
                if accepted:
                    out.final = await self._send_data(body)
                else:
                    # RFC 2920 §3.1: DATA accepted with no recipient: end it at once.
                    core.send_body(b"", last=True, now=self.loop.time())
                    await self._next_reply("end of data")
            if out.final is not None:
                self.messages += 1
            if core.state in (ClientState.MAIL, ClientState.BDAT):
                await self.rset()                # end a transaction nobody finished
        except SessionError as exc:
            out.error = exc
            self.close()
        except Exception:  # noqa: BLE001 - e.g. the body file is unreadable
            log.exception("transaction with %s failed", self.peer)
            # Close without the final dot: a partial message must never be accepted.
            out.error = _local(451, "4.3.0", "Local error while sending the message",
                               "transaction")
            self.close()
        return out

    async def _send_data(self, body: AsyncIterator[bytes]) -> Reply:
        """The body after the 354.  Encoded chunks collect in the core until
        ``BODY_CHUNK`` octets are waiting, so a small message (most mail) leaves in one
        write together with its final dot."""
        core = self.core
        async for chunk in body:
            core.send_body(chunk, now=self.loop.time())
            if core.pending_output >= BODY_CHUNK:
                self._flush()
                await self._drain("DATA")
        core.send_body(b"", last=True, now=self.loop.time())
        self._flush()
        await self._drain("DATA")
        return (await self._next_reply("end of data")).reply

    async def _send_bdat(self, body: AsyncIterator[bytes]) -> Reply:
        """RFC 3030 §2: one BDAT per chunk, each answered before the next is sent."""
        core = self.core
        pending: bytes | None = None
        async for chunk in body:
            if pending is not None:
                core.bdat(pending, last=False, now=self.loop.time())
                self._flush()
                await self._drain("BDAT")
                ev = await self._next_reply("BDAT")
                if not ev.ok:
                    return ev.reply
            pending = chunk
        core.bdat(pending or b"", last=True, now=self.loop.time())
        self._flush()
        await self._drain("BDAT")
        return (await self._next_reply("end of data")).reply


async def open_session(ip: str, port: int, *, host: str, helo_name: str, timeouts: Timeouts,
                       tls: TlsPolicy, credentials: Credentials | None = None
                       ) -> ClientSession:
    """Connect, read the greeting, EHLO, apply the TLS policy, authenticate.  Returns a
    READY session or raises SessionError (after closing the socket)."""
    session = ClientSession(host, ip, port, helo_name, timeouts)
    try:
        await session.connect(timeouts.connect)
        await session.greeting()
        await session.hello()
        await session.negotiate_tls(tls, timeouts.connect)
        if credentials is not None:
            await session.authenticate(credentials)
    except SessionError:
        session.close()
        raise
    except Exception as exc:  # noqa: BLE001 - unknown errors are temporary (GUIDE idea 4)
        session.close()
        log.exception("session with %s failed", session.peer)
        raise _local(451, "4.3.0", f"Local error talking to {session.peer}",
                     "session") from exc
    return session


# ---------------------------------------------------------------- pooling and limits

#: (ip, port, tls mode, auth user): sessions are only shared between equal keys.
PoolKey = tuple[str, int, str, str]


class ConnectionPool:
    """Idle sessions per key.  ``acquire`` returns a READY session after a successful RSET
    (or None: open a new one); ``release`` keeps a usable session for ``idle_timeout``
    seconds unless it has carried ``max_messages`` messages."""

    def __init__(self, max_messages: int = 100, idle_timeout: float = 10.0) -> None:
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[tuple[ClientSession, asyncio.TimerHandle]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.opened = 0          # statistics, for tests and metrics
        self.reused = 0

    def idle_count(self, key: PoolKey | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    async def acquire(self, key: PoolKey) -> ClientSession | None:
        """An idle session, checked with RSET: with PIPELINING the RSET travels in the
        next transaction's first group (``rset_due``; the agent reconnects when it fails),
        else it is a round trip here."""
        entries = self._idle.get(key)
        while entries:
            session, timer = entries.pop()
            timer.cancel()
            if not entries:
                self._idle.pop(key, None)
            if session.usable and session.core.pipelining and not session.core.outstanding:
                session.rset_due = True
                self.reused += 1
                return session
            if await session.rset():
                self.reused += 1
                return session
            log.debug("pooled session to %s failed RSET; discarding", session.peer)
            self._quit(session)
            entries = self._idle.get(key)
        return None

    def release(self, key: PoolKey, session: ClientSession) -> None:
        if not session.usable or session.messages >= self.max_messages \
                or self.idle_timeout <= 0:
            self._quit(session)
            return
        session.idle_since = time.monotonic()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.idle_timeout, self._expire, key, session)
        self._idle.setdefault(key, []).append((session, timer))

    def _expire(self, key: PoolKey, session: ClientSession) -> None:
        entries = self._idle.get(key, [])
        for i, (s, _) in enumerate(entries):
            if s is session:
                del entries[i]
                break
        if not entries:
            self._idle.pop(key, None)
        self._quit(session)

    def _quit(self, session: ClientSession) -> None:
        task = asyncio.ensure_future(session.quit())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """QUIT every idle session and wait for pending QUITs."""
        for entries in list(self._idle.values()):
            for session, timer in entries:
                timer.cancel()
                self._quit(session)
        self._idle.clear()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class DestinationLimiter:
    """At most ``limit`` deliveries at once per destination (domain or next hop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sems: dict[str, list] = {}        # destination -> [semaphore, users]
        self.peak: dict[str, int] = {}          # highest concurrency seen, for tests

    def hold(self, destination: str) -> "_Hold":
        """``async with limiter.hold(destination):`` (a plain class, not a generator
        context manager: this runs once per delivery)."""
        return _Hold(self, destination)


class _Hold:
    __slots__ = ("limiter", "destination", "entry")

    def __init__(self, limiter: DestinationLimiter, destination: str) -> None:
        self.limiter = limiter
        self.destination = destination
        self.entry: list | None = None

    async def __aenter__(self) -> None:
        lim = self.limiter
        entry = lim._sems.get(self.destination)
        if entry is None:
            entry = lim._sems[self.destination] = [asyncio.Semaphore(lim.limit), 0]
        entry[1] += 1
        self.entry = entry
        try:
            await entry[0].acquire()
        except BaseException:
            self._leave()
            raise
        active = lim.limit - entry[0]._value  # noqa: SLF001 - statistics only
        if active > lim.peak.get(self.destination, 0):
            lim.peak[self.destination] = active

    async def __aexit__(self, *exc) -> None:
        assert self.entry is not None
        self.entry[0].release()
        self._leave()

    def _leave(self) -> None:
        entry = self.entry
        assert entry is not None
        entry[1] -= 1
        if entry[1] <= 0 and self.limiter._sems.get(self.destination) is entry:
            del self.limiter._sems[self.destination]
