"""Interoperability with dkimpy 1.1.8, the independent implementation: we sign and dkimpy
verifies; dkimpy signs and we verify; RSA and Ed25519; simple and relaxed.

dkimpy does its own parsing, canonicalisation, header selection and RSA (pure Python); its
keys come through its ``dnsfunc`` argument, or from the loopback DNS server for our side.

Ed25519 in dkimpy goes through PyNaCl, which is not a dependency of this project. When
PyNaCl is missing, ``nacl_for_dkimpy`` gives dkimpy a five-line ``nacl`` (SigningKey /
VerifyKey / Base64Encoder / the two exceptions) on top of ``cryptography``'s Ed25519:
the primitive is the same RFC 8032 one, and dkimpy still decides alone what it signs
and verifies (the SHA-256 digest of its own canonicalised header data, RFC 8463 §3).
With PyNaCl installed the real one is used.
"""
from __future__ import annotations

import asyncio
import base64
import sys
import types

import dkim as dkimpy
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dnsserver import DNSServer
from mailwright.mailauth.dkim import SigningKey, sign_message, verify_message, verify_signature
from mailwright.mailauth.dkim_canon import split_message
from mailwright.mailauth.dkim_keys import dns_txt_record, generate_key, zone_line
from mailwright.net.dns import Resolver
from support import CONFORMANCE

MBOX = CONFORMANCE / "dkim" / "dkimpy" / "message.mbox"

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>, Carol <carol@example.org>\r\n"
    b"Cc:   dave@example.net\r\n"
    b"Subject: Interop  \t test\r\n"
    b" with a folded line\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <interop@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Id: <list.example.com>\r\n"
    b"\r\n"
    b"Body with  double spaces,\ttabs\t and trailing space \r\n"
    b"\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac\r\n"
    b"last line without CRLF"
)

RSA_PEM = generate_key("rsa", 2048)
ED_PEM = generate_key("ed25519")
KEYS = {
    "rsa-sha256": SigningKey("example.com", "rsa2048", "rsa-sha256", RSA_PEM),
    "ed25519-sha256": SigningKey("example.com", "ed", "ed25519-sha256", ED_PEM),
}
TXT = {"rsa2048": dns_txt_record(RSA_PEM), "ed": dns_txt_record(ED_PEM)}
CANONS = ["simple/simple", "simple/relaxed", "relaxed/simple", "relaxed/relaxed"]
NOW = 1_700_000_000.0


def dkimpy_dns(name: bytes, timeout: float = 5) -> bytes:
    selector = name.decode().split("._domainkey.")[0]
    return TXT[selector].encode()


def ed_seed_b64() -> bytes:
    """dkimpy takes Ed25519 private keys as the base64 32-octet seed."""
    key = serialization.load_pem_private_key(ED_PEM, None)
    return base64.b64encode(key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption()))


def _nacl_on_cryptography() -> dict[str, types.ModuleType]:
    nacl = types.ModuleType("nacl")
    encoding = types.ModuleType("nacl.encoding")
    signing = types.ModuleType("nacl.signing")
    exceptions = types.ModuleType("nacl.exceptions")

    class BadSignatureError(Exception):
        pass

    class NaclValueError(ValueError):
        pass

    class Base64Encoder:
        @staticmethod
        def decode(data: bytes) -> bytes:
            return base64.b64decode(data)

    class Signed:
        def __init__(self, signature: bytes) -> None:
            self.signature = signature

    class VerifyKey:
        def __init__(self, key: bytes, encoder=None) -> None:
            try:
                self._key = ed25519.Ed25519PublicKey.from_public_bytes(
                    encoder.decode(key) if encoder else key)
            except ValueError as exc:
                raise NaclValueError(str(exc)) from None

        def verify(self, message: bytes, signature: bytes) -> bytes:
            try:
                self._key.verify(signature, message)
            except InvalidSignature:
                raise BadSignatureError("bad signature") from None
            return message

    class SigningKey:
        def __init__(self, seed: bytes, encoder=None) -> None:
            try:
                self._key = ed25519.Ed25519PrivateKey.from_private_bytes(
                    encoder.decode(seed) if encoder else seed)
            except ValueError as exc:
                raise NaclValueError(str(exc)) from None

        def sign(self, message: bytes) -> Signed:
            return Signed(self._key.sign(message))

    encoding.Base64Encoder = Base64Encoder
    signing.SigningKey, signing.VerifyKey = SigningKey, VerifyKey
    exceptions.BadSignatureError, exceptions.ValueError = BadSignatureError, NaclValueError
    nacl.encoding, nacl.signing, nacl.exceptions = encoding, signing, exceptions
    return {"nacl": nacl, "nacl.encoding": encoding, "nacl.signing": signing,
            "nacl.exceptions": exceptions}


@pytest.fixture
def nacl_for_dkimpy(monkeypatch):
    try:
        import nacl.signing  # noqa: F401
        return
    except ImportError:
        pass
    modules = _nacl_on_cryptography()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(dkimpy, "nacl", modules["nacl"], raising=False)


def ours_verify(message: bytes, now: float = NOW):
    headers, start = split_message(message)
    sigs = [f for f in headers if f.lname == "dkim-signature"]
    out = []
    for sig in sigs:
        selector = dict(p.strip().split("=", 1) for p in
                        sig.value.decode().replace("\r\n", "").split(";") if "=" in p)["s"]
        out.append(verify_signature(headers, message[start:], sig, TXT.get(selector), now))
    return out


