"""DKIM canonicalisation, key records, verification rules and signing (mailauth/dkim*.py).

Pure halves are table-tested against the RFC 6376 text; the DNS half runs against the real
test DNS server on loopback. Signatures made with weak keys or SHA-1 come from dkimpy (an
independent signer), so the refusals below are refusals of valid signatures.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dnsserver import DNSServer
from mailwright.mailauth.dkim import (
    DEFAULT_SIGNED_HEADERS, SignatureError, SigningKey, parse_signature, sign_message,
    signed_header_data, verify_message, verify_signature)
from mailwright.mailauth.dkim_canon import (
    BodyHasher, HeaderField, TagListError, body_digest, canonicalize_header,
    parse_tag_list, select_headers, split_message)
from mailwright.mailauth.dkim_keys import (
    KeyRecordError, dns_txt_record, generate_key, load_private_key, parse_key_record,
    zone_line)
from mailwright.net.dns import Resolver

NOW = 1_700_000_000.0

MESSAGE = (
    b"Received: from relay.example.org by mx.example.net; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Quarterly  figures\r\n"
    b"\tfolded onto a second line\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <q4@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the figures are   attached.  \r\n"
    b"\r\n"
    b"\r\n"
)

# Keys are generated once per module: RSA generation is the slow part of these tests.
RSA_PEM = generate_key("rsa", 2048)
ED_PEM = generate_key("ed25519")
RSA_KEY = SigningKey("example.com", "rsa1", "rsa-sha256", RSA_PEM)
ED_KEY = SigningKey("example.com", "ed1", "ed25519-sha256", ED_PEM)
RSA_TXT = dns_txt_record(RSA_PEM)
ED_TXT = dns_txt_record(ED_PEM)


def parts(message: bytes):
    headers, start = split_message(message)
    return headers, message[start:]


def sigs_of(headers):
    return [f for f in headers if f.lname == "dkim-signature"]


def verify_first(message: bytes, record: str | None, now: float = NOW):
    headers, body = parts(message)
    return verify_signature(headers, body, sigs_of(headers)[0], record, now)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------- canonicalisation

# RFC 6376 §3.4.5, the example message, written out octet by octet.
RFC_EXAMPLE = (b"A: X\r\n"
               b"B : Y\t\r\n"
               b"\tZ  \r\n"
               b"\r\n"
               b" C \r\n"
               b"D \t E\r\n"
               b"\r\n"
               b"\r\n")


@pytest.mark.parametrize("canon,expected", [
    ("relaxed", b"a:X\r\nb:Y Z\r\n"),
    ("simple", b"A: X\r\nB : Y\t\r\n\tZ  \r\n"),
])
def test_rfc6376_example_headers(canon, expected):
    headers, _ = split_message(RFC_EXAMPLE)
    assert b"".join(canonicalize_header(f, canon) for f in headers) == expected


@pytest.mark.parametrize("canon,expected", [
    ("relaxed", b" C\r\nD E\r\n"),
    ("simple", b" C \r\nD \t E\r\n"),
])
def test_rfc6376_example_body(canon, expected):
    _, body = parts(RFC_EXAMPLE)
    got = body_digest(body, canon)
    assert got.digest == hashlib.sha256(expected).digest()
    assert got.length == got.hashed == len(expected)


@pytest.mark.parametrize("raw,expected", [
    (b"Subject: hello\r\n", b"subject:hello\r\n"),
    (b"SUBJECT :  hello   world \t\r\n", b"subject:hello world\r\n"),
    (b"To: a@example.com,\r\n\tb@example.com\r\n", b"to:a@example.com, b@example.com\r\n"),
    (b"X-Empty:\r\n", b"x-empty:\r\n"),
    (b"X-Empty: \t \r\n", b"x-empty:\r\n"),
    (b"X-Utf8: caf\xc3\xa9  \r\n", b"x-utf8:caf\xc3\xa9\r\n"),
])
def test_relaxed_header_table(raw, expected):
    field = HeaderField(raw.split(b":")[0].strip().decode(), raw)
    assert canonicalize_header(field, "relaxed") == expected
    assert canonicalize_header(field, "simple") == raw


# (body, expected simple, expected relaxed): RFC 6376 §3.4.3 and §3.4.4 by hand.
BODY_TABLE = [
    (b"", b"\r\n", b""),
    (b"\r\n", b"\r\n", b""),
    (b"\r\n\r\n\r\n", b"\r\n", b""),
    (b"abc", b"abc\r\n", b"abc\r\n"),
    (b"abc\r\n", b"abc\r\n", b"abc\r\n"),
    (b"abc\r\n\r\n\r\n", b"abc\r\n", b"abc\r\n"),
    (b"a\r\n\r\n\r\nb\r\n\r\n", b"a\r\n\r\n\r\nb\r\n", b"a\r\n\r\n\r\nb\r\n"),
    (b"a  b\t\tc \r\n", b"a  b\t\tc \r\n", b"a b c\r\n"),
    (b"a\r\n \t\r\n", b"a\r\n \t\r\n", b"a\r\n"),
    (b"a\r\n \t\r\nb", b"a\r\n \t\r\nb\r\n", b"a\r\n\r\nb\r\n"),
    (b"  lead\r\n", b"  lead\r\n", b" lead\r\n"),
    (b"x \t ", b"x \t \r\n", b"x\r\n"),
    (b"bare\nlf\n\n", b"bare\r\nlf\r\n", b"bare\r\nlf\r\n"),
    (b"lone\rcr\r\n", b"lone\rcr\r\n", b"lone\rcr\r\n"),
    (b"end cr\r", b"end cr\r\r\n", b"end cr\r\r\n"),
    (b"a\r\r\n\r\n", b"a\r\r\n", b"a\r\r\n"),
    (b"\r\n\r\nx", b"\r\n\r\nx\r\n", b"\r\n\r\nx\r\n"),
    (b"\t\r\n", b"\t\r\n", b""),
]


@pytest.mark.parametrize("body,simple,relaxed", BODY_TABLE)
def test_body_canonicalisation_table(body, simple, relaxed):
    for canon, expected in (("simple", simple), ("relaxed", relaxed)):
        got = body_digest(body, canon)
        assert (got.digest, got.length) == (hashlib.sha256(expected).digest(), len(expected)), canon


@pytest.mark.parametrize("body,simple,relaxed", BODY_TABLE)
def test_body_hasher_gives_the_same_digest_for_every_split(body, simple, relaxed):
    for canon in ("simple", "relaxed"):
        whole = body_digest(body, canon)
        bytewise = BodyHasher(canon)
        for i in range(len(body)):
            bytewise.update(body[i:i + 1])
        assert bytewise.finish() == whole
        for cut in range(len(body) + 1):
            h = BodyHasher(canon)
            h.update(body[:cut])
            h.update(body[cut:])
            assert h.finish() == whole, (canon, cut)


def test_body_hasher_random_splits_match_whole():
    rng = secrets.SystemRandom()
    alphabet = [b"a", b"b", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\n\r\n"]
    for _ in range(200):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        for canon in ("simple", "relaxed"):
            whole = body_digest(body, canon)
            h = BodyHasher(canon)
            pos = 0
            while pos < len(body):
                step = rng.randint(1, 7)
                h.update(body[pos:pos + step])
                pos += step
            assert h.finish() == whole, (canon, body)


def test_body_limit_hashes_only_the_first_octets():
    body = b"line one\r\nline two\r\n"
    got = body_digest(body, "simple", limit=10)
    assert got.digest == hashlib.sha256(b"line one\r\n").digest()
    assert (got.hashed, got.length) == (10, len(body))
    assert body_digest(body, "simple", limit=0).digest == hashlib.sha256(b"").digest()


def test_body_hasher_holds_only_a_bounded_tail():
    # One 8 MB line of text, then 1 MB of spaces: the carry between chunks stays tiny,
    # so the work is linear (no re-concatenation of a growing partial line).
    for canon in ("simple", "relaxed"):
        h = BodyHasher(canon)
        for chunk in [b"word " * 13107] * 128 + [b" " * 65536] * 16:
            h.update(chunk)
            assert len(h._carry) <= 2
        h.update(b"\r\n")
        assert h.finish().length > 8_000_000


def test_split_message_fields_and_body():
    msg = b"A: 1\r\nB: 2\r\n  cont\r\nNoColon\r\n\r\nbody\r\n"
    headers, start = split_message(msg)
    assert [(f.name, f.raw) for f in headers] == [
        ("A", b"A: 1\r\n"), ("B", b"B: 2\r\n  cont\r\n"), ("NoColon", b"NoColon\r\n")]
    assert msg[start:] == b"body\r\n"
    headers, start = split_message(b"A: 1\nB: 2\n\nbody\n")
    assert [f.raw for f in headers] == [b"A: 1\r\n", b"B: 2\r\n"]
    _, start2 = split_message(b"A: 1\r\n")
    assert start2 == len(b"A: 1\r\n")


def test_select_headers_takes_instances_bottom_up():
    headers, _ = split_message(b"From: a\r\nTo: x\r\nFrom: b\r\nSubject: s\r\n\r\n")
    chosen = select_headers(headers, ["from", "subject", "from", "from", "cc"])
    assert [f.raw for f in chosen] == [b"From: b\r\n", b"Subject: s\r\n", b"From: a\r\n"]


@pytest.mark.parametrize("text,expected", [
    ("v=1; a=rsa-sha256", {"v": "1", "a": "rsa-sha256"}),
    ("v=1;a=x;", {"v": "1", "a": "x"}),
    (" v = 1 ;\r\n\th=from : to ", {"v": "1", "h": "from : to"}),
    ("p=", {"p": ""}),
])
def test_tag_list_table(text, expected):
    assert parse_tag_list(text) == expected


@pytest.mark.parametrize("text", ["v=1; v=1", "novalue", "1a=b", "a=1; =2"])
def test_tag_list_errors(text):
    with pytest.raises(TagListError):
        parse_tag_list(text)


# ---------------------------------------------------------------- key records


@pytest.mark.parametrize("text,key_type,flags,revoked", [
    ("v=DKIM1; k=rsa; p=QUJD", "rsa", (), False),
    ("p=QUJD", "rsa", (), False),
    ("v=DKIM1; k=ed25519; t=y:s; p=QU JD", "ed25519", ("y", "s"), False),
    ("v=DKIM1; p=", "rsa", (), True),
    ("k=rsa; t=y; n=notes; x_unknown=1; p=QUJD", "rsa", ("y",), False),
])
def test_key_record_table(text, key_type, flags, revoked):
    rec = parse_key_record(text)
    assert (rec.key_type, rec.flags, rec.revoked) == (key_type, flags, revoked)


@pytest.mark.parametrize("text", [
    "v=DKIM2; p=QUJD", "k=rsa; v=DKIM1; p=QUJD", "v=DKIM1; k=dsa; p=QUJD", "v=DKIM1; k=rsa",
    "v=DKIM1; p=QUJD; p=QUJD", "garbage",
])
def test_key_record_errors(text):
    with pytest.raises(KeyRecordError):
        parse_key_record(text)


# ---------------------------------------------------------------- verification rules


def signed(message: bytes = MESSAGE, keys=(RSA_KEY,), **kw) -> bytes:
    return sign_message(message, list(keys), now=NOW, **kw) + message


def test_own_signatures_pass_and_report_fields():
    msg = signed(keys=(RSA_KEY, ED_KEY))
    headers, body = parts(msg)
    rsa_sig, ed_sig = sigs_of(headers)
    r = verify_signature(headers, body, rsa_sig, RSA_TXT, NOW)
    e = verify_signature(headers, body, ed_sig, ED_TXT, NOW)
    assert (r.result, r.domain, r.selector, r.algorithm, r.key_bits) == (
        "pass", "example.com", "rsa1", "rsa-sha256", 2048)
    assert (e.result, e.algorithm, e.key_bits, e.identity) == (
        "pass", "ed25519-sha256", 256, "@example.com")
    b_tag = re.search(rb"b=([^;]*)$", rsa_sig.raw.rstrip()).group(1)
    assert r.header_b == re.sub(rb"\s", b"", b_tag)[:8].decode()
    # each key only verifies its own signature
    assert verify_signature(headers, body, rsa_sig, ED_TXT, NOW).result == "permerror"


@pytest.mark.parametrize("tamper,reason", [
    (lambda m: m.replace(b"Quarterly", b"Quarterlx"), "signature did not verify"),
    (lambda m: m.replace(b"attached.", b"attached!"), "body hash mismatch"),
    (lambda m: m + b"P.S. extra\r\n", "body hash mismatch"),
    (lambda m: m.replace(b"From: Alice", b"From: Mallory <m@evil.test>\r\nFrom: Alice"),
     "signature did not verify"),
    (lambda m: m.replace(b"\r\n\r\nHello", b"\r\nFrom: Mallory <m@evil.test>\r\n\r\nHello"),
     "signature did not verify"),
])
def test_tampering_fails(tamper, reason):
    for key, txt in ((RSA_KEY, RSA_TXT), (ED_KEY, ED_TXT)):
        msg = signed(keys=(key,))
        assert verify_first(msg, txt).result == "pass"
        res = verify_first(tamper(msg), txt)
        assert (res.result, res.reason) == ("fail", reason)


def test_changes_relaxed_tolerates_and_unsigned_headers_pass():
    msg = signed(keys=(RSA_KEY,))
    assert verify_first(msg.replace(b"Subject: Quarterly  figures",
                                    b"subject:   Quarterly figures"), RSA_TXT).result == "pass"
    assert verify_first(msg.replace(b"X-Mailer: test", b"X-Mailer: changed"),
                        RSA_TXT).result == "pass"
    assert verify_first(msg.replace(b"\r\n\r\nHello", b"\r\nX-Added: 1\r\n\r\nHello"),
                        RSA_TXT).result == "pass"
    simple = signed(keys=(RSA_KEY,), canonicalization="simple/simple")
    assert verify_first(simple, RSA_TXT).result == "pass"
    assert verify_first(simple.replace(b"Subject: Quarterly  figures",
                                       b"Subject: Quarterly figures"), RSA_TXT).result == "fail"


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    """Miller-Rabin: cryptography refuses to generate RSA keys under 1024 bits."""
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def weak_rsa_pem(bits: int) -> bytes:
    def prime(nbits: int) -> int:
        while True:
            c = secrets.randbits(nbits) | (3 << (nbits - 2)) | 1
            if (c - 1) % 65537 and _is_probable_prime(c):
                return c
    e, p, q = 65537, prime(bits // 2), prime(bits // 2)
    d = pow(e, -1, (p - 1) * (q - 1))
    key = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                rsa.RSAPublicNumbers(e, p * q)).private_key()
    assert key.key_size == bits
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def spki_record(pem: bytes) -> str:
    pub = serialization.load_pem_private_key(pem, None).public_key()
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@pytest.mark.parametrize("bits", [512, 768])
def test_rsa_keys_under_1024_bits_are_refused(bits):
    pem = weak_rsa_pem(bits)
    record = spki_record(pem)
    msg = dkimpy.sign(MESSAGE, b"weak", b"example.com", pem) + MESSAGE
    # dkimpy accepts its own signature when allowed small keys: the signature is valid.
    assert dkimpy.verify(msg, dnsfunc=lambda n, timeout=5: record.encode(), minkey=512)
    res = verify_first(msg, record, now=time.time())
    assert (res.result, res.key_bits) == ("policy", bits)
    with pytest.raises(ValueError):
        sign_message(MESSAGE, [SigningKey("example.com", "weak", "rsa-sha256", pem)])
    with pytest.raises(ValueError):
        generate_key("rsa", bits)


def test_rsa_sha1_is_refused():
    pem = weak_rsa_pem(1024)
    record = spki_record(pem)
    msg = dkimpy.sign(MESSAGE, b"s", b"example.com", pem, signature_algorithm=b"rsa-sha1") \
        + MESSAGE
    assert dkimpy.verify(msg, dnsfunc=lambda n, timeout=5: record.encode())
    res = verify_first(msg, record, now=time.time())
    assert (res.result, res.algorithm) == ("policy", "rsa-sha1")
    sha256 = dkimpy.sign(MESSAGE, b"s", b"example.com", pem) + MESSAGE
    assert verify_first(sha256, record, now=time.time()).result == "pass"


def test_expiry_and_timestamp_against_the_injected_clock():
    msg = signed(keys=(ED_KEY,), expire_after=3600)
    assert verify_first(msg, ED_TXT, now=NOW + 3599).result == "pass"
    late = verify_first(msg, ED_TXT, now=NOW + 3601)
    assert (late.result, late.reason) == ("fail", "signature expired (x=)")
    early = verify_first(msg, ED_TXT, now=NOW - 3600)
    assert (early.result, early.reason) == ("fail", "signature timestamp (t=) in the future")
    assert verify_first(msg, ED_TXT, now=NOW - 60).result == "pass"     # within clock skew


@pytest.mark.parametrize("record,result,reason", [
    ("v=DKIM1; k=ed25519; p=", "permerror", "key revoked"),
    (None, "permerror", "no key for signature"),
    ("v=DKIM1; k=rsa; p=" + RSA_TXT.split("p=")[1], "permerror",
     "key type k=rsa does not match a="),
    (ED_TXT.replace("k=ed25519;", "k=ed25519; h=sha1;"), "permerror",
     "hash algorithm not allowed by the key (h=)"),
    (ED_TXT.replace("k=ed25519;", "k=ed25519; s=tlsrpt;"), "permerror",
     "key is not for email (s=)"),
    (ED_TXT.replace("k=ed25519;", "k=ed25519; s=email:*;"), "pass", ""),
    (ED_TXT.replace("k=ed25519;", "k=ed25519; h=sha1:sha256;"), "pass", ""),
    (ED_TXT.replace("k=ed25519;", "k=ed25519; t=y;"), "pass", "testing mode (t=y)"),
    ("v=DKIM1; k=ed25519; p=AAAA", "permerror", "ed25519 p= must be 32 octets (RFC 8463 §4.2)"),
    ("v=DKIM1: k=ed25519; p=AAAA", "permerror", "bad key record version 'DKIM1: k=ed25519'"),
])
def test_key_record_outcomes(record, result, reason):
    res = verify_first(signed(keys=(ED_KEY,)), record)
    assert (res.result, res.reason) == (result, reason)
    assert res.testing == ("t=y" in (record or ""))


def test_strict_key_flag_refuses_subdomain_identity():
    pem = weak_rsa_pem(1024)
    record = spki_record(pem)
    msg = dkimpy.sign(MESSAGE, b"s", b"example.com", pem, identity=b"@mail.example.com") \
        + MESSAGE
    assert verify_first(msg, record, now=time.time()).result == "pass"
    strict = record.replace("k=rsa;", "k=rsa; t=s;")
    assert verify_first(msg, strict, now=time.time()).result == "permerror"


def sig_field(tags: str) -> HeaderField:
    return HeaderField("DKIM-Signature", b"DKIM-Signature: " + tags.encode() + b"\r\n")


GOOD_TAGS = ("v=1; a=rsa-sha256; d=example.com; s=sel; h=from:to; bh=QUJD; b=QUJD")


@pytest.mark.parametrize("tags,result", [
    (GOOD_TAGS.replace("v=1", "v=2"), "neutral"),
    (GOOD_TAGS.replace("s=sel; ", ""), "neutral"),
    (GOOD_TAGS.replace("bh=QUJD", "bh=Q!JD"), "neutral"),
    (GOOD_TAGS.replace("b=QUJD", "b="), "neutral"),
    (GOOD_TAGS.replace("h=from:to", "h=to:subject"), "neutral"),
    (GOOD_TAGS.replace("h=from:to", "h=from::to"), "neutral"),
    (GOOD_TAGS + "; i=user@other.example", "neutral"),
    (GOOD_TAGS + "; i=user@badexample.com", "neutral"),
    (GOOD_TAGS + "; t=200; x=100", "neutral"),
    (GOOD_TAGS + "; l=12a", "neutral"),
    (GOOD_TAGS + "; a=rsa-sha256", "neutral"),
    (GOOD_TAGS.replace("d=example.com", "d=exa mple(.com"), "neutral"),
    (GOOD_TAGS.replace("rsa-sha256", "rsa-sha1"), "policy"),
    (GOOD_TAGS.replace("rsa-sha256", "rsa-sha512"), "permerror"),
    (GOOD_TAGS + "; c=fancy/simple", "permerror"),
    (GOOD_TAGS + "; q=http/well-known", "permerror"),
])
def test_malformed_signatures(tags, result):
    with pytest.raises(SignatureError) as info:
        parse_signature(sig_field(tags))
    assert info.value.result == result
    res = verify_signature([], b"", sig_field(tags), "v=DKIM1; p=", NOW)
    assert res.result == result and res.reason


@pytest.mark.parametrize("tags,attr,value", [
    (GOOD_TAGS + "; c=relaxed", "body_canon", "simple"),
    (GOOD_TAGS + "; c=relaxed", "header_canon", "relaxed"),
    (GOOD_TAGS, "identity", "@example.com"),
    (GOOD_TAGS + "; i=u@Sub.Example.com", "identity", "u@Sub.Example.com"),
    (GOOD_TAGS.replace("h=from:to", "h=From :\r\n\tTo"), "signed_headers", ("from", "to")),
    (GOOD_TAGS + "; q=dns/txt", "key_name", "sel._domainkey.example.com"),
    (GOOD_TAGS.replace("d=example.com", "d=Example.COM"), "domain", "example.com"),
])
def test_signature_fields(tags, attr, value):
    assert getattr(parse_signature(sig_field(tags)), attr) == value


def test_b_value_is_deleted_with_its_folding():
    field = sig_field("v=1; b=AB\r\n\t CD ; bh=x; d=example.com")
    data = signed_header_data([], field, [], "simple")
    assert data == b"DKIM-Signature: v=1; b=; bh=x; d=example.com"
    data = signed_header_data([], field, [], "relaxed")
    assert data == b"dkim-signature:v=1; b=; bh=x; d=example.com"


def test_body_length_policy():
    pem = weak_rsa_pem(1024)
    record = spki_record(pem)
    msg = dkimpy.sign(MESSAGE, b"s", b"example.com", pem, length=True) + MESSAGE
    res = verify_first(msg, record, now=time.time())
    assert (res.result, res.body_length_limited, res.unsigned_body_octets, res.note) == (
        "pass", True, 0, "")
    extended = msg + b"Buy cheap things at evil.test\r\n"
    res = verify_first(extended, record, now=time.time())
    assert (res.result, res.body_length_limited) == ("pass", True)
    # MESSAGE ends in two empty lines: ignored at the end, content once text follows
    assert res.unsigned_body_octets == len(b"\r\n\r\nBuy cheap things at evil.test\r\n")
    assert "unsigned" in res.note
    # l= greater than the body: fail
    lval = int(re.search(rb"l=(\d+)", msg).group(1))
    shorter = msg.replace(b"the figures are   attached.  \r\n", b"")
    res = verify_first(shorter, record, now=time.time())
    assert lval > 0 and (res.result, res.reason) == ("fail", "l= is longer than the body")


# ---------------------------------------------------------------- signing


def test_sign_message_headers_and_folding():
    out = sign_message(MESSAGE, [RSA_KEY, ED_KEY], now=NOW)
    fields = sigs_of(split_message(out)[0])
    assert len(fields) == 2 and out.endswith(b"\r\n")
    assert all(len(line) <= 80 for line in out.split(b"\r\n"))
    assert b"\n" not in out.replace(b"\r\n", b"")
    sig = parse_signature(fields[0])
    present = [f.lname for f in split_message(MESSAGE)[0] if f.lname in DEFAULT_SIGNED_HEADERS]
    assert sig.signed_headers == tuple(present) + ("from",)
    assert "received" not in sig.signed_headers and "x-mailer" not in sig.signed_headers
    assert (sig.header_canon, sig.body_canon, sig.timestamp) == ("relaxed", "relaxed", int(NOW))
    assert sig.expiration is None
    custom = parse_signature(sigs_of(split_message(
        sign_message(MESSAGE, [ED_KEY], now=NOW, headers=["Subject", "X-Mailer"]))[0])[0])
    assert custom.signed_headers == ("from", "subject", "x-mailer", "from")


def test_sign_message_refusals():
    no_from = MESSAGE.replace(b"From: Alice <alice@example.com>\r\n", b"")
    with pytest.raises(ValueError):
        sign_message(no_from, [ED_KEY])
    with pytest.raises(ValueError):
        sign_message(MESSAGE, [SigningKey("example.com", "x", "rsa-sha256", ED_PEM)])
    with pytest.raises(ValueError):
        sign_message(MESSAGE, [SigningKey("example.com", "x", "ed25519-sha256", RSA_PEM)])
    with pytest.raises(ValueError):
        SigningKey("example.com", "x", "rsa-sha1", RSA_PEM)
    with pytest.raises(ValueError):
        SigningKey("exa mple.com", "x", "rsa-sha256", RSA_PEM)
    with pytest.raises(ValueError):
        sign_message(MESSAGE, [ED_KEY], canonicalization="fancy/simple")


def test_private_keys_are_loaded_once():
    load_private_key.cache_clear()
    for _ in range(5):
        sign_message(MESSAGE, [RSA_KEY, ED_KEY], now=NOW)
    info = load_private_key.cache_info()
    assert (info.misses, info.hits) == (2, 8)


def test_generate_key_formats():
    assert ED_PEM.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert RSA_PEM.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert serialization.load_pem_private_key(RSA_PEM, None).key_size == 2048
    assert ED_TXT.startswith("v=DKIM1; k=ed25519; p=") and len(ED_TXT) == 22 + 44
    assert RSA_TXT.startswith("v=DKIM1; k=rsa; p=MII")
    with pytest.raises(ValueError):
        generate_key("dsa")


# ---------------------------------------------------------------- with the DNS server


def zones_for(*keys_and_txts) -> dict[str, str]:
    lines = [zone_line(k.domain, k.selector, txt) for k, txt in keys_and_txts]
    return {"example.com": "\n".join(lines) + "\n"}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(zones_for((RSA_KEY, RSA_TXT), (ED_KEY, ED_TXT))) as server:
        yield server


@pytest.fixture
def resolver(dns):
    dns.clear_behaviour()
    dns.clear_log()
    return Resolver([dns.nameserver], timeout=0.5, attempts=1)


def test_zone_line_splits_long_records_and_round_trips(dns, resolver):
    big = generate_key("rsa", 4096)
    txt = dns_txt_record(big)
    line = zone_line("example.com", "big", txt)
    assert len(txt) > 700 and line.startswith("big._domainkey.example.com. IN TXT \"")
    dns.load({"example.com": line + "\n"})
    answer = run(resolver.lookup("big._domainkey.example.com", "TXT"))
    strings = answer.records[0].strings
    assert len(strings) == -(-len(txt) // 255) and all(len(s) <= 255 for s in strings)
    assert run(resolver.txt("big._domainkey.example.com")) == [txt]


def test_verify_message_both_signatures_via_dns(dns, resolver):
    msg = signed(keys=(RSA_KEY, ED_KEY))
    results = run(verify_message(resolver, msg, now=NOW))
    assert [(r.result, r.selector) for r in results] == [("pass", "rsa1"), ("pass", "ed1")]
    assert dns.count("rsa1._domainkey.example.com", "TXT") == 1
    assert dns.count("ed1._domainkey.example.com", "TXT") == 1


def test_unsigned_message_gives_no_results(dns, resolver):
    assert run(verify_message(resolver, MESSAGE, now=NOW)) == []
    assert dns.queries == []


@pytest.mark.parametrize("kind", ["timeout", "servfail"])
def test_dns_failure_is_temperror(dns, resolver, kind):
    dns.set_behaviour("ed1._domainkey.example.com", kind)
    results = run(verify_message(resolver, signed(keys=(RSA_KEY, ED_KEY)), now=NOW))
    assert [r.result for r in results] == ["pass", "temperror"]


def test_missing_key_is_permerror(dns, resolver):
    missing = SigningKey("example.com", "nokey", "ed25519-sha256", ED_PEM)
    results = run(verify_message(resolver, signed(keys=(missing,)), now=NOW))
    assert [(r.result, r.reason) for r in results] == [("permerror", "no key for signature")]


def test_max_signatures_limits_work(dns, resolver):
    others = [SigningKey("example.com", f"s{i}", "ed25519-sha256", ED_PEM) for i in range(4)]
    msg = signed(keys=(ED_KEY, *others))
    results = run(verify_message(resolver, msg, now=NOW, max_signatures=2))
    assert [(r.result, r.selector) for r in results] == [("pass", "ed1"), ("permerror", "s0")]
    assert sorted(dns.queries) == [("ed1._domainkey.example.com", "TXT"),
                                   ("s0._domainkey.example.com", "TXT")]


def test_bad_signatures_and_expired_ones_skip_dns(dns, resolver):
    bad = b"DKIM-Signature: v=1; a=rsa-sha1; d=example.com; s=rsa1; h=from; bh=QUJD; b=QUJD\r\n"
    msg = bad + signed(keys=(ED_KEY,), expire_after=10)
    results = run(verify_message(resolver, msg, now=NOW + 100))
    assert [r.result for r in results] == ["policy", "fail"]
    assert dns.queries == []


def test_keys_are_fetched_concurrently(dns, resolver):
    dns.set_behaviour("rsa1._domainkey.example.com", "answer", delay=0.5)
    dns.set_behaviour("ed1._domainkey.example.com", "answer", delay=0.5)
    resolver = Resolver([dns.nameserver], timeout=2.0, attempts=1)
    start = time.monotonic()
    results = run(verify_message(resolver, signed(keys=(RSA_KEY, ED_KEY)), now=NOW))
    assert [r.result for r in results] == ["pass", "pass"]
    assert time.monotonic() - start < 0.9     # one after the other: >= 1.0


def test_large_message_verifies(dns, resolver):
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz  ABCDEFGHIJKLMNOPQRSTUVWXYZ \t\r\n"
    big = MESSAGE + line * (4_000_000 // len(line))
    msg = signed(big, keys=(RSA_KEY, ED_KEY))
    assert [r.result for r in run(verify_message(resolver, msg, now=NOW))] == ["pass", "pass"]
    tampered = msg[:-10] + b"X" + msg[-9:]
    assert [r.reason for r in run(verify_message(resolver, tampered, now=NOW))] == [
        "body hash mismatch"] * 2


def test_several_key_records_at_one_name(dns, resolver):
    # junk and another key first: the one that verifies is used
    other = dns_txt_record(generate_key("ed25519"))
    dns.load({"example.com": f'multi._domainkey TXT "v=spf1 -all"\n'
                             f'multi._domainkey TXT "{other}"\n'
                             f'multi._domainkey TXT "{ED_TXT}"\n'})
    key = SigningKey("example.com", "multi", "ed25519-sha256", ED_PEM)
    assert [r.result for r in run(verify_message(resolver, signed(keys=(key,)), now=NOW))] \
        == ["pass"]
    wrong = SigningKey("example.com", "multi", "ed25519-sha256", generate_key("ed25519"))
    assert [r.result for r in run(verify_message(resolver, signed(keys=(wrong,)), now=NOW))] \
        == ["fail"]
