"""DKIM: verify and sign messages (RFC 6376, Ed25519 per RFC 8463, crypto update RFC 8301).

What:
* ``verify_message(resolver, message)`` -> one ``DKIMSignatureResult`` per DKIM-Signature
  field (top-down, at most ``max_signatures``; the rest are not checked and not reported;
  an unsigned message gives ``[]``). Keys are fetched concurrently from
  ``selector._domainkey.domain`` TXT; the evaluation is the pure ``verify_signature``.
* ``sign_message(message, keys)`` -> the DKIM-Signature field(s) to prepend, one per
  ``SigningKey`` (RSA-2048 and Ed25519 side by side is the intended setup).

Results (RFC 8601 §2.7.1 names), decided here so policy code does not have to:
  ==========  ================================================================
  pass        body hash and signature verify with a usable key
  fail        body hash or signature mismatch; signature expired (x= before
              ``now``); t= more than ``CLOCK_SKEW`` seconds in the future; l=
              larger than the canonical body
  neutral     the signature field is malformed (tag list, missing or bad required
              tags, v= not 1, i= outside d=, From not signed, x= not after t=)
  permerror   unsupported a=/c=/q=; no key record; unusable key record (syntax,
              version, k= not matching a=, h= excluding the hash, s= without email,
              t=s with i= in a subdomain, undecodable key); key revoked (empty p=,
              RFC 6376 §3.6.1 / §6.1.2 step 6)
  policy      refused by RFC 8301: rsa-sha1 (§3.1) or an RSA key under 1024 bits (§3.2)
  temperror   the key lookup timed out or the server failed (never a pass)
  ==========  ================================================================

``l=`` policy: a signature with ``l=`` is verified over the first ``l`` canonical body
octets, as RFC 6376 §3.5 allows, but the result says ``body_length_limited=True``, and when
the canonical body is longer than ``l`` it carries ``unsigned_body_octets`` (> 0) and a
``note``: the content after those octets (an appended footer, or an attacker's text) is not
covered, and policy may refuse to treat such a pass as authenticating the message.
A key record with ``t=y`` (testing) is reported with ``testing=True`` (§3.6.1: verifiers
must not treat such mail differently from unsigned mail; policy decides).

How: the message is split once into header fields and body (``dkim_canon``); each distinct
(body canonicalisation, hash, l=) is hashed once in a single pass over the body, in a worker
thread for bodies over ``THREAD_THRESHOLD`` octets so the event loop keeps serving. The
hashed header data is the selected fields (bottom-up instance choice, §5.4.2) then the
DKIM-Signature field itself with the value of b= deleted and no final CRLF (§3.7). RSA
uses RSASSA-PKCS1-v1_5 with SHA-256 (§3.3.1); Ed25519 signs the SHA-256 digest of that data
(PureEdDSA over the hash, RFC 8463 §3). All cryptography is ``cryptography`` (OpenSSL).

Signing choices: c=relaxed/relaxed by default; h= lists every present field named in
``DEFAULT_SIGNED_HEADERS`` (RFC 6376 §5.4.1's list plus Message-ID, Sender, MIME and
Content fields), in header order, and "from" once more than present, so a From added later
breaks the signature (oversigning, §8.15); t= is always set; private keys are loaded once
and cached.

Invariants:
  * A DNS timeout or server failure is temperror, never pass or permerror.
  * rsa-sha1 never passes; RSA keys under 1024 bits never pass (RFC 8301).
  * ``verify_signature`` is pure: same inputs, same result; time is the ``now`` given.
  * Work is linear in message size; bodies are never copied per signature.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from ..net.dns import DNSPermanentError, DNSTemporaryError
from .dkim_canon import (
    CANONICALIZATIONS, CRLF, BodyDigest, BodyHasher, HeaderField, TagListError,
    canonicalize_header, parse_tag_list, select_headers, split_message, strip_fws)
from .dkim_keys import (
    MIN_RSA_BITS, KeyRecordError, dns_txt_record, generate_key, load_private_key,
    parse_key_record, public_key, zone_line)

__all__ = [
    "CLOCK_SKEW", "DEFAULT_SIGNED_HEADERS", "DKIMSignature", "DKIMSignatureResult",
    "SignatureError", "SigningKey", "dns_txt_record", "generate_key", "parse_signature",
    "sign_message", "verify_message", "verify_signature", "zone_line",
]

log = logging.getLogger(__name__)

#: a= values we verify and sign: (key type, hash name)
ALGORITHMS = {"rsa-sha256": ("rsa", "sha256"), "ed25519-sha256": ("ed25519", "sha256")}
REFUSED_ALGORITHMS = {"rsa-sha1": "rsa-sha1 is not accepted (RFC 8301 §3.1)"}
CLOCK_SKEW = 300               # seconds a t= may lie in the future
THREAD_THRESHOLD = 256 * 1024  # body octets above which hashing leaves the event loop
MAX_KEY_RECORDS = 3            # TXT records tried per key name (RFC 6376 §6.1.2 step 3)
FOLD_WIDTH = 78

#: RFC 6376 §5.4.1 plus the identifying and MIME fields most signers add.
DEFAULT_SIGNED_HEADERS = (
    "from", "reply-to", "subject", "date", "to", "cc", "resent-date", "resent-from",
    "resent-to", "resent-cc", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
    "message-id", "sender", "mime-version", "content-type", "content-transfer-encoding",
)

_DOMAIN = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                     r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_DIGITS = re.compile(r"[0-9]{1,76}\Z")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")
_B_VALUE = re.compile(rb"((?:^|;)[ \t\r\n]*b[ \t\r\n]*=)[^;]*")


# ---------------------------------------------------------------- results and signatures


@dataclass
class DKIMSignatureResult:
    """The outcome for one DKIM-Signature (see the module docstring for the result set).

    ``header_b``: the first 8 characters of b= for Authentication-Results ``header.b``
    (RFC 6008); ``key_bits``: size of the key used (0 when none was); ``reason``: short
    text for logs and A-R comments.
    """

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    header_b: str = ""
    identity: str = ""
    reason: str = ""
    body_length_limited: bool = False
    key_bits: int = 0
    unsigned_body_octets: int = 0
    testing: bool = False
    note: str = ""


class SignatureError(ValueError):
    """A DKIM-Signature that cannot be evaluated; ``result`` is "neutral" (malformed),
    "permerror" (unsupported) or "policy" (refused algorithm)."""

    def __init__(self, result: str, reason: str, tags: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason
        self.tags = tags or {}

    def to_result(self) -> DKIMSignatureResult:
        t = self.tags
        return DKIMSignatureResult(
            self.result, domain=t.get("d", "").lower(), selector=t.get("s", ""),
            algorithm=t.get("a", "").lower(), header_b=strip_fws(t.get("b", ""))[:8],
            identity=t.get("i", ""), reason=self.reason, body_length_limited="l" in t)


@dataclass(frozen=True)
class DKIMSignature:
    """A parsed, syntactically valid DKIM-Signature field (RFC 6376 §3.5)."""

    field: HeaderField
    tags: dict[str, str]
    algorithm: str
    key_type: str
    hash_name: str
    domain: str
    selector: str
    identity: str
    header_canon: str
    body_canon: str
    signed_headers: tuple[str, ...]
    body_hash: bytes
    signature: bytes
    body_length: int | None = None
    timestamp: int | None = None
    expiration: int | None = None

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def header_b(self) -> str:
        return strip_fws(self.tags["b"])[:8]

    def result(self, result: str, reason: str = "", **extra) -> DKIMSignatureResult:
        return DKIMSignatureResult(
            result, domain=self.domain, selector=self.selector, algorithm=self.algorithm,
            header_b=self.header_b, identity=self.identity, reason=reason,
            body_length_limited=self.body_length is not None, **extra)


def _b64(value: str, tag: str, tags: dict[str, str]) -> bytes:
    try:
        data = base64.b64decode(strip_fws(value), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("neutral", f"{tag}= is not base64", tags) from None
    if not data:
        raise SignatureError("neutral", f"{tag}= is empty", tags)
    return data


def parse_signature(sig_field: HeaderField) -> DKIMSignature:
    """Validate a DKIM-Signature field (RFC 6376 §3.5, §6.1.1); SignatureError if not."""
    text = sig_field.value.decode("utf-8", "replace")
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        raise SignatureError("neutral", f"bad format: {exc}") from None
    for req in ("v", "a", "b", "bh", "d", "h", "s"):
        if req not in tags:
            raise SignatureError("neutral", f"bad format: no {req}= tag", tags)
    if tags["v"] != "1":
        raise SignatureError("neutral", f"bad format: version v={tags['v'][:10]}", tags)
    algorithm = tags["a"].lower()
    if algorithm in REFUSED_ALGORITHMS:
        raise SignatureError("policy", REFUSED_ALGORITHMS[algorithm], tags)
    if algorithm not in ALGORITHMS:
        raise SignatureError("permerror", f"unsupported algorithm a={algorithm[:30]}", tags)
    key_type, hash_name = ALGORITHMS[algorithm]
    canon = tags.get("c", "simple/simple").lower()
    header_canon, _, body_canon = canon.partition("/")
    body_canon = body_canon or "simple"      # §3.5 c=: "relaxed" alone is relaxed/simple
    if header_canon not in CANONICALIZATIONS or body_canon not in CANONICALIZATIONS:
        raise SignatureError("permerror", f"unsupported canonicalization c={canon[:30]}", tags)
    domain = tags["d"].lower()
    if not _DOMAIN.match(domain):
        raise SignatureError("neutral", "bad format: d= is not a domain name", tags)
    selector = tags["s"]
    if not _DOMAIN.match(selector):
        raise SignatureError("neutral", "bad format: s= is not a selector", tags)
    signed = tuple(strip_fws(n).lower() for n in tags["h"].split(":"))
    if not all(_FIELD_NAME.match(n) for n in signed):
        raise SignatureError("neutral", "bad format: h= has an empty or bad field name", tags)
    if "from" not in signed:
        # §5.4: From MUST be signed; §6.1.1: otherwise PERMFAIL.
        raise SignatureError("neutral", "bad format: From is not signed", tags)
    identity = tags.get("i", "@" + domain)
    local, at, idomain = identity.rpartition("@")
    idomain = idomain.lower()
    if not at or not (idomain == domain or idomain.endswith("." + domain)):
        # §3.5 i=: the domain of i= must be d= or a subdomain of it.
        raise SignatureError("neutral", "bad format: i= is not within d=", tags)
    if "q" in tags and "dns/txt" not in [strip_fws(q).lower() for q in tags["q"].split(":")]:
        raise SignatureError("permerror", "unsupported query method q=", tags)
    ints: dict[str, int | None] = {}
    for name in ("l", "t", "x"):
        value = tags.get(name)
        if value is not None and not _DIGITS.match(value):
            raise SignatureError("neutral", f"bad format: {name}= is not a number", tags)
        ints[name] = int(value) if value is not None else None
    if ints["t"] is not None and ints["x"] is not None and ints["x"] <= ints["t"]:
        # §3.5 x=: MUST be greater than t=.
        raise SignatureError("neutral", "bad format: x= is not after t=", tags)
    return DKIMSignature(
        field=sig_field, tags=tags, algorithm=algorithm, key_type=key_type,
        hash_name=hash_name, domain=domain, selector=selector, identity=identity,
        header_canon=header_canon, body_canon=body_canon, signed_headers=signed,
        body_hash=_b64(tags["bh"], "bh", tags), signature=_b64(tags["b"], "b", tags),
        body_length=ints["l"], timestamp=ints["t"], expiration=ints["x"])


# ---------------------------------------------------------------- verification (pure)


def signed_header_data(headers: Sequence[HeaderField], sig_field: HeaderField,
                       signed_headers: Iterable[str], canon: str) -> bytes:
    """The octets the header hash covers (RFC 6376 §3.7): the selected fields in h= order,
    then ``sig_field`` with the b= value (and its surrounding FWS) deleted, canonicalised,
    without its final CRLF."""
    parts = [canonicalize_header(f, canon) for f in select_headers(headers, signed_headers)]
    name, colon, value = sig_field.raw[:-2].partition(b":")
    stripped = HeaderField(sig_field.name, name + colon + _B_VALUE.sub(rb"\1", value, 1) + CRLF)
    parts.append(canonicalize_header(stripped, canon)[:-2])
    return b"".join(parts)


def _precheck(sig: DKIMSignature, now: float) -> DKIMSignatureResult | None:
    """Time checks that need no key (RFC 6376 §3.5 t=, x=)."""
    if sig.expiration is not None and now > sig.expiration:
        return sig.result("fail", "signature expired (x=)")
    if sig.timestamp is not None and sig.timestamp > now + CLOCK_SKEW:
        return sig.result("fail", "signature timestamp (t=) in the future")
    return None


def _evaluate(headers: Sequence[HeaderField], sig: DKIMSignature, key_record: str | None,
              now: float, body: BodyDigest) -> DKIMSignatureResult:
    early = _precheck(sig, now)
    if early is not None:
        return early
    if key_record is None:
        return sig.result("permerror", "no key for signature")
    try:
        record = parse_key_record(key_record)
    except KeyRecordError as exc:
        return sig.result("permerror", str(exc))
    if record.revoked:
        return sig.result("permerror", "key revoked")
    if record.key_type != sig.key_type:
        return sig.result("permerror", f"key type k={record.key_type} does not match a=")
    if record.hashes is not None and sig.hash_name not in record.hashes:
        return sig.result("permerror", "hash algorithm not allowed by the key (h=)")
    if not record.allows_email():
        return sig.result("permerror", "key is not for email (s=)")
    if record.strict and sig.identity.rpartition("@")[2].lower() != sig.domain:
        return sig.result("permerror", "key t=s forbids i= in a subdomain of d=")
    try:
        key, bits = public_key(record)
    except KeyRecordError as exc:
        return sig.result("permerror", str(exc))
    extra = {"key_bits": bits, "testing": record.testing}
    if isinstance(key, rsa.RSAPublicKey) and bits < MIN_RSA_BITS:
        return sig.result("policy", f"RSA key of {bits} bits refused (RFC 8301 §3.2)", **extra)
    if sig.body_length is not None and sig.body_length > body.length:
        return sig.result("fail", "l= is longer than the body", **extra)
    if body.digest != sig.body_hash:
        return sig.result("fail", "body hash mismatch", **extra)
    data = signed_header_data(headers, sig.field, sig.signed_headers, sig.header_canon)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig.signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(sig.signature, hashlib.sha256(data).digest())
    except InvalidSignature:
        return sig.result("fail", "signature did not verify", **extra)
    reason, note, unsigned = "", "", 0
    if record.testing:
        reason = "testing mode (t=y)"
    if sig.body_length is not None and body.length > sig.body_length:
        unsigned = body.length - sig.body_length
        note = f"l= leaves {unsigned} body octets unsigned"
    return sig.result("pass", reason, note=note, unsigned_body_octets=unsigned, **extra)


def verify_signature(headers: Sequence[HeaderField], body: bytes | memoryview,
                     sig: DKIMSignature | HeaderField, key_record: str | None,
                     now: float | None = None) -> DKIMSignatureResult:
    """Evaluate one signature against the message parts and the key record text (pure).

    ``headers``/``body`` as ``split_message`` gives them; ``sig`` parsed or the raw field;
    ``key_record`` the joined TXT value, or None when there is none.
    """
    now = time.time() if now is None else now
    if isinstance(sig, HeaderField):
        try:
            sig = parse_signature(sig)
        except SignatureError as exc:
            return exc.to_result()
    digest = _digests(body, [_body_key(sig)])[_body_key(sig)]
    return _evaluate(headers, sig, key_record, now, digest)


BodyKey = tuple[str, str, "int | None"]


def _body_key(sig: DKIMSignature) -> BodyKey:
    return (sig.body_canon, sig.hash_name, sig.body_length)


def _digests(body: bytes | memoryview, keys: Iterable[BodyKey],
             chunk_size: int = 1 << 20) -> dict[BodyKey, BodyDigest]:
    """Every needed body digest in one pass over ``body``."""
    hashers = {k: BodyHasher(k[0], k[1], k[2]) for k in keys}
    view = memoryview(body)
    for start in range(0, len(view), chunk_size):
        chunk = view[start:start + chunk_size]
        for hasher in hashers.values():
            hasher.update(chunk)
    return {k: h.finish() for k, h in hashers.items()}


# ---------------------------------------------------------------- verification (with DNS)


@dataclass(frozen=True)
class _KeyLookup:
    records: list[str] = field(default_factory=list)
    error: str = ""            # "temperror" | "permerror" | ""
    reason: str = ""


async def _fetch_key(resolver, name: str) -> _KeyLookup:
    try:
        return _KeyLookup(await resolver.txt(name))
    except DNSTemporaryError as exc:
        return _KeyLookup(error="temperror", reason=f"key lookup failed: {exc}")
    except DNSPermanentError as exc:
        return _KeyLookup(error="permerror", reason=f"bad key name: {exc}")


async def verify_message(resolver, message: bytes, *, now: float | None = None,
                         max_signatures: int = 5) -> list[DKIMSignatureResult]:
    """Verify every DKIM-Signature of ``message`` (up to ``max_signatures``, top-down).

    ``resolver``: a ``mailwright.net.dns.Resolver`` (or anything with ``async txt(name)``).
    Returns one result per checked signature, in header order; [] when unsigned.
    """
    now = time.time() if now is None else now
    end = message.find(b"\r\n\r\n")
    if b"dkim-signature" not in (message if end < 0 else message[:end]).lower():
        return []                               # unsigned: no parse needed
    headers, body_start = split_message(message)
    fields = [f for f in headers if f.lname == "dkim-signature"][:max(0, max_signatures)]
    if not fields:
        return []
    slots: list[DKIMSignature | DKIMSignatureResult] = []
    for f in fields:
        try:
            sig = parse_signature(f)
        except SignatureError as exc:
            slots.append(exc.to_result())
            continue
        slots.append(_precheck(sig, now) or sig)
    sigs = [s for s in slots if isinstance(s, DKIMSignature)]
    names = list(dict.fromkeys(s.key_name for s in sigs))
    lookups = dict(zip(names, await asyncio.gather(*(_fetch_key(resolver, n) for n in names))))
    needed = list(dict.fromkeys(_body_key(s) for s in sigs
                                if lookups[s.key_name].records))
    body = memoryview(message)[body_start:]
    digests: dict[BodyKey, BodyDigest] = {}
    if needed:
        if len(body) > THREAD_THRESHOLD:
            digests = await asyncio.to_thread(_digests, body, needed)
        else:
            digests = _digests(body, needed)
    results: list[DKIMSignatureResult] = []
    for slot in slots:
        if isinstance(slot, DKIMSignatureResult):
            results.append(slot)
            continue
        lookup = lookups[slot.key_name]
        if lookup.error:
            results.append(slot.result(lookup.error, lookup.reason))
            continue
        if not lookup.records:
            results.append(slot.result("permerror", "no key for signature"))
            continue
        candidates = [_evaluate(headers, slot, text, now, digests[_body_key(slot)])
                      for text in lookup.records[:MAX_KEY_RECORDS]]
        # several records at the name (§6.1.2 step 3): a pass wins, then a verdict on
        # the signature itself, then the first record's error
        rank = {"pass": 0, "fail": 1, "policy": 1}
        results.append(min(candidates, key=lambda r: rank.get(r.result, 2)))
    for r in results:
        log.debug("dkim d=%s s=%s a=%s: %s %s", r.domain, r.selector, r.algorithm,
                  r.result, r.reason)
    return results


# ---------------------------------------------------------------- signing


@dataclass(frozen=True)
class SigningKey:
    """A domain's signing key: ``algorithm`` "rsa-sha256" or "ed25519-sha256" and the
    private key as PEM (PKCS#8 or PKCS#1). The loaded key object is cached process-wide."""

    domain: str
    selector: str
    algorithm: str
    private_key_pem: bytes

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"signing algorithm must be one of {sorted(ALGORITHMS)}")
        if not _DOMAIN.match(self.domain) or not _DOMAIN.match(self.selector):
            raise ValueError("bad signing domain or selector")

    def load(self) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        key = load_private_key(self.private_key_pem)
        want = ALGORITHMS[self.algorithm][0]
        if want == "rsa":
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{self.algorithm} needs an RSA key")
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA keys under {MIN_RSA_BITS} bits are refused (RFC 8301)")
        elif not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{self.algorithm} needs an Ed25519 key")
        return key