def dkimpy_sign(message: bytes, algorithm: str, canon: str, **kw) -> bytes:
    h, b = canon.encode().split(b"/")
    if algorithm == "rsa-sha256":
        return dkimpy.sign(message, b"rsa2048", b"example.com", RSA_PEM,
                           canonicalize=(h, b), **kw)
    return dkimpy.sign(message, b"ed", b"example.com", ed_seed_b64(),
                       canonicalize=(h, b), signature_algorithm=b"ed25519-sha256", **kw)


# ---------------------------------------------------------------- we sign, dkimpy verifies


@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize("algorithm", sorted(KEYS))
def test_dkimpy_verifies_our_signatures(nacl_for_dkimpy, algorithm, canon):
    for message in (MESSAGE, MBOX.read_bytes()):
        signed = sign_message(message, [KEYS[algorithm]], canonicalization=canon) + message
        assert dkimpy.verify(signed, dnsfunc=dkimpy_dns)
        tampered = signed.replace(b"Subject: ", b"Subject: Re: ")
        assert not dkimpy.verify(tampered, dnsfunc=dkimpy_dns)


def test_dkimpy_verifies_both_of_our_signatures(nacl_for_dkimpy):
    signed = sign_message(MESSAGE, list(KEYS.values())) + MESSAGE
    for idx in (0, 1):
        assert dkimpy.DKIM(signed).verify(idx=idx, dnsfunc=dkimpy_dns)


def test_our_oversigned_from_defeats_an_added_from(nacl_for_dkimpy):
    signed = sign_message(MESSAGE, list(KEYS.values()), now=NOW) + MESSAGE
    forged = signed.replace(b"\r\n\r\nBody", b"\r\nFrom: Mallory <m@evil.test>\r\n\r\nBody")
    assert [r.result for r in ours_verify(forged)] == ["fail", "fail"]
    assert not dkimpy.DKIM(forged).verify(idx=0, dnsfunc=dkimpy_dns)
    assert not dkimpy.DKIM(forged).verify(idx=1, dnsfunc=dkimpy_dns)


# ---------------------------------------------------------------- dkimpy signs, we verify


@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize("algorithm", sorted(KEYS))
def test_we_verify_dkimpy_signatures(nacl_for_dkimpy, algorithm, canon):
    for message in (MESSAGE, MBOX.read_bytes()):
        signed = dkimpy_sign(message, algorithm, canon) + message
        # message.mbox carries a kitterman.com signature whose key is not here
        res, *foreign = ours_verify(signed, now=NOW * 2)
        assert (res.result, res.algorithm, res.domain) == ("pass", algorithm, "example.com")
        assert [r.result for r in foreign] == ["permerror"] * len(foreign)
        assert ours_verify(signed.replace(b"Subject: ", b"Subject: Re: "),
                           NOW * 2)[0].reason == "signature did not verify"
        assert ours_verify(signed + b"\r\nappended\r\n",
                           NOW * 2)[0].reason == "body hash mismatch"


@pytest.mark.parametrize("algorithm", sorted(KEYS))
def test_we_verify_dkimpy_with_all_headers_and_repeats(nacl_for_dkimpy, algorithm):
    # message.mbox has repeated Received fields and an existing foreign signature
    message = MBOX.read_bytes()
    d = dkimpy.DKIM(message)
    d.should_not_sign.remove(b"received")
    if algorithm == "rsa-sha256":
        sig = d.sign(b"rsa2048", b"example.com", RSA_PEM, include_headers=d.all_sign_headers(),
                     canonicalize=(b"relaxed", b"relaxed"))
    else:
        sig = d.sign(b"ed", b"example.com", ed_seed_b64(), include_headers=d.all_sign_headers(),
                     canonicalize=(b"simple", b"simple"), signature_algorithm=b"ed25519-sha256")
    results = ours_verify(sig + message, now=NOW * 2)
    # ours passes; the kitterman.com signature has no key here: permerror
    assert [r.result for r in results] == ["pass", "permerror"]


def test_we_verify_dkimpy_l_tag_and_report_unsigned_content(nacl_for_dkimpy):
    for algorithm in sorted(KEYS):
        signed = dkimpy_sign(MESSAGE, algorithm, "relaxed/relaxed", length=True) + MESSAGE
        [res] = ours_verify(signed, now=NOW * 2)
        assert (res.result, res.body_length_limited, res.unsigned_body_octets) == (
            "pass", True, 0)
        appended = signed + b"\r\n-- \r\nUnsigned footer\r\n"
        assert dkimpy.verify(appended, dnsfunc=dkimpy_dns)      # dkimpy: plain pass
        [res] = ours_verify(appended, now=NOW * 2)
        assert res.result == "pass" and res.body_length_limited
        assert res.unsigned_body_octets > 0 and res.note


def test_dkimpy_signatures_through_real_dns(nacl_for_dkimpy):
    signed = (dkimpy_sign(MESSAGE, "rsa-sha256", "relaxed/simple")
              + dkimpy_sign(MESSAGE, "ed25519-sha256", "simple/relaxed") + MESSAGE)
    zone = "\n".join(zone_line("example.com", s, t) for s, t in TXT.items()) + "\n"

    async def main():
        with DNSServer({"example.com": zone}) as server:
            resolver = Resolver([server.nameserver], timeout=1.0)
            return await verify_message(resolver, signed)

    results = asyncio.run(main())
    assert [(r.result, r.selector) for r in results] == [("pass", "rsa2048"), ("pass", "ed")]
