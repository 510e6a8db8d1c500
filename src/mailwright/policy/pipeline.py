"""The policy pipeline: runs the checks of each SMTP step in order and merges verdicts.

Checks decide; the pipeline orchestrates (GUIDE idea 7, after maddy's CheckState and Haraka's
hooks). Checks are registered explicitly per step (GUIDE idea 11: no discovery by method
names); a check registered for a step implements that step's method:

=========  ==========================================================  ===================
step       method                                                       when
=========  ==========================================================  ===================
connect    ``check_connect(session)``                                   before the greeting
helo       ``check_helo(session)``                                      HELO/EHLO
mail       ``check_mail(session, txn)``                                 MAIL FROM
rcpt       ``check_rcpt(session, txn, rcpt, resolution)``               each RCPT TO
data       ``check_data(session, txn, message)``                        end of data, before
                                                                        the commit
=========  ==========================================================  ===================

Each returns a ``Verdict`` or an awaitable of one. For each step the checks run in order;
the first REJECT or TEMPFAIL ends the step, ACCEPT ends it positively, CONTINUE goes on.
A check that raises becomes TEMPFAIL 451 4.3.0 (unknown means temporary: the client
retries, nothing is lost) and the error is logged, never sent to the peer. The checks of a
step run under one timeout (``timeout`` seconds for the whole step) that also becomes
TEMPFAIL, naming the check that was running.

Every verdict that names its check and carries a reason is kept, in order, on the session
(connect, helo) or the transaction (mail, rcpt, data) for logs and the message trace.

The relay check is always first for RCPT (GUIDE idea 8).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Awaitable, Sequence

from ..routing.directory import Resolution
from ..smtp import catalog
from ..smtp.events import Address
from .context import MessageView, SessionInfo, TransactionInfo
from .verdict import CONTINUE, Action, Verdict

log = logging.getLogger("mailwright.policy")

STEPS = ("connect", "helo", "mail", "rcpt", "data")


def _call(check: Any, method: str, args: tuple) -> Any:
    """A check's answer (a Verdict or an awaitable of one); one that raises is a TEMPFAIL."""
    try:
        return getattr(check, method)(*args)
    except Exception:
        log.exception("policy check %s failed", getattr(check, "name", check))
        return _failed(check, "check raised")


def _final(verdict: Verdict, record: list[Verdict]) -> bool:
    """Keep a verdict that names its check and a reason; True if it ends the step."""
    if verdict.check and verdict.reason:
        record.append(verdict)
    return verdict.action is not Action.CONTINUE


def _failed(check: Any, why: str) -> Verdict:
    return Verdict(Action.TEMPFAIL, getattr(check, "name", "?"), catalog.TEMP_LOCAL_ERROR, why)


