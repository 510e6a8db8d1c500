"""What the policy checks may look at: the session and the transaction so far."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


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

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.client_ip)
        except ValueError:
            return None


@dataclass(slots=True)
class TransactionInfo:
    sender: str = ""
    recipients: list[str] = field(default_factory=list)   # accepted so far, as given
