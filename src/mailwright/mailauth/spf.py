"""SPF evaluator: check_host() of RFC 7208 §4, asynchronous, over our DNS resolver.

What: ``check_host(resolver, ip, domain, sender)`` returns an ``SPFResult`` (one of the
seven results of §2.6 with the domain, the deciding mechanism, the record, the explanation
for "fail" and counters). ``check_mail_from`` (§2.4: the null reverse-path checks
"postmaster@<HELO>") and ``check_helo`` (§2.3) build the check_host() arguments for the two
identities; ``received_spf_header`` writes the trace field of §9.1.

How: record selection and syntax live in ``spf_parse``, macros in ``spf_macro`` (both
pure); this module fetches (every query goes through the ``resolver`` passed in, a
``mailwright.net.dns.Resolver`` or anything with its ``txt``/``a``/``aaaa``/``mx``/``ptr``
methods) and walks the mechanisms in order. One ``_Check`` carries the state one
check_host() call shares with its ``include``/``redirect`` recursions: the count of DNS
terms (§4.6.4: at most ``max_lookups``, default 10), of void lookups (at most ``max_void``,
default 2), and the validated PTR names for the ``p`` macro. Lookups of MX hosts and of
PTR names for validation run concurrently; their results are read in record order.

Invariants:
  * A DNS timeout or server failure is "temperror", never a pass or a no-match (§2.6.6),
    except where the RFC says otherwise: an error while looking up PTR names makes "ptr"
    not match, an error on one PTR name's address skips that name (§5.5), and any failure
    fetching the ``exp=`` text just drops the explanation (§6.2).
  * A malformed <domain> or one without SPF record gives "none" (§4.3, §4.5); under
    ``include`` that is a permerror (§5.2), under ``redirect`` too (§6.1).
  * Syntax errors anywhere in a record are found before any of it is evaluated (§4.6).
  * IPv4-mapped IPv6 clients are IPv4 clients (§5, last paragraph): they match ``ip4``
    and A records, never ``ip6``.
  * ``explanation`` is printable US-ASCII, safe for an SMTP reply (§6.2, §8.4).
  * The whole evaluation is bounded by ``timeout`` seconds (§4.6.4: at least 20 s
    recommended); past it the result is temperror.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import dns.name

from mailwright.mailauth.spf_macro import (
    MacroString, MacroSyntaxError, MacroValues, expand, expand_domain, parse_explain_string)
from mailwright.mailauth.spf_parse import (
    Mechanism, Record, SPFSyntaxError, parse_record, select_record)
from mailwright.net.dns import DNSError, DNSPermanentError, DNSTemporaryError

__all__ = [
    "DEFAULT_EXPLANATION", "RESULTS", "SPFResult", "check_helo", "check_host",
    "check_mail_from", "received_spf_header",
]

log = logging.getLogger(__name__)

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
QUALIFIER_RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
#: returned for "fail" when the record has no usable exp= (§6.2 allows a default)
DEFAULT_EXPLANATION = "the sender's SPF record does not authorize this host"
MAX_MX_NAMES = 10       # §4.6.4: more MX records than this is a permerror
MAX_PTR_NAMES = 10      # §4.6.4: PTR names beyond the first 10 are ignored

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The outcome of one SPF check.

    ``domain``: the <domain> checked (for ``check_mail_from`` the MAIL FROM domain or the
    HELO name); ``identity``: "mailfrom", "helo" or "" (``check_host`` called directly);
    ``sender``: the <sender> used (local-part defaulted); ``explanation``: for "fail" only,
    the expanded ``exp=`` text or ``DEFAULT_EXPLANATION``; ``mechanism``: the term that
    decided ("" when none did); ``record``: the SPF record of ``domain``; ``lookups``: DNS
    terms evaluated (§4.6.4); ``void_lookups``: lookups with no answer; ``reason``: a short
    text for logs and the trace header.
    """

    result: str
    domain: str
    identity: str = ""
    sender: str = ""
    explanation: str = ""
    mechanism: str = ""
    record: str = ""
    lookups: int = 0
    void_lookups: int = 0
    reason: str = ""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(slots=True)
