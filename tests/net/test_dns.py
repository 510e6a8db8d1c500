"""Resolver against the real test DNS server on loopback (tests/dnsserver.py).

No lookup here leaves the machine: every Resolver is given the loopback server's address.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from dnsserver import DNSServer, ipv6_loopback_available
from mailwright.net.dns import (
    DNSPermanentError, DNSTemporaryError, MXAnswer, Resolver, parse_nameserver)

ZONES = {
    "example.test": """
@        SOA   ns1 hostmaster 1 3600 600 86400 120
@        MX    20 mx2
@        MX    10 mx1
@        MX    10 backup
@        TXT   "v=spf1 ip4:192.0.2.0/24 " "include:_spf.other.test " "-all"
@        TXT   "second record"
mx1      A     192.0.2.1
mx2      A     192.0.2.2
mx2      AAAA  2001:db8::2
dual     A     192.0.2.10
dual     A     192.0.2.11
dual     AAAA  2001:db8::10
v4only   A     192.0.2.20
v6only   AAAA  2001:db8::30
www      CNAME mx1
long     TXT   ( "p=" "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAy" "AAAAAAAAAAAAAAAAAAAA" )
_25._tcp.mx1 TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
_sip._tcp SRV 10 5 5060 sip
short 5  A     192.0.2.99
""",
    "null.test": "@ MX 0 .\n",
    "nomx.test": "@ A 192.0.2.50\n",
    "2.0.192.in-addr.arpa": "1 PTR mx1.example.test.\n1 PTR alias.example.test.\n",
    "8.b.d.0.1.0.0.2.ip6.arpa":
        "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 PTR mx2.example.test.\n",
    "big.test": "".join(f"@ A 10.0.{i // 250}.{i % 250 + 1}\n" for i in range(40)),
}


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def server():
    with DNSServer(ZONES) as srv:
        yield srv


@pytest.fixture
def resolver(server):
    return Resolver([server.nameserver], timeout=1.0, attempts=2)


# ------------------------------------------------------------------ answers

def test_mx_sorted_by_preference(resolver):
    mx = run(resolver.mx("example.test"))
    assert mx == MXAnswer(domain="example.test", records=[
        (10, "backup.example.test"), (10, "mx1.example.test"), (20, "mx2.example.test")])
    assert mx.hosts[0] == "backup.example.test" and mx.exists and not mx.null_mx


def test_null_mx(resolver):                      # RFC 7505
    mx = run(resolver.mx("null.test"))
    assert mx.null_mx and mx.exists and mx.records == [(0, ".")]


def test_nxdomain_versus_nodata(resolver):
    nx = run(resolver.mx("missing.example.test"))
    nodata = run(resolver.mx("nomx.test"))
    assert not nx.exists and nx.records == []
    assert nodata.exists and nodata.records == []
    assert run(resolver.a("missing.example.test")) == []
    assert run(resolver.lookup("missing.example.test", "A")).nxdomain
    ans = run(resolver.lookup("mx1.example.test", "AAAA"))
    assert not ans.nxdomain and ans.records == () and ans.exists


def test_a_aaaa_and_address_order(server):
    r = Resolver([server.nameserver], timeout=1.0)
    assert sorted(run(r.a("dual.example.test"))) == ["192.0.2.10", "192.0.2.11"]
    assert run(r.aaaa("dual.example.test")) == ["2001:db8::10"]
    both = run(r.addresses("dual.example.test"))           # default: IPv6 first
    assert both[0] == "2001:db8::10" and sorted(both[1:]) == ["192.0.2.10", "192.0.2.11"]
    assert run(r.addresses("dual.example.test", prefer="ipv4"))[-1] == "2001:db8::10"
    mixed = run(r.addresses("dual.example.test", prefer="interleave"))
    assert mixed[0] == "2001:db8::10" and ":" not in mixed[1]
    assert run(r.addresses("v4only.example.test")) == ["192.0.2.20"]
    assert run(r.addresses("v6only.example.test")) == ["2001:db8::30"]
    assert run(r.addresses("missing.example.test")) == []
    v4first = Resolver([server.nameserver], address_preference="ipv4")
    assert run(v4first.addresses("dual.example.test"))[-1] == "2001:db8::10"
    with pytest.raises(ValueError):
        Resolver([server.nameserver], address_preference="random")


def test_addresses_with_one_family_failing(server, resolver):
    server.set_behaviour("dual.example.test", "servfail", rdtype="AAAA")
    assert sorted(run(resolver.addresses("dual.example.test"))) == ["192.0.2.10", "192.0.2.11"]
    server.set_behaviour("v6only.example.test", "servfail", rdtype="A")
    assert run(resolver.addresses("v6only.example.test")) == ["2001:db8::30"]
    server.set_behaviour("v4only.example.test", "servfail", rdtype="AAAA")
    server.set_behaviour("missing.example.test", "servfail", rdtype="AAAA")
    with pytest.raises(DNSTemporaryError):   # nothing found, and one family unknown
        run(resolver.addresses("missing.example.test"))


def test_cname_is_followed(resolver):
    assert run(resolver.a("www.example.test")) == ["192.0.2.1"]
    ans = run(resolver.lookup("www.example.test", "A"))
    assert ans.canonical_name == "mx1.example.test" and ans.name == "www.example.test"


def test_txt_strings_joined_per_record(resolver):       # RFC 7208 §3.3
    txt = run(resolver.txt("example.test"))
    assert sorted(txt) == ["second record",
                           "v=spf1 ip4:192.0.2.0/24 include:_spf.other.test -all"]
    assert run(resolver.txt("long.example.test")) == [
        "p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyAAAAAAAAAAAAAAAAAAAA"]
    assert run(resolver.txt("missing.example.test")) == []


def test_ptr_ipv4_and_ipv6(resolver):
    assert sorted(run(resolver.ptr("192.0.2.1"))) == ["alias.example.test", "mx1.example.test"]
    assert run(resolver.ptr("2001:db8::2")) == ["mx2.example.test"]
    assert run(resolver.ptr("192.0.2.77")) == []
    with pytest.raises(ValueError):
        run(resolver.ptr("not-an-ip"))


def test_tlsa_and_generic_query(resolver):
    assert run(resolver.tlsa("_25._tcp.mx1.example.test")) == [
        (3, 1, 1, bytes.fromhex("0123456789abcdef" * 4))]
    (srv,) = run(resolver.query("_sip._tcp.example.test", "SRV"))
    assert (srv.priority, srv.weight, srv.port, srv.target.to_text()) == \
        (10, 5, 5060, "sip.example.test.")
    assert run(resolver.query("missing.example.test", "SRV")) == []


def test_tcp_fallback_on_truncation():
    # 40 A records: ~680 bytes; the server allows 512 over UDP, so TC then TCP.
    with DNSServer(ZONES, max_udp_size=512) as srv:
        r = Resolver([srv.nameserver], timeout=2.0)
        assert len(run(r.a("big.test"))) == 40
        assert srv.log == [("big.test", "A", "udp"), ("big.test", "A", "tcp")]


def test_tcp_fallback_on_forced_truncation(server, resolver):
    server.set_behaviour("mx1.example.test", "truncate")
    assert run(resolver.a("mx1.example.test")) == ["192.0.2.1"]
    assert [t for *_, t in server.log] == ["udp", "tcp"]


def test_invalid_names_are_permanent_errors(resolver):
    with pytest.raises(DNSPermanentError):
        run(resolver.a("x" * 64 + ".example.test"))
    with pytest.raises(DNSPermanentError):
        run(resolver.txt("a..example.test"))
    with pytest.raises(ValueError):
        run(resolver.query("example.test", "NOSUCHTYPE"))


# ------------------------------------------------------------------ cache

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_hit_sends_one_query(server, resolver):
    async def twice():
        return await resolver.mx("example.test"), await resolver.mx("example.test")
    first, second = run(twice())
    assert first == second
    assert server.queries == [("example.test", "MX")]
    run(resolver.mx("example.test"))                 # the cache outlives one event loop
    assert server.count("example.test", "MX") == 1
    assert resolver.stats.cache_hits["MX"] == 2


def test_ttl_expiry_with_injected_clock(server):
    clock = FakeClock()
    r = Resolver([server.nameserver], clock=clock)
    assert run(r.a("short.example.test")) == ["192.0.2.99"]          # TTL 5
    server.remove("short.example.test", "A")
    server.load({"example.test": "short 5 A 192.0.2.100"})
    clock.now += 4.9
    assert run(r.a("short.example.test")) == ["192.0.2.99"]
    clock.now += 0.2
    assert run(r.a("short.example.test")) == ["192.0.2.100"]
    assert server.count("short.example.test", "A") == 2


def test_ttl_clamped_to_min_and_max(server):
    clock = FakeClock()
    r = Resolver([server.nameserver], clock=clock, min_ttl=60, max_ttl=100)
    run(r.a("short.example.test"))                    # TTL 5 raised to 60
    run(r.a("mx1.example.test"))                      # TTL 300 lowered to 100
    clock.now += 59
    run(r.a("short.example.test"))
    assert server.count("short.example.test") == 1
    clock.now += 42
    run(r.a("short.example.test"))
    run(r.a("mx1.example.test"))
    assert server.count("short.example.test") == 2 and server.count("mx1.example.test") == 2


def test_negative_answers_cached_for_soa_minimum(server):       # RFC 2308 §5
    clock = FakeClock()
    r = Resolver([server.nameserver], clock=clock)
    assert not run(r.mx("gone.example.test")).exists                  # NXDOMAIN
    assert run(r.mx("mx1.example.test")).records == []                # NODATA
    assert run(r.lookup("gone.example.test", "MX")).ttl == 120        # min(300, 120)
    clock.now += 119
    run(r.mx("gone.example.test")), run(r.mx("mx1.example.test"))
    assert len(server.queries) == 2
    clock.now += 2
    run(r.mx("gone.example.test")), run(r.mx("mx1.example.test"))
    assert len(server.queries) == 4


def test_negative_ttl_cap(server):
    clock = FakeClock()
    r = Resolver([server.nameserver], clock=clock, negative_ttl=10)
    run(r.a("gone.example.test"))
    clock.now += 11
    run(r.a("gone.example.test"))
    assert server.count("gone.example.test") == 2


def test_temporary_errors_are_not_cached(server, resolver):
    server.set_behaviour("mx1.example.test", "servfail")
    with pytest.raises(DNSTemporaryError):
        run(resolver.a("mx1.example.test"))
    server.clear_behaviour()
    assert run(resolver.a("mx1.example.test")) == ["192.0.2.1"]


def test_cache_size_bounds_entries(server):
    r = Resolver([server.nameserver], cache_size=2)
    for name in ("mx1", "mx2", "dual"):
        run(r.a(f"{name}.example.test"))
    run(r.a("dual.example.test"))                     # still cached
    run(r.a("mx1.example.test"))                      # evicted (least recently used)
    assert server.count("dual.example.test") == 1 and server.count("mx1.example.test") == 2
    r.flush()
    run(r.a("dual.example.test"))
    assert server.count("dual.example.test") == 2


# ------------------------------------------------------------------ concurrency

def test_concurrent_identical_lookups_coalesce(server, resolver):
    server.set_behaviour("example.test", "answer", delay=0.2)

    async def many():
        return await asyncio.gather(*(resolver.mx("example.test") for _ in range(100)))
    answers = run(many())
    assert len(answers) == 100 and all(a == answers[0] for a in answers)
    assert server.queries == [("example.test", "MX")]
    assert resolver.lookup_count["MX"] == 1 and resolver.stats.coalesced["MX"] == 99


def test_coalesced_failure_reaches_every_waiter(server, resolver):
    server.set_behaviour("example.test", "servfail", delay=0.1)

    async def many():
        return await asyncio.gather(*(resolver.mx("example.test") for _ in range(20)),
                                    return_exceptions=True)
    results = run(many())
    assert all(isinstance(r, DNSTemporaryError) for r in results)
    assert len(server.queries) == 1


def test_cancelled_waiter_does_not_cancel_shared_lookup(server, resolver):
    server.set_behaviour("example.test", "answer", delay=0.3)

    async def go():
        first = asyncio.ensure_future(resolver.mx("example.test"))
        second = asyncio.ensure_future(resolver.mx("example.test"))
        await asyncio.sleep(0.05)
        first.cancel()
        return await second
    assert run(go()).records
    assert len(server.queries) == 1


def test_slow_name_does_not_delay_another(server, resolver):
    server.set_behaviour("mx2.example.test", "answer", delay=0.8)

    async def go():
        t0 = time.monotonic()
        done = {}

        async def timed(name):
            await resolver.a(name)
            done[name] = time.monotonic() - t0
        await asyncio.gather(timed("mx2.example.test"), timed("mx1.example.test"))
        return done
    done = run(go())
    assert done["mx1.example.test"] < 0.3
    assert done["mx2.example.test"] >= 0.75


# ------------------------------------------------------------------ failures

def test_timeout_is_temporary_error_within_timeout_times_attempts(server):
    server.set_behaviour("example.test", "timeout")
    r = Resolver([server.nameserver], timeout=0.3, attempts=2)
    t0 = time.monotonic()
    with pytest.raises(DNSTemporaryError, match="timeout"):
        run(r.mx("example.test"))
    elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 0.3 * 2 + 0.4
    assert server.count("example.test", "MX") == 2
    assert r.stats.errors["MX"] == 1


@pytest.mark.parametrize("kind", ["servfail", "refused"])
def test_servfail_and_refused_are_temporary_errors(server, resolver, kind):
    server.set_behaviour("example.test", kind)
    with pytest.raises(DNSTemporaryError, match=kind.upper()):
        run(resolver.mx("example.test"))
    assert server.count("example.test") == 1     # the same server is not asked again


def test_name_outside_served_zones_is_temporary(resolver):
    with pytest.raises(DNSTemporaryError):       # the test server REFUSES it
        run(resolver.a("example.com"))


def test_next_nameserver_answers_when_first_fails():
    with DNSServer(ZONES) as bad, DNSServer(ZONES, address="127.0.0.2") as good:
        bad.set_behaviour("mx1.example.test", "timeout")
        r = Resolver([bad.nameserver, good.nameserver], timeout=0.3, attempts=2)
        assert run(r.a("mx1.example.test")) == ["192.0.2.1"]
        bad.set_behaviour("mx2.example.test", "servfail")
        assert run(r.a("mx2.example.test")) == ["192.0.2.2"]
        assert good.count("mx1.example.test") == 1


def test_unreachable_nameserver_is_temporary_error():
    with DNSServer(ZONES) as srv:
        address = srv.nameserver
    r = Resolver([address], timeout=0.3, attempts=1)      # nothing listens there now
    with pytest.raises(DNSTemporaryError):
        run(r.a("mx1.example.test"))


# ------------------------------------------------------------------ plumbing

def test_nameserver_parsing():
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("[2001:DB8::1]") == ("2001:db8::1", 53)
    for bad in ("dns.example", "[::1", "1.2.3.4:0", "[::1]x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)
    with pytest.raises(ValueError):
        Resolver([])


def test_metrics_hook(server):
    seen = []
    r = Resolver([server.nameserver], on_lookup=lambda t, s, o: seen.append((t, o)))
    run(r.a("mx1.example.test"))
    run(r.a("mx1.example.test"))                    # cache hit: no hook call
    run(r.a("gone.example.test"))
    run(r.aaaa("mx1.example.test"))
    assert seen == [("A", "ok"), ("A", "nxdomain"), ("AAAA", "nodata")]
    assert r.lookup_count == {"A": 2, "AAAA": 1}
    assert r.stats.latency["A"] > 0


def test_txt_sync_from_worker_thread(resolver):
    async def go():
        with pytest.raises(RuntimeError):          # no loop known yet
            await asyncio.to_thread(resolver.txt_sync, "long.example.test")
        resolver.bind_loop()
        in_thread = await asyncio.to_thread(resolver.txt_sync, "long.example.test")
        with pytest.raises(RuntimeError):          # on the loop thread: would deadlock
            resolver.txt_sync("example.test")
        return in_thread
    txt = run(go())
    assert txt[0].startswith("p=MIIB")


def test_txt_sync_propagates_temporary_error(server, resolver):
    server.set_behaviour("example.test", "servfail")

    async def go():
        resolver.bind_loop()
        return await asyncio.to_thread(resolver.txt_sync, "example.test")
    with pytest.raises(DNSTemporaryError):
        run(go())


def test_works_on_uvloop(server):
    uvloop = pytest.importorskip("uvloop")
    r = Resolver([server.nameserver], timeout=1.0)

    async def go():
        return await asyncio.gather(r.mx("example.test"), r.a("big.test"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        mx, big = runner.run(go())
    assert mx.records[0][0] == 10 and len(big) == 40


@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback ::1 cannot be bound here")
def test_ipv6_loopback_nameserver():
    with DNSServer(ZONES, address="::1", max_udp_size=512) as srv:
        r = Resolver([srv.nameserver], timeout=1.0)
        assert srv.nameserver.startswith("[::1]:")
        assert run(r.mx("example.test")).records[0] == (10, "backup.example.test")
        assert len(run(r.a("big.test"))) == 40                 # TCP fallback over ::1 too
        assert ("big.test", "A", "tcp") in srv.log
