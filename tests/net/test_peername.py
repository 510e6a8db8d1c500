"""Client reverse DNS (net/peername.py) against the real test DNS server on loopback."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import socket

from dnsserver import DNSServer
from mailwright.net.dns import Resolver
from mailwright.net.peername import PeerName, PeerNameCache, peer_name

ZONES = {
    "example.test": "@ SOA ns1 hostmaster 1 3600 600 86400 120\nmx1 A 192.0.2.1\n",
    "2.0.192.in-addr.arpa": "1 PTR mx1.example.test.\n2 PTR liar.example.test.\n",
}


PTR_1 = "1.2.0.192.in-addr.arpa"          # the PTR name of 192.0.2.1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30.0))


class CountingResolver:
    """The real Resolver, counting the calls peer_name makes to it (the resolver itself
    already shares identical queries in flight, so the DNS server's log alone would not
    show lookups that overlap)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.calls: collections.Counter = collections.Counter()

    async def ptr(self, ip: str) -> list[str]:
        self.calls["ptr"] += 1
        return await self.resolver.ptr(ip)

    async def addresses(self, name: str, prefer: str | None = None) -> list[str]:
        self.calls["addresses"] += 1
        return await self.resolver.addresses(name, prefer)


@contextlib.contextmanager
def silent_nameserver():
    """A loopback UDP port that is bound but never answers: a dead resolver (timeouts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_forward_confirmed_missing_and_mismatch():
    with DNSServer(ZONES) as dns:
        async def go():
            r = Resolver([dns.nameserver], timeout=1.0, attempts=1)
            return (await peer_name(r, "192.0.2.1"), await peer_name(r, "192.0.2.2"),
                    await peer_name(r, "192.0.2.3"))
        ok, liar, missing = run(go())
    assert (ok.name, ok.status) == ("mx1.example.test", "ok")
    assert (liar.name, liar.ptr, liar.status) == ("", "liar.example.test", "mismatch")
    assert missing.status == "missing"


def test_cache_answers_at_once_until_the_ttl_ends():
    with DNSServer(ZONES) as dns:
        cache = PeerNameCache(Resolver([dns.nameserver], timeout=1.0, attempts=1), ttl=60.0)
        assert cache.cached("192.0.2.1", 0.0) is None
        first = run(cache.lookup("192.0.2.1", 100.0))
        assert cache.cached("192.0.2.1", 159.0) == first            # no lookup, no task
        # kept 60 s from when the lookup finished (100 + the few ms it took)
        assert cache.cached("192.0.2.1", 161.0) is None              # expired
        assert cache.cached("192.0.2.1", 162.0) is None


def test_cache_keeps_no_failure_with_failure_ttl_zero_and_stays_bounded():
    # A nameserver that does not answer: the lookup fails ("unknown"); with failure_ttl=0
    # it is not kept, so the next connection asks again.
    with silent_nameserver() as ns:
        cache = PeerNameCache(Resolver([ns], timeout=0.2, attempts=1), ttl=60.0,
                              failure_ttl=0.0)
        failed = run(cache.lookup("192.0.2.1", 0.0))
    assert failed.status == "unknown" and cache.cached("192.0.2.1", 1.0) is None
    with DNSServer(ZONES) as dns:
        small = PeerNameCache(Resolver([dns.nameserver], timeout=1.0, attempts=1),
                              ttl=60.0, size=2)
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            run(small.lookup(ip, 0.0))
        assert small.cached("192.0.2.1", 1.0) is None                # least recent dropped
        assert small.cached("192.0.2.3", 1.0).status == "missing"


def test_failed_lookup_is_kept_until_failure_ttl_ends():
    # A dead resolver: one lookup waits for the timeout; the connections after it get the
    # "unknown" answer at once (no task, no wait at commit) for failure_ttl seconds.
    with silent_nameserver() as ns:
        resolver = CountingResolver(Resolver([ns], timeout=0.2, attempts=1))
        cache = PeerNameCache(resolver, ttl=60.0, failure_ttl=10.0)
        failed = run(cache.lookup("192.0.2.1", 100.0))
        assert failed == PeerName() and failed.status == "unknown"
        assert cache.cached("192.0.2.1", 100.0) == failed
        assert cache.cached("192.0.2.1", 109.9) == failed
        assert cache.cached("192.0.2.2", 101.0) is None              # per address
        # 10 s from when the lookup finished (100 + at most a second here): then asked again
        assert cache.cached("192.0.2.1", 111.5) is None
        assert run(cache.lookup("192.0.2.1", 111.5)).status == "unknown"
        assert resolver.calls["ptr"] == 2
        assert cache.cached("192.0.2.1", 121.0) == failed


def test_overlapping_lookups_of_one_address_share_one_lookup():
    # The resolver is slow (the PTR query is never answered): twenty connections of one
    # client arrive while the first lookup runs; they all wait for that one.
    with DNSServer(ZONES) as dns:
        dns.set_behaviour(PTR_1, "timeout")
        resolver = CountingResolver(Resolver([dns.nameserver], timeout=0.3, attempts=1))
        cache = PeerNameCache(resolver, ttl=60.0, failure_ttl=10.0)

        async def go():
            first = asyncio.ensure_future(cache.lookup("192.0.2.1", 0.0))
            await asyncio.sleep(0.05)                    # the first lookup is in flight
            later = [cache.lookup("192.0.2.1", 0.05) for _ in range(19)]
            return await asyncio.gather(first, *later)
        names = run(go())
        assert len(names) == 20 and all(n.status == "unknown" for n in names)
        assert resolver.calls["ptr"] == 1
        assert dns.count(PTR_1, "PTR") == 1
        assert not cache._inflight                       # dropped when it finished
        assert cache.cached("192.0.2.1", 1.0).status == "unknown"


def test_a_cancelled_waiter_does_not_cancel_the_shared_lookup():
    # The session that started the lookup closes (its task is cancelled) while two other
    # sessions of the same client wait for the same lookup: they still get the name.
    with DNSServer(ZONES) as dns:
        dns.set_behaviour(PTR_1, "answer", delay=0.3)
        resolver = CountingResolver(Resolver([dns.nameserver], timeout=2.0, attempts=1))
        cache = PeerNameCache(resolver, ttl=60.0)

        async def go():
            tasks = [asyncio.create_task(cache.lookup("192.0.2.1", 0.0)) for _ in range(3)]
            await asyncio.sleep(0.1)
            tasks[0].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            return done, tasks[0].cancelled()
        (cancelled, *others), was_cancelled = run(go())
        assert was_cancelled and isinstance(cancelled, asyncio.CancelledError)
        assert [(n.name, n.status) for n in others] == [("mx1.example.test", "ok")] * 2
        assert resolver.calls == {"ptr": 1, "addresses": 1}
        assert not cache._inflight
        assert cache.cached("192.0.2.1", 1.0).name == "mx1.example.test"


def test_an_unexpected_error_never_leaves_lookup_and_clears_the_inflight_entry():
    class Broken(CountingResolver):
        async def ptr(self, ip: str) -> list[str]:
            self.calls["ptr"] += 1
            raise RuntimeError("a bug, not a DNS failure")

    with DNSServer(ZONES) as dns:
        resolver = Broken(Resolver([dns.nameserver], timeout=1.0, attempts=1))
        cache = PeerNameCache(resolver)

        async def go():
            return await asyncio.gather(*(cache.lookup("192.0.2.1", 0.0) for _ in range(3)))
        assert run(go()) == [PeerName()] * 3
        assert resolver.calls["ptr"] == 1 and not cache._inflight
