"""``diag smtp``: test an SMTP server step by step, as an expert does with telnet or swaks.

What: ``await run_diag(options, resolver) -> DiagReport``. The report is a list of
``Step``s (name, status ok | problem | warning | info, detail, data) and each step carries
the dialogue lines it caused (``C:`` sent, ``S:`` received, with milliseconds since the
start). The steps, in order:

1. ``mx``/``resolve``: a domain without a port is an MX target: its MX records are looked up
   through ``net.dns.Resolver`` and the preferred host (lowest preference, RFC 5321 §5.1) is
   tested; no MX means the name itself (implicit MX); a null MX (RFC 7505) ends the test.
   The host's A/AAAA are then looked up. IP literals skip both.
2. ``connect``: each address in turn until one answers (time and outcome of each attempt).
3. ``tls`` first for implicit TLS (``--tls``, RFC 8314 §3.3), then ``banner`` (a non-220
   greeting is a refusal: QUIT, RFC 5321 §3.1), ``ehlo`` (HELO after a 5xx, RFC 5321
   §4.1.4) with the extension list.
4. ``starttls`` (RFC 3207): used when offered; required with ``--starttls``. The handshake
   first verifies the chain against the system trust store (or ``--cafile``) with OpenSSL,
   as sending MTAs do; if verification fails, the reason is kept and the test reconnects
   without verification so that the certificate can still be shown and the rest tested.
   ``certificate`` lists the chain as presented (subject, issuer, SANs, validity, days
   left), whether the host name matches (RFC 6125 §6.4, checked here, apart from the
   chain) and whether the chain is trusted. EHLO is sent again after TLS (RFC 3207 §4.2).
5. ``auth`` (``--auth``): AUTH PLAIN (RFC 4954, RFC 4616) only over TLS; the dialogue shows
   ``AUTH PLAIN ****``: credentials never appear in the report.
6. ``send`` (``--send FROM TO``): MAIL, RCPT, DATA and a small message with a generated
   Message-ID (RFC 5322 §3.6.4); the reply to the final dot (the queue id) is kept.
7. ``quit``.

How: the protocol is the sans-IO ``smtp.client.ClientConnection``, driven over a socket by
``net.probe.ProbeConnection`` (sockets live in ``net/``), which records what passes (so the
220-to-STARTTLS rule of the core, discarding injected plaintext, applies here as well);
this module decides the steps and judges the answers.

Heuristic "outbound port 25 seems blocked": when the port is 25, the DNS answered (the
target's addresses were found by our resolver) and every connection attempt timed out
(none was refused or reset), the likely cause is a provider that filters outbound port 25,
not the remote servers. It is reported as a hint, alongside the plain facts.

Invariants:
* ``run_diag`` never raises for anything the network or the peer does: timeouts, TLS
  failures, early closes, malformed replies and refusals become ``problem`` steps; an
  unexpected local error becomes one too ("internal error"), never a traceback.
* A DNS timeout is a problem ("could not resolve"), never a pass.
* The password is only ever written to the socket, never to a step or a line.
* Every socket opened is closed.
"""
from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ..net.dns import DNSError, Resolver
from ..net.probe import (
    Line, ProbeConnection, open_context, open_probe, presented_chain, verifying_context,
)
from ..policy.context import parse_ip
from ..smtp.client import ClientState, Closed, ServerReply, TlsReady
from ..smtp.replies import Reply

log = logging.getLogger("mailwright.diag")

__all__ = [
    "DiagOptions", "DiagReport", "Step", "Line", "run_diag", "parse_target",
    "port25_blocked", "describe_certificate", "name_matches", "TLS_MODES",
    "OK", "PROBLEM", "WARNING", "INFO",
]

OK, PROBLEM, WARNING, INFO = "ok", "problem", "warning", "info"
TLS_MODES = ("auto", "starttls", "implicit")
EXPIRY_WARNING_DAYS = 14


