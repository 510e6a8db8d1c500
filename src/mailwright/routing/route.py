"""Where one recipient goes: the value the router hands to the queue manager."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    transport: str          # "maildir" (local mailbox) | "smtp" (remote; next issue) | "discard"
    address: str            # final recipient address after alias/sub-address resolution
    mailbox: str = ""       # for "maildir": the mailbox address owning the Maildir ("user@domain")
    folder: str = ""        # Maildir++ sub-folder ("" = INBOX), e.g. "Junk" later
    next_hop: str = ""      # for "smtp": domain or host[:port] (next issue)