def _fold_tags(tags: list[tuple[str, str]]) -> str:
    """``DKIM-Signature: t1=v1; t2=v2; ...; b=`` folded at FOLD_WIDTH with CRLF TAB, only
    at places where FWS is allowed: after ";" and, inside h=, after ":"."""
    tokens: list[tuple[str, str]] = []          # (glue before, text)
    for i, (name, value) in enumerate(tags):
        end = ";" if i < len(tags) - 1 else ""
        if name == "h":
            parts = value.split(":")
            pieces = [p + ":" for p in parts[:-1]] + [parts[-1] + end]
            pieces[0] = "h=" + pieces[0]
            tokens.append((" ", pieces[0]))
            tokens.extend(("", p) for p in pieces[1:])
        else:
            tokens.append((" ", f"{name}={value}{end}"))
    out = "DKIM-Signature:"
    line = len(out)
    for glue, text in tokens:
        if line + len(glue) + len(text) > FOLD_WIDTH:
            out += "\r\n\t" + text
            line = 8 + len(text)
        else:
            out += glue + text
            line += len(glue) + len(text)
    return out


def _fold_b(header: str, value: str) -> str:
    """Append the b= value, broken with CRLF TAB (all of it is FWS-insensitive, §3.5)."""
    line = len(header) - header.rfind("\n") - 1 if "\n" in header else len(header)
    out, pos = [header], 0
    room = max(FOLD_WIDTH - line, 8)
    while pos < len(value):
        out.append(value[pos:pos + room])
        pos += room
        if pos < len(value):
            out.append("\r\n\t")
            room = FOLD_WIDTH - 8
    return "".join(out)


