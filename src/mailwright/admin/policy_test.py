"""``mailwright policy test``: replay a saved message through the live policy configuration.

What: ``replay(settings, store, ip=..., helo=..., sender=..., recipients=[...],
message=bytes, listener="mx", auth_user="") -> Replay``: every step a real session would
run (connect, helo, mail, each rcpt, data), each check's verdict (check, action, reply,
reason) in order, the header fields the data checks would add, and the overall outcome.
Nothing is delivered or queued.

How: the pipeline is built exactly as the server builds it: an ``IntakeServer`` (never
started: no socket) over the settings' store and directory snapshot, with the relay and
recipient checks first and then ``policy.registry.build_checks(...)`` with the configured
resolver (``app.shared_resolver``: ``[outbound] nameservers``). The session's own steps
that are not checks are replayed too: submission sender rules (MAIL, header From), the
Received-loop limit, the header filters. Each check is wrapped in ``_Traced`` so every
verdict is seen, also CONTINUE without a reason. The message lives in memory: a
``MessageView(header, size, reader)`` over the bytes, no blob.

Invariants (a replay leaves no trace in the live system):
* nothing is written to the queue (no blob, no commit);
* rate counters and greylisting read the live state from a throw-away copy of
  ``policystate.db`` (``sqlite3`` backup) and write only to that copy, so a replay
  neither consumes a client's rate nor lets a greylisted triplet pass;
* check side channels that record results (a DMARC report ``recorder``) are switched off.
Only DNS queries leave the process, as they would for a real session.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..message.headers import HeaderCapture, quarantine_field, split_fields, submission_fixups
from ..policy.context import MessageView, SessionInfo, TransactionInfo
from ..policy.verdict import Action, Verdict
from ..smtp import catalog
from ..smtp.address import ParseError, parse_path
from ..smtp.replies import Reply
from .service import InvalidInput

__all__ = ["replay", "Replay", "StepResult", "load_message"]

STEPS = ("connect", "helo", "mail", "rcpt", "data")


@dataclass(slots=True)
class CheckVerdict:
    check: str
    action: str                 # continue | accept | reject | tempfail
    reply: str = ""             # "550 5.7.1 ..." for reject/tempfail (or a custom accept)
    reason: str = ""


@dataclass(slots=True)
class StepResult:
    step: str                   # connect | helo | mail | rcpt | data
    subject: str                # client ip, HELO name, sender, recipient, "message"
    action: str                 # the step's outcome: continue/accept = passed
    reply: str                  # what the client would be answered
    verdicts: list[CheckVerdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.action in ("continue", "accept")


@dataclass(slots=True)
class Replay:
    listener: str
    role: str
    trusted: bool
    steps: list[StepResult] = field(default_factory=list)
    accepted_recipients: list[str] = field(default_factory=list)
    added_headers: list[str] = field(default_factory=list)
    quarantine: str = ""        # Junk folder reason
    held: str = ""              # held-in-quarantine reason (mailwright quarantine)
    outcome: str = "refused"    # accepted | partial | refused | deferred

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accepted"] = self.accepted
        return d


def _reply_text(reply: Any) -> str:
    if reply is None:
        return ""
    return reply.to_bytes().decode("utf-8", "replace").rstrip("\r\n").replace("\r\n", " / ")


def _verdict(v: Verdict, fallback: str = "") -> CheckVerdict:
    return CheckVerdict(v.check or fallback, v.action.value, _reply_text(v.reply), v.reason)


class _Traced:
    """A check wrapped so that every verdict it returns (or its failure) is recorded."""

    def __init__(self, check: Any, step: str, sink: list[CheckVerdict]) -> None:
        self._check, self._step, self._sink = check, step, sink
        self.name = getattr(check, "name", type(check).__name__)
        setattr(self, f"check_{step}", self._call)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._check, item)

    def _call(self, *args: Any) -> Any:
        try:
            result = getattr(self._check, f"check_{self._step}")(*args)
        except Exception as exc:
            self._sink.append(CheckVerdict(self.name, "tempfail", "", f"check raised: {exc!r}"))
            raise
        if inspect.isawaitable(result):
            return self._settle(result)
        self._sink.append(_verdict(result, self.name))
        return result

    async def _settle(self, awaitable: Any) -> Verdict:
        try:
            verdict = await awaitable
        except asyncio.CancelledError:
            self._sink.append(CheckVerdict(self.name, "tempfail", "", "timed out"))
            raise
        except Exception as exc:
            self._sink.append(CheckVerdict(self.name, "tempfail", "", f"check raised: {exc!r}"))
            raise
        self._sink.append(_verdict(verdict, self.name))
        return verdict


def _scratch_state(live_path: str, tmpdir: str) -> Any:
    """A ``SqlitePolicyState`` on a copy of the live counters and greylist."""
    from ..store.policystate import SqlitePolicyState
    copy = os.path.join(tmpdir, "policystate.db")
    if os.path.exists(live_path):
        src = sqlite3.connect(f"file:{live_path}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
    return SqlitePolicyState(copy)


def _sandbox(pipeline: Any, live_state_path: str, tmpdir: str) -> Any:
    """Point every check's policy state at a scratch copy (returned, None if no check
    keeps state); switch result recorders off.  With the PostgreSQL state the scratch
    starts empty: the cluster's rows are never written by a test."""
    from ..store.pg_policystate import PostgresPolicyState
    from ..store.policystate import SqlitePolicyState
    scratch = None
    for checks in pipeline.steps.values():
        for check in checks:
            if isinstance(getattr(check, "state", None),
                          (SqlitePolicyState, PostgresPolicyState)):
                if scratch is None:
                    scratch = _scratch_state(live_state_path, tmpdir)
                check.state = scratch
            if getattr(check, "recorder", None) is not None:
                check.recorder = None
    return scratch


