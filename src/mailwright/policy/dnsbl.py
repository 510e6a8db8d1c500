"""DNS block and allow lists: client addresses at connect, domains at HELO, MAIL and in links.

What:
* ``ip_query_name(ip, zone)``: RFC 5782 §2.1 (IPv4: octets reversed, ``2.0.0.127.zone``)
  and §2.4 (IPv6: 32 nibbles reversed); ``domain_query_name(domain, zone)``: §2.3.
* ``ListLookup``: looks a name up in several lists at once (A records, RFC 5782 §2.1;
  answers filtered by each ``ListSpec``), through the shared caching ``Resolver`` and
  within ``timeout``: a list that times out or fails (``DNSTemporaryError``) simply does
  not count (a blocklist outage never blocks mail).
* ``DnsblCheck`` (connect, postscreen style): sums the weights of the lists that list the
  client (allowlists have negative weights, e.g. DNSWL, RFC 8904); at ``threshold`` or above
  the client gets ``554 5.7.1 Service unavailable; client [ip] blocked using <list>``
  (RFC 5321 §3.1: 554 instead of the greeting; RFC 3463 X.7.1), with the list of the
  largest weight named.  Below it, a positive sum is a spam-score contribution; at or below
  ``allow_threshold`` the client is allowlisted (``ALLOWLISTED`` fact) and later rules
  (greylisting, HELO, rDNS) leave it alone.
* ``RhsblCheck`` (helo, mail, data): the HELO name, the MAIL FROM domain and the host
  names of links in the body (policy/content.py extracts them) against domain lists; each
  listing adds its weight to the spam score, and at ``threshold`` (> 0) the step is refused
  (``550 5.7.1 ... domain <d> blocked using <list>``).

Invariants: only mx-role sessions from untrusted, unauthenticated clients are looked up;
results live in the resolver's cache (TTL of the list), not here.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..config.antiabuse import ListSpec
from ..net.dns import DNSError
from ..smtp.replies import Reply
from .context import MessageView, SessionInfo, TransactionInfo
from .spamscore import add_points
from .verdict import CONTINUE, Action, Verdict

__all__ = ["ip_query_name", "domain_query_name", "Hit", "ListLookup", "DnsblCheck",
           "RhsblCheck", "ALLOWLISTED", "DNSBL_FACT"]

log = logging.getLogger("mailwright.policy.dnsbl")

DNSBL_FACT = "antiabuse.dnsbl"
ALLOWLISTED = "antiabuse.allowlisted"


def ip_query_name(ip: str, zone: str) -> str:
    """RFC 5782 §2.1 / §2.4 query name of ``ip`` in ``zone``."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        labels = reversed(str(addr).split("."))
    else:
        labels = reversed(addr.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.rstrip(".")


def domain_query_name(domain: str, zone: str) -> str | None:
    """RFC 5782 §2.3: ``domain.zone``; None for names that cannot be queried (IDNA
    failure, address literals, too long)."""
    name = domain.strip().rstrip(".").lower()
    if not name or name.startswith("[") or "." not in name:
        return None
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    query = f"{name}.{zone.rstrip('.')}"
    if len(query) > 253 or any(not 0 < len(label) <= 63 for label in query.split(".")):
        return None
    return query


@dataclass(frozen=True, slots=True)
class Hit:
    zone: str
    weight: float
    answers: tuple[str, ...]


class ListLookup:
    """Concurrent, time-bounded lookups of one name in several lists."""

    def __init__(self, resolver: Any, timeout: float) -> None:
        self.resolver = resolver
        self.timeout = timeout

    async def _one(self, qname: str, spec: ListSpec) -> Hit | None:
        try:
            answers = await self.resolver.a(qname)
        except (DNSError, ValueError) as exc:
            log.debug("list %s lookup %s failed: %r (ignored)", spec.zone, qname, exc)
            return None
        matched = tuple(a for a in answers if spec.matches(a))
        return Hit(spec.zone, spec.weight, matched) if matched else None

    async def hits(self, queries: Sequence[tuple[str, ListSpec, str]]) -> list[tuple[str, Hit]]:
        """Look up every (query name, list, owner) at once; returns (owner, hit) for the
        listed ones.  Lookups still running after ``timeout`` are dropped."""
        if not queries:
            return []
        tasks = [asyncio.ensure_future(self._one(q, spec)) for q, spec, _ in queries]
        done, pending = await asyncio.wait(tasks, timeout=self.timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.info("%d list lookup(s) timed out after %ss (ignored)", len(pending),
                     self.timeout)
        out = []
        for task, (_, _, owner) in zip(tasks, queries):
            if task in done and task.exception() is None and task.result() is not None:
                out.append((owner, task.result()))
        return out

    async def ip_hits(self, ip: str, specs: Iterable[ListSpec]) -> list[Hit]:
        try:
            queries = [(ip_query_name(ip, s.zone), s, ip) for s in specs]
        except ValueError:
            return []
        return [hit for _, hit in await self.hits(queries)]

    async def domain_hits(self, domains: Iterable[str],
                          specs: Sequence[ListSpec]) -> list[tuple[str, Hit]]:
        """(domain, hit) for each listed domain (RFC 5782 §2.3 queries)."""
        queries = []
        for d in dict.fromkeys(x.lower().rstrip(".") for x in domains):
            for s in specs:
                q = domain_query_name(d, s.zone)
                if q is not None:
                    queries.append((q, s, d))
        return await self.hits(queries)


def screened(session: SessionInfo) -> bool:
    """True when the anti-abuse client checks apply to this session."""
    return session.role == "mx" and not session.trusted and not session.auth_user


class DnsblCheck:
    name = "dnsbl"

    def __init__(self, lookup: ListLookup, specs: Sequence[ListSpec], threshold: float,
                 allow_threshold: float) -> None:
        self.lookup = lookup
        self.specs = tuple(specs)
        self.threshold = threshold
        self.allow_threshold = allow_threshold

    def prefetch(self, session: SessionInfo) -> None:
        """Start the lookups now (during the greeting delay); ``check_connect`` awaits them."""
        if screened(session) and self.specs and DNSBL_FACT not in session.facts:
            session.facts[DNSBL_FACT] = asyncio.ensure_future(
                self.lookup.ip_hits(session.client_ip, self.specs))

    async def check_connect(self, session: SessionInfo) -> Verdict:
        if not screened(session) or not self.specs:
            return CONTINUE
        self.prefetch(session)
        hits: list[Hit] = await session.facts[DNSBL_FACT]
        session.facts[DNSBL_FACT] = hits
        if not hits:
            return CONTINUE
        score = sum(h.weight for h in hits)
        listed = ", ".join(f"{h.zone}={'/'.join(h.answers)}*{h.weight:g}" for h in hits)
        if score >= self.threshold:
            worst = max(hits, key=lambda h: h.weight)
            reply = Reply(554, "5.7.1", f"Service unavailable; client [{session.client_ip}] "
                                        f"blocked using {worst.zone}")
            return Verdict(Action.REJECT, self.name, reply,
                           f"client {session.client_ip} blocked using {worst.zone} "
                           f"(score {score:g} >= {self.threshold:g}: {listed})")
        if score <= self.allow_threshold:
            session.facts[ALLOWLISTED] = True
            return Verdict(Action.CONTINUE, self.name,
                           reason=f"client {session.client_ip} allowlisted ({listed})")
        if score > 0:
            add_points(session.facts, "dnsbl", score)
        return Verdict(Action.CONTINUE, self.name, reason=f"dnsbl score {score:g} ({listed})")


#: RFC 3463 X.7.1; RFC 5321 §4.2.5 (550: mailbox/domain policy refusal).
def _domain_blocked(domain: str, zone: str) -> Reply:
    return Reply(550, "5.7.1", f"Service unavailable; domain {domain} blocked using {zone}")


class RhsblCheck:
    """Domain lists for the HELO name (helo), sender domain (mail) and links (data)."""
    name = "rhsbl"

    def __init__(self, lookup: ListLookup, specs: Sequence[ListSpec], *, targets: Sequence[str],
                 threshold: float, max_links: int, links: Any = None) -> None:
        self.lookup = lookup
        self.specs = tuple(specs)
        self.targets = frozenset(targets)
        self.threshold = threshold
        self.max_links = max_links
        self.links = links          # callable(txn, message, limit) -> list of host names

    async def _judge(self, facts: dict, what: str, domains: Sequence[str]) -> Verdict:
        found = await self.lookup.domain_hits(domains, self.specs)
        if not found:
            return CONTINUE
        score = 0.0
        for domain, hit in found:
            score += hit.weight
            add_points(facts, f"rhsbl-{what}:{hit.zone}", hit.weight)
        listed = ", ".join(f"{d} in {h.zone}" for d, h in found)
        if self.threshold > 0 and score >= self.threshold:
            domain, worst = max(found, key=lambda dh: dh[1].weight)
            return Verdict(Action.REJECT, self.name, _domain_blocked(domain, worst.zone),
                           f"{what} domain {domain} blocked using {worst.zone} "
                           f"(score {score:g}: {listed})")
        return Verdict(Action.CONTINUE, self.name, reason=f"rhsbl {what}: {listed}")

    async def check_helo(self, session: SessionInfo) -> Verdict:
        if "helo" not in self.targets or not screened(session) or not session.helo:
            return CONTINUE
        if session.facts.get(ALLOWLISTED):
            return CONTINUE
        return await self._judge(session.facts, "helo", [session.helo])

    async def check_mail(self, session: SessionInfo, txn: TransactionInfo) -> Verdict:
        if "sender" not in self.targets or not screened(session) or "@" not in txn.sender:
            return CONTINUE
        if session.facts.get(ALLOWLISTED):
            return CONTINUE
        return await self._judge(txn.facts, "sender", [txn.sender.rpartition("@")[2]])

    async def check_data(self, session: SessionInfo, txn: TransactionInfo,
                         message: MessageView) -> Verdict:
        if "links" not in self.targets or not screened(session) or self.links is None \
                or self.max_links <= 0:
            return CONTINUE
        hosts = self.links(txn, message, self.max_links)
        if not hosts:
            return CONTINUE
        return await self._judge(txn.facts, "link", hosts)
