"""Recipient resolution against an in-memory snapshot of the directory.

What: answers "is this address ours, and where does it go?" for RCPT TO (acceptance) and for
the queue manager (routing), from one ``DirectorySnapshot`` of domains, mailboxes and aliases.
RCPT never touches the store; the snapshot is refreshed when the store's directory version
changes (``DirectoryCache``).

Resolution order for an address in a local domain (as Postfix's virtual alias + mailbox maps):
  1. an alias for the exact address,
  2. a mailbox with the exact address,
  3. sub-addressing ``user+tag@domain`` (RFC 5233): steps 1-2 for ``user@domain``,
  4. the catch-all alias ``@domain``,
  5. ``postmaster@`` any local domain (RFC 5321 §4.5.1): always accepted; without its own
     mailbox or alias it goes to the primary domain's postmaster mailbox,
  6. otherwise unknown (550 5.1.1 at RCPT, never accepted-then-bounced).
Alias targets are resolved recursively (depth limit, loops cut); external targets stay remote.

Invariants: comparisons are case-insensitive (addresses are folded to lower case); a local
part carrying routing characters (``%``, ``!``, ``@`` from a quoted string) never matches a
mailbox, so percent-hack, bang paths and quoted-@ tricks cannot reach another domain.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..store.base import DirectorySnapshot
from .route import Route

SUBADDRESS_SEPARATOR = "+"
MAX_ALIAS_DEPTH = 10
_ROUTING_CHARS = frozenset("%!@")


class Kind(enum.Enum):
    LOCAL = "local"          # every target is a local mailbox (or external via an alias)
    REMOTE = "remote"        # domain is not ours: a relay question
    UNKNOWN = "unknown"      # our domain, no such user


@dataclass(frozen=True, slots=True)
class Resolution:
    kind: Kind
    targets: tuple[str, ...] = ()   # final addresses: local mailboxes and/or external addresses


def split(address: str) -> tuple[str, str]:
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address, ""
    return local, domain


def normalise_domain(domain: str) -> str:
    """Lower-case and drop one trailing root dot ("example.org." → "example.org")."""
    domain = domain.lower()
    return domain[:-1] if domain.endswith(".") else domain


class Directory:
    def __init__(self, snapshot: DirectorySnapshot, primary_domain: str) -> None:
        self.snapshot = snapshot
        self.primary_domain = primary_domain.lower()

    @property
    def version(self) -> int:
        return self.snapshot.version

    def is_local_domain(self, domain: str) -> bool:
        return normalise_domain(domain) in self.snapshot.domains

    def resolve(self, local: str, domain: str) -> Resolution:
        """Resolve an envelope recipient given as (local part, domain)."""
        if not domain:
            # Only "postmaster" may come without a domain (RFC 5321 §4.1.1.3 / §4.5.1).
            if local.lower() == "postmaster":
                return self.resolve("postmaster", self.primary_domain)
            return Resolution(Kind.UNKNOWN)
        domain = normalise_domain(domain)
        if domain not in self.snapshot.domains:
            return Resolution(Kind.REMOTE, (f"{local}@{domain}",))
        targets = self._expand(local.lower(), domain, depth=0, seen=set())
        if targets is None:
            return Resolution(Kind.UNKNOWN)
        return Resolution(Kind.LOCAL, tuple(dict.fromkeys(targets)))

    def resolve_address(self, address: str) -> Resolution:
        local, domain = split(address)
        return self.resolve(local, domain)

    def route(self, address: str) -> Route:
        """Route for a final address as committed (after acceptance-time expansion)."""
        local, domain = split(address)
        domain_n = normalise_domain(domain)
        if domain_n not in self.snapshot.domains:
            return Route(transport="smtp", address=address, next_hop=domain_n)
        mailbox = f"{local.lower()}@{domain_n}"
        if mailbox in self.snapshot.mailboxes:
            return Route(transport="maildir", address=address, mailbox=mailbox)
        # The address was accepted but its mailbox is gone (removed since), or it is an
        # alias committed unexpanded: resolve again.
        res = self.resolve(local, domain_n)
        if res.kind is Kind.LOCAL and len(res.targets) == 1 and res.targets[0] != address:
            return self.route(res.targets[0])
        return Route(transport="reject", address=address)

    # -- internals

    def _expand(self, local: str, domain: str, depth: int, seen: set[str]) -> list[str] | None:
        if depth > MAX_ALIAS_DEPTH:
            return []
        if _ROUTING_CHARS & set(local):
            return None
        address = f"{local}@{domain}"
        if address in seen:
            return []  # alias loop: cut here
        seen.add(address)
        found = self._lookup(local, domain, depth, seen)
        if found is not None:
            return found
        if SUBADDRESS_SEPARATOR in local:
            base = local.split(SUBADDRESS_SEPARATOR, 1)[0]
            if base:
                found = self._lookup(base, domain, depth, seen)
                if found is not None:
                    return found
        catch_all = self.snapshot.aliases.get(f"@{domain}")
        if catch_all is not None:
            return self._expand_targets(catch_all, depth, seen)
        if local == "postmaster":
            return [f"postmaster@{self.primary_domain}"]
        return None

    def _lookup(self, local: str, domain: str, depth: int, seen: set[str]) -> list[str] | None:
        address = f"{local}@{domain}"
        targets = self.snapshot.aliases.get(address)
        if targets is not None:
            return self._expand_targets(targets, depth, seen)
        if address in self.snapshot.mailboxes:
            return [address]
        return None

    def _expand_targets(self, targets: tuple[str, ...], depth: int, seen: set[str]) -> list[str]:
        out: list[str] = []
        for target in targets:
            t_local, t_domain = split(target)
            t_domain = normalise_domain(t_domain)
            if t_domain in self.snapshot.domains:
                t_local = t_local.lower()
                mailbox = f"{t_local}@{t_domain}"
                if mailbox in self.snapshot.mailboxes and mailbox not in self.snapshot.aliases:
                    out.append(mailbox)
                    continue
                sub = self._expand(t_local, t_domain, depth + 1, seen)
                if sub:
                    out.extend(sub)
            else:
                out.append(target)
        return out
