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

``PeerNameCache`` keeps the results per client address: answers for ``ttl`` seconds, a
failed lookup (status "unknown": the resolver timed out or failed) for ``failure_ttl``
seconds, and lookups of one address that overlap share one lookup. Without the two, a
resolver outage cost every connection its own lookup and every commit the full
``PEER_NAME_WAIT``; now it costs one wait per address per ``failure_ttl``.

Invariants: never raises; a DNS failure, no PTR or no forward match all give an empty
``name`` (``ptr`` still tells what was published, for the trace). A cancelled caller never
cancels the lookup other callers share.
"""
from __future__ import annotations

import asyncio
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
    """The finished lookups of one process (LRU, ``size`` entries), and those in flight.

    A busy client (another MTA, a relay host, an application on this machine) opens many
    connections a minute; each would otherwise start a task and walk the resolver's cache
    twice (PTR, then A/AAAA) before its banner. A hit answers synchronously. ``ttl`` is
    short next to usual PTR TTLs: a changed PTR shows within a minute.

    A failed lookup (status "unknown") is kept ``failure_ttl`` seconds. When the resolver is
    down every lookup waits for its timeout; were failures not kept, every connection would
    wait again and every commit would spend ``session.PEER_NAME_WAIT`` on it. Kept briefly,
    an outage costs one wait per client address per ``failure_ttl``, and a recovered
    resolver is asked again soon. ``failure_ttl=0`` keeps no failure.

    Lookups of one address that overlap share one task (``_inflight``): a client opening
    twenty connections at once causes one lookup, not twenty. Each caller awaits it through
    ``asyncio.shield``, so a session that closes (its task cancelled) does not cancel the
    lookup for the others; the entry is dropped when the task ends, however it ends.

    Both TTLs count from when the lookup finished, on the caller's clock (``now`` plus the
    time the lookup took): a failure is usually a timeout, which can take as long as
    ``failure_ttl`` itself."""

    def __init__(self, resolver, ttl: float = 60.0, size: int = 4096,
                 failure_ttl: float = 10.0) -> None:
        self.resolver = resolver
        self.ttl = ttl
        self.size = size
        self.failure_ttl = failure_ttl
        self._entries: collections.OrderedDict[str, tuple[float, PeerName]] = \
            collections.OrderedDict()
        #: ip -> (loop, task) of the lookup in flight; a task belongs to one event loop
        self._inflight: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Task]] = {}

    def cached(self, ip: str, now: float) -> PeerName | None:
        entry = self._entries.get(ip)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[ip]
            return None
        return entry[1]

    async def lookup(self, ip: str, now: float) -> PeerName:
        """The client's name, joining the lookup of ``ip`` in flight if there is one."""
        loop = asyncio.get_running_loop()
        entry = self._inflight.get(ip)
        if entry is not None and entry[0] is loop and not entry[1].done():
            task = entry[1]
        else:
            task = loop.create_task(self._lookup(ip, now, loop.time()))
            self._inflight[ip] = (loop, task)
            task.add_done_callback(lambda t, ip=ip: self._forget(ip, t))
        try:
            # shield: a cancelled caller must not cancel the lookup other callers share
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not _cancelling():
                return PeerName()       # the shared task was cancelled, not this caller
            raise
        except Exception:               # peer_name never raises; kept for the invariant
            log.exception("reverse DNS of %s failed", ip)
            return PeerName()

    async def _lookup(self, ip: str, now: float, started: float) -> PeerName:
        name = await peer_name(self.resolver, ip)
        ttl = self.failure_ttl if name.status == "unknown" else self.ttl
        if ttl > 0:
            finished = now + max(0.0, asyncio.get_running_loop().time() - started)
            self._entries[ip] = (finished + ttl, name)
            self._entries.move_to_end(ip)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return name

    def _forget(self, ip: str, task: asyncio.Task) -> None:
        entry = self._inflight.get(ip)
        if entry is not None and entry[1] is task:
            del self._inflight[ip]
        if not task.cancelled():
            task.exception()    # retrieved: no "exception was never retrieved" warning


def _cancelling() -> bool:
    """Whether the current task has been asked to cancel (Task.cancelling, Python 3.11)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
