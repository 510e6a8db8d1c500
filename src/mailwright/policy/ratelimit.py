"""Rate limits: connections, messages and recipients per window, unknown recipients per session.

What:
* ``ConnectionRate`` (connect): connections per client address per ``window`` →
  ``421 4.7.0`` and close (RFC 5321 §3.8 / §4.2.5: 421 at connect; RFC 3463 X.7.0).
* ``MessageRate`` (mail): MAIL commands per client address, per sender address and per
  authenticated user per ``window`` → ``450 4.7.0`` (the sender retries later).
* ``RecipientRate`` (rcpt): recipients per client address (or authenticated user) per hour
  → ``450 4.7.0``.
* ``HarvestGuard`` (rcpt): after ``limit`` unknown recipients in one session (directory
  harvesting) → ``421 4.7.0`` and close.  It counts the recipients the directory does not
  know, so it must run before the recipient check that refuses them (``early = True``).

How: counters live in the shared ``PolicyState`` (store/policystate.py), so every intake
worker (and later every cluster node) counts together; ``HarvestGuard`` counts in the
session (the session is one process).  Time comes from the injected ``clock``.

Invariants: clients in trusted networks are never limited; a limit of 0 is no limit; a
failing state store fails the step with 451 4.3.0 via the pipeline (unknown means
temporary), never by accepting silently.
"""
from __future__ import annotations

import time
from typing import Callable

from ..routing.directory import Kind, Resolution
from ..smtp.events import Address
from ..smtp.replies import Reply
from ..store.policystate import PolicyState
from .context import SessionInfo, TransactionInfo
from .verdict import CONTINUE, Action, Verdict

__all__ = ["ConnectionRate", "MessageRate", "RecipientRate", "HarvestGuard",
           "CONNECTION_RATE", "MESSAGE_RATE", "RECIPIENT_RATE", "HARVEST"]

CONNECTION_RATE = Reply(421, "4.7.0", "Too many connections from your address, try again later")
MESSAGE_RATE = Reply(450, "4.7.0", "Message rate limit exceeded, try again later")
RECIPIENT_RATE = Reply(450, "4.7.0", "Recipient rate limit exceeded, try again later")
HARVEST = Reply(421, "4.7.0", "Too many unknown recipients, closing connection")

Clock = Callable[[], float]


class ConnectionRate:
    name = "connection-rate"

    def __init__(self, state: PolicyState, limit: int, window: int,
                 clock: Clock = time.time) -> None:
        self.state, self.limit, self.window, self.clock = state, limit, window, clock

    async def check_connect(self, session: SessionInfo) -> Verdict:
        if session.trusted or self.limit <= 0:
            return CONTINUE
        n = await self.state.incr(f"conn:{session.client_ip}", self.window, self.clock())
        if n > self.limit:
            return Verdict(Action.TEMPFAIL, self.name, CONNECTION_RATE,
                           f"client {session.client_ip}: {n} connections in {self.window}s "
                           f"> {self.limit}")
        return CONTINUE


class MessageRate:
    name = "message-rate"

    def __init__(self, state: PolicyState, *, per_ip: int, per_sender: int, per_user: int,
                 window: int, clock: Clock = time.time) -> None:
        self.state = state
        self.limits = (("ip", per_ip), ("sender", per_sender), ("user", per_user))
        self.window = window
        self.clock = clock

    def _keys(self, session: SessionInfo, txn: TransactionInfo) -> list[tuple[str, str, int]]:
        values = {"ip": session.client_ip,
                  "sender": txn.sender.lower() if txn.sender else "",
                  "user": session.auth_user.lower()}
        return [(kind, values[kind], limit) for kind, limit in self.limits
                if limit > 0 and values[kind]]

    async def check_mail(self, session: SessionInfo, txn: TransactionInfo) -> Verdict:
        if session.trusted:
            return CONTINUE
        now = self.clock()
        for kind, value, limit in self._keys(session, txn):
            n = await self.state.incr(f"msg-{kind}:{value}", self.window, now)
            if n > limit:
                return Verdict(Action.TEMPFAIL, self.name, MESSAGE_RATE,
                               f"{kind} {value}: {n} messages in {self.window}s > {limit}")
        return CONTINUE


class RecipientRate:
    name = "recipient-rate"
    WINDOW = 3600

    def __init__(self, state: PolicyState, limit: int, clock: Clock = time.time) -> None:
        self.state, self.limit, self.clock = state, limit, clock

    async def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                         resolution: Resolution) -> Verdict:
        if session.trusted or self.limit <= 0:
            return CONTINUE
        who = f"user:{session.auth_user.lower()}" if session.auth_user \
            else f"ip:{session.client_ip}"
        n = await self.state.incr(f"rcpt-{who}", self.WINDOW, self.clock())
        if n > self.limit:
            return Verdict(Action.TEMPFAIL, self.name, RECIPIENT_RATE,
                           f"{who}: {n} recipients in an hour > {self.limit}")
        return CONTINUE


class HarvestGuard:
    """Directory-harvest guard: must run before the recipient check (``early``)."""
    name = "harvest"
    early = True
    FACT = "antiabuse.unknown_rcpts"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                   resolution: Resolution) -> Verdict:
        if session.trusted or self.limit <= 0:
            return CONTINUE
        unknown = resolution.kind is Kind.UNKNOWN or (
            resolution.kind is Kind.LOCAL and not resolution.targets)
        if not unknown:
            return CONTINUE
        n = session.facts.get(self.FACT, 0) + 1
        session.facts[self.FACT] = n
        if n >= self.limit:
            return Verdict(Action.TEMPFAIL, self.name, HARVEST,
                           f"client {session.client_ip}: {n} unknown recipients in one "
                           f"session (directory harvest)")
        return CONTINUE
