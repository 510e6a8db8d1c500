"""ARC (RFC 8617): validating a received chain and sealing mail we forward.

What: ``verify_chain`` gives the Chain Validation Status of a message ("none", "pass",
"fail", or "temperror" when a key could not be fetched) with the instance count, the set
that failed, the last sealer's domain, the oldest-pass value and the ``smtp.remote-ip`` the
last sealer recorded. ``seal_message`` builds the ARC Set (ARC-Seal, ARC-Message-Signature,
ARC-Authentication-Results) to prepend when we forward a message, e.g. an alias to an
external address. ``split_auth_results`` splits an Authentication-Results value into its
authserv-id and results (used for the AAR, and by callers consolidating AR fields).

How (verification), GUIDE idea 9, fetch apart from evaluate:
  * Fetch: the header section is parsed, the ARC header fields are grouped by instance with
    dkimpy's own rules (relaxed canonicalization, ``i=`` regex), and the key names
    ``s._domainkey.d`` of every ARC-Seal and ARC-Message-Signature are looked up
    concurrently through our ``Resolver`` (TXT, raw bytes, RFC 6376 §3.6.2.2). Chains with
    more than 50 sets or whose newest seal says cv=fail are decided here without DNS
    (RFC 8617 §5.2 steps 1 and 2).
  * Evaluate: dkimpy 1.1.8 (``dkim.ARC.verify``) runs with a ``dnsfunc`` that only answers
    from the prefetched keys, so it never touches the network. It runs in a worker thread
    (``asyncio.to_thread``): body canonicalization and signature checks are pure Python and
    grow with the message; in a thread they hold the GIL only in slices, so the event loop
    keeps serving other sessions (no parallel speed-up is claimed).
  * dkimpy's outcomes map to RFC 8617 §5.2: its ``None`` ("a seal reported cv=fail, the
    chain is terminated") is "fail" (§5.2 step 2 and step 3.3: no seal may say cv=fail).
  * A key lookup that failed temporarily (``DNSTemporaryError``) is answered to dkimpy as
    "no key" and remembered; if dkimpy then asked for that key and the chain did not pass,
    the status is "temperror", never "fail" and never "pass". A chain that passes without
    that key (it only covered an older AMS, which §5.2 step 4 does not require) stays
    "pass", with ``oldest_pass`` unknown.
  * Clock: dkimpy rejects ``t=`` in the future and expired ``x=`` against ``time.time()``
    (with 10 hours of slack). To make ``now`` meaningful, dkimpy's module-level ``time`` is
    replaced once by ``_DkimpyClock``, which answers ``time()`` from a context variable set
    only inside our evaluation and the real clock otherwise (other dkimpy users see no
    change). ``asyncio.to_thread`` carries the context into the worker thread.

How (sealing), RFC 8617 §5.1: dkimpy's ``arc_sign`` needs the ``authres`` package (not a
dependency of ours) and parses only PKCS#1 keys, so the set is built here with dkimpy's
canonicalization and header selection (``dkim.hash_headers``, the code its verifier uses)
and signed with ``cryptography`` (OpenSSL: PKCS#8 or PKCS#1 PEM, about 1 ms per RSA-2048
signature where dkimpy's pure-Python RSA takes about 8 ms). Sealing is synchronous and
costs one body hash plus two RSA signatures: cheap enough for forwarded mail only; callers
holding large bodies should run it in a worker thread.
  * Tags are written in alphabetical order, lower case, separated by "; " and folded only
    between tags, never inside a value: the ValiMail signing suite's "standardized" format,
    so our seals reproduce its expected b= values byte for byte.
  * Only rsa-sha256: RFC 8617 takes a= from RFC 6376 and defines no other algorithm for ARC
    (RFC 8463's ed25519-sha256 is a DKIM algorithm); dkimpy's ARC verifier, like OpenARC,
    accepts only rsa-sha256, so an ed25519 seal would fail everywhere. Ed25519 keys are
    refused (ValueError), as are RSA keys under 1024 bits (RFC 8301 §3.2).

Invariants:
  * ``verify_chain`` never raises for message content; DNS temporary failures become
    "temperror"; no DNS query is made from the evaluation step.
  * ``seal_message`` returns b"" when the newest seal already says cv=fail (RFC 8617 §5.1
    step 2: a failed chain is not sealed again); otherwise exactly three CRLF-terminated
    fields, ARC-Seal first. Inconsistent input (cv "none" on an existing chain, "pass" on a
    malformed one, more than 50 sets) is a programming error: ValueError.
  * The ``sealer_domain`` and ``remote_ip`` of an ``ARCResult`` are what the newest set
    claims; they are only trustworthy when ``cv == "pass"``.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import dkim
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from dkim.util import InvalidTagValueList, parse_tag_value
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from mailwright.net.dns import DNSPermanentError, DNSTemporaryError, Resolver

__all__ = ["ARCResult", "CHAIN_VALIDATION", "MAX_INSTANCE", "seal_message",
           "split_auth_results", "verify_chain"]

log = logging.getLogger(__name__)

MAX_INSTANCE = 50                              # RFC 8617 §4.2.1: i= is 1..50
CHAIN_VALIDATION = ("none", "pass", "fail")    # RFC 8617 §4.1.3 cv= values
MIN_RSA_BITS = 1024                            # RFC 8301 §3.2

_AAR, _AMS, _AS = b"arc-authentication-results", b"arc-message-signature", b"arc-seal"
_SET_ORDER = (_AAR, _AMS, _AS)                 # RFC 8617 §5.1.1: order within a set
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_REMOTE_IP_RE = re.compile(r"(?:^|[\s;])smtp\.remote-ip\s*=\s*\"?([0-9A-Fa-f.:]+)", re.I)
_COMMENT_RE = re.compile(r"\((?:[^()\\]|\\.)*\)")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_NAME_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")   # RFC 5322 §3.6.8 field-name
# RFC 6376 §3.5 d= (domain-name) and s= (selector: sub-domain *("." sub-domain)), ASCII.
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*$")
_ARC_FIELD_RE = re.compile(
    rb"^arc-(?:seal|message-signature|authentication-results)[ \t]*:", re.I | re.M)


@dataclass(frozen=True, slots=True)
class ARCResult:
    """Outcome of ``verify_chain`` (RFC 8617 §5.2).

    ``cv``: "none" (no ARC sets), "pass", "fail" or "temperror" (a key lookup failed
    temporarily). ``instances``: the highest ``i=`` found (N; 0 without ARC).
    ``failed_instance``: the set that made the chain fail, when known. ``reason``: a short
    text for logs and the Authentication-Results comment. ``sealer_domain``: ``d=`` of the
    newest ARC-Seal. ``oldest_pass``: RFC 8617 §5.2 step 5 (0 when every AMS validates),
    only for a passing chain. ``remote_ip``: ``smtp.remote-ip`` in the newest AAR.
    """

    cv: str
    instances: int = 0
    failed_instance: int | None = None
    reason: str = ""
    sealer_domain: str | None = None
    oldest_pass: int | None = None
    remote_ip: str | None = None


# ---------------------------------------------------------------------- dkimpy glue

_EVAL_NOW: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mailwright_arc_now", default=None)


class _DkimpyClock:
    """Stands in for the ``time`` module inside dkimpy (see the module docstring)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def time(self) -> float:
        now = _EVAL_NOW.get()
        return self._real.time() if now is None else now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


