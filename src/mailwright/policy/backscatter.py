"""Backscatter defence with BATV tags: tag our envelope senders, accept bounces only to them.

What (issue 7, draft-levine-smtp-batv-01 "prvs"): ``Batv`` holds the keys, the domains
and the tag lifetime of one process and gives the three hooks the rest of the server
calls:

* ``tag_sender(sender) -> str`` -- the SMTP agent's sender rewriter (delivery/smtp.py):
  a sender in a BATV domain leaves as ``prvs=KDDDSSSSSS=local@domain``.  Only the MAIL
  FROM of the outbound transaction changes: the queue, the header and our own DSNs keep
  the plain address.
* ``rewrite_recipient(address, directory) -> (address, note)`` -- the intake's recipient
  rewriter (net/session.py, before ``Directory.resolve``): a prvs address of a BATV domain
  is resolved as the plain one; ``note`` (``{"batv": status, "address": plain}``) goes to
  the message trace.
* ``BatvCheck`` -- the RCPT check, run before the recipient check (``early``):

  ===============  ===========================  =========================================
  sender           recipient (BATV domain)      verdict
  ===============  ===========================  =========================================
  ``<>``           valid tag                    continue (the bounce is delivered)
  ``<>``           expired / forged tag         ``550 5.7.1``
  ``<>``           no tag, mx client            ``550 5.7.1`` (we never sent from there)
  ``<>``           ``postmaster``               continue (RFC 5321 §4.5.1)
  other            valid or expired tag         continue (replies; list subscriptions)
  other            forged tag / unknown key     ``550 5.7.1``
  other            no tag                       continue
  ===============  ===========================  =========================================

  The untagged-bounce rule applies to mx clients only (``dnsbl.screened``: not trusted,
  not authenticated): local programs may send bounces to local users.

How: ``build_batv(settings)`` returns None unless ``[antiabuse] enabled`` and ``batv``;
``batv_domains`` empty means every local domain.  The keys come from
``data_dir/batv.keys`` (policy/batv_keys.py), one ``KeyRing`` per file and process.

Invariants: pure apart from the key file and the injected clock; a recipient outside a
BATV domain, or a remote one, is never touched.
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, Callable, Iterable

from ..routing.directory import Directory, Kind, Resolution, normalise_domain
from ..smtp.events import Address
from ..smtp.replies import Reply
from . import batv
from .batv_keys import KEY_FILE, KeyRing
from .context import SessionInfo, TransactionInfo
from .dnsbl import screened
from .verdict import CONTINUE, Action, Verdict

__all__ = ["Batv", "BatvCheck", "build_batv", "BACKSCATTER", "BAD_TAG"]

BACKSCATTER = Reply(550, "5.7.1", "Bounce to an address we never used as a sender")
BAD_TAG = Reply(550, "5.7.1", "Invalid or expired bounce address tag")


class Batv:
    def __init__(self, keys: KeyRing, *, domains: Iterable[str] = (), days: int = 7,
                 is_local: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keyring = keys
        self.domains = frozenset(normalise_domain(d) for d in domains)
        self.days = days
        self.is_local = is_local
        self.clock = clock

    def covers(self, domain: str, local: bool) -> bool:
        """Is BATV on for ``domain`` (``local``: the domain is one of ours)?"""
        return local and (not self.domains or normalise_domain(domain) in self.domains)

    def status(self, tag: batv.Tagged) -> batv.Status:
        return batv.verify(tag, self.keyring.keys(tag.key), self.clock(), self.days)

    # -- outbound

    def tag_sender(self, sender: str) -> str:
        if not sender or not batv.can_tag(sender):
            return sender
        domain = normalise_domain(sender.rpartition("@")[2])
        if not self.covers(domain, self.is_local is None or self.is_local(domain)):
            return sender
        number, secret = self.keyring.current()
        return batv.sign(sender, number, secret, self.clock(), self.days)

    # -- inbound

    def rewrite_recipient(self, address: Address, directory: Directory
                          ) -> tuple[Address, dict[str, Any] | None]:
        if address.quoted or not self.covers(address.domain,
                                             directory.is_local_domain(address.domain)):
            return address, None
        tag = batv.parse(f"{address.local}@{address.domain}")
        if tag is None:
            return address, None
        local = tag.address.rpartition("@")[0]
        plain = Address(local, address.domain, raw=f"{local}@{address.domain}",
                        is_literal=address.is_literal, utf8=address.utf8)
        return plain, {"batv": self.status(tag).value, "address": str(plain)}


class BatvCheck:
    """RCPT check; see the table in the module docstring."""

    name = "batv"
    early = True            # before the recipient check: a forged tag is 5.7.1, not 5.1.1

    def __init__(self, batv_state: Batv) -> None:
        self.batv = batv_state

    def check_rcpt(self, session: SessionInfo, txn: TransactionInfo, rcpt: Address,
                   resolution: Resolution) -> Verdict:
        if rcpt.quoted or not self.batv.covers(rcpt.domain, resolution.kind is not Kind.REMOTE):
            return CONTINUE
        bounce = txn.sender == ""
        tag = batv.parse(f"{rcpt.local}@{rcpt.domain}")
        if tag is not None:
            status = self.batv.status(tag)
            if status is batv.Status.VALID or (status is batv.Status.EXPIRED and not bounce):
                return Verdict(Action.CONTINUE, self.name, reason=f"BATV tag {status.value}")
            return Verdict(Action.REJECT, self.name, BAD_TAG,
                           f"{'bounce' if bounce else 'mail'} to a BATV address with "
                           f"{status.value} tag")
        if bounce and screened(session) and rcpt.local.lower() != "postmaster":
            return Verdict(Action.REJECT, self.name, BACKSCATTER,
                           "bounce to an untagged address of a BATV domain (backscatter)")
        return CONTINUE


@lru_cache(maxsize=None)
def _keyring(path: str) -> KeyRing:
    return KeyRing(path)


def build_batv(settings: Any, is_local: Callable[[str], bool] | None = None) -> Batv | None:
    """The process's ``Batv`` from ``[antiabuse]``, or None when it is off."""
    a = settings.antiabuse
    if not (a.enabled and a.batv):
        return None
    return Batv(_keyring(str(settings.resolve(KEY_FILE))), domains=a.batv_domains,
                days=a.batv_days, is_local=is_local)