def sign_message(message: bytes, keys: Sequence[SigningKey], *, now: float | None = None,
                 headers: Sequence[str] | None = None,
                 canonicalization: str = "relaxed/relaxed",
                 expire_after: int | None = None) -> bytes:
    """The DKIM-Signature fields (folded, CRLF-terminated) to prepend to ``message``.

    ``headers``: field names to sign instead of ``DEFAULT_SIGNED_HEADERS`` (From is always
    added and oversigned). ``expire_after``: seconds until x=. ValueError if the message
    has no From field (RFC 6376 §5.4) or a key is unusable.
    """
    now = time.time() if now is None else now
    header_canon, _, body_canon = canonicalization.lower().partition("/")
    body_canon = body_canon or "simple"
    if header_canon not in CANONICALIZATIONS or body_canon not in CANONICALIZATIONS:
        raise ValueError(f"unknown canonicalization {canonicalization!r}")
    fields, body_start = split_message(message)
    wanted = {h.lower() for h in (headers or DEFAULT_SIGNED_HEADERS)} | {"from"}
    wanted.discard("dkim-signature")
    signed = [f.lname for f in fields if f.lname in wanted]
    if "from" not in signed:
        raise ValueError("the message has no From field (RFC 6376 §5.4)")
    signed.append("from")                          # oversign: no From may be added
    body = memoryview(message)[body_start:]
    digest = _digests(body, [(body_canon, "sha256", None)])[(body_canon, "sha256", None)]
    bh = base64.b64encode(digest.digest).decode("ascii")
    out: list[str] = []
    for key in keys:
        private = key.load()
        tags = [("v", "1"), ("a", key.algorithm), ("c", f"{header_canon}/{body_canon}"),
                ("d", key.domain), ("s", key.selector), ("t", str(int(now)))]
        if expire_after is not None:
            tags.append(("x", str(int(now) + int(expire_after))))
        tags += [("h", ":".join(signed)), ("bh", bh), ("b", "")]
        unsigned = _fold_tags(tags)
        sig_field = HeaderField("DKIM-Signature", unsigned.encode("ascii") + CRLF)
        data = signed_header_data(fields, sig_field, signed, header_canon)
        if isinstance(private, rsa.RSAPrivateKey):
            raw = private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = private.sign(hashlib.sha256(data).digest())
        out.append(_fold_b(unsigned, base64.b64encode(raw).decode("ascii")) + "\r\n")
    return "".join(out).encode("ascii")
