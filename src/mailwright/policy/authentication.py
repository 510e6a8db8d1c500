"""Email authentication as pipeline stages: SPF at MAIL; DKIM, ARC, DMARC at end of data;
then one Authentication-Results field.

What: thin stages over the pure evaluators in ``mailwright.mailauth`` (fetch through the
shared resolver, evaluate, record). Each stage stores what it found in the transaction's
``facts`` (``spf``, ``dkim``, ``arc``, ``dmarc``) for the stages after it and for the
message trace, and appends its ``MethodResult`` to ``message.auth_results``;
``AuthResultsStage`` (the last data stage) writes them as one field (RFC 8601 §2.2).

Which mail: only sessions on ``mx`` listeners, and not from authenticated users or
``relay.trusted_networks`` (their mail is ours: it is signed on the way out, not checked on
the way in).

Actions (config/mailauth.py, defaults after what large receivers do):
* SPF (RFC 7208 §8): ``fail`` is recorded and left to DMARC unless ``spf_fail = "reject"``
  (550 5.7.23 at MAIL, RFC 7372 §3.2); ``temperror`` answers 451 4.7.24 (at end of data:
  the evaluation runs in the background from MAIL on) unless configured to accept;
  ``permerror``/``softfail``/``neutral``/``none`` are recorded.
* DMARC (RFC 7489 §6.6): ``p=reject`` failures answer 550 5.7.1 at end of data,
  ``p=quarantine`` failures go to the Junk folder (``message.quarantine``), a DNS
  temperror answers 451 4.7.1 (never a pass). A message with several From fields or
  authors of different domains is refused (550 5.7.1, §6.6.1 allows it): otherwise a
  crafted header could make DMARC judge a different domain than the reader sees.
  A passing ARC chain sealed by a domain in ``arc_trusted_sealers`` overrides a failure
  (RFC 8617 §7.2; recorded as the ``local_policy`` override of RFC 7489 §7.2).
* DKIM and ARC results alone refuse nothing.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any, Awaitable, Sequence

from ..config.mailauth import AuthSettings
from ..mailauth import arc as arc_mod
from ..mailauth import dkim as dkim_mod
from ..mailauth import dmarc as dmarc_mod
from ..mailauth import spf as spf_mod
from ..mailauth.authresults import MethodResult, format_header, strip_forged
from ..smtp.replies import Reply
from .context import MessageView, SessionInfo, TransactionInfo
from .verdict import CONTINUE, Action, Verdict

log = logging.getLogger("mailwright.policy.auth")

SPF_FAILED = Reply(550, "5.7.23", "SPF validation failed")                     # RFC 7372 §3.2
SPF_TEMPERROR = Reply(451, "4.7.24", "SPF validation error, try again later")  # RFC 7372 §3.2
DMARC_TEMPERROR = Reply(451, "4.7.1", "DMARC policy could not be checked, try again later")
SEVERAL_AUTHORS = Reply(550, "5.7.1", "Message refused: it must have exactly one From "
                                      "domain (RFC 7489 section 6.6.1)")


def dmarc_rejected(domain: str) -> Reply:
    return Reply(550, "5.7.1", f"Message rejected by the DMARC policy of {domain}")


def _why(result: str, reason: str | None) -> str:
    """RFC 8601 §2.2 reason= only where it helps a reader: not for pass or none."""
    return "" if result in ("pass", "none") else (reason or "")


class Scope:
    """Which sessions' mail is checked: ``mx`` listeners, not authenticated users, not
    ``relay.trusted_networks``, and not ``[auth] skip_networks`` (default loopback: a local
    program's mail has no SPF identity to check, as policyd-spf's skip_addresses)."""

    def __init__(self, skip_networks: Sequence[str] = ()) -> None:
        self.skip = [ipaddress.ip_network(n, strict=False) for n in skip_networks]

    def __call__(self, session: SessionInfo) -> bool:
        if session.role != "mx" or session.auth_user or session.trusted:
            return False
        if not self.skip:
            return True
        skipped = session.facts.get(_SKIPPED)        # the address is parsed once a session
        if skipped is None:
            ip = session.ip
            skipped = ip is not None and any(ip in net for net in self.skip)
            session.facts[_SKIPPED] = skipped
        return not skipped


ALL_MX = Scope()
_SKIPPED = "auth.skipped"


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class SpfStage:
    """MAIL step: SPF for MAIL FROM (or the HELO identity for the null sender, RFC 7208
    §2.4), evaluated once per transaction.

    Unless ``spf_fail = "reject"`` (which must answer at MAIL), the evaluation starts in
    the background and MAIL is answered at once: the DNS work overlaps RCPT and DATA, and
    ``SpfResultStage`` (the first data stage) collects the result, answering a temperror
    with 451 4.7.24 at end of data. ``spf_result(txn)`` gives it to earlier checks that
    need it (greylisting)."""
    name = "spf"

    def __init__(self, settings: AuthSettings, resolver: Any, receiver: str,
                 scope: Scope = ALL_MX) -> None:
        self.scope = scope
        self.settings = settings
        self.resolver = resolver
        self.receiver = receiver

    def check_mail(self, session: SessionInfo, txn: TransactionInfo):
        if not self.scope(session) or PENDING in txn.facts:
            return CONTINUE
        work = spf_mod.check_mail_from(self.resolver, session.client_ip, txn.sender,
                                       session.helo, receiver=self.receiver)
        if self.settings.spf_fail == "reject":
            return self._decide(txn, work)
        task = asyncio.get_running_loop().create_task(work)
        task.add_done_callback(_retrieved)
        txn.facts[PENDING] = task
        return CONTINUE

    async def _decide(self, txn: TransactionInfo, work) -> Verdict:
        return self.verdict(txn, await work)

    def verdict(self, txn: TransactionInfo, result: Any) -> Verdict:
        txn.facts["spf"] = result
        reason = f"spf={result.result} domain={result.domain}"
        if result.reason:
            reason += f" ({result.reason})"
        evidence = {"domain": result.domain, "identity": result.identity,
                    "record": result.record, "mechanism": result.mechanism,
                    "lookups": result.lookups}
        if result.result == "temperror" and self.settings.spf_temperror == "tempfail":
            return Verdict(Action.TEMPFAIL, self.name, SPF_TEMPERROR, reason, evidence)
        if result.result == "fail" and self.settings.spf_fail == "reject":
            reply = SPF_FAILED
            if result.explanation:
                reply = Reply(550, "5.7.23", f"SPF validation failed: "
                                             f"{result.explanation[:200]}")
            return Verdict(Action.REJECT, self.name, reply, reason, evidence)
        return Verdict(Action.CONTINUE, self.name, reason=reason, data=evidence)


PENDING = "spf.pending"


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()            # collected by SpfResultStage; never "never retrieved"


async def spf_result(txn: TransactionInfo) -> Any:
    """The SPF result of the transaction, waiting for a background evaluation; None if
    SPF was not checked."""
    pending = txn.facts.get(PENDING)
    if pending is not None and "spf" not in txn.facts:
        txn.facts["spf"] = await pending
    return txn.facts.get("spf")


class SpfResultStage:
    """First data stage: collects the background SPF evaluation and applies its action."""
    name = "spf"

    def __init__(self, spf: SpfStage) -> None:
        self.spf = spf

    def check_data(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> Verdict | Awaitable[Verdict]:
        pending = txn.facts.get(PENDING)
        if pending is None:
            return CONTINUE
        if "spf" not in txn.facts and pending.done() and not pending.cancelled() \
                and pending.exception() is None:
            txn.facts["spf"] = pending.result()      # finished during RCPT/DATA
        if "spf" in txn.facts:
            return self.spf.verdict(txn, txn.facts["spf"])
        return self._wait(txn)

    async def _wait(self, txn: TransactionInfo) -> Verdict:
        return self.spf.verdict(txn, await spf_result(txn))


class _ScopedDataStage:
    """A data stage that checks only the sessions in its ``scope``: outside it the answer
    is CONTINUE at once (no coroutine, no task); inside, the subclass's ``_check``."""

    def __init__(self, settings: AuthSettings, resolver: Any, scope: Scope = ALL_MX) -> None:
        self.scope = scope
        self.settings = settings
        self.resolver = resolver

    def check_data(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> Verdict | Awaitable[Verdict]:
        if not self.scope(session):
            return CONTINUE             # answered at once: no coroutine, no task
        return self._check(session, txn, message)


class DkimStage(_ScopedDataStage):
    """Data step: verify every DKIM signature (up to ``dkim_max_signatures``)."""
    name = "dkim"

    async def _check(self, session: SessionInfo, txn: TransactionInfo,
                     message: MessageView) -> Verdict:
        results = await dkim_mod.verify_message(
            self.resolver, message.read(), max_signatures=self.settings.dkim_max_signatures)
        txn.facts["dkim"] = results
        if not results:
            message.auth_results.append(MethodResult("dkim", "none"))
            return Verdict(Action.CONTINUE, self.name, reason="dkim=none")
        for r in results:
            props = [("header", "d", r.domain), ("header", "s", r.selector)]
            if r.header_b:
                props.append(("header", "b", r.header_b))
            message.auth_results.append(MethodResult("dkim", r.result, _why(r.result, r.reason),
                                                     props))
        summary = " ".join(f"dkim={r.result}:{r.domain}" for r in results)
        evidence = {"signatures": [
            {"d": r.domain, "s": r.selector, "a": r.algorithm, "result": r.result,
             "reason": r.reason, "key_bits": r.key_bits} for r in results]}
        return Verdict(Action.CONTINUE, self.name, reason=summary, data=evidence)


class ArcStage(_ScopedDataStage):
    """Data step: verify the ARC chain (RFC 8617 §5.2)."""
    name = "arc"

    async def _check(self, session: SessionInfo, txn: TransactionInfo,
                     message: MessageView) -> Verdict:
        result = await arc_mod.verify_chain(self.resolver, message.read())
        txn.facts["arc"] = result
        props = []
        if getattr(result, "remote_ip", None):
            props.append(("smtp", "remote-ip", result.remote_ip))
        message.auth_results.append(MethodResult("arc", result.cv,
                                                 _why(result.cv, result.reason), props))
        return Verdict(Action.CONTINUE, self.name, reason=f"arc={result.cv}")


class DmarcStage(_ScopedDataStage):
    """Data step: DMARC from the SPF and DKIM facts, with the configured actions."""
    name = "dmarc"

    def __init__(self, settings: AuthSettings, resolver: Any, recorder: Any = None,
                 scope: Scope = ALL_MX) -> None:
        super().__init__(settings, resolver, scope)
        self.recorder = recorder          # DMARC report recording (optional)

    async def _check(self, session: SessionInfo, txn: TransactionInfo,
                     message: MessageView) -> Verdict:
        try:
            author = dmarc_mod.author_domain(message.header_values("From"))
        except dmarc_mod.AuthorDomainError as exc:
            message.auth_results.append(MethodResult("dmarc", "permerror", str(exc)))
            return Verdict(Action.REJECT, self.name, SEVERAL_AUTHORS, f"dmarc: {exc}")
        if author is None:
            message.auth_results.append(MethodResult("dmarc", "none", "no From field"))
            return Verdict(Action.CONTINUE, self.name, reason="dmarc=none (no From field)")
        lookup = await dmarc_mod.fetch_policy(self.resolver, author)
        spf = txn.facts.get("spf")
        spf_result = spf.result if spf is not None else "none"
        spf_domain = _domain_of(txn.sender) if txn.sender else session.helo.lower()
        dkim = [(r.result, r.domain) for r in txn.facts.get("dkim", ())]
        result = dmarc_mod.evaluate(author, lookup, spf_result=spf_result,
                                    spf_domain=spf_domain, dkim=dkim)
        disposition = result.disposition
        override = ""
        arc = txn.facts.get("arc")
        if (result.result == "fail" and disposition != "none" and arc is not None
                and arc.cv == "pass"
                and (getattr(arc, "sealer_domain", "") or "").lower()
                in self.settings.arc_trusted_sealers):
            override, disposition = f"trusted ARC sealer {arc.sealer_domain}", "none"
        txn.facts["dmarc"] = result
        txn.facts["dmarc_disposition"] = disposition
        message.auth_results.append(MethodResult(
            "dmarc", result.result, f"p={result.policy}" + (f" override={override}"
                                                            if override else ""),
            [("header", "from", author)]))
        reason = f"dmarc={result.result} p={result.policy} disposition={disposition} " \
                 f"from={author}: {result.reason}" + (f"; {override}" if override else "")
        evidence = {"from_domain": author, "policy_domain": result.policy_domain,
                    "record": result.record.raw if result.record is not None else "",
                    "spf_aligned": result.spf_aligned, "dkim_aligned": result.dkim_aligned,
                    "disposition": disposition}
        if self.recorder is not None:
            try:
                self.recorder(session, txn, result, disposition)
            except Exception:  # noqa: BLE001 - reports never affect acceptance
                log.exception("recording the DMARC result failed")
        if result.result == "temperror":
            if self.settings.dmarc_temperror == "tempfail":
                return Verdict(Action.TEMPFAIL, self.name, DMARC_TEMPERROR, reason, evidence)
            return Verdict(Action.CONTINUE, self.name, reason=reason, data=evidence)
        if result.result != "fail":
            return Verdict(Action.CONTINUE, self.name, reason=reason, data=evidence)
        action = {"reject": self.settings.dmarc_reject,
                  "quarantine": self.settings.dmarc_quarantine}.get(disposition, "accept")
        if action == "reject":
            return Verdict(Action.REJECT, self.name, dmarc_rejected(result.policy_domain
                                                                    or author), reason, evidence)
        if action == "quarantine":
            message.quarantine(f"dmarc=fail (p={result.policy}) header.from={author}")
        return Verdict(Action.CONTINUE, self.name, reason=reason, data=evidence)


class AuthResultsStage:
    """The last data stage: one Authentication-Results field with every result."""
    name = "authentication-results"

    def __init__(self, authserv_id: str, scope: Scope = ALL_MX) -> None:
        self.scope = scope
        self.authserv_id = authserv_id

    def check_data(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> Verdict:
        if not self.scope(session):
            return CONTINUE
        results: list[MethodResult] = []
        spf = txn.facts.get("spf")
        if spf is not None:
            ptype = ("smtp", "mailfrom", txn.sender) if txn.sender else \
                ("smtp", "helo", session.helo)
            results.append(MethodResult("spf", spf.result, _why(spf.result, spf.reason),
                                        [ptype]))
        results.extend(message.auth_results)
        message.add_header(format_header(self.authserv_id, results))
        return CONTINUE

    def filter_header(self, header: bytes) -> bytes:
        """Remove arriving fields that claim our authserv-id (RFC 8601 §5)."""
        return strip_forged(header, self.authserv_id)[0]
