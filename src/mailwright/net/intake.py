"""Intake: the listeners of one process and the state their sessions share.

What: binds (or adopts inherited) listening sockets, counts connections in total and per
client IP (421 4.7.0 beyond the limits), keeps the in-memory directory snapshot fresh, and
hands each connection an ``SmtpSession``.

Submission (RFC 6409, RFC 8314): listeners with role ``submission`` (587, STARTTLS) or
``submissions`` (465, implicit TLS) offer AUTH with the ``[submission]`` mechanisms (only
once TLS is active unless ``require_tls = false``); role ``mx`` never offers AUTH.  The
server owns the state sessions share for that: the ``AuthLimiter`` (failure counters per
client IP and per account, in memory per process), the ``SenderAuthorization`` policy, and
the credential look-ups (``verify_password`` runs scrypt in a thread and spends the same
work on unknown accounts; ``scram_verifier``; ``send_as_grants``).

Loop detection applies on every listener: a message whose header section holds more than
``Limits.max_received_headers`` Received fields is refused at end of data.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from ..admin.passwords import hash_password, verify_password
from ..config.submission import SubmissionSettings
from ..message.headers import QUARANTINE_FIELD, remove_fields
from ..policy.auth_limits import AuthLimiter
from ..policy.pipeline import Pipeline
from ..policy.submission import SenderAuthorization
from ..policy.relay import RecipientCheck, RelayCheck
from ..routing.directory import Directory
from ..smtp import catalog
from ..smtp.replies import Reply
from ..smtp.sasl import ScramVerifier
from ..smtp.server import ServerConfig
from ..metrics.mail import MailMetrics
from ..store.base import Store, TraceEvent
from .peername import PeerNameCache
from .session import SmtpSession

log = logging.getLogger("mailwright.intake")

TRACE_DELAY = 0.2       # seconds a trace event may wait for others to share its write
TRACE_BATCH = 500       # ... or this many events: written at once

_QUARANTINE = QUARANTINE_FIELD.lower()


def _is_quarantine_field(name: bytes, raw: bytes) -> bool:
    return name == _QUARANTINE


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    name: str
    address: str
    port: int
    role: str = "mx"          # "mx" (port 25) | "submission" (587) | "submissions" (465)
    tls: str = "starttls"     # "starttls" | "implicit" | "none"

    @property
    def submission(self) -> bool:
        return self.role in ("submission", "submissions")


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_line_length: int = 2048
    max_errors: int = 10
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    command_timeout: float = 300.0
    data_timeout: float = 300.0
    max_received_headers: int = 50   # Postfix hopcount_limit; more = a loop (RFC 5321 §6.3)


def bind_listener(spec: ListenerSpec, backlog: int = 1024, *, reuse_port: bool = False,
                  port: int | None = None) -> socket.socket:
    """Create the listening socket (in the parent, before workers start). ``reuse_port``:
    one of several sockets on the same address and ``port`` (SO_REUSEPORT), one per
    intake worker, among which the kernel spreads new connections evenly."""
    family = socket.AF_INET6 if ":" in spec.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((spec.address, spec.port if port is None else port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class IntakeServer:
    def __init__(self, *, hostname: str, store: Store, directory: Directory,
                 limits: Limits, ssl_context: ssl.SSLContext | None,
                 trusted_networks: list[str] | tuple[str, ...] = (),
                 on_commit: Callable[[str], None] | None = None,
                 handshake_timeout: float = 30.0,
                 submission: SubmissionSettings | None = None,
                 checks: dict[str, list] | None = None,
                 header_filters: list[Callable[[bytes], bytes]] | None = None,
                 trace: bool = True, resolver: Any = None, metrics: MailMetrics | None = None,
                 recipient_rewriter: Callable | None = None) -> None:
        self.hostname = hostname
        #: (Address, Directory) -> (Address to resolve, trace note | None); BATV tags
        self.recipient_rewriter = recipient_rewriter
        self.store = store
        self.directory = directory
        self.limits = limits
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.relay = RelayCheck(trusted_networks)
        extra = checks or {}
        self.pipeline = Pipeline(
            connect=extra.get("connect", ()), helo=extra.get("helo", ()),
            mail=extra.get("mail", ()),
            # relay first (GUIDE idea 8); checks marked ``early`` (the directory-harvest
            # guard counts unknown recipients) before the recipient check refuses them.
            rcpt=[self.relay,
                  *(c for c in extra.get("rcpt", ()) if getattr(c, "early", False)),
                  RecipientCheck(),
                  *(c for c in extra.get("rcpt", ()) if not getattr(c, "early", False))],
            data=extra.get("data", ()))
        self.header_filters = list(header_filters or ())
        #: for the client's reverse DNS name (net/peername.py); None = not looked up
        self.resolver = resolver
        self.peer_names = PeerNameCache(resolver) if resolver is not None else None
        self.metrics = metrics if metrics is not None else MailMetrics()   # metrics/mail.py
        #: record transaction outcomes for `mailwright trace` (store.record_trace)
        self.trace = trace and hasattr(store, "record_trace")
        self.on_commit = on_commit
        self._committed: str | None = None          # batched per loop pass (below)
        self._wake_scheduled = False
        self._trace_events: list[TraceEvent] = []       # batched (record_trace)
        self._trace_timer: asyncio.TimerHandle | None = None
        self._trace_tasks: set[asyncio.Task] = set()
        self.submission = submission or SubmissionSettings()
        self.auth_limiter = AuthLimiter.from_settings(self.submission)
        self.sender_auth = SenderAuthorization(self.submission)
        self._dummy_hash: str | None = None
        self.connections = 0
        self.per_ip: dict[str, int] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._configs: dict[str, ServerConfig] = {}
        self._refresh_task: asyncio.Task | None = None

    # -- connection accounting

    def register(self, ip: str) -> Reply | None:
        if self.connections >= self.limits.max_connections:
            return catalog.TOO_MANY_CONNECTIONS
        count = self.per_ip.get(ip, 0)
        if count >= self.limits.max_connections_per_ip:
            return catalog.TOO_MANY_CONNECTIONS_FROM_IP
        self.connections += 1
        self.per_ip[ip] = count + 1
        return None

    def unregister(self, ip: str) -> None:
        self.connections -= 1
        count = self.per_ip.get(ip, 0) - 1
        if count <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = count

    def is_trusted(self, ip: str) -> bool:
        return self.relay.is_trusted(ip)

    def server_config(self, spec: ListenerSpec) -> ServerConfig:
        config = self._configs.get(spec.name)
        if config is None:
            lim = self.limits
            config = ServerConfig(
                hostname=self.hostname,
                max_message_size=lim.max_message_size,
                max_recipients=lim.max_recipients,
                max_line_length=lim.max_line_length,
                max_errors=lim.max_errors,
                command_timeout=lim.command_timeout,
                data_timeout=lim.data_timeout,
                tls_available=self.ssl_context is not None and spec.tls == "starttls",
                tls_active=spec.tls == "implicit",
                auth_mechanisms=self.submission.mechanisms if spec.submission else (),
                auth_requires_tls=self.submission.require_tls,
            )
            self._configs[spec.name] = config
        return config

    # -- credentials (submission)

    async def verify_password(self, login: str, password: str) -> bool:
        """True if ``login`` is a mailbox with a password and ``password`` matches.
        Unknown logins cost the same scrypt work, so timing does not reveal them."""
        mailbox = await self.store.get_mailbox(login)
        stored = mailbox.password_hash if mailbox is not None else ""
        if not stored:
            if self._dummy_hash is None:
                self._dummy_hash = await asyncio.to_thread(hash_password, "mailwright-dummy")
            await asyncio.to_thread(verify_password, password, self._dummy_hash)
            return False
        return await asyncio.to_thread(verify_password, password, stored)

    async def scram_verifier(self, login: str) -> ScramVerifier | None:
        getter = getattr(self.store, "get_scram_verifier", None)
        if getter is None:
            return None
        return ScramVerifier.decode(await getter(login))

    async def send_as_grants(self, login: str) -> tuple[str, ...]:
        lister = getattr(self.store, "list_send_as", None)
        return tuple(await lister(login)) if lister is not None else ()

    def filter_header(self, header: bytes) -> bytes:
        """The arriving header section without the fields only we may set (our quarantine
        mark; forged Authentication-Results through ``header_filters``)."""
        if _QUARANTINE in header.lower():
            header, _ = remove_fields(header, _is_quarantine_field)
        for keep_ours_only in self.header_filters:
            header = keep_ours_only(header)
        return header

    def message_committed(self, queue_id: str) -> None:
        """Wake the queue manager: once per event-loop pass, however many sessions
        committed in it (a group commit settles many at once), not once per message."""
        if self.on_commit is None:
            return
        self._committed = queue_id
        if not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake_queue)

    def _wake_queue(self) -> None:
        self._wake_scheduled = False
        queue_id, self._committed = self._committed, None
        if queue_id is not None and self.on_commit is not None:
            self.on_commit(queue_id)

    def record_trace(self, event: TraceEvent) -> None:
        """Queue a trace event (fire and forget: it never delays or fails a session).
        Events go to the store in batches, at most ``TRACE_DELAY`` seconds after the
        first of a batch or at ``TRACE_BATCH`` events: a write transaction per event
        loop pass was three times as many as the message commits themselves, each
        taking the database write lock that the other processes wait for. A kill -9
        loses at most that last fraction of a second of trace records (never mail)."""
        self._trace_events.append(event)
        if len(self._trace_events) >= TRACE_BATCH:
            self._flush_trace()
        elif self._trace_timer is None:
            self._trace_timer = asyncio.get_running_loop().call_later(TRACE_DELAY,
                                                                      self._flush_trace)

    def _flush_trace(self) -> None:
        if self._trace_timer is not None:
            self._trace_timer.cancel()
            self._trace_timer = None
        if self._trace_events:
            events, self._trace_events = self._trace_events, []
            task = asyncio.get_running_loop().create_task(self.store.record_trace(events))
            self._trace_tasks.add(task)
            task.add_done_callback(self._trace_done)

    def _trace_done(self, task: asyncio.Task) -> None:
        self._trace_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("trace events not recorded: %r", task.exception())

    # -- lifecycle

    async def start(self, listeners: list[tuple[ListenerSpec, socket.socket]]) -> None:
        loop = asyncio.get_running_loop()
        for spec, sock in listeners:
            ctx = self.ssl_context if spec.tls == "implicit" else None
            server = await loop.create_server(lambda spec=spec: SmtpSession(self, spec),
                                              sock=sock, ssl=ctx,
                                              ssl_handshake_timeout=self.handshake_timeout
                                              if ctx else None)
            self._servers.append(server)
        self._refresh_task = loop.create_task(self._refresh_directory())

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5.0)
            except (asyncio.TimeoutError, Exception):
                pass
        self._flush_trace()               # the last trace events, then wait for them
        if self._trace_tasks:
            await asyncio.wait(set(self._trace_tasks), timeout=5.0)

    async def _refresh_directory(self, interval: float = 1.0) -> None:
        """Reload the snapshot when the store says the directory changed (any process)."""
        while True:
            await asyncio.sleep(interval)
            try:
                version = await self.store.directory_version()
                if version != self.directory.version:
                    snapshot = await self.store.directory_snapshot()
                    self.directory = Directory(snapshot, self.directory.primary_domain)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("directory refresh failed; keeping the previous snapshot")
