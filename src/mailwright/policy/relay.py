"""Relay authorization: the first RCPT stage, kept apart from every other policy (GUIDE 8).

A recipient outside our domains is accepted only from an authenticated client or one inside
``[relay] trusted_networks``; everyone else gets 554 5.7.1 (RFC 5321 §3.6.1 / §7.1: a server
must not be an open relay). Address forms that can hide another destination never relay:
address literals, local parts holding ``%``, ``!`` or ``@`` (percent hack, bang paths, quoted
``@``), and anything that still carries a source route was already stripped by the core
(RFC 5321 §4.1.1.3) and is judged by its final address here.
"""
from __future__ import annotations

import ipaddress

from ..routing.directory import Kind, Resolution
from ..smtp import catalog
from ..smtp.events import Address
from .context import SessionInfo, TransactionInfo, parse_ip
from .verdict import CONTINUE, Action, Verdict

_ROUTING_CHARS = frozenset("%!@")


class RelayCheck:
    name = "relay"

    def __init__(self, trusted_networks: list[str] | tuple[str, ...] = ()) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]

    def is_trusted(self, client_ip: str) -> bool:
        ip = parse_ip(client_ip)
        if ip is None:
            return False
        return any(ip in n for n in self.networks)

    def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                   resolution: Resolution) -> Verdict:
        if resolution.kind is not Kind.REMOTE:
            return CONTINUE
        if rcpt.is_literal:
            return Verdict(Action.REJECT, self.name, catalog.RELAY_DENIED,
                           "address literal recipient never relays")
        if not (session.auth_user or session.trusted):
            return Verdict(Action.REJECT, self.name, catalog.RELAY_DENIED,
                           f"relay to {rcpt.domain} denied for unauthenticated {session.client_ip}")
        if _ROUTING_CHARS & set(rcpt.local):
            return Verdict(Action.REJECT, self.name, catalog.RELAY_DENIED,
                           "routing characters in a relayed local part")
        return Verdict(Action.CONTINUE, self.name, reason="relay permitted")


class RecipientCheck:
    """Local recipients must exist (550 5.1.1 at RCPT, never accept-then-bounce)."""
    name = "recipient"

    def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                   resolution: Resolution) -> Verdict:
        if resolution.kind is Kind.UNKNOWN:
            return Verdict(Action.REJECT, self.name, catalog.UNKNOWN_USER,
                           f"no mailbox or alias for {rcpt}")
        if resolution.kind is Kind.LOCAL and not resolution.targets:
            return Verdict(Action.REJECT, self.name, catalog.UNKNOWN_USER,
                           f"alias {rcpt} expands to nothing")
        return CONTINUE