class Pipeline:
    def __init__(self, *, connect: Sequence[Any] = (), helo: Sequence[Any] = (),
                 mail: Sequence[Any] = (), rcpt: Sequence[Any] = (),
                 data: Sequence[Any] = (), timeout: float = 30.0,
                 rcpt_checks: Sequence[Any] | None = None) -> None:
        self.steps: dict[str, list[Any]] = {
            "connect": list(connect), "helo": list(helo), "mail": list(mail),
            "rcpt": list(rcpt_checks if rcpt_checks is not None else rcpt),
            "data": list(data)}
        for step, checks in self.steps.items():
            method = f"check_{step}"
            for check in checks:
                if not callable(getattr(check, method, None)):
                    raise TypeError(f"{type(check).__name__} registered for {step} has no "
                                    f"{method}()")
        self.timeout = timeout

    @property
    def rcpt_checks(self) -> list[Any]:
        return self.steps["rcpt"]

    def has(self, step: str) -> bool:
        return bool(self.steps[step])

    def add(self, step: str, check: Any, first: bool = False) -> None:
        if not callable(getattr(check, f"check_{step}", None)):
            raise TypeError(f"{type(check).__name__} has no check_{step}()")
        if first:
            self.steps[step].insert(0, check)
        else:
            self.steps[step].append(check)

    def begin(self, step: str, args: tuple, record: list[Verdict]) -> "Verdict | Awaitable[Verdict]":
        """Run the checks of one step, synchronously for as long as they answer at once.

        Most checks answer without waiting most of the time (out of scope, nothing to look
        up, a cache hit), so the common path costs no task and no timer. The first check
        that returns an awaitable hands the rest of the step to ``_continue``, which the
        caller awaits: the pending awaitable and every check after it run under ONE
        timeout for the whole remainder (a timer per check cost more than most checks
        do); the check running when it expires is the one named in the TEMPFAIL."""
        method = f"check_{step}"
        checks = self.steps[step]
        for index, check in enumerate(checks):
            verdict = _call(check, method, args)
            if type(verdict) is not Verdict and inspect.isawaitable(verdict):
                return self._continue(method, checks, index, verdict, args, record)
            if _final(verdict, record):
                return verdict
        return CONTINUE

    async def _continue(self, method: str, checks: list[Any], index: int, pending: Any,
                        args: tuple, record: list[Verdict]) -> Verdict:
        current: Any = checks[index]
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    if pending is not None:
                        try:
                            verdict = await pending
                        except (asyncio.CancelledError, TimeoutError):
                            raise
                        except Exception:
                            log.exception("policy check %s failed",
                                          getattr(current, "name", current))
                            verdict = _failed(current, "check raised")
                        pending = None
                        if _final(verdict, record):
                            return verdict
                    index += 1                  # the next check, awaited only if it waits
                    if index >= len(checks):
                        return CONTINUE
                    current = checks[index]
                    verdict = _call(current, method, args)
                    if type(verdict) is not Verdict and inspect.isawaitable(verdict):
                        pending = verdict
                    elif _final(verdict, record):
                        return verdict
        except TimeoutError:
            if inspect.iscoroutine(pending):
                pending.close()
            name = getattr(current, "name", "?")
            verdict = _failed(current, f"{name} timed out after {self.timeout}s")
            record.append(verdict)
            return verdict

    async def _run(self, step: str, args: tuple, record: list[Verdict]) -> Verdict:
        verdict = self.begin(step, args, record)
        if isinstance(verdict, Verdict):
            return verdict
        return await verdict

    async def check_connect(self, session: SessionInfo) -> Verdict:
        return await self._run("connect", (session,), session.verdicts)

    async def check_helo(self, session: SessionInfo) -> Verdict:
        return await self._run("helo", (session,), session.verdicts)

    async def check_mail(self, session: SessionInfo, txn: TransactionInfo) -> Verdict:
        return await self._run("mail", (session, txn), txn.verdicts)

    async def check_data(self, session: SessionInfo, txn: TransactionInfo,
                         message: MessageView) -> Verdict:
        return await self._run("data", (session, txn, message), txn.verdicts)

    # The same steps without awaiting while no check has to wait: each returns a Verdict,
    # or an awaitable of one (the session then starts a task, or awaits it in its commit).
    def begin_connect(self, session: SessionInfo) -> "Verdict | Awaitable[Verdict]":
        return self.begin("connect", (session,), session.verdicts)

    def begin_helo(self, session: SessionInfo) -> "Verdict | Awaitable[Verdict]":
        return self.begin("helo", (session,), session.verdicts)

    def begin_mail(self, session: SessionInfo,
                   txn: TransactionInfo) -> "Verdict | Awaitable[Verdict]":
        return self.begin("mail", (session, txn), txn.verdicts)

    def begin_data(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> "Verdict | Awaitable[Verdict]":
        return self.begin("data", (session, txn, message), txn.verdicts)

    def check_rcpt_sync(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                        resolution: Resolution) -> Verdict | None:
        """Run the RCPT checks without awaiting. Returns None if a check needs the event
        loop (then call ``check_rcpt``), which keeps the common path free of task overhead."""
        for check in self.steps["rcpt"]:
            try:
                verdict = check.check_rcpt(session, txn, rcpt, resolution)
            except Exception:
                log.exception("policy check %s failed", check.name)
                return _failed(check, "check raised")
            if type(verdict) is not Verdict and inspect.isawaitable(verdict):
                verdict.close()
                return None
            if verdict.action is not Action.CONTINUE:
                if verdict.reason:
                    txn.verdicts.append(verdict)
                return verdict
        return CONTINUE

    async def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                         resolution: Resolution) -> Verdict:
        return await self._run("rcpt", (session, txn, rcpt, resolution), txn.verdicts)