class _Outcome:
    result: str
    domain: str
    mechanism: str = ""
    explanation: str = ""
    reason: str = ""


@dataclass(slots=True)
class _Check:
    """State shared by one check_host() and its recursions."""

    resolver: Any
    ip: IPAddress
    sender: str
    helo: str
    receiver: str
    now: int
    max_lookups: int
    max_void: int
    lookups: int = 0
    void: int = 0
    top_record: str = ""
    _validated: list[str] | None = field(default=None)

    # ------------------------------------------------------------------ check_host()

    async def evaluate(self, domain: str, *, top: bool = False, want_exp: bool = True) -> _Outcome:
        """check_host() for ``domain`` (§4); errors leave as _PermError/_TempError."""
        if not valid_domain(domain):                        # §4.3
            return _Outcome("none", domain, reason=f"malformed domain {domain!r}")
        try:
            texts = await self.resolver.txt(domain)         # §4.4: TXT only (§3.1)
        except DNSTemporaryError as exc:
            raise _TempError(f"DNS error looking up {domain}: {exc}") from None
        except DNSPermanentError:
            return _Outcome("none", domain, reason=f"malformed domain {domain!r}")
        try:
            text = select_record(texts)                     # §4.5
            if text is None:
                return _Outcome("none", domain, reason=f"no SPF record for {domain}")
            if top:
                self.top_record = text
            record = parse_record(text)                     # §4.6
        except SPFSyntaxError as exc:
            raise _PermError(f"{domain}: {exc}") from None
        for mech in record.mechanisms:                      # §4.6.2: left to right
            if await self._matches(mech, domain):
                result = QUALIFIER_RESULTS[mech.qualifier]
                explanation = ""
                if result == "fail" and want_exp:
                    explanation = await self._explain(record, domain)
                return _Outcome(result, domain, mech.text, explanation,
                                f"{mech.text} in {domain}")
        if record.redirect is not None:                     # §6.1
            self._count(f"redirect in {domain}")
            target = await self._target(record.redirect, domain)
            outcome = await self.evaluate(target, want_exp=want_exp)
            if outcome.result == "none":
                raise _PermError(f"redirect from {domain}: {outcome.reason}")
            return outcome
        return _Outcome("neutral", domain, reason=f"no mechanism matched in {domain}")  # §4.7

    # ------------------------------------------------------------------ mechanisms (§5)

    async def _matches(self, mech: Mechanism, domain: str) -> bool:
        kind = mech.kind
        if kind == "all":                                   # §5.1
            return True
        if kind in ("ip4", "ip6"):                          # §5.6
            assert mech.network is not None
            return mech.network.version == self.ip.version and self.ip in mech.network
        self._count(f"{mech.text} in {domain}")             # §4.6.4
        target = domain if mech.domain is None else await self._target(mech.domain, domain)
        if kind == "include":                               # §5.2
            outcome = await self.evaluate(target, want_exp=False)
            if outcome.result == "none":
                raise _PermError(f"include:{target} from {domain}: {outcome.reason}")
            return outcome.result == "pass"
        if kind == "a":                                     # §5.3
            addresses = await self._addresses(target, void=True)
            return self._in_any(addresses, mech)
        if kind == "mx":                                    # §5.4
            return await self._mx(target, mech)
        if kind == "ptr":                                   # §5.5
            return await self._ptr(target)
        if kind == "exists":                                # §5.7: A records, whatever the IP
            found = await self._lookup(self.resolver.a, target, void=True)
            return bool(found)
        raise AssertionError(kind)

    async def _mx(self, target: str, mech: Mechanism) -> bool:
        try:
            answer = await self.resolver.mx(target)
        except DNSTemporaryError as exc:
            raise _TempError(f"DNS error looking up MX {target}: {exc}") from None
        except (DNSPermanentError, ValueError):
            return False
        hosts = answer.hosts
        if not hosts:
            self._void(target)
            return False
        if len(hosts) > MAX_MX_NAMES:                       # §4.6.4
            raise _PermError(f"{target} has more than {MAX_MX_NAMES} MX records")
        hosts = [h for h in hosts if h != "."]              # RFC 7505 null MX: no host
        results = await asyncio.gather(
            *(self._addresses(h, void=False) for h in hosts), return_exceptions=True)
        for res in results:                                 # in record order, as if serial
            if isinstance(res, BaseException):
                raise res
            if self._in_any(res, mech):
                return True
        return False

    async def _ptr(self, target: str) -> bool:
        target = target.lower()
        names = await self._ptr_names(void=True)
        candidates = [n for n in names if n == target or n.endswith("." + target)]
        for name in await self._validate(candidates):
            if name == target or name.endswith("." + target):
                return True
        return False

    # ------------------------------------------------------------------ lookups

    def _count(self, what: str) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:                 # §4.6.4
            raise _PermError(f"more than {self.max_lookups} DNS lookups ({what})")

    def _void(self, name: str) -> None:
        self.void += 1
        if self.void > self.max_void:                       # §4.6.4
            raise _PermError(f"more than {self.max_void} void lookups ({name})")

    async def _lookup(self, method: Callable[[str], Awaitable[list[str]]], name: str, *,
                      void: bool) -> list[str]:
        try:
            found = await method(name)
        except DNSTemporaryError as exc:                    # §5: temperror
            raise _TempError(f"DNS error looking up {name}: {exc}") from None
        except (DNSPermanentError, ValueError):
            # a name no query can be made for (RFC 1035 §2.3.4): no match (§4.8, errata)
            return []
        if not found and void:
            self._void(name)
        return found

    async def _addresses(self, name: str, *, void: bool) -> list[str]:
        method = self.resolver.a if self.ip.version == 4 else self.resolver.aaaa
        return await self._lookup(method, name, void=void)

    def _in_any(self, addresses: list[str], mech: Mechanism) -> bool:
        bits = mech.cidr4 if self.ip.version == 4 else mech.cidr6
        for text in addresses:
            try:
                net = ipaddress.ip_network(f"{text}/{bits}", strict=False)
            except ValueError:
                continue
            if net.version == self.ip.version and self.ip in net:
                return True
        return False

    async def _ptr_names(self, *, void: bool) -> list[str]:
        try:
            names = await self.resolver.ptr(str(self.ip))
        except (DNSError, ValueError):
            return []       # §5.5: a DNS error on the PTR lookup: the mechanism fails to match
        if not names and void:
            self._void(str(self.ip))
        return [n.lower().rstrip(".") for n in names[:MAX_PTR_NAMES]]   # §4.6.4

    async def _validate(self, names: list[str]) -> list[str]:
        """The names among ``names`` with an address equal to the client's (§5.5)."""
        async def check(name: str) -> bool:
            method = self.resolver.a if self.ip.version == 4 else self.resolver.aaaa
            try:
                addresses = await method(name)
            except (DNSError, ValueError):
                return False        # §5.5: a DNS error skips this name
            return any(_same_ip(a, self.ip) for a in addresses)
        oks = await asyncio.gather(*(check(n) for n in names))
        return [n for n, ok in zip(names, oks) if ok]

    async def _validated_name(self, domain: str) -> str:
        """The ``p`` macro (§7.3): a validated name of the client, preferring <domain> or
        one of its subdomains; "unknown" when none validates."""
        if self._validated is None:
            self._validated = await self._validate(await self._ptr_names(void=False))
        domain = domain.lower().rstrip(".")
        for name in self._validated:
            if name == domain or name.endswith("." + domain):
                return name
        return self._validated[0] if self._validated else "unknown"

    # ------------------------------------------------------------------ macros, exp

    async def _values(self, ms: MacroString, domain: str) -> MacroValues:
        validated = await self._validated_name(domain) if "p" in ms.letters else "unknown"
        return MacroValues(sender=self.sender, domain=domain, ip=self.ip, helo=self.helo,
                           receiver=self.receiver, now=self.now, validated=validated)

    async def _target(self, ms: MacroString, domain: str) -> str:
        return expand_domain(ms, await self._values(ms, domain))

    async def _explain(self, record: Record, domain: str) -> str:
        """§6.2: the exp= text, or the default when anything about it goes wrong."""
        if record.exp is None:
            return DEFAULT_EXPLANATION
        try:
            name = await self._target(record.exp, domain)
            texts = await self.resolver.txt(name)
        except (DNSError, ValueError) as exc:
            log.debug("SPF exp= of %s ignored: %s", domain, exc)
            return DEFAULT_EXPLANATION
        if len(texts) != 1 or not texts[0].isascii():       # §6.2: exactly one, US-ASCII
            return DEFAULT_EXPLANATION
        try:
            ms = parse_explain_string(texts[0])
            text = expand(ms, await self._values(ms, domain))
        except MacroSyntaxError:
            return DEFAULT_EXPLANATION
        # macros may carry what the client sent (an SMTPUTF8 local-part): keep it printable
        return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