if not isinstance(dkim.time, _DkimpyClock):
    dkim.time = _DkimpyClock(time)  # type: ignore[attr-defined]


class _QuietLogger(logging.LoggerAdapter):
    """dkimpy logs every invalid signature at ERROR; for a mail server those are routine
    verdicts about other people's mail, so they are logged at DEBUG."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(min(level, logging.DEBUG), msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


_DKIMPY_LOG = _QuietLogger(logging.getLogger(__name__ + ".dkimpy"), {})

_TEMPFAIL = object()          # marker: this key's lookup failed temporarily


# ---------------------------------------------------------------------- parsing

@dataclass(frozen=True, slots=True)
class _ArcField:
    instance: int
    name: bytes               # lower case
    value: bytes              # relaxed canonical form, CRLF-terminated


def _header_section(message: bytes) -> bytes:
    """The header fields of ``message`` (without the blank line), CRLF or LF."""
    if message.startswith((b"\r\n", b"\n")):
        return b""
    m = _HEADER_END_RE.search(message)
    return message if m is None else message[:m.start()] + b"\r\n"


def _arc_fields(headers: list[list[bytes]]) -> list[_ArcField]:
    """ARC header fields with their instance, grouped exactly as dkimpy does
    (``dkim.ARC.sorted_arc_headers``): relaxed form, first ``i=`` in the value."""
    out = []
    for name, value in Relaxed.canonicalize_headers(headers):
        if name in _SET_ORDER:
            m = dkim.ARC.INSTANCE_RE.search(value)
            if m is not None:
                out.append(_ArcField(int(m.group(1)), name, value))
    return out


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        return parse_tag_value(value)
    except InvalidTagValueList:
        return None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _key_name(tags: dict[bytes, bytes]) -> str | None:
    """The TXT name dkimpy will ask for (RFC 6376 §3.6.2.1), normalized as a dict key."""
    if b"s" not in tags or b"d" not in tags:
        return None
    return _norm(tags[b"s"] + b"._domainkey." + tags[b"d"])


def _norm(name: bytes) -> str:
    return _text(name).rstrip(".").lower()


def _remote_ip(aar_value: bytes) -> str | None:
    """``smtp.remote-ip`` of an AAR (RFC 8617 §4.1.1: a copy of the AR; §10.1 registers
    the property). Comments are removed first so "(smtp.remote-ip=...)" is not read."""
    text = _COMMENT_RE.sub(" ", _text(aar_value))
    m = _REMOTE_IP_RE.search(text)
    return m.group(1) if m else None


def split_auth_results(value: str) -> list[str]:
    """Split an Authentication-Results value at top-level ";" (RFC 8601 §2.2).

    Returns the pieces stripped, empty ones dropped: for a whole AR value the first piece
    is the authserv-id (with its optional version); for a result list every piece is one
    resinfo. Semicolons inside comments (nested, with quoted-pairs) and quoted strings do
    not split. Comments are kept: the AAR is a copy of the AR (RFC 8617 §4.1.1).
    """
    pieces, buf = [], []
    depth, quoted, escaped = 0, False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == '"' and not depth:
            quoted = True
        elif ch == ";" and not depth:
            pieces.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    pieces.append("".join(buf))
    return [" ".join(p.split()) for p in pieces if p.strip()]


# ---------------------------------------------------------------------- verification

async def verify_chain(resolver: Resolver, message: bytes, *,
                       now: float | None = None) -> ARCResult:
    """Validate the ARC chain of ``message`` (RFC 8617 §5.2); see the module docstring.

    ``now``: the time used for ``t=``/``x=`` checks (default: the real clock).
    """
    section = _header_section(message)
    if _ARC_FIELD_RE.search(section) is None:
        return ARCResult("none", reason="no ARC sets")     # most mail: no parse needed
    try:
        headers, _ = dkim.rfc822_parse(section)
    except dkim.DKIMException as exc:
        if _ARC_FIELD_RE.search(section) is None:
            return ARCResult("none", reason="no ARC sets")
        return ARCResult("fail", reason=f"malformed header section: {exc}")
    fields = _arc_fields(headers)
    if not fields:
        return ARCResult("none", reason="no ARC sets")

    n = max(f.instance for f in fields)
    newest_seal = next((_tags(f.value) for f in fields
                        if f.instance == n and f.name == _AS), None) or {}
    newest_aar = next((f.value for f in fields if f.instance == n and f.name == _AAR), None)
    base = dict(instances=n,
                sealer_domain=_text(newest_seal[b"d"]).lower() if b"d" in newest_seal else None,
                remote_ip=_remote_ip(newest_aar) if newest_aar is not None else None)
    if n > MAX_INSTANCE:                                        # §5.2 step 1
        return ARCResult("fail", failed_instance=n,
                         reason=f"more than {MAX_INSTANCE} ARC sets", **base)
    if newest_seal.get(b"cv", b"").lower() == b"fail":          # §5.2 step 2
        return ARCResult("fail", failed_instance=n,
                         reason=f"ARC-Seal i={n} reports cv=fail", **base)

    names = {name for f in fields if f.name in (_AS, _AMS)
             if (tags := _tags(f.value)) is not None and (name := _key_name(tags))}
    values = await asyncio.gather(*(_fetch_key(resolver, name) for name in sorted(names)))
    keys = dict(zip(sorted(names), values))
    return await asyncio.to_thread(_evaluate, message, keys, now, n, base)


async def _fetch_key(resolver: Resolver, name: str) -> bytes | None | object:
    """The key record text, None when there is none, ``_TEMPFAIL`` on a temporary error."""
    try:
        answer = await resolver.lookup(name, "TXT")
    except DNSTemporaryError as exc:
        log.info("ARC key %s: temporary DNS failure: %s", name, exc)
        return _TEMPFAIL
    except (DNSPermanentError, ValueError, UnicodeError):
        return None                     # a name that cannot exist: no key
    records = [b"".join(rd.strings) for rd in answer.records]
    # RFC 6376 §3.6.2.2: with several records the verifier may choose one; prefer a key.
    for record in records:
        if record.lstrip().startswith(b"v=DKIM1"):
            return record
    return records[0] if records else None


def _evaluate(message: bytes, keys: dict[str, object], now: float | None, n: int,
              base: dict[str, Any]) -> ARCResult:
    """Run dkimpy on prefetched keys (worker thread; never touches the network)."""
    consulted_tempfail: list[str] = []

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = _norm(name)
        value = keys.get(key, _TEMPFAIL)
        if value is _TEMPFAIL:
            if key not in keys:
                log.warning("ARC evaluation asked for unfetched key %s", key)
            consulted_tempfail.append(key)
            return None
        return value  # type: ignore[return-value]

    token = _EVAL_NOW.set(now)
    try:
        arc = dkim.ARC(message, logger=_DKIMPY_LOG, minkey=MIN_RSA_BITS)
        cv, results, reason = arc.verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        cv, results, reason = dkim.CV_Fail, [], str(exc)
    finally:
        _EVAL_NOW.reset(token)

    if cv == dkim.CV_Pass:
        oldest = None if consulted_tempfail else _oldest_pass(results)
        return ARCResult("pass", oldest_pass=oldest, reason="chain validated", **base)
    if cv == dkim.CV_None:
        return ARCResult("none", reason=reason, **base)
    failed = _failed_instance(results, n)
    if consulted_tempfail:
        return ARCResult("temperror", failed_instance=failed,
                         reason="temporary DNS failure for " + ", ".join(consulted_tempfail),
                         **base)
    return ARCResult("fail", failed_instance=failed, reason=reason, **base)


def _oldest_pass(results: list[dict]) -> int:
    """RFC 8617 §5.2 step 5: walk the AMSes from N-1 down; the first that fails (M) gives
    M+1; 0 if all validate. ``results`` is dkimpy's list, newest instance first."""
    for result in results[1:]:
        if not result["ams-valid"]:
            return result["instance"] + 1
    return 0