@dataclass
class DiagOptions:
    """What to test. ``port`` None: ``mx_port`` (465 with implicit TLS), and a name is
    looked up as a mail domain (MX). ``mx_port`` is 25, or ``[outbound] port``."""
    host: str
    port: int | None = None
    mx_port: int = 25
    tls: str = "auto"                  # "auto" (STARTTLS if offered) | "starttls" | "implicit"
    helo: str = "localhost"
    timeout: float = 30.0
    cafile: str = ""
    auth_user: str = ""
    auth_password: str = field(default="", repr=False)
    mail_from: str | None = None
    rcpt_to: str | None = None


@dataclass
class Step:
    name: str
    status: str = INFO
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    dialogue: list[Line] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "status": self.status, "detail": self.detail,
                "data": self.data, "dialogue": [ln.to_dict() for ln in self.dialogue]}


@dataclass
class DiagReport:
    target: str
    host: str
    port: int
    tls_mode: str
    steps: list[Step] = field(default_factory=list)

    @property
    def problems(self) -> list[Step]:
        return [s for s in self.steps if s.status == PROBLEM]

    @property
    def warnings(self) -> list[Step]:
        return [s for s in self.steps if s.status == WARNING]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "host": self.host, "port": self.port,
                "tls_mode": self.tls_mode, "ok": self.ok,
                "problems": [f"{s.name}: {s.detail}" for s in self.problems],
                "warnings": [f"{s.name}: {s.detail}" for s in self.warnings],
                "steps": [s.to_dict() for s in self.steps]}


# ------------------------------------------------------------------ pure helpers

def parse_target(text: str) -> tuple[str, int | None]:
    """"host", "host:port", "192.0.2.1:25", "[2001:db8::1]:25" or a bare IPv6 address ->
    (host, port or None). Raises ValueError."""
    text = text.strip()
    port: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected text after ']' in {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text                      # a name, an IPv4 address or a bare IPv6 address
    host = host.strip().rstrip(".").lower()
    if not host or any(c in host for c in " /@"):
        raise ValueError(f"not a host name or address: {text!r}")
    if ":" in host:
        ipaddress.IPv6Address(host)      # ValueError for junk
    if port is None:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid port {port!r}")
    return host, int(port)


def port25_blocked(port: int, outcomes: list[str], dns_answered: bool) -> bool:
    """The heuristic of the module docstring: port 25, DNS works, every attempt timed out."""
    return port == 25 and dns_answered and bool(outcomes) and \
        all(o == "timeout" for o in outcomes)


def name_matches(host: str, der: bytes) -> bool:
    """Does the certificate name ``host``? RFC 6125 §6.4: DNS-IDs from subjectAltName (a
    "*" only as the whole leftmost label, matching exactly one label, §6.4.3); the CN only
    when the certificate has no DNS-ID (§6.4.4); IP literals against iPAddress SANs."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_ids = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
        ip_ids = san.get_values_for_type(x509.IPAddress)
    except x509.ExtensionNotFound:
        dns_ids, ip_ids = [], []
    want = parse_ip(host)
    if want is not None:
        return any(ip == want for ip in ip_ids)
    if not dns_ids:
        dns_ids = [a.value.lower() for a in cert.subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME) if isinstance(a.value, str)]
    host = host.lower().rstrip(".")
    for pattern in dns_ids:
        if pattern == host:
            return True
        if pattern.startswith("*.") and "*" not in pattern[2:] and pattern.count(".") >= 2:
            first, dot, rest = host.partition(".")
            if dot and first and rest == pattern[2:]:
                return True
    return False


def describe_certificate(der: bytes, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Subject, issuer, SANs, validity and days left of one DER certificate."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] + \
               [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer, "sans": sans,
        "not_before": before.isoformat(), "not_after": after.isoformat(),
        "days_left": int((after - now).total_seconds() // 86400),
        "expired": now > after, "not_yet_valid": now < before,
    }


def _test_message(opts: DiagOptions, peer: str) -> tuple[bytes, str]:
    msgid = email.utils.make_msgid("mwdiag", domain=opts.helo)
    sender = opts.mail_from or "<>"
    text = (f"From: {sender}\r\nTo: {opts.rcpt_to}\r\n"
            f"Subject: Mailwright diagnostic message\r\n"
            f"Date: {email.utils.formatdate(localtime=True)}\r\n"
            f"Message-ID: {msgid}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"Test message sent by 'mailwright diag smtp' from {opts.helo} to {peer}.\r\n")
    return text.encode("ascii", "replace"), msgid


# ------------------------------------------------------------------ the connection

class _Stop(Exception):
    """The dialogue cannot go on (the problem is already recorded)."""


class _Reconnect(Exception):
    """The chain did not verify: reconnect without verification to inspect it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------ the diagnosis

#: OpenSSL reasons that puzzle people, explained.
_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": " (the server did not answer with TLS)",
    "UNSUPPORTED_PROTOCOL": " (no TLS version in common: the server may only speak "
                            "TLS 1.0/1.1)",
    "TLSV1_ALERT_PROTOCOL_VERSION": " (no TLS version in common)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": " (no cipher or group in common)",
    "UNEXPECTED_EOF_WHILE_READING": " (the server closed the connection)",
}


