"""Greylisting (RFC 6647): defer the first delivery attempt of an unknown triplet.

What: ``GreylistCheck`` (rcpt step) keys each attempt by the triplet (client network,
sender, recipient) -- the client as its /24 (IPv4) or /64 (IPv6) network, since large
senders retry from another address of the same pool (RFC 6647 §4.2.1).  A new triplet, or
a retry within ``delay`` seconds, gets ``450 4.7.1 Greylisted, try again later`` (RFC 6647
§2.1: a temporary failure; RFC 3463 X.7.1); a retry after the delay passes and the
triplet is remembered for ``max_age`` seconds after its last use.  A new triplet not retried
within ``retry_window`` is forgotten.

Skipped: trusted and authenticated clients, non-mx listeners, clients allowlisted by DNSWL
(policy/dnsbl.py), senders whose SPF passed (``txn.facts["spf"].result == "pass"``, written by
the SPF check; a missing fact is "no SPF information") for a domain in ``spf_domains`` or
below it, and client networks that passed ``auto_allow`` retries within ``max_age``
(RFC 6647 §4.2.2 "auto-allowlisting").

Invariants: state lives in the shared ``PolicyState``; time comes from the injected clock.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Callable, Iterable

from ..routing.directory import Resolution
from ..smtp.events import Address
from ..smtp.replies import Reply
from ..store.policystate import PolicyState
from .context import SessionInfo, TransactionInfo
from .dnsbl import ALLOWLISTED, screened
from .verdict import CONTINUE, Action, Verdict

__all__ = ["GreylistCheck", "GREYLISTED", "client_network"]

GREYLISTED = Reply(450, "4.7.1", "Greylisted, try again later")


def client_network(ip: str, v4_prefix: int = 24, v6_prefix: int = 64) -> str:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class GreylistCheck:
    name = "greylist"

    def __init__(self, state: PolicyState, *, delay: float, retry_window: float,
                 max_age: float, auto_allow: int, v4_prefix: int = 24, v6_prefix: int = 64,
                 spf_domains: Iterable[str] = (), clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.delay = delay
        self.retry_window = retry_window
        self.max_age = max_age
        self.auto_allow = auto_allow
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.spf_domains = tuple(d.lower() for d in spf_domains)
        self.clock = clock

    def _spf_allowed(self, txn: TransactionInfo) -> bool:
        spf = txn.facts.get("spf")
        if spf is None or getattr(spf, "result", None) != "pass" or "@" not in txn.sender:
            return False
        domain = txn.sender.rpartition("@")[2].lower().rstrip(".")
        return any(domain == d or domain.endswith("." + d) for d in self.spf_domains)

    async def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                         resolution: Resolution) -> Verdict:
        if not screened(session) or session.facts.get(ALLOWLISTED):
            return CONTINUE
        if self.spf_domains and "@" in txn.sender:
            from .authentication import spf_result
            await spf_result(txn)            # SPF runs in the background from MAIL on
        if self._spf_allowed(txn):
            return CONTINUE
        try:
            net = client_network(session.client_ip, self.v4_prefix, self.v6_prefix)
        except ValueError:
            return CONTINUE
        now = self.clock()
        allow_key = f"greylist-ok:{net}"
        if self.auto_allow > 0 and \
                await self.state.incr(allow_key, int(self.max_age), now, 0) >= self.auto_allow:
            return CONTINUE
        sender = txn.sender.lower() or "<>"
        triplet = f"{net}|{sender}|{str(rcpt).lower()}"
        state = await self.state.greylist(triplet, now, self.delay, self.retry_window,
                                          self.max_age)
        if state == "retried":
            if self.auto_allow > 0:
                await self.state.incr(allow_key, int(self.max_age), now)
            return Verdict(Action.CONTINUE, self.name,
                           reason=f"greylist passed for {net} <{sender}> <{rcpt}>")
        if state == "passed":
            return CONTINUE
        return Verdict(Action.TEMPFAIL, self.name, GREYLISTED,
                       f"greylisted ({state}) {net} <{sender}> <{rcpt}>")
