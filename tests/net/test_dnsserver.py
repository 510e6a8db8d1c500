"""The test DNS server itself, checked with plain dnspython queries over loopback sockets."""
from __future__ import annotations

import socket
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dnsserver import DNSServer, dns_server_factory, ipv6_loopback_available  # noqa: F401

ZONES = {
    "example.test": """
@        SOA  ns1 hostmaster 7 3600 600 86400 120
@        MX   10 mx1
mx1      A    192.0.2.1
www      CNAME alias
alias    CNAME mx1
out      CNAME host.elsewhere.invalid.
*.wild   TXT  "wild"
deep.a.b A    192.0.2.7
""",
    "other.test": "@ 600 A 198.51.100.1\n",
}
BIG = "$ORIGIN big.test.\n" + "".join(f"@ 300 A 10.0.{i // 250}.{i % 250 + 1}\n" for i in range(40))


def ask(server: DNSServer, name: str, rdtype: str, *, tcp: bool = False, edns: int | None = None,
        timeout: float = 2.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns is not None,
                               payload=edns or 512)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, server.address, timeout=timeout, port=server.port)


@pytest.fixture
def server():
    with DNSServer(ZONES) as srv:
        yield srv


def test_answer_is_authoritative_and_logged(server):
    r = ask(server, "example.test", "MX")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert [rd.to_text() for rd in r.answer[0]] == ["10 mx1.example.test."]
    assert server.queries == [("example.test", "MX")]
    assert server.log == [("example.test", "MX", "udp")]
    assert server.count("example.test.", "mx") == 1
    server.clear_log()
    assert server.queries == []


def test_nxdomain_and_nodata_carry_soa_with_negative_ttl(server):
    nx = ask(server, "nope.example.test", "A")
    nodata = ask(server, "mx1.example.test", "AAAA")
    assert nx.rcode() == dns.rcode.NXDOMAIN and not nx.answer
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    for r in (nx, nodata):
        assert r.flags & dns.flags.AA
        (soa,) = r.authority
        assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "example.test."
        assert soa.ttl == 120          # min(SOA TTL 300, MINIMUM 120), RFC 2308 §3


def test_empty_non_terminal_is_nodata(server):
    assert ask(server, "a.b.example.test", "A").rcode() == dns.rcode.NOERROR
    assert ask(server, "c.b.example.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_outside_zones_is_refused(server):
    r = ask(server, "example.com", "A")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA


def test_cname_chain_and_wildcard(server):
    r = ask(server, "www.example.test", "A")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.CNAME,
                                               dns.rdatatype.A]
    r = ask(server, "out.example.test", "A")     # target outside: only the CNAME
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME]
    r = ask(server, "x.wild.example.test", "TXT")
    assert r.answer[0].name.to_text() == "x.wild.example.test."
    assert r.answer[0][0].strings == (b"wild",)


def test_second_zone_gets_synthesized_soa(server):
    r = ask(server, "other.test", "A")
    assert r.answer[0].ttl == 600
    r = ask(server, "other.test", "MX")
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_one_string_with_several_origins():
    text = """$ORIGIN one.test.
@ A 192.0.2.1
$ORIGIN two.test.
@ TXT "two"
www.three.test. 60 A 192.0.2.3
three.test. SOA ns.three.test. h.three.test. 1 2 3 4 5
"""
    with DNSServer(text) as srv:
        assert ask(srv, "one.test", "A").answer[0][0].address == "192.0.2.1"
        assert ask(srv, "two.test", "TXT").answer
        assert ask(srv, "www.three.test", "A").answer[0].ttl == 60
        assert ask(srv, "x.three.test", "A").rcode() == dns.rcode.NXDOMAIN
        assert ask(srv, "x.four.test", "A").rcode() == dns.rcode.REFUSED