def _show(reply: Reply) -> str:
    return str(reply)


class _Diagnosis:
    def __init__(self, opts: DiagOptions, resolver: Resolver | None) -> None:
        self.opts = opts
        self.resolver = resolver
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        port = opts.port or (465 if opts.tls == "implicit" else opts.mx_port)
        target = opts.host if opts.port is None else f"{opts.host}:{opts.port}"
        self.report = DiagReport(target, opts.host, port, opts.tls)
        self.current: Step | None = None
        self.host = opts.host              # the host tested (the MX host after MX lookup)
        self.dns_answered = False
        self.trust_failure = ""            # OpenSSL's reason when the chain did not verify

    # recording
    def step(self, name: str, status: str = INFO, detail: str = "", **data: Any) -> Step:
        s = Step(name, status, detail, dict(data))
        self.report.steps.append(s)
        self.current = s
        return s

    def clock(self) -> float:
        return (self.loop.time() - self.t0) * 1000

    async def reply(self, s: Step, conn: ProbeConnection, awaitable: Any) -> Any:
        """Await a core event; the lines sent and received meanwhile join step ``s``."""
        try:
            return await awaitable
        finally:
            s.dialogue.extend(conn.take_lines())

    def ms(self, since: float) -> str:
        return f"{(self.loop.time() - since) * 1000:.1f} ms"

    # the run
    async def run(self) -> DiagReport:
        try:
            addresses = await self.resolve()
            if addresses:
                await self.converse(addresses)
        except Exception as exc:  # noqa: BLE001 - a diagnosis never ends in a traceback
            log.debug("diag smtp: internal error", exc_info=True)
            self.step("internal", PROBLEM, f"internal error: {type(exc).__name__}: {exc}")
        return self.report

    async def resolve(self) -> list[str]:
        opts = self.opts
        if parse_ip(opts.host) is not None:
            return [opts.host]
        if self.resolver is None:
            self.step("resolve", PROBLEM, f"cannot look up {opts.host}: no resolver")
            return []
        if opts.port is None:
            s = self.step("mx", INFO)
            try:
                mx = await self.resolver.mx(opts.host)
            except DNSError as exc:
                s.status, s.detail = PROBLEM, f"could not look up the MX of {opts.host}: {exc}"
                return []
            self.dns_answered = True
            s.data["mx"] = [[p, h] for p, h in mx.records]
            if not mx.exists:
                s.status, s.detail = PROBLEM, f"{opts.host} does not exist (NXDOMAIN)"
                return []
            if mx.null_mx:
                s.status, s.detail = PROBLEM, f"{opts.host} accepts no mail (null MX, RFC 7505)"
                return []
            if mx.records:
                self.host = mx.records[0][1]
                listed = ", ".join(f"{p} {h}" for p, h in mx.records)
                s.status = OK
                s.detail = f"MX of {opts.host}: {listed}; testing the preferred host {self.host}"
            else:
                s.detail = (f"{opts.host} has no MX record: testing {opts.host} itself "
                            "(implicit MX, RFC 5321 §5.1)")
        s = self.step("resolve", INFO, host=self.host)
        try:
            addrs = await self.resolver.addresses(self.host)
        except DNSError as exc:
            s.status, s.detail = PROBLEM, f"could not resolve {self.host}: {exc}"
            return []
        self.dns_answered = True
        if not addrs:
            s.status, s.detail = PROBLEM, f"{self.host} has no A or AAAA record"
            return []
        s.status, s.detail, s.data["addresses"] = OK, f"{self.host} has address " \
            f"{', '.join(addrs)}", addrs
        return addrs

    async def connect(self, ip: str) -> tuple[ProbeConnection | None, str]:
        """(connection, outcome) where outcome is "connected", "timeout", "refused",
        "error"."""
        port = self.report.port
        s = self.step("connect", INFO, address=ip, port=port)
        start = self.loop.time()
        try:
            conn = await open_probe(self.loop, ip, port, helo=self.opts.helo,
                                    timeout=self.opts.timeout, clock=self.clock)
        except asyncio.TimeoutError:
            s.status = PROBLEM
            s.detail = f"{ip} port {port}: no answer within {self.opts.timeout:g} s (timeout)"
            s.data["outcome"] = "timeout"
            return None, "timeout"
        except OSError as exc:
            refused = isinstance(exc, ConnectionRefusedError)
            s.status = PROBLEM
            reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            s.detail = f"{ip} port {port}: {reason}"
            s.data["outcome"] = "refused" if refused else "error"
            return None, s.data["outcome"]
        s.status, s.detail = OK, f"{ip} port {port}: connected in {self.ms(start)}"
        s.data["outcome"] = "connected"
        s.data["ms"] = round((self.loop.time() - start) * 1000, 1)
        return conn, "connected"

    async def converse(self, addresses: list[str]) -> None:
        outcomes: list[str] = []
        failed: list[Step] = []
        for ip in addresses:
            conn, outcome = await self.connect(ip)
            outcomes.append(outcome)
            if conn is None:
                failed.append(self.report.steps[-1])
                continue
            for s in failed:                 # another address answered: only a warning
                s.status = WARNING
            try:
                await self.dialogue(conn, ip, verify=True)
            except _Reconnect as again:
                self.trust_failure = again.reason
                conn2, _ = await self.connect(ip)
                if conn2 is not None:
                    self.report.steps[-1].detail += \
                        " (again, without certificate verification, to inspect it)"
                    try:
                        await self.dialogue(conn2, ip, verify=False)
                    except _Reconnect:       # cannot happen without verification
                        pass
            return
        s = self.step("connect", PROBLEM,
                      f"could not connect to any address of {self.host} on port "
                      f"{self.report.port}")
        if port25_blocked(self.report.port, outcomes, self.dns_answered):
            s.detail += ("; outbound port 25 seems blocked: the DNS answers but every "
                         "connection timed out (many ISPs and cloud providers filter port 25;"
                         " ask yours, or send through a relay on port 587)")
            s.data["port25_blocked"] = True

    async def dialogue(self, conn: ProbeConnection, ip: str, verify: bool) -> None:
        try:
            if self.opts.tls == "implicit":
                await self.handshake(conn, verify)
            await self.banner(conn)
            await self.hello(conn, "ehlo")
            if self.opts.tls != "implicit":
                await self.starttls(conn, verify)
            if self.opts.auth_user:
                await self.auth(conn)
            if self.opts.mail_from is not None:
                await self.send(conn, ip)
            await self.quit(conn)
        except _Stop:
            pass
        finally:
            conn.close()
            if self.report.steps:
                self.report.steps[-1].dialogue.extend(conn.take_lines(flush_partial=True))

    # --- steps of the dialogue

    def closed(self, s: Step, ev: Closed, waiting_for: str) -> None:
        s.status = PROBLEM
        if ev.reply is not None:
            s.detail = f"the server is closing the connection: {_show(ev.reply)}"
        elif isinstance(ev.error, TimeoutError):
            s.detail = f"no reply to {waiting_for} within {self.opts.timeout:g} s (timeout)"
        elif ev.error is not None and "protocol error" in ev.reason:
            s.detail = f"malformed reply to {waiting_for}: {ev.error}"
        else:
            s.detail = f"the server closed the connection while we waited for the " \
                       f"reply to {waiting_for}"
        raise _Stop

    def expect(self, s: Step, ev: Any, what: str) -> ServerReply:
        if isinstance(ev, Closed):
            self.closed(s, ev, what)
        if not isinstance(ev, ServerReply):
            s.status, s.detail = PROBLEM, f"unexpected event {type(ev).__name__} after {what}"
            raise _Stop
        return ev

    async def banner(self, conn: ProbeConnection) -> None:
        s = self.step("banner")
        start = self.loop.time()
        ev = self.expect(s, await self.reply(s, conn, conn.event()), "the connection (banner)")
        s.data["reply"] = _show(ev.reply)
        if not ev.ok:
            s.status = PROBLEM
            s.detail = f"the server refuses service: {_show(ev.reply)}"
            await self.quit(conn, silent=True)
            raise _Stop
        s.status, s.detail = OK, f"{ev.reply.code} greeting in {self.ms(start)}"

    async def hello(self, conn: ProbeConnection, name: str) -> None:
        s = self.step(name)
        ev = self.expect(s, await self.reply(s, conn, conn.command(conn.core.ehlo)), "EHLO")
        if not ev.ok:
            s.data["reply"] = _show(ev.reply)
            if ev.reply.code < 500:
                s.status, s.detail = PROBLEM, f"EHLO refused: {_show(ev.reply)}"
                raise _Stop
            s.status, s.detail = WARNING, (f"EHLO refused ({_show(ev.reply)}): no ESMTP "
                                           "extensions; trying HELO (RFC 5321 §4.1.4)")
            h = self.step("helo")
            ev = self.expect(h, await self.reply(h, conn, conn.command(conn.core.helo)), "HELO")
            if not ev.ok:
                h.status, h.detail = PROBLEM, f"HELO refused: {_show(ev.reply)}"
                raise _Stop
            h.status, h.detail = OK, "HELO accepted"
            return
        exts = list(ev.reply.lines()[1:])
        s.data["extensions"] = exts
        s.data["greeting_name"] = conn.core.capabilities.greeting_name
        s.status = OK
        s.detail = "extensions: " + (", ".join(exts) if exts else "(none)")

    async def starttls(self, conn: ProbeConnection, verify: bool) -> None:
        offered = conn.core.capabilities.has("STARTTLS")
        if not offered:
            if self.opts.tls == "starttls":
                self.step("starttls", PROBLEM, "STARTTLS is not offered (required by "
                                               "--starttls)")
                await self.quit(conn, silent=True)
                raise _Stop
            self.step("starttls", WARNING, "STARTTLS is not offered: mail to this server "
                                           "travels unencrypted")
            return
        s = self.step("starttls")
        ev = await self.reply(s, conn, conn.command(conn.core.starttls))
        if isinstance(ev, TlsReady):
            if ev.discarded:
                s.status = PROBLEM
                s.detail = (f"the server sent {ev.discarded} octets after its 220 to STARTTLS;"
                            " discarded (response injection, RFC 3207 §5, CVE-2011-0411)")
            else:
                s.status, s.detail = OK, "220: ready to start TLS"
            await self.handshake(conn, verify)
            conn.core.tls_established(self.loop.time())
            await self.hello(conn, "ehlo (after TLS)")
            return
        ev = self.expect(s, ev, "STARTTLS")
        s.status, s.detail = PROBLEM, f"STARTTLS refused: {_show(ev.reply)}"
        await self.quit(conn, silent=True)
        raise _Stop

    async def handshake(self, conn: ProbeConnection, verify: bool) -> None:
        s = self.step("tls")
        sni = None if parse_ip(self.host) is not None else self.host
        try:
            ctx = verifying_context(self.opts.cafile) if verify else open_context()
        except (OSError, ssl.SSLError) as exc:
            s.status, s.detail = PROBLEM, f"cannot load the CA file {self.opts.cafile}: {exc}"
            raise _Stop from None
        if conn.lost or conn.transport is None or conn.transport.is_closing():
            s.status, s.detail = PROBLEM, "the server closed the connection before the " \
                                          "TLS handshake"
            raise _Stop
        start = self.loop.time()
        try:
            await conn.start_tls(ctx, sni)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or exc.reason or str(exc)
            s.status = INFO
            s.detail = f"certificate verification failed ({reason}); reconnecting " \
                       "without verification to inspect the certificate"
            conn.lost = True
            raise _Reconnect(reason) from None
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ValueError) as exc:
            conn.lost = True
            s.status = PROBLEM
            if isinstance(exc, asyncio.TimeoutError):
                s.detail = f"TLS handshake timed out after {self.opts.timeout:g} s"
            elif isinstance(exc, ssl.SSLError):
                reason = exc.reason or str(exc)
                s.detail = f"TLS handshake failed: {reason}" + _TLS_HINTS.get(reason, "")
            else:
                s.detail = "TLS handshake failed: the server closed the connection" \
                    if isinstance(exc, (ConnectionError, EOFError)) \
                    else f"TLS handshake failed: {exc.strerror or exc}"
            raise _Stop from None
        so = conn.ssl_object
        version, cipher = so.version(), so.cipher()
        s.status = OK
        s.detail = f"{version} {cipher[0] if cipher else ''} ({cipher[2] if cipher else '?'}" \
                   f" bits) in {self.ms(start)}"
        s.data.update(version=version, cipher=cipher[0] if cipher else "",
                      bits=cipher[2] if cipher else None)
        self.certificate(so, verified=verify)

    def certificate(self, ssl_object: Any, verified: bool) -> None:
        s = self.step("certificate")
        chain = presented_chain(ssl_object)
        if not chain:
            s.status, s.detail = PROBLEM, "the server presented no certificate"
            return
        certs = [describe_certificate(der) for der in chain]
        store = self.opts.cafile or "the system trust store"
        matches = name_matches(self.host, chain[0])
        leaf = certs[0]
        s.data.update(chain=certs, name=self.host, name_matches=matches, trusted=verified,
                      trust_store=store, trust_error="" if verified else self.trust_failure)
        problems, warnings = [], []
        if not verified:
            problems.append(f"chain not trusted by {store}: {self.trust_failure}")
        if not matches:
            problems.append(f"the certificate does not name {self.host} "
                            f"(SANs: {', '.join(leaf['sans']) or 'none'})")
        if leaf["expired"]:
            problems.append(f"the certificate expired on {leaf['not_after']}")
        elif leaf["not_yet_valid"]:
            problems.append(f"the certificate is not valid before {leaf['not_before']}")
        elif leaf["days_left"] < EXPIRY_WARNING_DAYS:
            warnings.append(f"the certificate expires in {leaf['days_left']} days")
        good = [f"name {self.host} matches" if matches else "",
                f"chain verified against {store}" if verified else ""]
        s.status = PROBLEM if problems else WARNING if warnings else OK
        s.detail = "; ".join(problems + warnings + [g for g in good if g])

    async def auth(self, conn: ProbeConnection) -> None:
        s = self.step("auth", user=self.opts.auth_user)
        if self.tls_active(conn) is False:
            s.status, s.detail = PROBLEM, "not sending the password without TLS " \
                                          "(use --starttls or --tls)"
            return
        mechs = conn.core.capabilities.auth_mechanisms
        if "PLAIN" not in mechs:
            s.status = PROBLEM
            s.detail = "the server offers no AUTH PLAIN" + \
                (f" (offers: {' '.join(sorted(mechs))})" if mechs else " (no AUTH at all)")
            return
        conn.masking = True
        try:
            ev = await self.reply(s, conn, conn.command(
                conn.core.auth, "PLAIN", self.opts.auth_user, self.opts.auth_password))
        finally:
            conn.masking = False
        ev = self.expect(s, ev, "AUTH")
        if ev.ok:
            s.status, s.detail = OK, f"authenticated as {self.opts.auth_user}"
        else:
            s.status, s.detail = PROBLEM, f"authentication failed: {_show(ev.reply)}"

    def tls_active(self, conn: ProbeConnection) -> bool:
        return conn.ssl_object is not None

    async def send(self, conn: ProbeConnection, ip: str) -> None:
        opts = self.opts
        s = self.step("send", mail_from=opts.mail_from, rcpt_to=opts.rcpt_to)
        sender = "" if opts.mail_from in ("", "<>") else opts.mail_from or ""
        ev = self.expect(s, await self.reply(s, conn, conn.command(conn.core.mail, sender, [])),
                         "MAIL")
        if not ev.ok:
            s.status, s.detail = PROBLEM, f"MAIL FROM refused: {_show(ev.reply)}"
            return
        ev = self.expect(s, await self.reply(s, conn, conn.command(conn.core.rcpt,
                                                                  opts.rcpt_to, [])), "RCPT")
        if not ev.ok:
            s.status, s.detail = PROBLEM, f"RCPT TO refused: {_show(ev.reply)}"
            await self.reset(s, conn)
            return
        ev = self.expect(s, await self.reply(s, conn, conn.command(conn.core.data)), "DATA")
        if not ev.ok:
            s.status, s.detail = PROBLEM, f"DATA refused: {_show(ev.reply)}"
            return
        body, msgid = _test_message(opts, f"{self.host}[{ip}]:{self.report.port}")
        s.data["message_id"] = msgid
        ev = self.expect(s, await self.reply(s, conn, conn.command(conn.core.send_body,
                                                                  body, True)),
                         "the end of data")
        s.data["reply"] = _show(ev.reply)
        if ev.ok:
            s.status, s.detail = OK, f"message {msgid} accepted: {_show(ev.reply)}"
        else:
            s.status, s.detail = PROBLEM, f"message refused: {_show(ev.reply)}"

    async def reset(self, s: Step, conn: ProbeConnection) -> None:
        if conn.core.state is ClientState.MAIL and not conn.core.outstanding:
            ev = await self.reply(s, conn, conn.command(conn.core.rset))
            if isinstance(ev, Closed):
                raise _Stop

    async def quit(self, conn: ProbeConnection, silent: bool = False) -> None:
        """QUIT (RFC 5321 §4.1.1.10); after a refusal it is part of the refusing step."""
        if conn.lost or conn.core.closed or conn.core.outstanding:
            return
        s = self.current if silent else self.step("quit")
        assert s is not None
        ev = await self.reply(s, conn, conn.command(conn.core.quit))
        if silent:
            return
        if isinstance(ev, ServerReply):
            s.status, s.detail = OK if ev.ok else WARNING, _show(ev.reply)
        elif isinstance(ev, Closed) and isinstance(ev.error, TimeoutError):
            s.status, s.detail = WARNING, "no reply to QUIT (timeout)"
        else:
            s.status, s.detail = INFO, "connection closed"


async def run_diag(opts: DiagOptions, resolver: Resolver | None) -> DiagReport:
    """Run the whole test (see the module docstring); never raises for network events."""
    if opts.tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {TLS_MODES}")
    return await _Diagnosis(opts, resolver).run()
