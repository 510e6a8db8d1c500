"""What we add to a message as it leaves: DKIM signatures and, for forwarded mail, an ARC set.

What: ``OutboundSigner(store, auth_settings, primary_domain, authserv_id)`` is called by the
SMTP delivery agent once per delivery of a message (``await signer(message, body)``)
and returns the header fields to put above the stored message (below our Received field).

How:
* DKIM (RFC 6376 §5, RFC 8463): the signing domain is the domain of the header From, so the
  signature aligns for DMARC (RFC 7489 §3.1.1). Every active key of that domain signs: an
  RSA-2048 and an Ed25519 signature when both exist (RFC 8463 §6 recommends both while
  verifiers catch up). Signing is in-process with the ``cryptography`` package
  (mailauth/dkim.py). Mail whose From domain has no key leaves unsigned; when no active
  key exists at all (and no ARC seal is due) the message is not even read.
* ARC (RFC 8617 §5.1): a message that arrived from outside (no authenticated user) and is
  being forwarded to an external address because an alias expanded to it (the recipient
  carries an ORCPT that differs from it) gets one ARC set sealed by the primary domain's
  active RSA key, carrying the Authentication-Results we recorded at intake and the chain
  validation it reported (``arc=``).
* Keys are read from the store and cached for ``KEY_CACHE_SECONDS`` (a rotation takes effect
  within that time, in every process).

Invariants: signing never blocks delivery: any error is logged and the message leaves
without the failing signature (a missing signature is safer than no mail). Large bodies are
read and hashed in a worker thread, never on the event loop.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any

from ..config.mailauth import AuthSettings
from ..mailauth.authresults import parse_authserv_id
from ..message.headers import field_values
from ..mailauth.dkim import SigningKey, sign_message
from ..queue.body import MessageBody
from ..queue.model import QueuedMessage

log = logging.getLogger("mailwright.delivery.signing")

KEY_CACHE_SECONDS = 30.0
INLINE_MAX = 256 * 1024          # bodies up to this size are signed on the loop thread


def _header_section(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end + 2]


def from_domain(section: bytes) -> str | None:
    """The one domain of the header From, or None (several From fields or domains)."""
    values = field_values(section, "from")
    if len(values) != 1:
        return None
    domains = {addr.rpartition("@")[2].lower().rstrip(".")
               for _, addr in email.utils.getaddresses(values) if "@" in addr}
    return domains.pop() if len(domains) == 1 else None


class OutboundSigner:
    def __init__(self, store: Any, settings: AuthSettings, *, primary_domain: str,
                 authserv_id: str, clock=time.time) -> None:
        self.store = store
        self.settings = settings
        self.primary_domain = primary_domain.lower()
        self.authserv_id = authserv_id
        self.clock = clock
        self._keys: dict[str, list[SigningKey]] = {}
        self._loaded_at = float("-inf")

    async def _all_keys(self) -> dict[str, list[SigningKey]]:
        """Active keys by domain, from the store at most every ``KEY_CACHE_SECONDS``."""
        now = time.monotonic()
        if now - self._loaded_at > KEY_CACHE_SECONDS:
            keys: dict[str, list[SigningKey]] = {}
            for k in await self.store.list_dkim_keys():
                if k.active:
                    keys.setdefault(k.domain, []).append(SigningKey(
                        k.domain, k.selector, k.algorithm, k.private_key.encode("ascii")))
            self._keys, self._loaded_at = keys, now
        return self._keys

    async def __call__(self, message: QueuedMessage, source: MessageBody) -> bytes:
        try:
            return await self._prefix(message, source)
        except Exception:  # noqa: BLE001 - never hold mail back for a signature
            log.exception("%s: signing failed; sending unsigned", message.queue_id)
            return b""

    async def _prefix(self, message: QueuedMessage, source: MessageBody) -> bytes:
        s = self.settings
        seal = s.arc_seal and self._forwarded(message)
        if not (s.dkim_sign or seal):
            return b""
        keys = await self._all_keys()
        seal_key = None
        if seal:
            seal_key = next((k for k in keys.get(self.primary_domain, ())
                             if k.algorithm == "rsa-sha256"), None)
        if seal_key is None and not (s.dkim_sign and keys):
            return b""      # no key could sign or seal: the message is not even read
        size = message.envelope.size
        body = source.read() if size <= INLINE_MAX else await source.read_async()
        section = _header_section(body)
        out = b""
        if seal_key is not None:
            out += await self._run(size, self._seal, body, section, seal_key)
        if s.dkim_sign and keys:
            domain = from_domain(section)
            signing = keys.get(domain, []) if domain else []
            if signing:
                out += await self._run(size, sign_message, out + body, signing,
                                       now=self.clock())
        return out

    @staticmethod
    async def _run(size: int, fn, *args, **kwargs) -> bytes:
        if size <= INLINE_MAX:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    @staticmethod
    def _forwarded(message: QueuedMessage) -> bool:
        """Arrived from outside and goes to a recipient an alias expanded to."""
        env = message.envelope
        if env.auth_user or not env.client_ip:
            return False
        for r in message.recipients:
            orcpt = (r.orcpt or "").partition(";")[2].strip().lower()
            if orcpt and orcpt != r.address.lower():
                return True
        return False

    def _seal(self, body: bytes, section: bytes, key: SigningKey) -> bytes:
        from ..mailauth.arc import seal_message
        ours = ""
        for value in field_values(section, "authentication-results"):
            try:
                if parse_authserv_id(value).lower() == self.authserv_id.lower():
                    ours = value
                    break
            except ValueError:
                continue
        results = ours.split(";", 1)[1].strip() if ";" in ours else "none"
        cv = "none"
        for part in results.split(";"):
            part = part.strip()
            if part.lower().startswith("arc="):
                cv = part[4:].split()[0].lower() if part[4:].split() else "none"
        if cv not in ("none", "pass", "fail"):
            cv = "fail"
            results = "; ".join(p.strip() for p in results.split(";")
                                if not p.strip().lower().startswith("arc="))
            results = f"arc=fail; {results}" if results else "arc=fail"
        return seal_message(body, domain=key.domain, selector=key.selector,
                            private_key_pem=key.private_key_pem,
                            authserv_id=self.authserv_id, auth_results=results,
                            chain_validation=cv, now=self.clock())

