"""The asyncio driver of one SMTP server session: the only glue between a socket and the core.

What: an ``asyncio.Protocol`` that feeds received bytes to ``smtp.server.ServerConnection``,
answers its events through the policy pipeline, streams the body into a store blob, commits
at end of data and only then sends 250 (GUIDE idea 5), and performs STARTTLS.

How: the core is pumped synchronously from ``data_received``; a step that must wait (a commit,
an asynchronous policy check, the TLS handshake) marks the session busy and pauses reading, so
replies still leave in command order (RFC 2920) and a pipelining client cannot run ahead.

Submission (listener roles ``submission``/``submissions``, RFC 6409):

* AUTH: the core emits ``AuthStart``/``AuthResponse``; ``_auth`` runs the SASL mechanism
  (smtp/sasl.py), checks the password (scrypt in a thread) or fetches the SCRAM verifier,
  and answers 334 / ``235 2.7.0`` / ``535 5.7.8``.  Failures are counted per client IP and
  per account (policy/auth_limits.py) and answered after a growing delay; a locked-out
  address gets ``421 4.7.0`` and is disconnected, a locked-out account ``454 4.7.0``.
* MAIL needs a successful AUTH (``530 5.7.0``) and a sender the user may use (``553
  5.7.1``, policy/submission.py); the grants are loaded once at login.
* Body: the first header section is held back (``message.headers.HeaderCapture``, bounded)
  while the rest streams to the blob; when it is complete the driver writes the fix-ups
  first (a Received field naming the authenticated user, Message-ID and Date when missing,
  RFC 6409 §8), then the section, then the rest.  At end of data the header ``From:`` is
  checked (``550 5.7.1``).

On every listener the captured header section also gives the Received count: above
``Limits.max_received_headers`` the message is refused with ``554 5.4.6`` (RFC 5321 §6.3).

Invariants: nothing in here formats protocol text; every reply comes from ``smtp.catalog`` or
a policy verdict. An exception in this module never reaches the peer: it becomes a 451 4.3.0
and is logged with the session id.  Credentials never reach the log: SASL data is only
handed to the mechanism, and log lines name the mechanism and (sanitised) account only.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from ..message.headers import HeaderCapture, submission_fixups
from ..message.trace import sanitize_address
from ..message.headers import quarantine_field
from ..policy.context import MessageView, SessionInfo, TransactionInfo
from ..policy.verdict import Action, Verdict
from ..queue.model import Envelope, RecipientRequest
from ..routing.directory import Kind
from ..smtp import catalog
from ..smtp import events as ev
from ..smtp import sasl
from ..smtp.server import ServerConnection
from ..store.base import StoreError, TraceEvent
from .peername import PeerName, wanted
from .tls import describe

if TYPE_CHECKING:
    from .intake import IntakeServer, ListenerSpec

log = logging.getLogger("mailwright.smtpd")

_session_counter = 0
_NO_NAME = PeerName()
PEER_NAME_WAIT = 5.0     # seconds the commit waits for a reverse lookup still in progress
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]{1,500}>)", re.I | re.M)


def _verdict_dict(v: Verdict) -> dict:
    out = {"check": v.check, "action": v.action.value, "reason": v.reason}
    if v.reply is not None:
        out["reply"] = str(v.reply)
    if v.data:
        out["evidence"] = v.data          # e.g. the SPF record, the DMARC policy found
    return out


_MAX_HELD = 256 * 1024      # pipelined bytes buffered during a commit before pausing reads


def _new_session_id() -> str:
    global _session_counter
    _session_counter += 1
    return f"{os.getpid():x}.{_session_counter:x}"


class SmtpSession(asyncio.Protocol):
    def __init__(self, server: "IntakeServer", listener: "ListenerSpec") -> None:
        self.server = server
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: ServerConnection | None = None
        self.sid = _new_session_id()
        self.info: SessionInfo | None = None
        self.txn = TransactionInfo()
        self._envelope_rcpts: list[RecipientRequest] = []
        self._rcpt_seen: set[str] = set()
        self._mail: ev.MailFrom | None = None
        self._blob = None
        self._blob_error: OSError | None = None
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._registered = False
        self._closing = False
        self._held = 0          # bytes received while a step was in progress
        self._paused = False
        self._sasl = None                    # the SASL exchange in progress
        self._grants: tuple[str, ...] = ()   # send-as grants of the authenticated user
        self._capture: HeaderCapture | None = None
        self._greeted = True
        self._peer: asyncio.Task | None = None     # reverse DNS (net/peername.py) ...
        self._peer_name: PeerName | None = None    # ... or its cached answer

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        ip, port = str(peer[0]), int(peer[1]) if len(peer) > 1 else 0
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        refusal = self.server.register(ip)
        self.server.metrics.connection_opened(self.listener.name, refused=refusal is not None)
        if refusal is not None:
            transport.write(refusal.to_bytes())
            transport.close()
            return
        self._registered = True
        self.info = SessionInfo(client_ip=ip, client_port=port, listener=self.listener.name,
                                role=self.listener.role, trusted=self.server.is_trusted(ip),
                                session_id=self.sid)
        config = self.server.server_config(self.listener)
        self.conn = ServerConnection(config, self.loop.time())
        names = self.server.peer_names
        if names is not None and wanted(ip):
            now = self.loop.time()
            self._peer_name = names.cached(ip, now)
            if self._peer_name is None:
                self._peer = self.loop.create_task(names.lookup(ip, now))
        if self.listener.tls == "implicit":
            self.info.tls = describe(transport.get_extra_info("ssl_object"))
        if self.server.pipeline.has("connect"):
            verdict = self.server.pipeline.begin_connect(self.info)
            if isinstance(verdict, Verdict):
                self._connected(verdict)
                self._pump()
            else:                           # a check waits (DNS lists, greeting delay)
                self._greeted = False
                self._start(self._connect(verdict))
        else:
            self.conn.greeting()
            self._flush()
        self._arm_timer()
        log.debug("connect sid=%s client=%s:%s listener=%s", self.sid, ip, port,
                  self.listener.name, extra={"sid": self.sid})

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        if not self._greeted:
            self.info.early_talker = True   # talked before the banner (RFC 5321 §4.3.1)
        conn.receive_data(data, self.loop.time())
        if not self._busy:
            self._pump()
        else:
            # Pipelined input waits in the core while a step is in progress; reading is
            # paused only if a client keeps sending that much (no unbounded buffering).
            self._held += len(data)
            if self._held > _MAX_HELD and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.eof_received()
            if not self._busy:
                self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            # A commit in progress is left to finish: the message may become queued even
            # though the client never saw the 250 (it will retry: a duplicate, never a loss).
            pass
        elif self.txn.facts.get("refused") and not self.txn.facts.get("traced"):
            self._trace("rejected", step="rcpt")
        self._discard_blob()
        if self._registered:
            self.server.metrics.session_closed(self.listener.name,
                                               bool(self.info and self.info.tls))
            self.server.unregister(self.info.client_ip if self.info else "")
            self._registered = False

    # ------------------------------------------------------------ pumping the core

    def _flush(self) -> None:
        if self.conn is None or self.transport is None:
            return
        out = self.conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def _pump(self) -> None:
        conn = self.conn
        assert conn is not None
        while not self._closing:
            event = conn.next_event()
            if event is ev.NEED_DATA or event is ev.PAUSED:
                self._flush()
                return
            try:
                if self._handle(event):
                    # An asynchronous step took over; it resumes the pump when done.
                    self._flush()
                    return
            except Exception:
                log.exception("session %s: internal error handling %s", self.sid,
                              type(event).__name__)
                if type(event) in ev.NEEDS_RESPONSE and conn.awaiting_response:
                    conn.respond(catalog.TEMP_LOCAL_ERROR)

    def _handle(self, event) -> bool:
        """Handle one event. Returns True when an asynchronous step was started."""
        conn = self.conn
        t = type(event)
        if t is ev.BodyChunk:
            self._write_body(event.data)
        elif t is ev.RcptTo:
            return self._on_rcpt(event)
        elif t is ev.MailFrom:
            self._reset_transaction()
            refusal = self._check_mail(event)
            if refusal is not None:
                conn.respond(refusal)
                return False
            self._mail = event
            self.txn.sender = str(event.address)
            if self.server.pipeline.has("mail"):
                verdict = self.server.pipeline.begin_mail(self.info, self.txn)
                if not isinstance(verdict, Verdict):    # a check has to wait
                    self._start(self._mail_checks(verdict))
                    return True
                if verdict.action in (Action.REJECT, Action.TEMPFAIL):
                    self._refuse_mail(verdict)
                    return False
            conn.respond(None)
        elif t is ev.DataStarted:
            self._discard_blob()
            self._blob_error = None
            self._capture = HeaderCapture()
            try:
                self._blob = self.server.store.new_blob()
            except OSError as exc:
                self._blob_error = exc
        elif t is ev.AuthStart or t is ev.AuthResponse:
            self._start(self._auth(event))
            return True
        elif t is ev.BodyComplete:
            self._start(self._commit(event))
            return True
        elif t is ev.BodyRejected:
            self._discard_blob()
            self.server.metrics.refused(self.listener.name, "framing", temporary=False)
            log.info("reject sid=%s client=%s reason=%s", self.sid, self.info.client_ip,
                     event.reason)
        elif t is ev.Hello:
            self.info.helo = event.hostname
            if self.server.pipeline.has("helo"):
                verdict = self.server.pipeline.begin_helo(self.info)
                if not isinstance(verdict, Verdict):    # a check has to wait
                    self._start(self._helo_checks(verdict))
                    return True
                self._helo_verdict(verdict)
                return False
            conn.respond(None)
        elif t is ev.TransactionReset:
            self._reset_transaction()
        elif t is ev.StartTLS:
            self._flush()
            self._start(self._starttls(), pause=True)
            return True
        elif t is ev.CloseConnection:
            self._flush()
            self._closing = True
            if self.transport is not None:
                self.transport.close()
        return False

    def _start(self, coro, pause: bool = False) -> None:
        """Run an asynchronous step; the core is not pumped until it is done. ``pause``
        stops reading at once (STARTTLS: no byte may be read before the handshake)."""
        self._busy = True
        self._held = 0
        if pause and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._task = self.loop.create_task(coro)
        self._task.add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task) -> None:
        self._busy = False
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("session %s: asynchronous step failed: %r", self.sid, exc)
            if self.conn is not None and self.conn.awaiting_response:
                self.conn.respond(catalog.TEMP_LOCAL_ERROR)
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._pump()

    # ------------------------------------------------------------ steps

    async def _connect(self, pending) -> None:
        """Connect checks (blocklists, pre-greeting) run before the banner is sent."""
        self._connected(await pending)

    def _connected(self, verdict: Verdict) -> None:
        self._greeted = True
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            log.info("reject sid=%s client=%s step=connect check=%s reason=%s", self.sid,
                     self.info.client_ip, verdict.check, verdict.reason)
            reply = verdict.reply or catalog.TEMP_LOCAL_ERROR
            self.server.metrics.verdict(self.listener.name, verdict, reply)
            self.conn.greeting(reply)
            self._trace("refused", reply=reply, step="connect")
            return
        self.conn.greeting()

    async def _helo_checks(self, pending) -> None:
        self._helo_verdict(await pending)

    def _helo_verdict(self, verdict: Verdict) -> None:
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            log.info("reject sid=%s client=%s helo=%s check=%s reason=%s", self.sid,
                     self.info.client_ip, self.info.helo[:100], verdict.check, verdict.reason)
            self.info.helo = ""
            self.server.metrics.verdict(self.listener.name, verdict,
                                        verdict.reply or catalog.TEMP_LOCAL_ERROR)
            self.conn.respond(verdict.reply or catalog.TEMP_LOCAL_ERROR)
            return
        self.conn.respond(verdict.reply if verdict.action is Action.ACCEPT
                          and verdict.reply and verdict.reply.is_positive else None)

    async def _mail_checks(self, pending) -> None:
        verdict = await pending
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            self._refuse_mail(verdict)
            return
        self.conn.respond(None)

    def _refuse_mail(self, verdict: Verdict) -> None:
        log.info("reject sid=%s client=%s from=<%s> check=%s reason=%s", self.sid,
                 self.info.client_ip, sanitize_address(self.txn.sender), verdict.check,
                 verdict.reason)
        reply = verdict.reply or catalog.TEMP_LOCAL_ERROR
        self.server.metrics.verdict(self.listener.name, verdict, reply)
        self._trace("rejected", reply=reply, step="mail")
        self._mail = None
        self.txn = TransactionInfo()
        self.conn.respond(reply)

    async def _data_checks(self, blob) -> Verdict:
        """End-of-data checks (DKIM, DMARC, content ...). Header fields they add are put in
        front of the stored message."""
        capture = self._capture
        header = capture.header if capture is not None and capture.header is not None else b""
        message = MessageView(header, blob.size, blob.read_all)
        verdict = self.server.pipeline.begin_data(self.info, self.txn, message)
        if not isinstance(verdict, Verdict):
            verdict = await verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return verdict
        prefix = message.prefix()
        if message.quarantine_reason:
            prefix = quarantine_field(message.quarantine_reason) + prefix
        if prefix:
            blob.prepend(prefix)
        self.txn.facts["quarantine"] = message.quarantine_reason
        self.txn.facts["held"] = message.hold_reason      # quarantine held in the store
        return verdict

    def _on_rcpt(self, event: ev.RcptTo) -> bool:
        directory = self.server.directory
        addr = event.address
        target = addr
        if self.server.recipient_rewriter is not None:
            # BATV (policy/backscatter.py): resolve prvs=...=user@d as user@d; checks
            # still see the address as given, the trace gets the note.
            target, note = self.server.recipient_rewriter(addr, directory)
            if note:
                self.txn.facts.setdefault("rewritten", {})[str(addr)] = note
        resolution = directory.resolve(target.local, target.domain)
        verdict = self.server.pipeline.check_rcpt_sync(self.info, self.txn, addr, resolution)
        if verdict is None:
            self._start(self._rcpt_async(event, resolution))
            return True
        self._apply_rcpt(event, resolution, verdict)
        return False

    async def _rcpt_async(self, event: ev.RcptTo, resolution) -> None:
        verdict = await self.server.pipeline.check_rcpt(self.info, self.txn, event.address,
                                                        resolution)
        self._apply_rcpt(event, resolution, verdict)

    def _apply_rcpt(self, event: ev.RcptTo, resolution, verdict: Verdict) -> None:
        conn = self.conn
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            log.info("reject sid=%s client=%s from=<%s> rcpt=<%s> check=%s reason=%s",
                     self.sid, self.info.client_ip, self.txn.sender, event.address,
                     verdict.check, verdict.reason, extra={"sid": self.sid})
            reply = verdict.reply or catalog.TEMP_LOCAL_ERROR
            self.server.metrics.verdict(self.listener.name, verdict, reply)
            self.txn.facts.setdefault("refused", []).append(
                {"rcpt": str(event.address), "reply": str(reply), "check": verdict.check,
                 "reason": verdict.reason})
            conn.respond(reply)
            return
        given = str(event.address)
        if resolution.kind is Kind.REMOTE:
            targets = (given,)
        else:
            targets = resolution.targets
        orcpt = event.params.orcpt
        for target in targets:
            key = target.lower()
            if key in self._rcpt_seen:
                continue
            self._rcpt_seen.add(key)
            # RFC 3461 §4.2: keep the original recipient for DSNs when we rewrote it.
            rec_orcpt = orcpt or (f"rfc822;{given}" if target.lower() != given.lower() else None)
            self._envelope_rcpts.append(RecipientRequest(target, event.params.notify, rec_orcpt))
        self.txn.recipients.append(given)
        self.txn.facts.setdefault("routes", []).append(
            {"rcpt": given, "kind": resolution.kind.value, "targets": list(targets)})
        conn.respond(verdict.reply if verdict.action is Action.ACCEPT else None)

    def _write_body(self, data: bytes) -> None:
        if self._blob is None or self._blob_error is not None:
            return
        capture = self._capture
        if capture is not None and not capture.done:
            data = capture.feed(data)
            if not capture.done:
                return                  # still inside the header section: held back
            data = self._header_prefix() + self._filtered(capture.header) + data
        if not data:
            return
        try:
            self._blob.write(data)
        except OSError as exc:  # disk full, I/O error: answered at end of data
            self._blob_error = exc

    def _filtered(self, header: bytes) -> bytes:
        """Fields nobody outside may set are removed as the message arrives: our own
        quarantine mark, and Authentication-Results claiming our authserv-id (RFC 8601
        §5). ``capture.header`` keeps the section as received, for the checks."""
        return self.server.filter_header(header)

    def _header_prefix(self) -> bytes:
        """What goes before the captured header section: the submission fix-ups."""
        if not (self.listener.submission and self.info.auth_user):
            return b""
        info = self.info
        return submission_fixups(
            self._capture.info, hostname=self.server.hostname, auth_user=info.auth_user,
            helo=info.helo, client_ip=info.client_ip, tls=info.tls,
            protocol=self._protocol_name(), now=time.time(),
            hide_client=self.server.submission.hide_client_ip)

    def _check_message(self):
        """End of data, before the commit: loop limit (every listener), header From
        (submission).  Returns a refusal or None."""
        capture = self._capture
        if capture is None:
            return None
        header = capture.info           # None if nothing was stored (blob error)
        if header is None:
            return None
        if header.received > self.server.limits.max_received_headers:
            log.info("reject sid=%s client=%s from=<%s> reason=loop received=%d", self.sid,
                     self.info.client_ip, self.txn.sender, header.received)
            self.server.metrics.refused(self.listener.name, "loop", temporary=False)
            return catalog.MAIL_LOOP
        if self.listener.submission and self.info.auth_user:
            verdict = self.server.sender_auth.check_header_from(
                self.info.auth_user, header.from_addresses, self.server.directory,
                self._grants)
            if verdict.action is Action.REJECT:
                log.info("reject sid=%s client=%s user=%s check=%s reason=%s", self.sid,
                         self.info.client_ip, self.info.auth_user, verdict.check,
                         verdict.reason)
                self.server.metrics.verdict(self.listener.name, verdict)
                return verdict.reply
        return None

    def _finish_capture(self) -> None:
        """The message ended: a header section still held back goes to the blob now."""
        capture = self._capture
        if capture is None or capture.done or self._blob is None or self._blob_error:
            return
        rest = capture.finish()
        data = self._header_prefix() + self._filtered(capture.header) + rest
        if data:
            try:
                self._blob.write(data)
            except OSError as exc:
                self._blob_error = exc

    # ------------------------------------------------------------ submission

    def _check_mail(self, event: ev.MailFrom):
        """MAIL FROM on a submission listener: authenticated, allowed sender."""
        if not self.listener.submission:
            return None
        info = self.info
        if not info.auth_user:
            if self.server.submission.require_tls and not info.tls:
                return catalog.TLS_REQUIRED
            return catalog.AUTH_REQUIRED
        verdict = self.server.sender_auth.check_sender(
            info.auth_user, str(event.address), self.server.directory, self._grants)
        if verdict.action is Action.REJECT:
            log.info("reject sid=%s client=%s user=%s from=<%s> check=%s", self.sid,
                     info.client_ip, info.auth_user, sanitize_address(str(event.address)),
                     verdict.check)
            self.server.metrics.verdict(self.listener.name, verdict)
            return verdict.reply
        return None

    async def _auth(self, event) -> None:
        """Run one step of the SASL exchange (RFC 4954 §4) and answer it."""
        conn, server, info = self.conn, self.server, self.info
        limiter = server.auth_limiter
        ip = info.client_ip
        if type(event) is ev.AuthStart:
            if limiter.ip_locked(ip, self.loop.time()):
                log.warning("auth refused sid=%s client=%s reason=address locked out",
                            self.sid, ip)
                conn.respond(catalog.AUTH_LOCKED_OUT)
                return
            mech = sasl.new_mechanism(event.mechanism)
            self._sasl = mech
            outcome = mech.start(event.initial_response)
        else:
            mech = self._sasl
            if mech is None:
                conn.respond(catalog.AUTH_FAILED)
                return
            outcome = mech.step(event.data)
        while True:
            if isinstance(outcome, (sasl.VerifyPassword, sasl.NeedVerifier)):
                login = outcome.authcid.lower()
                if limiter.account_locked(login, self.loop.time()):
                    self._sasl = None
                    log.warning("auth refused sid=%s client=%s user=%s mech=%s "
                                "reason=account locked out", self.sid, ip,
                                sanitize_address(login), mech.name)
                    conn.respond(catalog.AUTH_TEMP_FAILURE)
                    return
                if isinstance(outcome, sasl.VerifyPassword):
                    ok = await server.verify_password(login, outcome.password)
                    outcome = mech.password_checked(ok)
                else:
                    outcome = mech.verifier_found(await server.scram_verifier(login))
            elif isinstance(outcome, sasl.Challenge):
                conn.respond(catalog.auth_challenge(outcome.data))
                return
            elif isinstance(outcome, sasl.Success):
                self._sasl = None
                login = outcome.authcid.lower()
                limiter.record_success(ip, login)
                self._grants = await server.send_as_grants(login)
                info.auth_user = login
                log.info("auth ok sid=%s client=%s user=%s mech=%s", self.sid, ip,
                         sanitize_address(login), mech.name, extra={"sid": self.sid})
                conn.respond(catalog.AUTH_OK)
                return
            else:  # Failure
                self._sasl = None
                account = outcome.authcid.lower()
                delay = limiter.record_failure(ip, account, self.loop.time())
                log.warning("auth failed sid=%s client=%s user=%s mech=%s reason=%s",
                            self.sid, ip, sanitize_address(account)[:100] or "-", mech.name,
                            outcome.reason, extra={"sid": self.sid})
                if delay > 0:
                    await asyncio.sleep(delay)
                conn.respond(catalog.AUTH_FAILED)
                return

    async def _commit(self, event: ev.BodyComplete) -> None:
        conn = self.conn
        self._finish_capture()
        refusal = self._check_message()
        if refusal is not None:
            conn.respond(refusal)
            self._reset_transaction()
            return
        blob, self._blob = self._blob, None
        if blob is None or self._blob_error is not None:
            if blob is not None:
                blob.abort()
            log.error("session %s: body could not be stored: %r", self.sid, self._blob_error)
            self.server.metrics.refused(self.listener.name, "storage", temporary=True)
            conn.respond(catalog.INSUFFICIENT_STORAGE)
            self._reset_transaction()
            return
        if self.server.pipeline.has("data"):
            try:
                verdict = await self._data_checks(blob)
            except (StoreError, OSError) as exc:
                log.error("session %s: end-of-data checks failed: %r", self.sid, exc)
                verdict = Verdict(Action.TEMPFAIL, "data", catalog.TEMP_LOCAL_ERROR,
                                  "message could not be read back")
            if verdict.action in (Action.REJECT, Action.TEMPFAIL):
                blob.abort()
                log.info("reject sid=%s client=%s from=<%s> step=data check=%s reason=%s",
                         self.sid, self.info.client_ip, sanitize_address(self.txn.sender),
                         verdict.check, verdict.reason)
                reply = verdict.reply or catalog.TEMP_LOCAL_ERROR
                self.server.metrics.verdict(self.listener.name, verdict, reply)
                self._trace("rejected", reply=reply, step="data")
                conn.respond(reply)
                self._reset_transaction()
                return
        mail = self._mail
        info = self.info
        hide = (self.listener.submission and bool(info.auth_user)
                and self.server.submission.hide_client_ip)
        if self._peer is not None and not self._peer.done():
            # The reverse lookup started at connect; wait for it (bounded) so the Received
            # field and the trace name the client, as Postfix's smtpd does before its 220.
            try:
                async with asyncio.timeout(PEER_NAME_WAIT):
                    await asyncio.shield(self._peer)
            except TimeoutError:
                pass
        envelope = Envelope(
            sender=str(mail.address) if mail else "",
            recipients=list(self._envelope_rcpts),
            received_at=time.time(),
            client_ip="" if hide else info.client_ip,
            client_port=0 if hide else info.client_port,
            client_name="" if hide else self._client_name().name,
            helo="" if hide else info.helo,
            protocol=self._protocol_name(),
            tls=info.tls,
            auth_user=info.auth_user,
            body_type=(mail.params.body or "7BIT") if mail else "7BIT",
            smtputf8=bool(mail and mail.params.smtputf8),
            ret=mail.params.ret if mail else None,
            envid=mail.params.envid if mail else None,
            size=blob.size,
            listener=self.listener.name,
            quarantine=self.txn.facts.get("held", ""),
        )
        commit_started = time.monotonic()
        try:
            queue_id = await self.server.store.commit_message(envelope, blob)
        except (StoreError, OSError) as exc:
            log.error("session %s: commit failed: %r", self.sid, exc)
            self.server.metrics.refused(self.listener.name, "store", temporary=True)
            conn.respond(catalog.TEMP_LOCAL_ERROR)
            self._reset_transaction()
            return
        conn.respond(catalog.queued(queue_id))
        self.server.metrics.accepted(self.listener.name, time.monotonic() - commit_started)
        self._trace("accepted", queue_id=queue_id, size=envelope.size,
                    recipients=[r.address for r in envelope.recipients])
        log.info("accepted sid=%s id=%s client=%s from=<%s> rcpts=%d size=%d tls=%s%s",
                 self.sid, queue_id, info.client_ip, envelope.sender,
                 len(envelope.recipients), envelope.size, "yes" if info.tls else "no",
                 f" user={sanitize_address(info.auth_user)}" if info.auth_user else "",
                 extra={"sid": self.sid, "id": queue_id})
        self._reset_transaction()
        self.server.message_committed(queue_id)

    async def _starttls(self) -> None:
        transport = self.transport
        try:
            new_transport = await self.loop.start_tls(
                transport, self, self.server.ssl_context, server_side=True,
                ssl_handshake_timeout=self.server.handshake_timeout)
        except (OSError, ConnectionError, asyncio.TimeoutError, Exception) as exc:
            log.info("tls handshake failed sid=%s client=%s: %r", self.sid,
                     self.info.client_ip, exc)
            self._closing = True
            if transport is not None:
                transport.abort()
            return
        self.transport = new_transport
        self.info.tls = describe(new_transport.get_extra_info("ssl_object"))
        self.info.helo = ""
        self.info.auth_user = ""            # RFC 3207 §4.2: forget everything
        self._grants = ()
        self._reset_transaction()
        self.conn.tls_established(self.loop.time())

    def _protocol_name(self) -> str:
        # RFC 3848 "with" keywords.
        base = "ESMTP" if self.conn.esmtp else "SMTP"
        if self.info.tls:
            base += "S"
        if self.info.auth_user:
            base += "A"
        return base

    # ------------------------------------------------------------ helpers

    def _reset_transaction(self) -> None:
        if self.txn.facts.get("refused") and not self.txn.facts.get("traced"):
            self._trace("rejected", step="rcpt")       # refused recipients, nothing sent
        self._discard_blob()
        self._capture = None
        self._mail = None
        self._envelope_rcpts = []
        self._rcpt_seen = set()
        self.txn = TransactionInfo()

    def _trace(self, kind: str, *, queue_id: str = "", reply=None, step: str = "",
               size: int = 0, recipients: list[str] | None = None) -> None:
        """Record the transaction's outcome in the message trace (issue 5): fire and
        forget, it never delays or fails the session."""
        if not self.server.trace or self.info is None:
            return
        info, txn = self.info, self.txn
        txn.facts["traced"] = True
        data = {"listener": info.listener, "port": info.client_port, "helo": info.helo,
                "tls": info.tls, "auth_user": info.auth_user,
                "verdicts": [_verdict_dict(v) for v in (*info.verdicts, *txn.verdicts)]}
        for key in ("routes", "refused", "quarantine", "held", "rewritten"):
            if txn.facts.get(key):
                data[key] = txn.facts[key]
        peer = self._client_name()
        if peer.status != "unknown":
            data["rdns"] = {"name": peer.name, "ptr": peer.ptr, "status": peer.status}
        if reply is not None:
            data["reply"] = str(reply)
        if step:
            data["step"] = step
        if size:
            data["size"] = size
        message_id = ""
        capture = self._capture
        if capture is not None and capture.header:
            m = _MESSAGE_ID.search(capture.header)
            if m:
                message_id = m.group(1).decode("utf-8", "replace")[:500]
        if recipients is None:
            recipients = list(txn.recipients)
        recipients += [r["rcpt"] for r in txn.facts.get("refused", ())]
        self.server.record_trace(TraceEvent(time.time(), kind, self.sid, queue_id, message_id,
                                            txn.sender, tuple(recipients), info.client_ip,
                                            data))

    def _client_name(self) -> PeerName:
        """The client's forward-confirmed name if the lookup has finished (never waits)."""
        if self._peer_name is not None:
            return self._peer_name
        task = self._peer
        if task is None or not task.done() or task.cancelled():
            return _NO_NAME
        return task.result()

    def _discard_blob(self) -> None:
        if self._blob is not None:
            try:
                self._blob.abort()
            except OSError:
                pass
            self._blob = None

    def _arm_timer(self) -> None:
        if self.conn is None or self._closing:
            return
        deadline = self.conn.get_timer()
        if deadline is None:
            self._timer = None
            return
        # asyncio's loop.time() is the clock the core was given.
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing or self.conn is None:
            return
        now = self.loop.time()
        deadline = self.conn.get_timer()
        if deadline is not None and deadline <= now:
            if self._busy:
                # A commit or handshake is in progress; its own timeout governs.
                self._timer = self.loop.call_at(now + 1.0, self._on_timer)
                return
            self.conn.handle_timer(now)
            log.info("timeout sid=%s client=%s", self.sid, self.info.client_ip)
            self._pump()
        self._arm_timer()
