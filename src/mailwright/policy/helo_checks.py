"""HELO name and reverse-DNS rules.

What:
* ``HeloCheck`` (helo step).  The core already refuses a HELO argument that is neither a
  domain nor an address literal (RFC 5321 §4.1.1.1).  This adds, each configurable:
  ``ours``: the name is our hostname or one of our local domains (not "localhost"), or the
  literal is one of our listener addresses sent from another address (no other host may
  claim that; RFC 5321 §4.1.4 lets us refuse it on
  policy grounds); ``non_fqdn``: a name without a dot; ``unresolvable``: a name with no A or
  AAAA record (a DNS timeout does not count).
* ``RdnsCheck`` (connect step): ``missing``: the client address has no PTR record;
  ``mismatch``: none of its PTR names (at most ``MAX_PTR``) resolves back to it (forward-
  confirmed reverse DNS, RFC 8601 §2.7.3 "iprev").  Refusals use RFC 7372 §3.3 code X.7.25
  "reverse DNS validation failed".

Each rule's action is ``"reject"``, ``"tempfail"``, ``"off"`` or a number (spam-score
points).  Replies: HELO rules ``550 5.7.1`` / ``504 5.5.2`` (non-FQDN: a syntax matter, RFC
3463 X.5.2) or ``450 4.7.1``; rDNS ``554 5.7.25`` at connect (RFC 5321 §3.1) or ``421 4.7.25``.

Invariants: mx-role sessions of untrusted, unauthenticated clients only, and not for clients
allowlisted by DNSWL.  DNS failures never count against the client.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any, Awaitable, Iterable

from ..net.peername import MAX_PTR, peer_name  # noqa: F401 (MAX_PTR: documented here)
from ..net.dns import DNSError
from ..smtp.replies import Reply
from .context import SessionInfo
from .dnsbl import ALLOWLISTED, screened
from .spamscore import add_points
from .verdict import CONTINUE, Action, Verdict

__all__ = ["HeloCheck", "RdnsCheck", "helo_literal"]

log = logging.getLogger("mailwright.policy.helo")

RDNS_FACT = "antiabuse.rdns"

_HELO_REPLIES = {
    "ours": Reply(550, "5.7.1", "Helo command rejected: you are not me"),
    "non-fqdn": Reply(504, "5.5.2", "Helo command rejected: need fully-qualified hostname"),
    "unresolvable": Reply(550, "5.7.1", "Helo command rejected: host not found"),
}
_HELO_TEMP = Reply(450, "4.7.1", "Helo command rejected, try again later")


def helo_literal(helo: str) -> str | None:
    """The address of an address-literal HELO (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``)."""
    if not (helo.startswith("[") and helo.endswith("]")):
        return None
    text = helo[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _verdict(check: str, rule: str, action: str | float, facts: dict, why: str,
             reject: Reply, temp: Reply) -> Verdict:
    if action == "reject":
        return Verdict(Action.REJECT, check, reject, why)
    if action == "tempfail":
        return Verdict(Action.TEMPFAIL, check, temp, why)
    add_points(facts, rule, float(action))
    return Verdict(Action.CONTINUE, check, reason=why)


class HeloCheck:
    name = "helo"

    def __init__(self, resolver: Any, *, ours: str | float, non_fqdn: str | float,
                 unresolvable: str | float, our_names: Iterable[str],
                 our_addresses: Iterable[str] = (), timeout: float = 5.0) -> None:
        self.resolver = resolver
        self.rules = {"ours": ours, "non-fqdn": non_fqdn, "unresolvable": unresolvable}
        self.our_names = frozenset(n.lower().rstrip(".") for n in our_names)
        self.our_addresses = frozenset(str(ipaddress.ip_address(a)) for a in our_addresses
                                       if not ipaddress.ip_address(a).is_unspecified)
        self.timeout = timeout

    def _findings(self, helo: str, client_ip: str) -> list[str]:
        name = helo.lower().rstrip(".")
        literal = helo_literal(helo)
        found = []
        # Our address is only a false claim from another address (a client on our own
        # host, e.g. over loopback, truthfully sends [127.0.0.1]).
        if (literal is not None and literal in self.our_addresses and literal != client_ip) \
                or name in self.our_names:
            found.append("ours")
        if literal is None and "." not in name:
            found.append("non-fqdn")
        return found

    async def _resolves(self, name: str) -> bool:
        try:
            addresses = await asyncio.wait_for(self.resolver.addresses(name), self.timeout)
        except (DNSError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("HELO %s lookup failed: %r (ignored)", name, exc)
            return True
        return bool(addresses)

    def check_helo(self, session: SessionInfo) -> Verdict | Awaitable[Verdict]:
        """Answered at once unless the "unresolvable" rule needs a DNS lookup."""
        if not screened(session) or session.facts.get(ALLOWLISTED) or not session.helo:
            return CONTINUE
        helo = session.helo
        findings = [f for f in self._findings(helo, session.client_ip) if self.rules[f] != "off"]
        if self.rules["unresolvable"] != "off" and helo_literal(helo) is None \
                and "non-fqdn" not in findings:
            return self._check_resolving(session, findings)
        return self._judge(session, findings)

    async def _check_resolving(self, session: SessionInfo, findings: list[str]) -> Verdict:
        if not await self._resolves(session.helo):
            findings.append("unresolvable")
        return self._judge(session, findings)

    def _judge(self, session: SessionInfo, findings: list[str]) -> Verdict:
        helo = session.helo
        verdict = CONTINUE
        for rule in findings:
            why = f"helo {helo[:100]!r}: {rule}"
            v = _verdict(self.name, f"helo-{rule}", self.rules[rule], session.facts, why,
                         _HELO_REPLIES[rule], _HELO_TEMP)
            if v.action is not Action.CONTINUE:
                return v
            verdict = v
        return verdict


def _rdns_reply(ip: str, what: str) -> Reply:
    return Reply(554, "5.7.25", f"Service unavailable; client [{ip}] {what}")


def _rdns_temp(ip: str, what: str) -> Reply:
    return Reply(421, "4.7.25", f"Service unavailable; client [{ip}] {what}, try again later")


class RdnsCheck:
    name = "rdns"

    def __init__(self, resolver: Any, *, missing: str | float, mismatch: str | float,
                 timeout: float = 5.0) -> None:
        self.resolver = resolver
        self.missing = missing
        self.mismatch = mismatch
        self.timeout = timeout

    async def status(self, ip: str) -> str:
        """"ok", "missing", "mismatch" or "unknown" (DNS failure: counts as nothing): the
        same forward-confirmed lookup the session does for the Received field."""
        return (await peer_name(self.resolver, ip)).status

    def prefetch(self, session: SessionInfo) -> None:
        if screened(session) and RDNS_FACT not in session.facts:
            session.facts[RDNS_FACT] = asyncio.ensure_future(self.status(session.client_ip))

    async def check_connect(self, session: SessionInfo) -> Verdict:
        if not screened(session):
            return CONTINUE
        self.prefetch(session)
        pending = session.facts[RDNS_FACT]
        try:
            status = await asyncio.wait_for(asyncio.shield(pending), self.timeout) \
                if isinstance(pending, asyncio.Future) else pending
        except asyncio.TimeoutError:
            pending.cancel()
            status = "unknown"
        session.facts[RDNS_FACT] = status
        if status in ("ok", "unknown") or session.facts.get(ALLOWLISTED):
            return CONTINUE
        action = self.missing if status == "missing" else self.mismatch
        if action == "off":
            return CONTINUE
        what = "has no reverse DNS" if status == "missing" else \
            "reverse DNS does not match"
        ip = session.client_ip
        return _verdict(self.name, f"rdns-{status}", action, session.facts,
                        f"client {ip} {what}", _rdns_reply(ip, what), _rdns_temp(ip, what))
