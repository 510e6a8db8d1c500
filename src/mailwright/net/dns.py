"""DNS resolver: the one asynchronous stub resolver every part of Mailwright shares.

What: MX routing (RFC 5321 §5.1, RFC 7505 null MX), A/AAAA/PTR, TXT for SPF/DKIM/DMARC
(RFC 7208 §3.3: the strings of one TXT record are joined), TLSA for DANE (RFC 6698), and a
generic ``lookup``/``query`` for everything else. Methods return plain Python values; the
checks that use them stay pure (GUIDE idea 9: fetch here, evaluate elsewhere).

How: each lookup sends one RFC 1035 query (EDNS0, 1232-byte UDP payload, RD set) straight to
the configured recursive nameservers with ``dns.asyncquery``. That keeps ports per nameserver
("127.0.0.1:5353", "[::1]:5353"), so tests point it at a loopback DNS server. A UDP answer
with TC set is asked again over TCP (RFC 7766 §5) on the same nameserver. The nameservers are
tried in order; that round is repeated ``attempts`` times for timeouts and network errors. A
server that answers SERVFAIL, REFUSED or anything but NOERROR/NXDOMAIN is not asked again in
the same lookup. One try waits at most ``timeout`` seconds, so a lookup fails after at most
``timeout * attempts * len(nameservers)`` seconds.

Results are cached per (name, type), shared by all callers of one ``Resolver``:
positive answers for the smallest TTL of the answer and its CNAME chain, clamped to
[``min_ttl``, ``max_ttl``]; negative answers (NXDOMAIN and NODATA) for
min(SOA TTL, SOA MINIMUM) from the authority section (RFC 2308 §5), capped at
``negative_ttl``; negative answers without an SOA are not cached (RFC 2308 §5). Temporary
failures are not cached. The cache is an LRU of at most ``cache_size`` entries; expiry uses
the injected ``clock``. Identical lookups that are in flight at the same time share one
query (``_inflight``: (name, type) -> task), and every lookup is its own task, so one slow
domain never delays another.

Invariants:
  * The event loop is never blocked: all network I/O is asyncio (``dns.asyncquery``), the
    only blocking read is /etc/resolv.conf, once, in ``__init__`` when no nameservers are
    given (production only: tests always pass loopback nameservers).
  * NXDOMAIN and NODATA are answers, not exceptions: ``Answer.nxdomain`` / empty records.
  * Timeouts, SERVFAIL, REFUSED, network and malformed-response errors raise
    ``DNSTemporaryError``. Callers turn it into a 4xx / TEMPERROR, never into a pass.
  * ``DNSPermanentError`` only for names that cannot be queried at all (RFC 1035 §2.3.4:
    label > 63 octets, name > 255 octets, empty label).
  * Returned values are fresh lists; cached ``Answer`` objects are immutable.
  * A ``Resolver`` is used from one event loop at a time (coalescing is per loop); the sync
    adapters (``txt_sync``, ``run_sync``) are for worker threads, never for the loop thread.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

__all__ = [
    "Answer", "DNSError", "DNSPermanentError", "DNSTemporaryError", "MXAnswer",
    "Resolver", "ResolverStats", "parse_nameserver",
]

T = TypeVar("T")

EDNS_PAYLOAD = 1232          # DNS flag day 2020: avoids IP fragmentation
ADDRESS_PREFERENCES = ("ipv6", "ipv4", "interleave")


class DNSError(Exception):
    """Base of the resolver's errors."""


class DNSTemporaryError(DNSError):
    """The answer could not be obtained now (timeout, SERVFAIL, REFUSED, network error).

    Never treat it as "no record": mail is deferred (4xx), SPF/DKIM/DMARC give temperror.
    """


class DNSPermanentError(DNSError, ValueError):
    """The name cannot be looked up at all (malformed per RFC 1035 §2.3.4)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The result of one (name, type) lookup.

    ``records`` holds dnspython rdata objects (immutable) of the final name of the CNAME
    chain; empty for NXDOMAIN (``nxdomain`` True) and NODATA (``nxdomain`` False).
    ``ttl`` is the TTL the answer was cached with (0: not cached).
    """

    name: str
    rdtype: str
    records: tuple[Any, ...]
    nxdomain: bool = False
    canonical_name: str = ""
    ttl: int = 0

    @property
    def exists(self) -> bool:
        return not self.nxdomain


