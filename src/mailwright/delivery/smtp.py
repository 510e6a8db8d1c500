"""Remote delivery over SMTP (transport "smtp").

What: ``SmtpAgent.deliver`` sends one message to its remote recipients and returns exactly
one ``DeliveryResult`` per task.  Recipients are grouped by destination (``Route.next_hop``,
else the recipient's domain); each destination gets one mail transaction with all of its
recipients, destinations run concurrently, at most ``per_destination_concurrency`` at once
per destination (net.outbound.DestinationLimiter).

How, per destination (RFC 5321 §5.1):
1. Next hops.  A ``[[outbound.routes]]`` entry with ``next_hop`` fixes them ("[ip]:port" is
   used as is, "host:port" is resolved with A/AAAA; no MX lookup).  Otherwise the MX records
   of the domain, by preference, in random order among equal preferences; no MX records
   (NODATA) = the domain itself is the implicit MX; NXDOMAIN = permanent
   ``550 5.1.2``; null MX (RFC 7505 §4.2) = permanent ``556 5.1.10``; a DNS timeout or
   SERVFAIL = temporary ``451 4.4.3``.  An address-literal domain ("[192.0.2.1]") is used
   directly.
2. Each next-hop address in turn (at most ``MAX_ADDRESSES``): a pooled session (checked
   by RSET, pipelined with the MAIL when the server offers PIPELINING; if the pooled
   connection fails that check, a new connection to the same address) or a new one
   (net.outbound.open_session: greeting, EHLO, STARTTLS per the route's TLS policy, AUTH).
   A connection failure, a greeting/EHLO refusal, a TLS-policy failure
   or a session that breaks before MAIL is answered moves on to the next address; an
   opportunistic TLS handshake failure first retries the same address without TLS.
   When no address works the result is temporary if any attempt failed temporarily
   (permanent only when every next hop refused with a 5xx), reporting the last failure
   in which a server took part (else the last connection or DNS failure).
3. Before MAIL: a message needing SMTPUTF8 (``Envelope.smtputf8`` or a non-ASCII
   address) to a server without it fails permanently with ``550 5.6.7`` (RFC 6531 §3.2);
   a message larger than the server's SIZE fails with ``552 5.3.4`` (RFC 1870 §6.1).
4. The transaction: MAIL with SIZE= (RFC 1870), BODY=8BITMIME (RFC 6152), SMTPUTF8
   (RFC 6531), RET/ENVID and per-RCPT NOTIFY/ORCPT when the server offers DSN (RFC 3461
   §5.2); PIPELINING groups MAIL/RCPT/DATA (RFC 2920); CHUNKING uses BDAT (RFC 3030).
5. Results per recipient (RFC 5321 §4.2.1, §4.3.2): the MAIL reply for all when it
   refuses, else each RCPT reply, else the DATA/final reply; 2xx ok, 4xx (and any
   unexpected code) temporary, 5xx permanent.  Each result's ``reply`` is the remote reply
   followed by "(host[ip] TLS-version cipher)", e.g.
   ``250 2.0.0 Ok queued as X (mx1.example.test[127.0.0.5] TLSv1.3 TLS_AES_256_GCM_SHA384)``.

Invariants (GUIDE idea 4): ``deliver`` never raises; anything unexpected is a temporary
``451 4.3.0`` for the recipients it touches.  A 5xx is permanent only when a server said
it (or DNS says the domain cannot receive mail); every local or network problem is
temporary.  Local domains are never delivered over SMTP (temporary ``451 4.3.5``, a
routing bug).  AUTH is only sent over TLS.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Collection, Protocol, Sequence

from ..config.outbound import NextHop, OutboundRoute, OutboundSettings, parse_next_hop
from ..net.dns import DNSPermanentError, DNSTemporaryError, Resolver
from ..net.outbound import (
    ClientSession, ConnectionPool, Credentials, DestinationLimiter, PoolKey, SessionError,
    Timeouts, TlsPolicy, TransactionOutcome, open_session,
)
from ..message.trace import received_header
from ..queue.body import MessageBody
from ..queue.model import DeliveryResult, QueuedMessage
from ..smtp.client import xtext
from ..smtp.replies import Reply
from .base import DeliveryTask

log = logging.getLogger("mailwright.delivery.smtp")

__all__ = ["SmtpAgent", "MXResolver", "MAX_ADDRESSES", "build_smtp_agent"]

MAX_ADDRESSES = 10          # next-hop addresses tried per destination and attempt
INLINE_READ_MAX = 256 * 1024
BODY_CHUNK = 64 * 1024

NXDOMAIN_REPLY = Reply(550, "5.1.2", "Domain not found")
NULL_MX_REPLY = Reply(556, "5.1.10", "Domain does not accept mail (null MX)")
DNS_TEMP_REPLY = Reply(451, "4.4.3", "Temporary DNS failure looking up the destination")
NO_ADDRESS_REPLY = Reply(550, "5.4.4", "Unable to route: no address for the mail exchanger")
SMTPUTF8_REPLY = Reply(550, "5.6.7", "Message needs SMTPUTF8 but the server does not offer it")
TOO_BIG_REPLY = Reply(552, "5.3.4", "Message too big for the remote server")
LOCAL_DOMAIN_REPLY = Reply(451, "4.3.5", "Local domain routed to SMTP; not delivered")
LOCAL_ERROR_REPLY = Reply(451, "4.3.0", "Temporary local delivery error")
NO_HOSTS_REPLY = Reply(451, "4.4.1", "No next hop could be reached")
CREDENTIALS_REPLY = Reply(451, "4.3.5", "Smarthost credentials unreadable")


class MXResolver(Protocol):
    """What the agent needs from net.dns.Resolver."""

    async def mx(self, domain: str): ...                 # -> MXAnswer

    async def addresses(self, host: str) -> list[str]: ...


class _Fail(Exception):
    """Every recipient of a destination fails with ``reply``."""

    def __init__(self, reply: Reply, permanent: bool, where: str = "") -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.permanent = permanent
        self.where = where


@dataclass(frozen=True, slots=True)
class _Hop:
    host: str        # name (for logs, SNI) or "" for a literal
    ip: str
    port: int


def _is_temporary_dns(exc: BaseException) -> bool:
    return isinstance(exc, (DNSTemporaryError, asyncio.TimeoutError))


def _is_permanent_dns(exc: BaseException) -> bool:
    return isinstance(exc, DNSPermanentError)


def _clean(text: str, limit: int = 400) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def format_reply(reply: Reply, where: str = "") -> str:
    """``"550 5.1.1 No such user (mx.example.test[192.0.2.1] TLSv1.3 ...)"``."""
    head = f"{reply.code} {reply.enhanced} " if reply.enhanced else f"{reply.code} "
    text = head + _clean(" / ".join(reply.lines()))
    return f"{text} ({where})" if where else text


def _is_permanent(reply: Reply) -> bool:
    return 500 <= reply.code < 600


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _needs_smtputf8(message: QueuedMessage, tasks: Sequence[DeliveryTask]) -> bool:
    if message.envelope.smtputf8 or not message.envelope.sender.isascii():
        return True
    return any(not t.route.address.isascii() for t in tasks)


class SmtpAgent:
    """Delivery agent for transport "smtp".  See the module docstring."""

    transport = "smtp"

    def __init__(self, settings: OutboundSettings, *, hostname: str,
                 resolver: MXResolver | None = None,
                 local_domains: Collection[str] | Callable[[str], bool] = (),
                 pool: ConnectionPool | None = None,
                 limiter: DestinationLimiter | None = None,
                 rng: random.Random | None = None,
                 signer: Callable[[QueuedMessage, MessageBody], Awaitable[bytes]] | None = None,
                 sender_rewriter: Callable[[str], str] | None = None
                 ) -> None:
        self.settings = settings
        #: the MAIL FROM actually sent (BATV tags, policy/backscatter.py); the queue,
        #: the header and DSNs keep ``env.sender``
        self.sender_rewriter = sender_rewriter
        #: DKIM signatures / ARC set to put above the message (delivery/signing.py)
        self.signer = signer
        self.helo_name = settings.helo_name or hostname
        self.hostname = hostname
        self.resolver = resolver
        if callable(local_domains):
            self._is_local = local_domains
        else:
            names = frozenset(d.lower() for d in local_domains)
            self._is_local = lambda d: d in names
        self.pool = pool or ConnectionPool(settings.max_messages_per_connection,
                                           settings.idle_connection_timeout)
        self.limiter = limiter or DestinationLimiter(settings.per_destination_concurrency)
        self.timeouts = Timeouts(
            connect=settings.connect_timeout, greeting=settings.greeting_timeout,
            command=settings.command_timeout, mail=settings.mail_timeout,
            rcpt=settings.rcpt_timeout, data_init=settings.data_init_timeout,
            data_block=settings.data_block_timeout, data_done=settings.data_done_timeout)
        self.rng = rng or random.SystemRandom()
        # destination -> (route, TLS policy, fixed next hop): the settings are immutable
        self._dest_cache: dict[str, tuple[OutboundRoute | None, TlsPolicy, NextHop | None]] = {}

    async def close(self) -> None:
        """QUIT pooled connections (at shutdown)."""
        await self.pool.close()

    # ------------------------------------------------------------------ public API
    async def deliver(self, message: QueuedMessage, body: MessageBody,
                      tasks: Sequence[DeliveryTask]) -> list[DeliveryResult]:
        groups: dict[str, list[DeliveryTask]] = defaultdict(list)
        for task in tasks:
            dest = (task.route.next_hop or _domain_of(task.route.address)).lower().rstrip(".")
            groups[dest].append(task)
        added = await self.signer(message, body) if self.signer is not None else b""
        if len(groups) == 1:                 # the usual case: no task per destination
            [(dest, group)] = groups.items()
            outcomes = [await self._guarded(message, body, dest, group, added)]
        else:
            outcomes = await asyncio.gather(
                *(self._guarded(message, body, dest, group, added)
                  for dest, group in groups.items()))
        by_id = {r.recipient_id: r for results in outcomes for r in results}
        return [by_id[t.recipient.id] for t in tasks]

    async def _guarded(self, message: QueuedMessage, body: MessageBody, dest: str,
                       tasks: list[DeliveryTask], added: bytes = b"") -> list[DeliveryResult]:
        try:
            if self._is_local(dest):
                log.error("%s: local domain %s routed to SMTP", message.queue_id, dest)
                return _all(tasks, LOCAL_DOMAIN_REPLY, False)
            async with self.limiter.hold(dest):
                return await self._deliver_destination(message, body, dest, tasks,
                                                       added)
        except _Fail as f:
            return _all(tasks, f.reply, f.permanent, f.where)
        except Exception:  # noqa: BLE001 - unknown errors are temporary
            log.exception("%s: SMTP delivery to %s failed", message.queue_id, dest)
            return _all(tasks, LOCAL_ERROR_REPLY, False)

    # ------------------------------------------------------------------ one destination
    async def _deliver_destination(self, message: QueuedMessage, body: MessageBody, dest: str,
                                   tasks: list[DeliveryTask], added: bytes = b""
                                   ) -> list[DeliveryResult]:
        route, policy, fixed_hop = self._destination(dest)
        creds = await self._credentials(route) if route is not None else None
        needs_utf8 = _needs_smtputf8(message, tasks)
        try:
            size, data = _read_small(body)
        except OSError as exc:
            log.error("%s: body %s unreadable: %s", message.queue_id, body, exc)
            raise _Fail(LOCAL_ERROR_REPLY, False) from None

        failures: list[tuple[_Fail, int]] = []     # (failure, 1 if a server got involved)
        tried = 0
        async for hop in self._hops(dest, fixed_hop):
            if isinstance(hop, _Fail):
                failures.append((hop, 0))
                continue
            if tried >= MAX_ADDRESSES:
                break
            tried += 1
            key: PoolKey = (hop.ip, hop.port, policy.mode, creds.user if creds else "")
            for fresh in (False, True):
                try:
                    session = await self._session(key, hop, policy, creds, fresh=fresh)
                except SessionError as exc:
                    log.info("%s: %s[%s]:%d: %s", message.queue_id, hop.host or hop.ip,
                             hop.ip, hop.port, exc)
                    failures.append((_Fail(exc.reply, exc.permanent and exc.remote,
                                           f"{hop.host or hop.ip}[{hop.ip}]"
                                           if exc.remote else ""),
                                     0 if exc.stage == "connect" else 1))
                    break
                probed = session.rset_due      # a pooled session, RSET pipelined with MAIL
                try:
                    results = await self._transaction(message, body, size, needs_utf8,
                                                      session, tasks, added, data)
                finally:
                    self.pool.release(key, session)
                if results is not None:
                    return results
                if not probed:
                    failures.append((_Fail(Reply(451, "4.4.2", "Connection lost before MAIL "
                                                 "was answered"), False, session.describe()),
                                     1))
                    break
                # The pooled connection failed its RSET probe (closed meanwhile, or the
                # server refused it): nothing was delivered; try a new connection.
                log.info("%s: pooled connection to %s failed before MAIL was answered; "
                         "reconnecting", message.queue_id, session.peer)
        raise _final_failure(failures)

    def _destination(self, dest: str
                     ) -> tuple[OutboundRoute | None, TlsPolicy, NextHop | None]:
        """The route, TLS policy and fixed next hop of ``dest`` (cached: they depend only
        on the settings)."""
        cached = self._dest_cache.get(dest)
        if cached is None:
            route = self.settings.route_for(dest)
            policy = TlsPolicy(mode=route.tls if route else "opportunistic",
                               verify=bool(route and route.tls_verify),
                               ca_file=route.tls_ca_file if route else "")
            hop = route.hop if route else None
            if hop is None and dest.startswith("["):
                try:
                    hop = parse_next_hop(dest)
                except ValueError:
                    raise _Fail(NXDOMAIN_REPLY, True) from None
            cached = (route, policy, hop)
            if len(self._dest_cache) >= 10_000:       # bound it (MX destinations vary)
                self._dest_cache.clear()
            self._dest_cache[dest] = cached
        return cached

    async def _session(self, key: PoolKey, hop: _Hop, policy: TlsPolicy,
                       creds: Credentials | None, fresh: bool = False) -> ClientSession:
        """A pooled session for ``key`` (unless ``fresh``), else a new one."""
        session = None if fresh else await self.pool.acquire(key)
        if session is not None:
            return session
        try:
            session = await open_session(hop.ip, hop.port, host=hop.host,
                                         helo_name=self.helo_name, timeouts=self.timeouts,
                                         tls=policy, credentials=creds)
        except SessionError as exc:
            if not exc.retry_plaintext:
                raise
            log.warning("TLS with %s[%s] failed (%s); retrying without TLS",
                        hop.host or hop.ip, hop.ip, exc.reply)
            session = await open_session(hop.ip, hop.port, host=hop.host,
                                         helo_name=self.helo_name, timeouts=self.timeouts,
                                         tls=TlsPolicy(mode="none"), credentials=None)
        self.pool.opened += 1
        return session

    async def _credentials(self, route: OutboundRoute | None) -> Credentials | None:
        if route is None or not route.auth_user:
            return None
        try:
            text = await asyncio.to_thread(_read_first_line, route.auth_password_file)
        except OSError as exc:
            log.error("cannot read %s: %s", route.auth_password_file, exc)
            raise _Fail(CREDENTIALS_REPLY, False) from None
        return Credentials(route.auth_user, text)

    # ------------------------------------------------------------------ next hops
    async def _hops(self, dest: str, hop: NextHop | None
                    ) -> AsyncIterator[_Hop | _Fail]:
        """Addresses to try, in order; a _Fail item records why a host gave none.
        ``hop``: the route's fixed next hop, or ``dest`` itself when it is a literal."""
        port = self.settings.port
        if hop is not None:
            if hop.literal:
                yield _Hop("", hop.host, hop.port or port)
                return
            hosts = [hop.host]
            port = hop.port or port
        else:
            hosts = await self._mx_hosts(dest)
        found = False
        for host in hosts:
            try:
                addresses = await self._resolver().addresses(host)
            except Exception as exc:  # noqa: BLE001
                if _is_permanent_dns(exc):
                    yield _Fail(NO_ADDRESS_REPLY, True)
                else:
                    yield _Fail(DNS_TEMP_REPLY, False)
                continue
            if not addresses:
                yield _Fail(NO_ADDRESS_REPLY, not found)
                continue
            found = True
            for ip in addresses:
                yield _Hop(host, ip, port)

    async def _mx_hosts(self, domain: str) -> list[str]:
        """RFC 5321 §5.1: MX hosts by preference, shuffled within a preference; the
        domain itself when it has no MX records.  Raises _Fail."""
        try:
            answer = await self._resolver().mx(domain)
        except Exception as exc:  # noqa: BLE001
            if _is_permanent_dns(exc):
                raise _Fail(NXDOMAIN_REPLY, True) from None
            if not _is_temporary_dns(exc):
                log.exception("MX lookup of %s failed", domain)
            raise _Fail(DNS_TEMP_REPLY, False) from None
        if not answer.exists:
            raise _Fail(NXDOMAIN_REPLY, True)
        if answer.null_mx:
            raise _Fail(NULL_MX_REPLY, True)               # RFC 7505 §4.2
        records = [(pref, host) for pref, host in answer.records if host not in (".", "")]
        if not records:
            if answer.records:                             # only "." entries: treat as null
                raise _Fail(NULL_MX_REPLY, True)
            return [domain]                                # implicit MX (RFC 5321 §5.1)
        by_pref: dict[int, list[str]] = defaultdict(list)
        for pref, host in records:
            if host not in by_pref[pref]:
                by_pref[pref].append(host)
        hosts: list[str] = []
        for pref in sorted(by_pref):
            group = by_pref[pref]
            self.rng.shuffle(group)
            hosts.extend(h for h in group if h not in hosts)
        return hosts

    def _resolver(self) -> MXResolver:
        if self.resolver is None:                     # the system resolv.conf unless configured
            self.resolver = Resolver(list(self.settings.nameservers) or None,
                                     timeout=self.settings.dns_timeout)
        return self.resolver

    # ------------------------------------------------------------------ the transaction
    async def _transaction(self, message: QueuedMessage, body: MessageBody, size: int,
                           needs_utf8: bool, session: ClientSession,
                           tasks: list[DeliveryTask], added: bytes = b"",
                           data: bytes | None = None) -> list[DeliveryResult] | None:
        """Results, or None when the session broke before MAIL was answered (try the
        next address)."""
        caps = session.core.capabilities
        where = session.describe()
        env = message.envelope
        # RFC 5321 §4.4: a relaying server inserts its own trace line at the top of the
        # content. "for" names the recipient only when this copy has just one (§7.2).
        trace = received_header(env, queue_id=message.queue_id, hostname=self.hostname,
                                recipient=tasks[0].route.address if len(tasks) == 1 else None
                                ).encode("utf-8") + added
        size += len(trace)
        if needs_utf8 and not caps.has("SMTPUTF8"):
            return _all(tasks, SMTPUTF8_REPLY, True, where)      # RFC 6531 §3.2
        limit = caps.size_limit
        if limit is not None and size > limit:
            return _all(tasks, TOO_BIG_REPLY, True, where)       # RFC 1870 §6.1
        mail_params: list[str] = []
        if caps.has("SIZE"):
            mail_params.append(f"SIZE={size}")
        if env.body_type.upper() == "8BITMIME" and caps.has("8BITMIME"):
            mail_params.append("BODY=8BITMIME")
        if needs_utf8:
            mail_params.append("SMTPUTF8")
        dsn = caps.has("DSN")
        if dsn:                                                   # RFC 3461 §5.2
            if env.ret:
                mail_params.append(f"RET={env.ret.upper()}")
            if env.envid:
                mail_params.append(f"ENVID={xtext(env.envid)}")
        rcpts: list[tuple[str, list[str]]] = []
        for task in tasks:
            params: list[str] = []
            if dsn:
                if task.recipient.notify:
                    params.append("NOTIFY=" + ",".join(n.upper() for n in task.recipient.notify))
                if task.recipient.orcpt:
                    addr_type, _, addr = task.recipient.orcpt.partition(";")
                    if addr:
                        params.append(f"ORCPT={addr_type};{xtext(addr)}")
            rcpts.append((task.route.address, params))
        sender = self.sender_rewriter(env.sender) if self.sender_rewriter else env.sender
        outcome = await session.send_message(
            sender, mail_params, rcpts, _read_body(body, trace, data),
            use_bdat=caps.has("CHUNKING"))
        if outcome.mail is None:
            return None
        return _results(tasks, outcome, where, remote_mta=session.host or session.ip,
                        dsn_offered=dsn)


