"""Sender authorization for submission: which addresses an authenticated user may send as.

What: ``SenderAuthorization.check_sender`` (MAIL FROM) and ``check_header_from`` (the
``From:`` field at end of data) return a ``Verdict``.  RFC 6409 §6.1 allows an MSA to
refuse a submission whose sender is not the authenticated user; this is Postfix's
``reject_sender_login_mismatch`` in spirit.  Under policy ``strict`` a user owns:

1. their own mailbox address (``login``), and its sub-addresses ``login-local+tag@domain``
   (RFC 5233);
2. every alias (exact, not a catch-all) whose expansion delivers to their mailbox, and its
   sub-addresses;
3. every address granted with ``mailwright user grant LOGIN ADDRESS`` (store table
   ``send_as``); a grant ``*@domain`` covers the whole domain.

The null reverse-path ``<>`` is allowed (RFC 3798 §3.2 wants it for MDNs).  Policy
``any`` accepts every sender.  Which policy applies is decided per *login's domain* by
``SubmissionSettings.sender_policy_for``.  Refusals: ``553 5.7.1`` at MAIL and ``550
5.7.1`` at end of data (RFC 5321 §4.3.2 lists 550, not 553, after DATA).

How: pure functions of the directory snapshot (routing/directory.py) and the user's grants
(loaded once at login); no store access, no I/O.

Invariants: comparisons are case-insensitive; a local part with routing characters never
matches anything (directory resolution refuses them); the reason strings are for logs.
"""
from __future__ import annotations

from typing import Iterable

from ..config.submission import SubmissionSettings
from ..routing.directory import Directory, Kind, normalise_domain, split
from ..smtp import catalog
from .verdict import CONTINUE, Action, Verdict

__all__ = ["SenderAuthorization", "owns_address"]


def _norm(address: str) -> str:
    local, domain = split(address.strip())
    return f"{local.lower()}@{normalise_domain(domain)}" if domain else local.lower()


def owns_address(login: str, address: str, directory: Directory,
                 grants: Iterable[str] = ()) -> bool:
    """True if ``login`` may use ``address`` as a sender under policy 'strict'."""
    login = _norm(login)
    addr = _norm(address)
    local, domain = split(addr)
    if not domain or not local or set(local) & set("%!@"):
        return False
    base = local.split("+", 1)[0]
    candidates = [addr] if base == local or not base else [addr, f"{base}@{domain}"]
    for candidate in candidates:
        if candidate == login:
            return True
        if candidate in directory.snapshot.aliases:
            res = directory.resolve_address(candidate)
            if res.kind is Kind.LOCAL and login in res.targets:
                return True
    for grant in grants:
        g = _norm(grant)
        if g == addr or (g.startswith("*@") and g[2:] == domain):
            return True
    return False


class SenderAuthorization:
    name = "sender-auth"

    def __init__(self, settings: SubmissionSettings | None = None) -> None:
        self.settings = settings or SubmissionSettings()

    def _allowed(self, login: str, address: str, directory: Directory,
                 grants: Iterable[str]) -> bool:
        if self.settings.sender_policy_for(login) == "any":
            return True
        return owns_address(login, address, directory, grants)

    def check_sender(self, login: str, sender: str, directory: Directory,
                     grants: Iterable[str] = ()) -> Verdict:
        """MAIL FROM on a submission listener, after authentication."""
        if not sender:                      # <>: MDNs, vacation replies
            return CONTINUE
        if self._allowed(login, sender, directory, grants):
            return CONTINUE
        return Verdict(Action.REJECT, self.name, catalog.SENDER_NOT_OWNED,
                       f"{login} may not send as <{sender}>")

    def check_header_from(self, login: str, addresses: list[str], directory: Directory,
                          grants: Iterable[str] = ()) -> Verdict:
        """Every address of every ``From:`` field must be allowed (none is fine)."""
        for addr in addresses:
            if not self._allowed(login, addr, directory, grants):
                return Verdict(Action.REJECT, self.name, catalog.HEADER_FROM_NOT_OWNED,
                               f"{login} may not use From: {addr[:200]!r}")
        return CONTINUE