def load_message(data: bytes) -> bytes:
    """The saved message with CRLF line ends (files on disk usually have bare LF)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _listener(settings: Any, wanted: str | None) -> Any:
    listeners = list(settings.listeners)
    if not listeners:
        raise InvalidInput("the configuration has no listeners")
    if wanted is None:
        return next((l for l in listeners if l.role == "mx"), listeners[0])
    for l in listeners:
        if l.name == wanted:
            return l
    for l in listeners:
        if l.role == wanted:
            return l
    names = ", ".join(f"{l.name} ({l.role})" for l in listeners)
    raise InvalidInput(f"no listener named or with role {wanted!r}; configured: {names}")


def _parse(path: str, *, sender: bool) -> Any:
    text = path.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    try:
        return parse_path(text, sender=sender, smtputf8=True)
    except ParseError as exc:
        raise InvalidInput(f"invalid {'sender' if sender else 'recipient'} {path!r}: "
                           f"{_reply_text(exc.reply)}") from None


async def replay(settings: Any, store: Any, *, ip: str, helo: str, sender: str,
                 recipients: Sequence[str], message: bytes, listener: str | None = None,
                 auth_user: str = "", resolver: Any = None) -> Replay:
    """See the module docstring. ``message`` is the raw saved message (any line ends)."""
    from ..app import _batv_hook, _limits, primary_domain, shared_resolver
    from ..net.intake import IntakeServer, ListenerSpec
    from ..policy.antiabuse import POLICY_STATE_FILE
    from ..policy.registry import build_checks
    from ..routing.directory import Directory

    if not recipients:
        raise InvalidInput("at least one --to recipient is needed")
    mail_addr = _parse(sender, sender=True)
    rcpt_addrs = [_parse(r, sender=False) for r in recipients]
    conf = _listener(settings, listener)
    spec = ListenerSpec(name=conf.name, address=conf.address, port=conf.port, role=conf.role,
                        tls=conf.tls)
    resolver = resolver or shared_resolver(settings)
    directory = Directory(await store.directory_snapshot(), primary_domain(settings))
    policy = build_checks(settings, resolver=resolver, store=store, hostname=settings.hostname)
    intake = IntakeServer(hostname=settings.hostname, store=store, directory=directory,
                          limits=_limits(settings), ssl_context=None,
                          trusted_networks=settings.relay.trusted_networks,
                          submission=settings.submission, checks=policy.checks,
                          header_filters=policy.header_filters)
    pipeline = intake.pipeline
    sink: list[CheckVerdict] = []
    out = Replay(listener=spec.name, role=spec.role, trusted=intake.is_trusted(ip))

    async def steps() -> Replay:
        info = SessionInfo(client_ip=ip, client_port=0, listener=spec.name, role=spec.role,
                           tls="", auth_user=auth_user.strip().lower(),
                           trusted=out.trusted, session_id="policy-test")
        txn = TransactionInfo()

        def record(step: str, subject: str, verdict: Verdict, ok_reply: Any) -> StepResult:
            refused = verdict.action in (Action.REJECT, Action.TEMPFAIL)
            reply = (verdict.reply or catalog.TEMP_LOCAL_ERROR) if refused else (
                verdict.reply if verdict.action is Action.ACCEPT and verdict.reply
                else ok_reply)
            res = StepResult(step, subject, verdict.action.value, _reply_text(reply),
                             list(sink))
            sink.clear()
            out.steps.append(res)
            return res

        def refuse(step: str, subject: str, check: str, reply: Any, reason: str) -> None:
            sink.append(CheckVerdict(check, "reject" if reply.is_permanent else "tempfail",
                                     _reply_text(reply), reason))
            record(step, subject, Verdict(Action.REJECT if reply.is_permanent
                                          else Action.TEMPFAIL, check, reply, reason), None)

        def finish(outcome: str) -> Replay:
            out.outcome = outcome
            return out

        def failed(res: StepResult) -> Replay:
            return finish("deferred" if res.action == "tempfail" else "refused")

        res = record("connect", ip, await pipeline.check_connect(info),
                     Reply(220, "", f"{settings.hostname} ESMTP"))
        if not res.passed:
            return failed(res)
        info.helo = helo
        res = record("helo", helo, await pipeline.check_helo(info),
                     Reply(250, "", settings.hostname))
        if not res.passed:
            return failed(res)

        # MAIL: the session's submission rules first, then the checks.
        sender_text = str(mail_addr)
        grants: tuple[str, ...] = ()
        if spec.submission:
            if not info.auth_user:
                refuse("mail", sender_text or "<>", "submission", catalog.AUTH_REQUIRED,
                       "submission listener: not authenticated (use --auth-user)")
                return finish("refused")
            grants = await intake.send_as_grants(info.auth_user)
            v = intake.sender_auth.check_sender(info.auth_user, sender_text, directory, grants)
            if v.action is Action.REJECT:
                refuse("mail", sender_text or "<>", v.check or "sender-auth",
                       v.reply or catalog.TEMP_LOCAL_ERROR, v.reason)
                return finish("refused")
        txn.sender = sender_text
        res = record("mail", sender_text or "<>", await pipeline.check_mail(info, txn),
                     Reply(250, "2.1.0", "Ok"))
        if not res.passed:
            return failed(res)

        rcpt_results = []
        rewrite = _batv_hook(settings, "rewrite_recipient")   # as the session does
        for addr in rcpt_addrs:
            target = rewrite(addr, directory)[0] if rewrite is not None else addr
            resolution = directory.resolve(target.local, target.domain)
            res = record("rcpt", str(addr), await pipeline.check_rcpt(info, txn, addr,
                                                                         resolution),
                         Reply(250, "2.1.5", "Ok"))
            rcpt_results.append(res)
            if res.passed:
                txn.recipients.append(str(addr))
                out.accepted_recipients.append(str(addr))
        if not out.accepted_recipients:
            return finish("deferred" if all(r.action == "tempfail" for r in rcpt_results)
                          else "refused")

        # DATA: what the session does at end of data, then the data checks.
        data = load_message(message)
        capture = HeaderCapture()
        rest = capture.feed(data)
        rest += capture.finish()
        header = capture.header or b""
        hinfo = capture.info
        if hinfo is not None and hinfo.received > intake.limits.max_received_headers:
            refuse("data", "message", "loop", catalog.MAIL_LOOP,
                   f"{hinfo.received} Received fields")
            return finish("refused")
        prefix = b""
        if spec.submission and info.auth_user and hinfo is not None:
            v = intake.sender_auth.check_header_from(info.auth_user, hinfo.from_addresses,
                                                     directory, grants)
            if v.action is Action.REJECT:
                refuse("data", "message", v.check or "sender-auth",
                       v.reply or catalog.TEMP_LOCAL_ERROR, v.reason)
                return finish("refused")
            prefix = submission_fixups(hinfo, hostname=settings.hostname,
                                       auth_user=info.auth_user, helo=helo, client_ip=ip,
                                       tls="", protocol="ESMTPA", now=time.time(),
                                       hide_client=settings.submission.hide_client_ip)
        stored = prefix + intake.filter_header(header) + rest
        view = MessageView(header, len(stored), lambda: stored)
        res = record("data", "message", await pipeline.check_data(info, txn, view),
                     Reply(250, "2.0.0", "Ok: would be queued (policy test: nothing queued)"))
        if not res.passed:
            return failed(res)
        added = view.prefix()
        if view.quarantine_reason:
            added = quarantine_field(view.quarantine_reason) + added
        out.quarantine = view.quarantine_reason
        out.held = view.hold_reason
        out.added_headers = [f.decode("utf-8", "replace") for f in split_fields(prefix + added)]
        return finish("accepted" if len(out.accepted_recipients) == len(rcpt_addrs)
                      else "partial")

    with tempfile.TemporaryDirectory(prefix="mailwright-policy-test-") as tmp:
        scratch = _sandbox(pipeline, str(settings.resolve(POLICY_STATE_FILE)), tmp)
        for step in STEPS:      # after the sandbox: it must see the checks themselves
            pipeline.steps[step] = [_Traced(c, step, sink) for c in pipeline.steps[step]]
        try:
            return await steps()
        finally:
            if scratch is not None:
                await scratch.close()


