"""What the policy checks may look at: the session, the transaction so far, the message.

Checks read these and return verdicts; they never touch sockets. Results one check
establishes for a later one (the SPF result at MAIL that DMARC needs at end of data) go
into ``TransactionInfo.facts`` under the check's name. Authentication results meant for the
``Authentication-Results`` field (RFC 8601) are collected in ``MessageView.auth_results`` and
written as one field by the last data stage.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from ..message.headers import field_values
from .verdict import Verdict


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as given by the socket, parsed once per process and address
    (clients reconnect often; ipaddress parsing is slow Python). None if not an IP."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(slots=True)
class SessionInfo:
    client_ip: str
    client_port: int
    listener: str                    # listener name
    role: str                        # "mx" | "submission" | "submissions"
    helo: str = ""
    tls: str = ""                    # "" or "TLSv1.3 TLS_AES_..."
    auth_user: str = ""              # authenticated user (submission issue)
    trusted: bool = False            # client inside [relay] trusted_networks
    session_id: str = ""
    early_talker: bool = False       # sent data before the greeting (set by the driver)
    facts: dict[str, Any] = field(default_factory=dict)   # per-session results by check
    verdicts: list[Verdict] = field(default_factory=list)  # connect/helo verdicts with reasons

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return parse_ip(self.client_ip)


@dataclass(slots=True)
class TransactionInfo:
    sender: str = ""
    recipients: list[str] = field(default_factory=list)   # accepted so far, as given
    facts: dict[str, Any] = field(default_factory=dict)   # results by check name
    verdicts: list[Verdict] = field(default_factory=list)  # every verdict with a reason


class MessageView:
    """The message at end of data, before the commit.

    ``header`` is the header section as received (bounded, see message.headers); ``read()``
    returns the whole message (read back from the blob once, then cached). Checks add
    header fields with ``add_header`` (prepended in the order added, above what arrived)
    and may ask for delivery to the Junk folder with ``quarantine`` (DMARC p=quarantine,
    "junk" actions), or for the stronger ``hold``: the message is committed with every
    recipient HELD and the reason stored with it, delivered only when an operator
    releases it (``mailwright quarantine``; "quarantine" actions of the anti-abuse rules).
    The first reason of each kind wins.
    """

    __slots__ = ("header", "size", "_reader", "_data", "added_headers", "auth_results",
                 "quarantine_reason", "hold_reason", "spam_score", "spam_tags")

    def __init__(self, header: bytes, size: int, reader: Callable[[], bytes]) -> None:
        self.header = header
        self.size = size
        self._reader = reader
        self._data: bytes | None = None
        self.added_headers: list[bytes] = []
        self.auth_results: list[Any] = []      # mailauth.authresults.MethodResult values
        self.quarantine_reason = ""
        self.hold_reason = ""
        self.spam_score = 0.0
        self.spam_tags: list[str] = []

    def read(self) -> bytes:
        if self._data is None:
            self._data = self._reader()
        return self._data

    def add_header(self, field_bytes: bytes) -> None:
        """Add one complete header field (name, value, CRLF; folded lines allowed)."""
        if not field_bytes.endswith(b"\r\n"):
            field_bytes += b"\r\n"
        self.added_headers.append(field_bytes)

    def quarantine(self, reason: str) -> None:
        """Deliver to the recipients' Junk folder (our X-Mailwright-Quarantine field)."""
        if not self.quarantine_reason:
            self.quarantine_reason = reason

    def hold(self, reason: str) -> None:
        """Hold the message in the store's quarantine until an operator releases it."""
        if not self.hold_reason:
            self.hold_reason = reason

    def header_values(self, name: str) -> list[str]:
        """Unfolded values of every field called ``name`` in the received header section."""
        return field_values(self.header, name)

    def prefix(self) -> bytes:
        return b"".join(self.added_headers)