def _results(tasks: list[DeliveryTask], outcome: TransactionOutcome, where: str,
             remote_mta: str = "", dsn_offered: bool = True) -> list[DeliveryResult]:
    """Per-recipient results (RFC 5321 §4.2.1: 2yz ok, 4yz temporary, 5yz permanent).

    ``remote_mta`` becomes the DSN's Remote-MTA field; a success to a next hop that did not
    offer DSN is "relayed" (RFC 3461 §5.2.2.1: we owe the SUCCESS notice ourselves)."""
    broken = outcome.error.reply if outcome.error is not None else \
        Reply(451, "4.4.2", "Connection lost")
    out: list[DeliveryResult] = []
    mail = outcome.mail
    assert mail is not None
    for task, rcpt in zip(tasks, outcome.rcpts):
        rid = task.recipient.id
        if mail.code != 250:
            reply = mail
        elif rcpt is None:
            reply = broken
        elif rcpt.code not in (250, 251):
            reply = rcpt
        elif outcome.data is not None and outcome.data.code != 354:
            reply = outcome.data
        elif outcome.final is None:
            reply = broken
        else:
            reply = outcome.final
        ok = reply is outcome.final and reply.code == 250
        out.append(DeliveryResult(rid, ok=ok, permanent=not ok and _is_permanent(reply),
                                  reply=format_reply(reply, where), remote_mta=remote_mta,
                                  status=reply.enhanced, dsn_relayed=ok and not dsn_offered))
    return out


