"""ARC sealing and validation with our own keys, through a real DNS server on loopback.

Keys are generated here (real RSA), published as DKIM key records (RFC 6376 §3.6.1) in a
DNSServer, and every verification goes through our Resolver over real sockets.
"""
from __future__ import annotations

import asyncio
import base64
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from dnsserver import DNSServer
from mailwright.mailauth.arc import ARCResult, seal_message, split_auth_results, verify_chain
from mailwright.net.dns import Resolver

T0 = 1_700_000_000.0

MESSAGE = (
    b"Received: from client.example.com (client.example.com [192.0.2.7])\r\n"
    b"\tby mx.example.net with ESMTP; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=alice@example.com\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: forwarded\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"this message is forwarded to you.\r\n"
)


def _pem(key, fmt=serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _record(key) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def _txt(record: str) -> str:
    """Zone-file TXT data: strings of at most 255 octets (RFC 1035 §3.3.14)."""
    return " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))


@pytest.fixture(scope="module")
def keys():
    return {"fwd": rsa.generate_private_key(65537, 2048),
            "hop2": rsa.generate_private_key(65537, 1024)}


@pytest.fixture
def server(keys):
    zones = {
        "example.net": f"arc._domainkey TXT {_txt(_record(keys['fwd']))}\n",
        "example.org": f"s2._domainkey TXT {_txt(_record(keys['hop2']))}\n",
    }
    with DNSServer(zones) as srv:
        yield srv


def verify(server: DNSServer, message: bytes, *, now: float | None = T0,
           timeout: float = 1.0) -> ARCResult:
    resolver = Resolver([server.nameserver], timeout=timeout, attempts=1)
    return asyncio.run(asyncio.wait_for(verify_chain(resolver, message, now=now), 30))


def seal(message: bytes, key, *, domain="example.net", selector="arc", cv="none",
         results="arc=none smtp.remote-ip=192.0.2.7; spf=pass smtp.mailfrom=alice@example.com",
         now=T0, **kw) -> bytes:
    return seal_message(message, domain=domain, selector=selector, private_key_pem=_pem(key),
                        authserv_id="mx.example.net", auth_results=results,
                        chain_validation=cv, now=now, **kw)


def fields(headers: bytes) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z-]+):\s*((?:[^\r\n]|\r\n[ \t])*)\r\n",
                           headers.decode(), re.M))


def tags(value: str) -> dict[str, str]:
    return dict(t.split("=", 1) for t in re.sub(r"\s+", "", value).split(";") if t)


# ---------------------------------------------------------------------- round trips

