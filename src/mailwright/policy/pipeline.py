"""The policy pipeline: runs the checks of each SMTP step in order and merges verdicts.

Checks decide; the pipeline orchestrates (GUIDE idea 7, after maddy's CheckState and Haraka's
hooks). For each step (connect, helo, mail, rcpt, data) the checks registered for it run in
order; the first REJECT or TEMPFAIL ends the step, ACCEPT ends it positively, CONTINUE goes on.
A check that raises becomes TEMPFAIL 451 4.3.0 (unknown means temporary: the client retries,
nothing is lost) and the error is logged, never sent to the peer. Asynchronous checks (DNS)
run under a per-check timeout that also becomes TEMPFAIL.

The relay check is always first for RCPT (GUIDE idea 8).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Sequence

from ..routing.directory import Resolution
from ..smtp import catalog
from ..smtp.events import Address
from .context import SessionInfo, TransactionInfo
from .verdict import CONTINUE, Action, Verdict

log = logging.getLogger("mailwright.policy")


class Pipeline:
    def __init__(self, rcpt_checks: Sequence[Any] = (), timeout: float = 30.0) -> None:
        self.rcpt_checks = list(rcpt_checks)
        self.timeout = timeout

    async def _settle(self, check: Any, result: Any) -> Verdict:
        if inspect.isawaitable(result):
            try:
                result = await asyncio.wait_for(result, self.timeout)
            except asyncio.TimeoutError:
                return Verdict(Action.TEMPFAIL, check.name, catalog.TEMP_LOCAL_ERROR,
                               f"{check.name} timed out after {self.timeout}s")
        return result

    def check_rcpt_sync(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                        resolution: Resolution) -> Verdict | None:
        """Run the RCPT checks without awaiting. Returns None if a check needs the event
        loop (then call ``check_rcpt``), which keeps the common path free of task overhead."""
        for check in self.rcpt_checks:
            try:
                verdict = check.check_rcpt(session, txn, rcpt, resolution)
            except Exception:
                log.exception("policy check %s failed", check.name)
                return Verdict(Action.TEMPFAIL, check.name, catalog.TEMP_LOCAL_ERROR,
                               "check raised")
            if inspect.isawaitable(verdict):
                verdict.close()
                return None
            if verdict.action is not Action.CONTINUE:
                return verdict
        return CONTINUE

    async def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                         resolution: Resolution) -> Verdict:
        for check in self.rcpt_checks:
            try:
                verdict = await self._settle(check, check.check_rcpt(session, txn, rcpt,
                                                                     resolution))
            except Exception:
                log.exception("policy check %s failed", check.name)
                return Verdict(Action.TEMPFAIL, check.name, catalog.TEMP_LOCAL_ERROR,
                               "check raised")
            if verdict.action is not Action.CONTINUE:
                return verdict
        return CONTINUE