def _final_failure(failures: list[tuple[_Fail, int]]) -> _Fail:
    """When no address worked: temporary if any attempt failed temporarily (mail is
    retried; permanent only when every next hop said so), preferring failures where a
    server answered over bare connection or DNS failures, the later among equals."""
    if not failures:
        return _Fail(NO_HOSTS_REPLY, False)
    temporary = [(f, rank, i) for i, (f, rank) in enumerate(failures) if not f.permanent]
    pool = temporary or [(f, rank, i) for i, (f, rank) in enumerate(failures)]
    return max(pool, key=lambda item: (item[1], item[2]))[0]


def _all(tasks: Sequence[DeliveryTask], reply: Reply, permanent: bool, where: str = ""
         ) -> list[DeliveryResult]:
    text = format_reply(reply, where)
    return [DeliveryResult(t.recipient.id, ok=False, permanent=permanent, reply=text)
            for t in tasks]


def _read_first_line(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def _read_small(body: MessageBody) -> tuple[int, bytes | None]:
    """(size, content) of the stored body; content None when it is larger than
    ``INLINE_READ_MAX`` (then it is streamed by ``_read_body``). Raises OSError."""
    if body.data is not None:           # kept inline by the store: already in memory
        return len(body.data), body.data
    fd = os.open(body.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > INLINE_READ_MAX:
            return size, None
        data = os.read(fd, size + 1)     # a short read of a regular file is its end
        if len(data) > size:              # it grew meanwhile (never, for a queue file)
            parts = [data]
            while chunk := os.read(fd, 65536):
                parts.append(chunk)
            data = b"".join(parts)
        return len(data), data
    finally:
        os.close(fd)


async def _read_body(body: MessageBody, prefix: bytes = b"", data: bytes | None = None
                     ) -> AsyncIterator[bytes]:
    """The stored body, after ``prefix``. A small body (most mail) was already read in
    one call from the page cache (``data``, see ``_read_small``), cheaper inline than
    hand-offs to a thread; large ones stream from a thread."""
    if prefix:
        yield prefix
    if data is not None:
        yield data
        return
    f = await asyncio.to_thread(body.open)
    try:
        while chunk := await asyncio.to_thread(f.read, BODY_CHUNK):
            yield chunk
    finally:
        f.close()


def build_smtp_agent(settings: OutboundSettings, *, hostname: str,
                     local_domains: Collection[str] | Callable[[str], bool] = (),
                     resolver: MXResolver | None = None,
                     signer: Callable[[QueuedMessage, MessageBody], Awaitable[bytes]] | None = None,
                     sender_rewriter: Callable[[str], str] | None = None
                     ) -> SmtpAgent:
    """The explicit factory the app wires into the queue manager (GUIDE idea 11)."""
    if resolver is None:
        resolver = Resolver(list(settings.nameservers) or None, timeout=settings.dns_timeout)
    return SmtpAgent(settings, hostname=hostname, resolver=resolver,
                     local_domains=local_domains, signer=signer,
                     sender_rewriter=sender_rewriter)
