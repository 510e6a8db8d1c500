"""The client's name: reverse DNS, forward-confirmed (FCrDNS), looked up once per connection.

What: ``peer_name(resolver, ip) -> PeerName`` asks for the PTR names of the client address
(RFC 1035 §3.5) and accepts the first one whose A/AAAA records include the address again
(forward-confirmed, as Postfix's smtpd does before it trusts a client name). The result
goes into the Received field ("from HELO (NAME [IP])", RFC 5321 §4.4), the stored envelope
(``client_name``) and the message trace.

How: the session starts the lookup as a background task when the connection opens; the
SMTP dialogue goes on meanwhile, and only the commit at end of data waits for it (at most
``session.PEER_NAME_WAIT`` seconds; a slower lookup leaves the client "unknown", as a
failed one does). Refusals recorded earlier use the name if it is already known. Every client is looked up, loopback included (as Postfix does;
answers are cached by the shared resolver).

Invariants: never raises; a DNS failure, no PTR or no forward match all give an empty
``name`` (``ptr`` still tells what was published, for the trace).
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

from ..policy.context import parse_ip
from .dns import DNSError

log = logging.getLogger("mailwright.peername")

MAX_PTR = 10          # as Postfix: a long PTR list is not worth walking further


@dataclass(frozen=True, slots=True)
class PeerName:
    name: str = ""            # forward-confirmed name, "" if none
    ptr: str = ""             # first PTR name published (confirmed or not)
    status: str = "unknown"   # "ok" | "missing" (no PTR) | "mismatch" | "unknown" (DNS failed)


def wanted(ip: str) -> bool:
    return parse_ip(ip) is not None


async def peer_name(resolver, ip: str) -> PeerName:
    try:
        names = (await resolver.ptr(ip))[:MAX_PTR]
    except (DNSError, ValueError) as exc:
        log.debug("reverse DNS of %s failed: %r", ip, exc)
        return PeerName()
    if not names:
        return PeerName(status="missing")
    want = parse_ip(ip)
    for name in names:
        try:
            found = await resolver.addresses(name)
        except (DNSError, ValueError):
            continue
        if any(parse_ip(a) == want for a in found):
            return PeerName(name, names[0], "ok")
    return PeerName("", names[0], "mismatch")


class PeerNameCache:
    """The finished lookups of one process, kept ``ttl`` seconds (LRU, ``size`` entries).

    A busy client (another MTA, a relay host, an application on this machine) opens many
    connections a minute; each would otherwise start a task and walk the resolver's cache
    twice (PTR, then A/AAAA) before its banner. A hit answers synchronously. A failed
    lookup (status "unknown") is not kept, so the next connection asks again. ``ttl`` is
    short next to usual PTR TTLs: a changed PTR shows within a minute."""

    def __init__(self, resolver, ttl: float = 60.0, size: int = 4096) -> None:
        self.resolver = resolver
        self.ttl = ttl
        self.size = size
        self._entries: collections.OrderedDict[str, tuple[float, PeerName]] = \
            collections.OrderedDict()

    def cached(self, ip: str, now: float) -> PeerName | None:
        entry = self._entries.get(ip)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[ip]
            return None
        return entry[1]

    async def lookup(self, ip: str, now: float) -> PeerName:
        name = await peer_name(self.resolver, ip)
        if name.status != "unknown":
            self._entries[ip] = (now + self.ttl, name)
            self._entries.move_to_end(ip)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return name
