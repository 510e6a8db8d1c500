"""DKIM keys: the DNS key record, key generation, zone publishing and loaded-key caches.

What:
* ``parse_key_record(text) -> DKIMKeyRecord`` reads a ``selector._domainkey.domain`` TXT
  value (RFC 6376 §3.6.1): ``v`` (first, "DKIM1"), ``k`` (rsa | ed25519, RFC 8463 §4),
  ``p`` (empty = revoked), ``h`` (acceptable hashes), ``s`` (service types) and ``t``
  flags (``y`` testing, ``s`` strict i=/d=). Unknown tags and flags are ignored.
  ``KeyRecordError`` says why a record cannot be used; callers report it as permerror.
* ``public_key(record)`` -> the ``cryptography`` key, cached by its ``p=`` value. RSA
  ``p=`` is a SubjectPublicKeyInfo (RFC 6376 §3.6.1); a bare PKCS#1 RSAPublicKey, which
  some publishers use, is accepted too. Ed25519 ``p=`` is the raw 32-octet key (RFC 8463).
* ``generate_key``, ``dns_txt_record`` and ``zone_line`` for operators publishing keys;
  ``load_private_key`` (cached) for the signer.

How: keys are ``cryptography`` objects (OpenSSL), loaded once per distinct PEM or ``p=``
value through small LRU caches, because parsing a key costs more than one Ed25519
signature.

Invariants:
  * RSA keys under 1024 bits are never produced, and ``key_bits`` is always reported so
    the verifier can refuse them (RFC 8301 §3.2).
  * The record text is never trusted for sizes: the key is decoded and measured.
"""
from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from typing import Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .dkim_canon import TagListError, parse_tag_list, strip_fws

__all__ = [
    "DKIMKeyRecord", "KeyRecordError", "MIN_RSA_BITS", "PublicKey", "PrivateKey",
    "dns_txt_record", "generate_key", "load_private_key", "parse_key_record", "public_key",
    "zone_line",
]

MIN_RSA_BITS = 1024            # RFC 8301 §3.2: verifiers MUST NOT accept smaller
KEY_TYPES = ("rsa", "ed25519")
PublicKey = Union[rsa.RSAPublicKey, ed25519.Ed25519PublicKey]
PrivateKey = Union[rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]


class KeyRecordError(ValueError):
    """The key record cannot be used (syntax, version, type, revoked key, bad key data)."""


@dataclass(frozen=True, slots=True)
class DKIMKeyRecord:
    """A parsed key record. ``key_type``: "rsa" or "ed25519"; ``public_key_b64``: the
    ``p=`` value without FWS (empty = revoked, RFC 6376 §3.6.1); ``hashes``: allowed hash
    names (None: any); ``services``: from ``s=`` (default ("*",)); ``flags``: ``t=``."""

    key_type: str
    public_key_b64: str
    hashes: tuple[str, ...] | None = None
    services: tuple[str, ...] = ("*",)
    flags: tuple[str, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.public_key_b64 == ""

    @property
    def testing(self) -> bool:
        return "y" in self.flags

    @property
    def strict(self) -> bool:
        return "s" in self.flags

    def allows_email(self) -> bool:
        return "*" in self.services or "email" in self.services


def _colon_list(value: str) -> tuple[str, ...]:
    return tuple(p.strip(" \t\r\n").lower() for p in value.split(":") if p.strip(" \t\r\n"))


def parse_key_record(text: str) -> DKIMKeyRecord:
    """Parse one TXT value (its strings already joined, RFC 6376 §3.6.2.2)."""
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        raise KeyRecordError(f"bad key record: {exc}") from None
    if "v" in tags:
        # §3.6.1 v=: if present it MUST be the first tag and MUST be "DKIM1".
        if tags["v"] != "DKIM1":
            raise KeyRecordError(f"bad key record version {tags['v'][:20]!r}")
        if next(iter(tags)) != "v":
            raise KeyRecordError("v= is not the first tag of the key record")
    if "p" not in tags:
        raise KeyRecordError("key record has no p= tag")
    key_type = tags.get("k", "rsa").lower()
    if key_type not in KEY_TYPES:
        raise KeyRecordError(f"unknown key type k={key_type[:20]}")
    hashes = _colon_list(tags["h"]) if "h" in tags else None
    services = _colon_list(tags["s"]) if "s" in tags else ("*",)
    flags = _colon_list(tags.get("t", ""))
    return DKIMKeyRecord(key_type, strip_fws(tags["p"]), hashes, services, flags)


@functools.lru_cache(maxsize=1024)
def _decode_public_key(key_type: str, b64: str) -> tuple[PublicKey, int]:
    try:
        der = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRecordError("p= is not valid base64") from None
    if key_type == "ed25519":
        if len(der) != 32:
            raise KeyRecordError("ed25519 p= must be 32 octets (RFC 8463 §4.2)")
        return ed25519.Ed25519PublicKey.from_public_bytes(der), 256
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        try:      # PKCS#1 RSAPublicKey without the SubjectPublicKeyInfo wrapper
            pem = (b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der)
                   + b"-----END RSA PUBLIC KEY-----\n")
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            raise KeyRecordError("p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError("k=rsa but p= holds another key type")
    return key, key.key_size


def public_key(record: DKIMKeyRecord) -> tuple[PublicKey, int]:
    """(key, bits) of a record; KeyRecordError for revoked or undecodable keys."""
    if record.revoked:
        raise KeyRecordError("key revoked (empty p=)")
    return _decode_public_key(record.key_type, record.public_key_b64)


# ---------------------------------------------------------------- signer side


def _key_kind(algorithm: str) -> str:
    kind = algorithm.lower().split("-", 1)[0]
    if kind not in KEY_TYPES:
        raise ValueError(f"unknown key algorithm {algorithm!r}: use 'rsa' or 'ed25519'")
    return kind


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> bytes:
    """A new private key as PKCS#8 PEM. ``algorithm``: "rsa"/"rsa-sha256" or
    "ed25519"/"ed25519-sha256"; ``bits`` only for RSA, at least 1024 (RFC 8301 §3.2;
    2048 recommended)."""
    if _key_kind(algorithm) == "ed25519":
        key: PrivateKey = ed25519.Ed25519PrivateKey.generate()
    else:
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys under {MIN_RSA_BITS} bits are refused (RFC 8301)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@functools.lru_cache(maxsize=64)
def load_private_key(private_key_pem: bytes) -> PrivateKey:
    """The key of a PEM (PKCS#8 or PKCS#1), loaded once and cached."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError("DKIM keys are RSA or Ed25519")
    return key


def dns_txt_record(private_key_pem: bytes) -> str:
    """The TXT value publishing the public half: "v=DKIM1; k=rsa; p=<SPKI base64>" or
    "v=DKIM1; k=ed25519; p=<raw key base64>" (RFC 6376 §3.6.1, RFC 8463 §4.2)."""
    pub = load_private_key(private_key_pem).public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def zone_line(domain: str, selector: str, txt: str) -> str:
    """A BIND master-file line (RFC 1035 §5.1) for the key record: the owner
    ``selector._domainkey.domain.`` and ``txt`` split into quoted strings of at most 255
    octets each (RFC 1035 §3.3.14; they are joined again by verifiers, RFC 6376 §3.6.2.2)."""
    if not txt.isascii():
        raise ValueError("DKIM key records are ASCII")
    chunks = [txt[i:i + 255] for i in range(0, len(txt), 255)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"'
                      for c in chunks)
    owner = f"{selector}._domainkey.{domain.rstrip('.')}."
    return f"{owner} IN TXT {quoted}"