def test_udp_truncation_and_tcp():
    with DNSServer(BIG) as srv:
        r = ask(srv, "big.test", "A")                 # no EDNS: 512-byte limit
        assert r.flags & dns.flags.TC and not r.answer
        r = ask(srv, "big.test", "A", edns=1232)       # fits the advertised payload
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 40
        r = ask(srv, "big.test", "A", tcp=True)
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 40
        assert srv.log[-1] == ("big.test", "A", "tcp")
    with DNSServer(BIG, max_udp_size=512) as srv:
        assert ask(srv, "big.test", "A", edns=4096).flags & dns.flags.TC


def test_behaviours(server):
    server.set_behaviour("example.test", "servfail")
    assert ask(server, "example.test", "MX").rcode() == dns.rcode.SERVFAIL
    server.set_behaviour("example.test", "refused")
    assert ask(server, "example.test", "MX").rcode() == dns.rcode.REFUSED
    server.set_behaviour("example.test", "truncate")
    assert ask(server, "example.test", "MX").flags & dns.flags.TC
    assert ask(server, "example.test", "MX", tcp=True).answer
    server.set_behaviour("example.test", "timeout")
    with pytest.raises(dns.exception.Timeout):
        ask(server, "example.test", "MX", timeout=0.3)
    server.set_behaviour("mx1.example.test", "answer", delay=0.3)
    t0 = time.monotonic()
    assert ask(server, "mx1.example.test", "A").answer
    assert time.monotonic() - t0 >= 0.29
    server.set_behaviour("other.test", "servfail", rdtype="MX")
    assert ask(server, "other.test", "MX").rcode() == dns.rcode.SERVFAIL
    assert ask(server, "other.test", "A").rcode() == dns.rcode.NOERROR
    server.clear_behaviour()
    assert ask(server, "example.test", "MX").answer


def test_delay_does_not_block_other_queries(server):
    server.set_behaviour("example.test", "answer", delay=1.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(dns.message.make_query("example.test", "MX").to_wire(),
                    (server.address, server.port))
        t0 = time.monotonic()
        assert ask(server, "mx1.example.test", "A").answer
        assert time.monotonic() - t0 < 0.5
    finally:
        sock.close()


def test_load_and_remove_at_runtime(server):
    server.load({"example.test": "new 30 A 192.0.2.50"})
    assert ask(server, "new.example.test", "A").answer[0][0].address == "192.0.2.50"
    server.remove("new.example.test", "A")
    assert ask(server, "new.example.test", "A").rcode() == dns.rcode.NXDOMAIN
    server.load({"fresh.test": "@ A 192.0.2.60"}, replace=True)
    assert ask(server, "example.test", "MX").rcode() == dns.rcode.REFUSED


def test_tcp_connection_carries_several_queries(server):
    with socket.create_connection((server.address, server.port), timeout=2) as s:
        for name in ("example.test", "mx1.example.test"):
            wire = dns.message.make_query(name, "A").to_wire()
            s.sendall(len(wire).to_bytes(2, "big") + wire)
        for _ in range(2):
            size = int.from_bytes(_recv(s, 2), "big")
            assert dns.message.from_wire(_recv(s, size)).flags & dns.flags.QR


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk
        buf += chunk
    return buf


def test_loopback_only_and_stop_releases_port():
    with pytest.raises(ValueError):
        DNSServer("", address="192.0.2.1")
    srv = DNSServer(ZONES).start()
    port = srv.port
    assert srv.nameserver == f"127.0.0.1:{port}"
    srv.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))


def test_factory_fixture(dns_server_factory):
    a = dns_server_factory(ZONES)
    b = dns_server_factory({"b.test": "@ A 192.0.2.2"}, address="127.0.0.2")
    assert a.port and b.address == "127.0.0.2"
    assert ask(b, "b.test", "A").answer


@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback ::1 cannot be bound here")
def test_ipv6_loopback():
    with DNSServer(ZONES, address="::1") as srv:
        assert srv.nameserver == f"[::1]:{srv.port}"
        assert ask(srv, "example.test", "MX").answer
        assert ask(srv, "example.test", "MX", tcp=True).answer
