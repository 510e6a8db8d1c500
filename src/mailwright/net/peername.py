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

import ipaddress
import logging
from dataclasses import dataclass

from .dns import DNSError

log = logging.getLogger("mailwright.peername")

MAX_PTR = 10          # as Postfix: a long PTR list is not worth walking further


@dataclass(frozen=True, slots=True)
class PeerName:
    name: str = ""            # forward-confirmed name, "" if none
    ptr: str = ""             # first PTR name published (confirmed or not)
    status: str = "unknown"   # "ok" | "missing" (no PTR) | "mismatch" | "unknown" (DNS failed)


def wanted(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
        return True
    except ValueError:
        return False


async def peer_name(resolver, ip: str) -> PeerName:
    try:
        names = (await resolver.ptr(ip))[:MAX_PTR]
    except (DNSError, ValueError) as exc:
        log.debug("reverse DNS of %s failed: %r", ip, exc)
        return PeerName()
    if not names:
        return PeerName(status="missing")
    want = ipaddress.ip_address(ip)
    for name in names:
        try:
            found = await resolver.addresses(name)
        except (DNSError, ValueError):
            continue
        if any(ipaddress.ip_address(a) == want for a in found):
            return PeerName(name, names[0], "ok")
    return PeerName("", names[0], "mismatch")
