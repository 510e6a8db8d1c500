"""A real authoritative DNS server on loopback, for tests and benchmarks.

What: serves zone data written in BIND master-file format (RFC 1035 §5) over UDP and TCP on
one ephemeral loopback port (127.0.0.0/8 or ::1), so every lookup a test makes goes through
a real socket and a real DNS message, never to the system resolver or the internet.

How: a background thread runs its own asyncio event loop with a UDP endpoint and a TCP
server (RFC 1035 §4.2.2 two-byte length framing, several queries per connection). Each
query is handled in its own task, so a delayed answer never holds up another. Zones are
parsed with dnspython's master-file reader (``dns.zonefile``) into a dict of RRsets.

Zone input: ``DNSServer({"example.test": "...", "other.test": "..."})`` (origin -> text;
relative names are relative to the origin) or one string with absolute names and/or
``$ORIGIN`` lines. Zone apexes are the owners of SOA records; a zone given without an SOA
gets a synthesized one at its origin (for a string: at each ``$ORIGIN``). A ``$TTL 300``
default is added when the text sets none.

Answers, like an authoritative server (RFC 1034 §4.3.2, RFC 2308):
  * names outside every zone: REFUSED (no recursion offered, RA clear);
  * AA set on every authoritative answer;
  * data: the RRset; CNAMEs are followed inside the served data (chain in the answer);
  * wildcards ``*.zone`` are synthesized for names that do not exist (RFC 4592, simplified);
  * NODATA: NOERROR, empty answer, zone SOA in authority; NXDOMAIN: same with rcode 3.
    The SOA is sent with TTL min(SOA TTL, MINIMUM) (RFC 2308 §3);
  * empty non-terminals are NODATA, not NXDOMAIN (RFC 8020);
  * UDP answers larger than the client's EDNS payload (512 without EDNS, RFC 1035 §4.2.1;
    capped by ``max_udp_size``) are sent empty with TC set, so clients retry over TCP.

Failure injection per name (optionally per type): ``set_behaviour(name, kind, delay=s)``
where kind is "answer" (normal, after ``delay``: a slow answer), "timeout" (never answers),
"servfail", "refused" or "truncate" (UDP answers always carry TC and no data; TCP answers
normally). ``clear_behaviour()`` resets.

Query log: ``server.queries`` is a list of (name, type) in arrival order, names lower case
without the trailing dot, types as text ("MX"); ``server.log`` adds the transport
("udp"/"tcp"). ``count(name, type)`` counts; ``clear_log()`` empties both.

Invariants: binds only loopback addresses; never forwards or recurses; the served data can be
replaced at runtime (``load``, ``remove``) safely from the test thread.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.zonefile
try:
    import pytest
except ImportError:         # the benchmarks run the server without the test extras
    pytest = None

__all__ = ["DNSServer", "dns_server_factory", "dns_server_fixture"]

BEHAVIOURS = ("answer", "timeout", "servfail", "refused", "truncate")


@dataclass(frozen=True, slots=True)
class Behaviour:
    kind: str
    delay: float = 0.0


def _absolute(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else "."


def _default_soa(origin: dns.name.Name) -> dns.rrset.RRset:
    o = origin.to_text()
    prefix = "" if origin == dns.name.root else o
    return dns.rrset.from_text(
        origin, 300, "IN", "SOA",
        f"ns.{prefix} hostmaster.{prefix} 1 3600 600 86400 300")


class _Data:
    """Immutable snapshot of served records."""

    def __init__(self) -> None:
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.names: set[dns.name.Name] = set()      # owner names and empty non-terminals
        self.apexes: dict[dns.name.Name, dns.rrset.RRset] = {}   # apex -> SOA

    def copy(self) -> "_Data":
        new = _Data()
        new.rrsets = dict(self.rrsets)
        new.names = set(self.names)
        new.apexes = dict(self.apexes)
        return new

    def add(self, rrset: dns.rrset.RRset) -> None:
        key = (rrset.name, int(rrset.rdtype))
        old = self.rrsets.get(key)
        if old is not None:
            merged = old.copy()
            merged.update_ttl(min(old.ttl, rrset.ttl))
            for rd in rrset:
                merged.add(rd)
            rrset = merged
        self.rrsets[key] = rrset
        if rrset.rdtype == dns.rdatatype.SOA:
            self.apexes[rrset.name] = rrset
        self._add_name(rrset.name)

    def _add_name(self, name: dns.name.Name) -> None:
        while name not in self.names:
            self.names.add(name)
            if name == dns.name.root:
                break
            name = name.parent()

    def rebuild_names(self) -> None:
        self.names = set()
        for name, _ in self.rrsets:
            self._add_name(name)

    def apex_for(self, qname: dns.name.Name) -> dns.name.Name | None:
        name = qname
        while True:
            if name in self.apexes:
                return name
            if name == dns.name.root:
                return None
            name = name.parent()


class _Collector:
    """The part of a dnspython transaction that ``dns.zonefile.Reader`` uses."""

    def __init__(self, origin: dns.name.Name) -> None:
        self.origin = origin
        self.manager = self
        self.rrsets: dict[tuple[dns.name.Name, int, int], dns.rrset.RRset] = {}

    def origin_information(self):
        return self.origin, False, self.origin

    def check_put_rdataset(self, check) -> None:
        pass

    def _set_origin(self, origin) -> None:
        pass

    def add(self, name: dns.name.Name, ttl: int, rdata) -> None:
        key = (name, int(rdata.rdtype), int(rdata.covers()))
        rrset = self.rrsets.get(key)
        if rrset is None:
            rrset = self.rrsets[key] = dns.rrset.RRset(name, rdata.rdclass, rdata.rdtype,
                                                       rdata.covers())
        rrset.add(rdata, ttl)


def _parse(zones: str | Mapping[str, str]) -> list[tuple[list[dns.rrset.RRset], list[dns.name.Name]]]:
    """Zone input -> [(rrsets, origins wanting an SOA if none encloses them)]."""
    items: list[tuple[str, dns.name.Name]]
    if isinstance(zones, str):
        items = [(zones, dns.name.root)]
    else:
        items = [(text, _absolute(origin)) for origin, text in zones.items()]
    out = []
    for text, origin in items:
        if not re.search(r"^\$TTL\b", text, re.M):
            text = "$TTL 300\n" + text
        # dns.zone and dnspython's transactions refuse an SOA away from the origin, so the
        # master-file reader writes into a small collector instead ($ORIGIN/$TTL/$GENERATE).
        collector = _Collector(origin)
        tok = dns.tokenizer.Tokenizer(text, "<zone>")
        dns.zonefile.Reader(tok, dns.rdataclass.IN, collector,  # type: ignore[arg-type]
                            allow_directives={"$ORIGIN", "$TTL", "$GENERATE"}).read()
        rrsets = list(collector.rrsets.values())
        origins = [origin] if origin != dns.name.root else []
        origins += [_absolute(o) for o in re.findall(r"^\$ORIGIN\s+(\S+)", text, re.M)]
        out.append((rrsets, origins))
    return out


class DNSServer:
    """Authoritative DNS server on loopback (see module docstring). Usable as a context
    manager; ``start()`` returns the server, ``nameserver`` is the Resolver's argument."""

    def __init__(self, zones: str | Mapping[str, str] = "", address: str = "127.0.0.1",
                 port: int = 0, *, max_udp_size: int = 4096) -> None:
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback:
            raise ValueError(f"test DNS server binds loopback only, not {address}")
        self.address = str(ip)
        self._family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self._want_port = port
        self.port = 0
        self.max_udp_size = max_udp_size
        self._lock = threading.Lock()
        self._data = _Data()
        self._behaviours: dict[tuple[dns.name.Name, int | None], Behaviour] = {}
        self.queries: list[tuple[str, str]] = []
        self.log: list[tuple[str, str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        if zones:
            self.load(zones)

    # ------------------------------------------------------------------ data

    def load(self, zones: str | Mapping[str, str], replace: bool = False) -> None:
        """Add (or with ``replace`` swap in) zone data; records of an existing (name, type)
        are merged."""
        with self._lock:
            data = _Data() if replace else self._data.copy()
        parsed = _parse(zones)
        for rrsets, _ in parsed:
            for rrset in rrsets:
                data.add(rrset)
        for _, origins in parsed:
            for origin in origins:
                if data.apex_for(origin) is None:
                    data.add(_default_soa(origin))
        with self._lock:
            self._data = data

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove the records of ``name`` (of one type, or all)."""
        qname = _absolute(name)
        with self._lock:
            data = self._data.copy()
        for key in list(data.rrsets):
            if key[0] == qname and (rdtype is None or key[1] == dns.rdatatype.from_text(rdtype)):
                del data.rrsets[key]
                if key[1] == dns.rdatatype.SOA:
                    data.apexes.pop(qname, None)
        data.rebuild_names()
        with self._lock:
            self._data = data

    def set_behaviour(self, name: str, kind: str, delay: float = 0.0,
                      rdtype: str | None = None) -> None:
        if kind not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        key = (_absolute(name), None if rdtype is None else int(dns.rdatatype.from_text(rdtype)))
        with self._lock:
            self._behaviours[key] = Behaviour(kind, float(delay))

    def clear_behaviour(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._behaviours.clear()
            else:
                qname = _absolute(name)
                for key in [k for k in self._behaviours if k[0] == qname]:
                    del self._behaviours[key]

    def count(self, name: str, rdtype: str | None = None) -> int:
        name = name.rstrip(".").lower() or "."
        with self._lock:
            return sum(1 for n, t in self.queries
                       if n == name and (rdtype is None or t == rdtype.upper()))

    def clear_log(self) -> None:
        with self._lock:
            self.queries.clear()
            self.log.clear()

    # ------------------------------------------------------------------ lifecycle

    @property
    def nameserver(self) -> str:
        """"127.0.0.1:PORT" or "[::1]:PORT", as Resolver and config take it."""
        if self._family == socket.AF_INET6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def start(self) -> "DNSServer":
        if self._thread is not None:
            return self
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:    # noqa: BLE001 - reported to start()
                error.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    loop.run_until_complete(
                        asyncio.gather(*self._tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"dnsserver-{id(self):x}", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("DNS server did not start")
        if error:
            self._thread.join()
            self._thread = None
            raise error[0]
        return self

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(20):
            udp_sock = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                udp_sock.bind((self.address, self._want_port))
                port = udp_sock.getsockname()[1]
                tcp_sock = socket.socket(self._family, socket.SOCK_STREAM)
                tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    tcp_sock.bind((self.address, port))
                except OSError:
                    tcp_sock.close()
                    raise
            except OSError as exc:    # the TCP side of this port is taken: try another
                udp_sock.close()
                last = exc
                if self._want_port:
                    break
                continue
            tcp_sock.listen(128)
            tcp_sock.setblocking(False)
            udp_sock.setblocking(False)
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), sock=udp_sock)
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)
            self.port = port
            return
        raise last or OSError("cannot bind DNS server")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def shutdown() -> None:
            if self._udp is not None:
                self._udp.close()
            if self._tcp is not None:
                self._tcp.close()
            loop.stop()

        if not loop.is_closed():
            loop.call_soon_threadsafe(shutdown)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "DNSServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()

        async def one(wire: bytes) -> None:
            reply = await self._handle(wire, "tcp")
            if reply is not None:
                async with lock:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()

        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                wire = await reader.readexactly(size)
                self._spawn(one(wire))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None             # not a DNS message we can answer to: drop it
        if query.flags & dns.flags.QR:
            return None
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                               else dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, int(question.rdtype)
        with self._lock:
            self.queries.append((_text(qname), dns.rdatatype.to_text(question.rdtype)))
            self.log.append((_text(qname), dns.rdatatype.to_text(question.rdtype), transport))
            behaviour = (self._behaviours.get((qname, qtype))
                         or self._behaviours.get((qname, None)) or Behaviour("answer"))
            data = self._data
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA
        kind = behaviour.kind
        if kind == "timeout":
            return None
        if kind in ("servfail", "refused"):
            response.set_rcode(dns.rcode.SERVFAIL if kind == "servfail" else dns.rcode.REFUSED)
            return response.to_wire()
        if kind == "truncate" and transport == "udp":
            response.flags |= dns.flags.TC | dns.flags.AA
            return response.to_wire()
        self._answer(data, response, qname, question.rdtype, question.rdclass)
        if transport == "tcp":
            return response.to_wire(max_size=65535)
        limit = max(512, query.payload) if query.edns >= 0 else 512
        limit = max(512, min(limit, self.max_udp_size))
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def _answer(self, data: _Data, response: dns.message.Message, qname: dns.name.Name,
                qtype: dns.rdatatype.RdataType, qclass: dns.rdataclass.RdataClass) -> None:
        apex = data.apex_for(qname) if qclass == dns.rdataclass.IN else None
        if apex is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        name = qname
        for _ in range(12):        # CNAME chain inside the served data
            found, exists = self._rrsets_at(data, name, qtype)
            if found:
                response.answer.extend(found)
                return
            cname = None if qtype == dns.rdatatype.CNAME else \
                self._rrsets_at(data, name, dns.rdatatype.CNAME)[0]
            if cname:
                response.answer.extend(cname)
                name = cname[0][0].target
                next_apex = data.apex_for(name)
                if next_apex is None:
                    return          # target outside our zones: the client follows it
                apex = next_apex
                continue
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            soa = data.apexes[apex]
            neg = soa.copy()
            neg.update_ttl(min(soa.ttl, soa[0].minimum))
            response.authority.append(neg)
            return

    @staticmethod
    def _rrsets_at(data: _Data, name: dns.name.Name,
                   qtype: int) -> tuple[list[dns.rrset.RRset], bool]:
        """(RRsets for name/type, does the name exist), with wildcard synthesis."""
        owner = name
        if name not in data.names:
            # closest encloser, then *.closest (RFC 4592 §3.3.1)
            encloser = name.parent() if name != dns.name.root else name
            while encloser not in data.names and encloser != dns.name.root:
                encloser = encloser.parent()
            owner = dns.name.Name((b"*",) + encloser.labels)
            if owner not in data.names:
                return [], False
        if qtype == dns.rdatatype.ANY:
            found = [rr for (n, _), rr in data.rrsets.items() if n == owner]
        else:
            rr = data.rrsets.get((owner, int(qtype)))
            found = [rr] if rr is not None else []
        if owner != name:
            synthesized = []
            for rr in found:
                copy = dns.rrset.RRset(name, rr.rdclass, rr.rdtype)
                copy.update(rr)
                synthesized.append(copy)
            found = synthesized
        return found, True


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.server._spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr) -> None:
        reply = await self.server._handle(data, "udp")
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


# ---------------------------------------------------------------------- pytest helpers

def _no_fixture(fn: Callable) -> Callable:   # without pytest: a plain generator function
    return fn


@(pytest.fixture if pytest is not None else _no_fixture)
def dns_server_factory() -> Iterator[Callable[..., DNSServer]]:
    """``make(zones, address="127.0.0.1", **kw) -> started DNSServer``, stopped after the test.

    Use it by importing it into a test module (``from dnsserver import dns_server_factory``)
    or a conftest.
    """
    servers: list[DNSServer] = []

    def make(zones: str | Mapping[str, str] = "", **kwargs) -> DNSServer:
        server = DNSServer(zones, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def dns_server_fixture(zones: str | Mapping[str, str], *, scope: str = "function",
                       **kwargs) -> Callable:
    """A fixture serving ``zones``: ``dns = dns_server_fixture(ZONES, scope="module")`` in a
    test module. A shared (module-scoped) server keeps its log and behaviours across tests:
    call ``clear_log()``/``clear_behaviour()`` where that matters."""

    @pytest.fixture(scope=scope)
    def _fixture() -> Iterator[DNSServer]:
        with DNSServer(zones, **kwargs) as server:
            yield server

    return _fixture


def ipv6_loopback_available() -> bool:
    """True when ::1 can be bound here (some containers have IPv6 disabled)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
