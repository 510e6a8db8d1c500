"""Client reverse DNS (net/peername.py) against the real test DNS server on loopback."""
from __future__ import annotations

import asyncio

from dnsserver import DNSServer
from mailwright.net.dns import Resolver
from mailwright.net.peername import PeerNameCache, peer_name

ZONES = {
    "example.test": "@ SOA ns1 hostmaster 1 3600 600 86400 120\nmx1 A 192.0.2.1\n",
    "2.0.192.in-addr.arpa": "1 PTR mx1.example.test.\n2 PTR liar.example.test.\n",
}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30.0))


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
        assert cache.cached("192.0.2.1", 160.0) is None              # expired
        assert cache.cached("192.0.2.1", 161.0) is None


def test_cache_keeps_no_failure_and_stays_bounded():
    # A nameserver that does not answer: the lookup fails ("unknown") and is not kept,
    # so the next connection asks again.
    cache = PeerNameCache(Resolver(["127.0.0.1:9"], timeout=0.2, attempts=1), ttl=60.0)
    failed = run(cache.lookup("192.0.2.1", 0.0))
    assert failed.status == "unknown" and cache.cached("192.0.2.1", 1.0) is None
    with DNSServer(ZONES) as dns:
        small = PeerNameCache(Resolver([dns.nameserver], timeout=1.0, attempts=1),
                              ttl=60.0, size=2)
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            run(small.lookup(ip, 0.0))
        assert small.cached("192.0.2.1", 1.0) is None                # least recent dropped
        assert small.cached("192.0.2.3", 1.0).status == "missing"