@dataclass(frozen=True, slots=True)
class MXAnswer:
    """MX records of a domain, as RFC 5321 §5.1 and RFC 7505 need them.

    ``records``: (preference, host) sorted by preference then host; hosts are lower case
    without the trailing dot; the root is ".". ``null_mx``: the domain publishes exactly one
    MX, "0 ." (RFC 7505 §3): it accepts no mail. ``exists``: False on NXDOMAIN. NODATA gives
    ``exists`` True and no records (then the domain's A/AAAA is the implicit MX, RFC 5321
    §5.1 — that decision belongs to routing, not here).
    """

    domain: str
    records: list[tuple[int, str]]
    null_mx: bool = False
    exists: bool = True

    @property
    def hosts(self) -> list[str]:
        return [host for _, host in self.records]


@dataclass
class ResolverStats:
    """Counters for metrics (Prometheus later). Keys are type names ("MX", "TXT", ...).

    ``lookups``: lookups that went to the network (one per coalesced lookup, not per try);
    ``latency``: their summed wall time in seconds; ``errors``: those that raised
    DNSTemporaryError; ``cache_hits``/``coalesced``: lookups answered without a new query.
    """

    lookups: collections.Counter = field(default_factory=collections.Counter)
    latency: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    cache_hits: collections.Counter = field(default_factory=collections.Counter)
    coalesced: collections.Counter = field(default_factory=collections.Counter)