def _same_ip(text: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def client_address(ip: str | IPAddress) -> IPAddress:
    """The address SPF evaluates: IPv4-mapped IPv6 becomes IPv4 (RFC 7208 §5)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def valid_domain(domain: str) -> bool:
    """§4.3: a multi-label domain name with labels of 1..63 octets, at most 253 in all
    (one trailing dot allowed); domain literals ("[192.0.2.1]") are not domains."""
    if not domain or domain.startswith("[") or not domain.isascii():
        return False
    name = domain[:-1] if domain.endswith(".") else domain
    labels = name.split(".")
    return (len(name) <= 253 and len(labels) >= 2
            and all(0 < len(label) <= 63 for label in labels))


def _ascii_domain(domain: str) -> str:
    """U-labels to A-labels (RFC 8616 §4); text that is not a name comes back as it was."""
    if domain.isascii():
        return domain
    try:
        return dns.name.from_unicode(domain).to_text(omit_final_dot=True)
    except Exception:   # noqa: BLE001 - any IDNA failure: valid_domain() then says "none"
        return domain


def _normalise_sender(sender: str, domain: str) -> str:
    """§4.3: a <sender> without local-part gets "postmaster"."""
    local, at, host = sender.rpartition("@")
    if not at:
        return f"postmaster@{sender or domain}"
    return f"{local or 'postmaster'}@{host}"


async def check_host(resolver: Any, ip: str, domain: str, sender: str, *, helo: str = "",
                     receiver: str = "", now: float | None = None, max_lookups: int = 10,
                     max_void: int = 2, timeout: float = 20.0,
                     identity: str = "") -> SPFResult:
    """RFC 7208 §4 check_host(<ip>, <domain>, <sender>), see the module docstring.

    ``helo`` is the ``h`` macro, ``receiver`` the ``r`` macro (default "unknown"), ``now``
    the ``t`` macro (default: the current time). ``identity`` is only recorded.
    """
    domain = _ascii_domain(domain.strip())
    if domain.endswith("."):
        domain = domain[:-1]
    sender = _normalise_sender(sender.strip(), domain)
    check = _Check(resolver=resolver, ip=client_address(ip), sender=sender, helo=helo,
                   receiver=receiver, now=int(time.time() if now is None else now),
                   max_lookups=max_lookups, max_void=max_void)
    try:
        async with asyncio.timeout(timeout):          # RFC 7208 §4.6.4: bound the work
            outcome = await check.evaluate(domain, top=True)
    except _PermError as exc:
        outcome = _Outcome("permerror", domain, reason=str(exc))
    except _TempError as exc:
        outcome = _Outcome("temperror", domain, reason=str(exc))
    except TimeoutError:
        outcome = _Outcome("temperror", domain, reason=f"SPF evaluation took over {timeout}s")
    result = SPFResult(
        result=outcome.result, domain=domain, identity=identity, sender=sender,
        explanation=outcome.explanation if outcome.result == "fail" else "",
        mechanism=outcome.mechanism, record=check.top_record, lookups=check.lookups,
        void_lookups=check.void, reason=outcome.reason)
    log.debug("SPF %s for %s from %s: %s (%s)", result.result, domain, ip, result.mechanism,
              result.reason)
    return result


async def check_mail_from(resolver: Any, ip: str, mail_from: str, helo: str,
                          **kwargs: Any) -> SPFResult:
    """The MAIL FROM identity (§2.4); the null reverse-path checks "postmaster@<HELO>".

    ``mail_from`` is the reverse-path without angle brackets ("" for ``<>``); keyword
    arguments go to ``check_host``.
    """
    mail_from = mail_from.strip()
    if mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    if not mail_from:
        sender, domain = f"postmaster@{helo}", helo
    else:
        _, at, host = mail_from.rpartition("@")
        domain = host if at else mail_from
        sender = mail_from
    return await check_host(resolver, ip, domain, sender, helo=helo, identity="mailfrom",
                            **kwargs)


async def check_helo(resolver: Any, ip: str, helo: str, **kwargs: Any) -> SPFResult:
    """The HELO identity (§2.3): <domain> is the HELO name, <sender> "postmaster@HELO".

    A HELO that is an address literal or not a multi-label name gives "none" (§4.3).
    """
    return await check_host(resolver, ip, helo, f"postmaster@{helo}", helo=helo,
                            identity="helo", **kwargs)


# ---------------------------------------------------------------------- Received-SPF (§9.1)

def _dot_atom(text: str) -> bool:
    atext = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                "!#$%&'*+-/=?^_`{|}~")
    return bool(text) and all(part and set(part) <= atext for part in text.split("."))


def _value(text: str) -> str:
    """A key-value-pair value: dot-atom as is, anything else a quoted-string (§9.1)."""
    if _dot_atom(text):
        return text
    cleaned = "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_text(text: str) -> str:
    """Text safe inside a header comment: printable ASCII without parentheses or '\\'."""
    return "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F and ch not in "()\\")


def received_spf_header(result: SPFResult, ip: str, helo: str, mail_from: str,
                        receiver: str) -> str:
    """The ``Received-SPF:`` trace field of §9.1 (one unfolded line, no CRLF).

    ``mail_from`` is the reverse-path as received ("" for the null path); the comment
    follows the examples of §9.1.
    """
    client = str(client_address(ip))
    who = result.sender or mail_from or f"postmaster@{helo}"
    if result.identity == "helo":
        subject = helo
    else:
        subject = f"domain of {who}"
    comments = {
        "pass": f"{subject} designates {client} as permitted sender",
        "fail": f"{subject} does not designate {client} as permitted sender",
        "softfail": f"{subject.replace('domain of ', 'domain of transitioning ', 1)} "
                    f"does not designate {client} as permitted sender",
        "neutral": f"{client} is neither permitted nor denied by {subject}",
        "none": f"{result.domain} does not designate permitted sender hosts",
        "permerror": f"permanent error in processing {subject}",
        "temperror": f"temporary error in processing {subject}",
    }
    comment = comments.get(result.result, result.result)
    if receiver:
        comment = f"{receiver}: {comment}"
    pairs = [("client-ip", client), ("envelope-from", mail_from), ("helo", helo)]
    if result.result == "permerror" and result.reason:
        pairs.append(("problem", result.reason))
    if receiver:
        pairs.append(("receiver", receiver))
    if result.identity:
        pairs.append(("identity", result.identity))
    if result.result in ("pass", "fail", "softfail", "neutral"):
        pairs.append(("mechanism", result.mechanism or "default"))
    kv = "; ".join(f"{key}={_value(value)}" for key, value in pairs)
    return f"Received-SPF: {result.result} ({_comment_text(comment)}) {kv};"