def _failed_instance(results: list[dict], n: int) -> int | None:
    """Which set failed, from dkimpy's per-instance results (same order of checks as its
    ``ARC.verify``: a set it could not even parse, the newest AMS, then each seal)."""
    if len(results) < n:
        return n - len(results)                  # dkimpy stopped on this (malformed) set
    if not results:
        return None
    if not results[0]["ams-valid"]:
        return n
    for result in results:
        i, cv = result["instance"], result["cv"]
        if cv == dkim.CV_Fail or not result["as-valid"] or \
                (i == 1) != (cv == dkim.CV_None):
            return i
    return None


# ---------------------------------------------------------------------- sealing

def _load_signing_key(private_key_pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cannot load the ARC private key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("ARC seals are rsa-sha256 only (RFC 8617 defines no ed25519 "
                         "seal; ARC verifiers reject one)")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the ARC private key must be an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} needed "
                         "(RFC 8301 §3.2)")
    return key


def _fold(name: str, tags: Sequence[tuple[str, str]]) -> bytes:
    """``Name: a=..; b=..`` with tags in the given order, folded only between tags so a
    line stays within 78 columns where the tags allow (RFC 5322 §2.1.1). Relaxed
    canonicalization sees "; " either way."""
    parts = [f"{k}={v}" for k, v in tags]
    lines, line = [], f"{name}:"
    for i, part in enumerate(parts):
        piece = part + (";" if i < len(parts) - 1 else "")
        if len(line) + 1 + len(piece) > 78 and line != f"{name}:":
            lines.append(line)
            line = " " + piece
        else:
            line += " " + piece
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _sign(key: rsa.RSAPrivateKey, hasher: "hashlib._Hash") -> str:
    signature = key.sign(hasher.digest(), padding.PKCS1v15(),
                         utils.Prehashed(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")


def _default_sign_headers(headers: list[list[bytes]]) -> list[str]:
    """dkimpy's default AMS h= list: the RFC 6376 §5.4.1 recommended fields present, in
    message order, and From once more so a second From cannot be added."""
    wanted = set(dkim.DomainSigner.SHOULD) | set(dkim.DomainSigner.FROZEN)
    names = [_text(name).lower() for name, _ in headers if name.lower() in wanted]
    return names + [n for n in names if n.encode() in dkim.DomainSigner.FROZEN]


def _chain_sets(fields: list[_ArcField], n: int) -> list[_ArcField]:
    """The existing sets 1..n in RFC 8617 §5.1.1 order; ValueError unless each set has
    exactly one AAR, AMS and AS (§5.2 step 3: otherwise the chain cannot pass)."""
    ordered = []
    for i in range(1, n + 1):
        for name in _SET_ORDER:
            found = [f for f in fields if f.instance == i and f.name == name]
            if len(found) != 1:
                raise ValueError(f"malformed ARC chain (set {i}, {_text(name)}): it cannot "
                                 "have passed validation")
            ordered.append(found[0])
    return ordered


def seal_message(message: bytes, *, domain: str, selector: str, private_key_pem: bytes,
                 authserv_id: str, auth_results: str, chain_validation: str,
                 now: float | None = None,
                 sign_headers: Sequence[str] | None = None) -> bytes:
    """The ARC Set to prepend to ``message`` (RFC 8617 §5.1); see the module docstring.

    ``auth_results``: our Authentication-Results for this message without the authserv-id
    (e.g. ``"arc=pass smtp.remote-ip=192.0.2.1; spf=pass smtp.mailfrom=a.example"``); an
    ``arc=`` result in it must agree with ``chain_validation``, the cv= of the new seal
    ("none" without a chain, else "pass" or "fail" from ``verify_chain``). ``now`` gives
    t= (default: the real clock). ``sign_headers``: the AMS h= list (default: dkimpy's).
    Returns b"" when the chain's newest seal says cv=fail (§5.1 step 2).
    """
    cv = chain_validation.lower()
    if cv not in CHAIN_VALIDATION:
        raise ValueError(f"chain_validation must be one of {CHAIN_VALIDATION}, not {cv!r}")
    key = _load_signing_key(private_key_pem)
    results = split_auth_results(auth_results)
    for result in results:
        method, _, value = result.partition("=")
        if method.strip().lower() == "arc" and value.lower().split()[:1] != [cv]:
            raise ValueError(f"auth_results says {result!r} but chain_validation is {cv!r}")
    if not authserv_id or any(c in authserv_id for c in ";\r\n"):
        raise ValueError(f"bad authserv_id {authserv_id!r}")
    d, s = domain.lower().rstrip("."), selector.lower()
    if not _DOMAIN_RE.match(d) or not _DOMAIN_RE.match(s):
        raise ValueError(f"bad ARC domain or selector {domain!r}, {selector!r}")

    headers, body = dkim.rfc822_parse(message)
    fields = _arc_fields(headers)
    n = max((f.instance for f in fields), default=0)
    newest_seal = next((_tags(f.value) for f in fields
                        if f.instance == n and f.name == _AS), None) or {}
    if newest_seal.get(b"cv", b"").lower() == b"fail":
        return b""                                              # §5.1 step 2
    instance = n + 1
    if instance > MAX_INSTANCE:
        raise ValueError(f"the chain already has {n} sets (RFC 8617 §4.2.1: at most 50)")
    if (instance == 1) != (cv == "none"):                       # §4.1.3, §5.2 step 3.3
        raise ValueError(f"cv={cv} is impossible for ARC set i={instance}")
    previous = [] if cv == "fail" else _chain_sets(fields, n)   # §5.1.2: fail seals alone

    include = [h.lower() for h in (sign_headers or _default_sign_headers(headers))]
    if "from" not in include:
        raise ValueError("the From header field must be signed (RFC 6376 §5.4)")
    if "arc-seal" in include or any(not _NAME_RE.match(h) for h in include):
        raise ValueError(f"bad AMS header list {include!r} (RFC 8617 §4.1.2: no ARC-Seal)")
    timestamp = str(int(time.time() if now is None else now))

    # ARC-Authentication-Results (§4.1.1): one result per line.
    aar_value = f"i={instance}; " + ";\r\n ".join([authserv_id] + (results or ["none"]))
    aar = f"ARC-Authentication-Results: {aar_value}\r\n".encode("utf-8", "surrogateescape")
    aar_field = (b"ARC-Authentication-Results", aar[len(b"ARC-Authentication-Results:"):])

    # ARC-Message-Signature (§4.1.2): like a DKIM signature, relaxed/relaxed.
    canonical = _RELAXED.canonicalize_headers([list(aar_field)] + headers)
    bh = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    ams_tags = [("a", "rsa-sha256"), ("b", ""), ("bh", bh.decode("ascii")),
                ("c", "relaxed/relaxed"), ("d", d), ("h", ":".join(include)),
                ("i", str(instance)), ("s", s), ("t", timestamp)]
    unsigned = _fold("ARC-Message-Signature", ams_tags)
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, _RELAXED, canonical, [h.encode() for h in include],
                      (b"ARC-Message-Signature", unsigned[len(b"ARC-Message-Signature:"):]),
                      None)
    ams_tags[1] = ("b", _sign(key, hasher))
    ams = _fold("ARC-Message-Signature", ams_tags)

    # ARC-Seal (§4.1.3, §5.1.1): the sets 1..N in order, then ours, AS with empty b= last.
    as_tags = [("a", "rsa-sha256"), ("b", ""), ("cv", cv), ("d", d),
               ("i", str(instance)), ("s", s), ("t", timestamp)]
    unsigned = _fold("ARC-Seal", as_tags)
    hasher = hashlib.sha256()
    for f in previous:
        hasher.update(f.name + b":" + f.value)
    for raw in (aar, ams):
        name, _, value = raw.partition(b":")
        (cname, cvalue), = Relaxed.canonicalize_headers([[name, value]])
        hasher.update(cname + b":" + cvalue)
    (cname, cvalue), = Relaxed.canonicalize_headers(
        [[b"ARC-Seal", unsigned[len(b"ARC-Seal:"):]]])
    hasher.update(cname + b":" + cvalue.rstrip(b"\r\n"))
    as_tags[1] = ("b", _sign(key, hasher))
    seal = _fold("ARC-Seal", as_tags)
    return seal + ams + aar