def parse_nameserver(spec: str) -> tuple[str, int]:
    """"192.0.2.1", "192.0.2.1:5353", "::1", "[::1]" or "[::1]:5353" -> (ip, port)."""
    spec = spec.strip()
    host, port = spec, 53
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ValueError(f"bad nameserver {spec!r}: missing ]")
        host, rest = spec[1:end], spec[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {spec!r}")
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        port = int(p)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad nameserver {spec!r}: not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver {spec!r}: port out of range")
    return str(ip), port


def _system_nameservers() -> list[tuple[str, int]]:
    """The nameservers of /etc/resolv.conf (production only; tests pass their own)."""
    try:
        sysres = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        return [("127.0.0.1", 53)]
    servers = []
    for ns in sysres.nameservers:
        text = str(ns)
        try:
            servers.append((str(ipaddress.ip_address(text)), sysres.port))
        except ValueError:
            continue        # DoH/DoT URLs: not used by this resolver
    return servers or [("127.0.0.1", 53)]


def _to_name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return _parse_name(name)


@functools.lru_cache(maxsize=8192)
def _parse_name(name: str) -> dns.name.Name:
    """Text → absolute name, memoised: the same few names (a busy sender's SPF, DMARC and
    DKIM key names) are looked up for every message, and parsing costs more than the
    cache hit it leads to. Names are immutable, so sharing them is safe."""
    try:
        return dns.name.from_text(name.strip(), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DNSPermanentError(f"cannot look up {name!r}: {exc}") from None


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else "."


@functools.lru_cache(maxsize=8192)
def _key_text(name: str) -> str:
    """The cache key of a name given as text: lower case, no final dot (DNS names compare
    case-insensitively, RFC 4343)."""
    text = name.strip().lower()
    return text[:-1] if text.endswith(".") and len(text) > 1 else text


@functools.lru_cache(maxsize=64)
def _type_text(qtype: dns.rdatatype.RdataType) -> str:
    return dns.rdatatype.to_text(qtype)


@functools.lru_cache(maxsize=64)
def _to_rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    try:
        if isinstance(rdtype, str):
            return dns.rdatatype.from_text(rdtype.upper())
        return dns.rdatatype.RdataType.make(rdtype)
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"unknown record type {rdtype!r}") from exc


class _Failure(Exception):
    """One nameserver failed this try; ``retry`` says whether a later round may ask it again."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class Resolver:
    """Asynchronous caching stub resolver (see the module docstring).

    ``address_preference`` orders ``addresses()``: "ipv6" (default: IPv6 first, as RFC 6724
    default policy and Postfix 2.8's smtp_address_preference=ipv6), "ipv4", or "interleave"
    (alternating, IPv6 first, RFC 8305 §4).
    """

    def __init__(self, nameservers: Sequence[str] | None = None, *, timeout: float = 5.0,
                 attempts: int = 2, cache_size: int = 10000, min_ttl: int = 0,
                 max_ttl: int = 86400, negative_ttl: int = 300,
                 clock: Callable[[], float] = time.monotonic,
                 address_preference: str = "ipv6",
                 on_lookup: Callable[[str, float, str], None] | None = None) -> None:
        if nameservers is None:
            self.nameservers = _system_nameservers()
        else:
            self.nameservers = [parse_nameserver(ns) for ns in nameservers]
            if not self.nameservers:
                raise ValueError("at least one nameserver is needed")
        if timeout <= 0 or attempts < 1:
            raise ValueError("timeout must be > 0 and attempts >= 1")
        if address_preference not in ADDRESS_PREFERENCES:
            raise ValueError(f"address_preference must be one of {ADDRESS_PREFERENCES}")
        self.timeout = float(timeout)
        self.attempts = int(attempts)
        self.cache_size = int(cache_size)
        self.min_ttl = int(min_ttl)
        self.max_ttl = int(max_ttl)
        self.negative_ttl = int(negative_ttl)
        self.clock = clock
        self.address_preference = address_preference
        #: called after every network lookup: (type name, seconds, outcome) where outcome is
        #: "ok", "nodata", "nxdomain" or "temporary". For metrics; must not raise or block.
        self.on_lookup = on_lookup
        self.stats = ResolverStats()
        self._cache: collections.OrderedDict[tuple[str, int], tuple[float, Answer]] = \
            collections.OrderedDict()
        self._inflight: dict[tuple[str, int],
                             tuple[asyncio.AbstractEventLoop, asyncio.Task]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ metrics

    @property
    def lookup_count(self) -> collections.Counter:
        """Network lookups per type name (cache hits and coalesced waiters not counted)."""
        return self.stats.lookups

    @property
    def max_lookup_time(self) -> float:
        """Upper bound of one lookup's duration in seconds."""
        return self.timeout * self.attempts * len(self.nameservers)

    # ------------------------------------------------------------------ typed lookups

    async def mx(self, domain: str) -> MXAnswer:
        ans = await self.lookup(domain, "MX")
        records = sorted(
            (int(rd.preference), _name_text(rd.exchange)) for rd in ans.records)
        null_mx = len(records) == 1 and records[0][1] == "."
        return MXAnswer(domain=ans.name, records=records, null_mx=null_mx,
                        exists=not ans.nxdomain)

    async def a(self, name: str) -> list[str]:
        return [rd.address for rd in (await self.lookup(name, "A")).records]

    async def aaaa(self, name: str) -> list[str]:
        return [rd.address for rd in (await self.lookup(name, "AAAA")).records]

    async def addresses(self, name: str, prefer: str | None = None) -> list[str]:
        """AAAA and A of ``name`` looked up concurrently, ordered by ``prefer``.

        If one family fails temporarily and the other gives addresses, those are returned
        (the delivery can proceed); if no address was found and a family failed, the
        DNSTemporaryError is raised (the answer might have been "there is one").
        """
        prefer = prefer or self.address_preference
        if prefer not in ADDRESS_PREFERENCES:
            raise ValueError(f"prefer must be one of {ADDRESS_PREFERENCES}")
        v6, v4 = await asyncio.gather(self.aaaa(name), self.a(name), return_exceptions=True)
        for res in (v6, v4):
            if isinstance(res, BaseException) and not isinstance(res, DNSTemporaryError):
                raise res
        six = [] if isinstance(v6, BaseException) else v6
        four = [] if isinstance(v4, BaseException) else v4
        if not six and not four:
            for res in (v6, v4):
                if isinstance(res, BaseException):
                    raise res
        if prefer == "ipv4":
            return four + six
        if prefer == "ipv6":
            return six + four
        out: list[str] = []
        for i in range(max(len(six), len(four))):
            out.extend(x[i] for x in (six, four) if i < len(x))
        return out

    async def txt(self, name: str) -> list[str]:
        """Each TXT record's strings joined without separator (RFC 7208 §3.3, RFC 6376
        §3.6.2.2), decoded as UTF-8 (undecodable bytes become U+FFFD; raw bytes via
        ``lookup(name, "TXT")``)."""
        ans = await self.lookup(name, "TXT")
        return [b"".join(rd.strings).decode("utf-8", "replace") for rd in ans.records]

    async def ptr(self, ip: str) -> list[str]:
        """Host names of the reverse name of ``ip`` (in-addr.arpa / ip6.arpa)."""
        try:
            rev = dns.reversename.from_address(ip)
        except (dns.exception.SyntaxError, ValueError) as exc:
            raise ValueError(f"not an IP address: {ip!r}") from exc
        return [_name_text(rd.target) for rd in (await self.lookup(rev, "PTR")).records]

    async def tlsa(self, name: str) -> list[tuple[int, int, int, bytes]]:
        """(usage, selector, matching type, certificate association data) per RFC 6698.

        DANE needs DNSSEC-validated answers (RFC 7672 §2.2); the AD-bit check from a trusted
        validating resolver is not done here yet.
        """
        ans = await self.lookup(name, "TLSA")
        return [(int(rd.usage), int(rd.selector), int(rd.mtype), bytes(rd.cert))
                for rd in ans.records]

    async def query(self, name: str, rdtype: str | int) -> list[Any]:
        """The rdata objects for (name, type); [] for NXDOMAIN and NODATA."""
        return list((await self.lookup(name, rdtype)).records)

    # ------------------------------------------------------------------ core

    async def lookup(self, name: str | dns.name.Name, rdtype: str | int) -> Answer:
        """The full answer for (name, type): records, NXDOMAIN flag, TTL, canonical name."""
        qname = _to_name(name)
        qtype = _to_rdtype(rdtype)
        loop = asyncio.get_running_loop()
        self._loop = loop
        # Keyed by the name's text: a str hashes once and keeps its hash; a dns.name.Name
        # computes its case-folded hash on every use.
        key = (_key_text(name) if isinstance(name, str) else _name_text(qname), int(qtype))
        tname = _type_text(qtype)
        cached = self._cache_get(key)
        if cached is not None:
            self.stats.cache_hits[tname] += 1
            return cached
        entry = self._inflight.get(key)
        if entry is not None and entry[0] is loop and not entry[1].done():
            self.stats.coalesced[tname] += 1
            task = entry[1]
        else:
            task = loop.create_task(self._fetch(qname, qtype, key))
            self._inflight[key] = (loop, task)
            task.add_done_callback(lambda t, key=key: self._forget(key, t))
        # shield: a cancelled caller must not cancel the query other callers share
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, int], task: asyncio.Task) -> None:
        entry = self._inflight.get(key)
        if entry is not None and entry[1] is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()    # retrieved: no "exception was never retrieved" warning

    async def _fetch(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
                     key: tuple[str, int]) -> Answer:
        tname = _type_text(qtype)
        started = time.monotonic()
        outcome = "temporary"
        try:
            answer = await self._resolve(qname, qtype)
            outcome = "ok" if answer.records else ("nxdomain" if answer.nxdomain else "nodata")
            self._cache_put(key, answer)
            return answer
        except DNSTemporaryError:
            self.stats.errors[tname] += 1
            raise
        finally:
            elapsed = time.monotonic() - started
            self.stats.lookups[tname] += 1
            self.stats.latency[tname] += elapsed
            if self.on_lookup is not None:
                self.on_lookup(tname, elapsed, outcome)

    async def _resolve(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> Answer:
        failures: list[str] = []
        done: set[int] = set()          # nameservers not to ask again in this lookup
        for _ in range(self.attempts):
            for index, (ip, port) in enumerate(self.nameservers):
                if index in done:
                    continue
                try:
                    response = await self._exchange(qname, qtype, ip, port)
                    return self._interpret(qname, qtype, response)
                except _Failure as failure:
                    failures.append(f"{ip}:{port} {failure.reason}")
                    if not failure.retry:
                        done.add(index)
            if len(done) == len(self.nameservers):
                break
        text = _name_text(qname)
        raise DNSTemporaryError(
            f"{text}/{dns.rdatatype.to_text(qtype)}: " + "; ".join(failures[-4:]))

    async def _exchange(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
                        ip: str, port: int) -> dns.message.Message:
        query = dns.message.make_query(qname, qtype, use_edns=0, payload=EDNS_PAYLOAD)
        deadline = time.monotonic() + self.timeout
        try:
            response = await dns.asyncquery.udp(
                query, ip, timeout=self.timeout, port=port, ignore_unexpected=True)
            if response.flags & dns.flags.TC:
                remaining = max(deadline - time.monotonic(), 0.001)
                response = await dns.asyncquery.tcp(
                    query, ip, timeout=remaining, port=port)
        except dns.exception.Timeout:
            raise _Failure("timeout", retry=True) from None
        except (OSError, EOFError, asyncio.TimeoutError) as exc:
            raise _Failure(f"network error: {exc!r}", retry=True) from None
        except dns.exception.DNSException as exc:   # malformed / mismatched response
            raise _Failure(f"bad response: {exc!r}", retry=True) from None
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise _Failure(dns.rcode.to_text(rcode), retry=False)
        return response

    def _interpret(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
                   response: dns.message.Message) -> Answer:
        try:
            chain = response.resolve_chaining()
        except dns.exception.DNSException as exc:   # chain too long, answer for NXDOMAIN
            raise _Failure(f"bad response: {exc!r}", retry=False) from None
        nxdomain = response.rcode() == dns.rcode.NXDOMAIN
        if chain.answer is not None:
            records = tuple(chain.answer)
            ttl = min(max(chain.minimum_ttl, self.min_ttl), self.max_ttl)
        else:
            records = ()
            has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
            # RFC 2308 §5: no SOA, no negative caching
            ttl = min(chain.minimum_ttl, self.negative_ttl) if has_soa else 0
        return Answer(name=_name_text(qname), rdtype=dns.rdatatype.to_text(qtype),
                      records=records, nxdomain=nxdomain,
                      canonical_name=_name_text(chain.canonical_name), ttl=max(ttl, 0))

    # ------------------------------------------------------------------ cache

    def _cache_get(self, key: tuple[str, int]) -> Answer | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        expires, answer = hit
        if self.clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _cache_put(self, key: tuple[str, int], answer: Answer) -> None:
        if answer.ttl <= 0 or self.cache_size <= 0:
            return
        self._cache[key] = (self.clock() + answer.ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def flush(self) -> None:
        """Empty the cache (e.g. after a configuration reload)."""
        self._cache.clear()

    # ------------------------------------------------------------------ sync adapters

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Name the loop the sync adapters submit to (default: the running loop). Any async
        lookup also binds the loop it runs on."""
        self._loop = loop or asyncio.get_running_loop()

    def run_sync(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` (a coroutine of this resolver) on the resolver's loop from another
        thread and wait for its result, via ``asyncio.run_coroutine_threadsafe``.

        For libraries with synchronous DNS hooks, run in a worker thread
        (``await asyncio.to_thread(lib.check, ..., dnsfunc=resolver.txt_sync)``). Calling it
        on the loop's own thread would deadlock, so that raises RuntimeError.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError("resolver has no running event loop (call bind_loop())")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError("sync DNS adapter called on the event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout if timeout is not None else self.max_lookup_time + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DNSTemporaryError("sync DNS lookup timed out") from None

    def txt_sync(self, name: str) -> list[str]:
        """``txt(name)`` for a worker thread: the ``dnsfunc(name) -> list[str]`` shape that
        pyspf/dkimpy-style libraries take. Raises DNSTemporaryError like ``txt``."""
        return self.run_sync(self.txt(name))


def resolver_from_settings(settings: Any) -> Resolver:
    """The resolver a process uses for outbound lookups (the server shares one: routing,
    SPF/DKIM/DMARC and blocklists share its cache; the diag and dns commands make their
    own): ``[outbound] nameservers`` (default: /etc/resolv.conf) and ``dns_timeout``."""
    out = settings.outbound
    return Resolver(list(out.nameservers) or None, timeout=out.dns_timeout)
