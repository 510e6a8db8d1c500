"""Before the greeting: the greeting delay and the early-talker rule (postscreen's pregreet).

What: ``PregreetCheck`` (connect step, first) waits ``delay`` seconds before the banner and
meanwhile lets other connect checks start their DNS lookups (``prefetch`` hooks), so the
delay costs no extra time.  RFC 5321 §4.3.1 / §3.1: a client waits for the greeting before
it sends anything; one that talks first (``SessionInfo.early_talker``, set by the session
driver when bytes arrive before the banner) is a bot ignoring the protocol.  Its action:

* ``"reject"``: ``554 5.5.1 Protocol error: talked before the greeting`` instead of the
  banner (RFC 5321 §3.1: 554 refuses a connection; RFC 3463 X.5.1: a command out of
  sequence), then the connection closes;
* ``"tempfail"``: ``421 4.5.1`` and close;
* a number: points added to the spam score; ``"off"``: nothing.

Invariants: only mx-role sessions of untrusted clients are delayed (submission clients are
users).  The delay is an ``asyncio.sleep``; with ``delay == 0`` the check only looks at what
arrived while the other connect checks ran.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from ..smtp.replies import Reply
from .context import SessionInfo
from .dnsbl import screened
from .spamscore import add_points
from .verdict import CONTINUE, Action, Verdict

__all__ = ["PregreetCheck", "EARLY_TALKER", "EARLY_TALKER_TEMP"]

EARLY_TALKER = Reply(554, "5.5.1", "Protocol error: talked before the greeting")
EARLY_TALKER_TEMP = Reply(421, "4.5.1", "Protocol error: talked before the greeting")


class PregreetCheck:
    name = "pregreet"

    def __init__(self, delay: float, action: str | float,
                 prefetch: Sequence[Callable[[SessionInfo], None]] = (),
                 sleep: Callable[[float], object] = asyncio.sleep) -> None:
        self.delay = delay
        self.action = action
        self.prefetch = tuple(prefetch)
        self.sleep = sleep

    async def check_connect(self, session: SessionInfo) -> Verdict:
        if not screened(session):
            return CONTINUE
        for start in self.prefetch:
            start(session)
        if self.delay > 0:
            await self.sleep(self.delay)
        return self.judge(session)

    def judge(self, session: SessionInfo) -> Verdict:
        """The early-talker verdict (the connect checks after this one may have waited
        for DNS too: a client that spoke by now spoke before the banner)."""
        if not session.early_talker or self.action == "off":
            return CONTINUE
        why = f"client {session.client_ip} talked before the greeting"
        if self.action == "reject":
            return Verdict(Action.REJECT, self.name, EARLY_TALKER, why)
        if self.action == "tempfail":
            return Verdict(Action.TEMPFAIL, self.name, EARLY_TALKER_TEMP, why)
        add_points(session.facts, "early-talker", float(self.action))
        return Verdict(Action.CONTINUE, self.name, reason=why)


class LateTalkerCheck:
    """The same judgement once more after the DNS checks of the connect step: with no
    delay configured, the DNS wait is the only window in which a bot talks first."""
    name = "pregreet"

    def __init__(self, pregreet: PregreetCheck) -> None:
        self.pregreet = pregreet

    def check_connect(self, session: SessionInfo) -> Verdict:
        if not screened(session):
            return CONTINUE
        return self.pregreet.judge(session)