def test_seal_then_verify_passes(server, keys):
    arc_set = seal(MESSAGE, keys["fwd"])
    assert arc_set.endswith(b"\r\n") and b"\n" not in arc_set.replace(b"\r\n", b"")
    got = fields(arc_set)
    assert list(got) == ["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]
    assert all(len(line) <= 998 for line in arc_set.split(b"\r\n"))
    seal_tags, ams_tags = tags(got["ARC-Seal"]), tags(got["ARC-Message-Signature"])
    assert {k: seal_tags[k] for k in ("a", "cv", "d", "i", "s", "t")} == {
        "a": "rsa-sha256", "cv": "none", "d": "example.net", "i": "1", "s": "arc",
        "t": str(int(T0))}
    assert ams_tags["c"] == "relaxed/relaxed" and "from" in ams_tags["h"].split(":")
    assert "authentication-results" not in ams_tags["h"].split(":")
    assert got["ARC-Authentication-Results"].startswith("i=1; mx.example.net;")

    result = verify(server, arc_set + MESSAGE)
    assert result == ARCResult("pass", instances=1, reason="chain validated",
                               sealer_domain="example.net", oldest_pass=0,
                               remote_ip="192.0.2.7")
    assert server.count("arc._domainkey.example.net", "TXT") >= 1


def test_second_hop_extends_the_chain(server, keys):
    hop1 = seal(MESSAGE, keys["fwd"]) + MESSAGE
    assert verify(server, hop1).cv == "pass"
    hop2 = seal(hop1, keys["hop2"], domain="example.org", selector="s2", cv="pass",
                results="arc=pass smtp.remote-ip=198.51.100.9", now=T0 + 60) + hop1
    result = verify(server, hop2)
    assert (result.cv, result.instances, result.sealer_domain, result.remote_ip,
            result.oldest_pass) == ("pass", 2, "example.org", "198.51.100.9", 0)


def test_pkcs1_key_and_explicit_header_list(server, keys):
    pem = _pem(keys["fwd"], serialization.PrivateFormat.TraditionalOpenSSL)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    arc_set = seal_message(MESSAGE, domain="example.net", selector="arc",
                           private_key_pem=pem, authserv_id="mx.example.net",
                           auth_results="spf=pass smtp.mailfrom=alice@example.com",
                           chain_validation="none", now=T0,
                           sign_headers=["From", "Subject", "To", "Message-ID"])
    assert tags(fields(arc_set)["ARC-Message-Signature"])["h"] == "from:subject:to:message-id"
    assert verify(server, arc_set + MESSAGE).cv == "pass"


def test_modified_subject_breaks_the_ams(server, keys):
    sealed = seal(MESSAGE, keys["fwd"]) + MESSAGE
    result = verify(server, sealed.replace(b"Subject: forwarded", b"Subject: forged"))
    assert (result.cv, result.failed_instance) == ("fail", 1)


# ---------------------------------------------------------------------- tampering

@pytest.mark.parametrize("old,new", [
    (b"this message is forwarded", b"this message is FORWARDED"),   # body: bh= mismatch
    (b"Hello Bob,\r\n", b"Hello Bob,\r\nextra line\r\n"),           # body grows
])
def test_tampered_body_fails(server, keys, old, new):
    sealed = seal(MESSAGE, keys["fwd"]) + MESSAGE
    result = verify(server, sealed.replace(old, new))
    assert (result.cv, result.failed_instance, result.instances) == ("fail", 1, 1)


def test_tampered_aar_breaks_the_seal(server, keys):
    sealed = seal(MESSAGE, keys["fwd"]) + MESSAGE
    aar_at = sealed.index(b"ARC-Authentication-Results:")
    assert sealed.index(b"smtp.mailfrom=alice@", aar_at) < sealed.index(b"\r\nReceived:")
    forged = sealed.replace(b"smtp.mailfrom=alice@", b"smtp.mailfrom=mallory@", 1)
    result = verify(server, forged)
    assert (result.cv, result.failed_instance) == ("fail", 1)


def test_key_not_published_is_fail_not_temperror(server, keys):
    sealed = seal(MESSAGE, keys["fwd"], selector="missing") + MESSAGE
    result = verify(server, sealed)
    assert result.cv == "fail"


def test_wrong_key_published_fails(server, keys):
    sealed = seal(MESSAGE, keys["hop2"]) + MESSAGE      # signed with the other key
    assert verify(server, sealed).cv == "fail"


# ---------------------------------------------------------------------- DNS failures

@pytest.mark.parametrize("behaviour", ["timeout", "servfail"])
def test_dns_failure_is_temperror(server, keys, behaviour):
    sealed = seal(MESSAGE, keys["fwd"]) + MESSAGE
    server.set_behaviour("arc._domainkey.example.net", behaviour)
    result = verify(server, sealed, timeout=0.3)
    assert result.cv == "temperror"
    assert "arc._domainkey.example.net" in result.reason
    server.clear_behaviour()
    assert verify(server, sealed).cv == "pass"


def test_dns_failure_on_older_set_is_temperror(server, keys):
    hop1 = seal(MESSAGE, keys["fwd"]) + MESSAGE
    hop2 = seal(hop1, keys["hop2"], domain="example.org", selector="s2", cv="pass",
                results="arc=pass") + hop1
    server.set_behaviour("arc._domainkey.example.net", "timeout")
    assert verify(server, hop2, timeout=0.3).cv == "temperror"


# ---------------------------------------------------------------------- clock

def test_now_controls_the_timestamp_check(server, keys):
    sealed = seal(MESSAGE, keys["fwd"], now=T0) + MESSAGE
    assert verify(server, sealed, now=T0).cv == "pass"
    # dkimpy allows 10 hours of clock skew for t= in the future; 11 hours is too much.
    early = verify(server, sealed, now=T0 - 11 * 3600)
    assert early.cv == "fail"
    assert "future" in early.reason
    assert verify(server, sealed, now=None).cv == "pass"       # the real clock: T0 is past


# ---------------------------------------------------------------------- chain states

def test_no_arc_headers_is_none_without_dns(server):
    result = verify(server, MESSAGE)
    assert result == ARCResult("none", reason="no ARC sets")
    assert server.queries == []


def test_newest_seal_cv_fail(server, keys):
    hop1 = seal(MESSAGE, keys["fwd"]) + MESSAGE
    broken = hop1.replace(b"this message", b"This message")
    assert verify(server, broken).cv == "fail"
    # We forward it anyway and record the failure: our seal covers only our set (§5.1.2).
    hop2 = seal(broken, keys["hop2"], domain="example.org", selector="s2", cv="fail",
                results="arc=fail") + broken
    server.clear_log()
    result = verify(server, hop2)
    assert (result.cv, result.failed_instance, result.instances) == ("fail", 2, 2)
    assert server.queries == []                      # decided without DNS (§5.2 step 2)
    # A chain whose newest seal says cv=fail is not sealed again (§5.1 step 2).
    assert seal(hop2, keys["fwd"], cv="fail", results="arc=fail") == b""


def test_more_than_fifty_sets_fails_without_dns(server):
    msg = b"ARC-Seal: i=51; a=rsa-sha256; cv=pass; d=example.net; s=arc; b=AAAA\r\n" + MESSAGE
    result = verify(server, msg)
    assert (result.cv, result.instances) == ("fail", 51)
    assert server.queries == []


def test_structurally_broken_chain(server, keys):
    sealed = seal(MESSAGE, keys["fwd"]) + MESSAGE
    no_aar = re.sub(rb"ARC-Authentication-Results:.*?\r\n(?=[^ \t])", b"", sealed,
                    flags=re.S)
    assert b"ARC-Authentication-Results" not in no_aar
    result = verify(server, no_aar)
    assert (result.cv, result.failed_instance) == ("fail", 1)


# ---------------------------------------------------------------------- refusals

@pytest.mark.parametrize("cv,results,message_kind,error", [
    ("pass", "arc=pass", "fresh", "impossible"),        # i=1 must say cv=none (§4.1.3)
    ("fail", "arc=fail", "fresh", "impossible"),
    ("none", "arc=none", "sealed", "impossible"),       # i>1 must say pass or fail
    ("none", "arc=pass", "fresh", "chain_validation"),  # AAR disagrees with cv=
    ("temperror", "", "fresh", "must be one of"),
])
def test_inconsistent_chain_validation_is_refused(keys, cv, results, message_kind, error):
    message = MESSAGE if message_kind == "fresh" else seal(MESSAGE, keys["fwd"]) + MESSAGE
    with pytest.raises(ValueError, match=error):
        seal(message, keys["fwd"], cv=cv, results=results)


def test_pass_on_a_malformed_chain_is_refused(keys):
    sealed = seal(MESSAGE, keys["fwd"]) + MESSAGE
    doubled = fields(sealed)["ARC-Seal"]
    with pytest.raises(ValueError, match="malformed"):
        seal(b"ARC-Seal: " + doubled.encode() + b"\r\n" + sealed, keys["fwd"], cv="pass",
             results="arc=pass")


def test_unsuitable_keys_are_refused(keys):
    with pytest.raises(ValueError, match="rsa-sha256 only"):
        seal(MESSAGE, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="cannot load"):
        seal_message(MESSAGE, domain="example.net", selector="arc",
                     private_key_pem=b"not a key", authserv_id="mx.example.net",
                     auth_results="", chain_validation="none")


@pytest.mark.parametrize("headers,error", [
    (["subject", "to"], "From header field must be signed"),
    (["from", "arc-seal"], "no ARC-Seal"),
    (["from", "bad name"], "bad AMS header list"),
])
def test_bad_header_lists_are_refused(keys, headers, error):
    with pytest.raises(ValueError, match=error):
        seal(MESSAGE, keys["fwd"], sign_headers=headers)


@pytest.mark.parametrize("domain,selector", [
    ("example.net\r\nBcc: x@y.example", "arc"),
    ("example.net", "arc;x=1"),
    ("", "arc"),
    ("example.net", "a b"),
])
def test_bad_domain_or_selector_is_refused(keys, domain, selector):
    with pytest.raises(ValueError, match="bad ARC domain or selector"):
        seal(MESSAGE, keys["fwd"], domain=domain, selector=selector)


def test_results_cannot_inject_lines(server, keys):
    arc_set = seal(MESSAGE, keys["fwd"], results="spf=pass\r\nBcc: x@y.example")
    assert b"\r\nBcc" not in arc_set
    assert verify(server, arc_set + MESSAGE).cv == "pass"


def test_unparseable_header_section(server):
    assert verify(server, b"Subject: hi\r\nno colon here\r\n\r\nbody\r\n").cv == "none"
    bad = b"ARC-Seal: i=1; cv=none\r\nno colon here\r\n\r\nbody\r\n"
    assert verify(server, bad).cv == "fail"
    assert server.queries == []


def test_empty_results_become_none(server, keys):
    arc_set = seal(MESSAGE, keys["fwd"], results="")
    assert fields(arc_set)["ARC-Authentication-Results"] == "i=1; mx.example.net;\r\n none"
    assert verify(server, arc_set + MESSAGE).cv == "pass"


# ---------------------------------------------------------------------- AR splitting

@pytest.mark.parametrize("value,pieces", [
    ("example.net; spf=pass smtp.mailfrom=a@b.example",
     ["example.net", "spf=pass smtp.mailfrom=a@b.example"]),
    (" example.net 1 ;\r\n\tarc=none;\r\n  dkim=pass (1024-bit; key) header.d=b.example; ",
     ["example.net 1", "arc=none", "dkim=pass (1024-bit; key) header.d=b.example"]),
    ('example.net; x=pass reason="a; b"; dmarc=fail (p=reject (nested; c))',
     ["example.net", 'x=pass reason="a; b"', "dmarc=fail (p=reject (nested; c))"]),
    (r"example.net; spf=none (a \) ; b) smtp.helo=h", [r"example.net",
                                                        r"spf=none (a \) ; b) smtp.helo=h"]),
    ("example.net; none", ["example.net", "none"]),
    ("", []),
])
def test_split_auth_results(value, pieces):
    assert split_auth_results(value) == pieces
