"""Email authentication end to end (issue 4): real servers, the loopback DNS server.

* a spoofed sender (SPF fail, DMARC p=reject) is refused at end of data with the reason;
* a properly signed message from a domain with published records arrives with spf=pass
  dkim=pass dmarc=pass in one Authentication-Results field;
* p=quarantine failures land in the Junk folder; forged Authentication-Results claiming
  our authserv-id are removed; a DNS timeout is a 451, never a pass;
* mail we send (DKIM-signed with keys from `mailwright dkim keygen`) verifies at a
  receiving Mailwright instance.
"""
from __future__ import annotations

import itertools
import json
import smtplib
import ssl
import time

import pytest

from dnsserver import DNSServer
from mailwright.mailauth.dkim import SigningKey, sign_message
from mailwright.mailauth.dkim_keys import dns_txt_record, generate_key
from support import MailServer

ROOT = "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"
SENDER_KEY = generate_key("rsa", 2048)
SENDER_TXT = dns_txt_record(SENDER_KEY)


def txt(value: str) -> str:
    return " ".join('"' + value[i:i + 250] + '"' for i in range(0, len(value), 250))


ZONES = {
    ".": ROOT,
    # A domain that publishes everything: SPF for loopback, DKIM key, DMARC reject.
    "good.test": (f'@ TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'
                  f"s1._domainkey TXT {txt(SENDER_TXT)}\n"
                  f'_dmarc TXT "v=DMARC1; p=reject"\n'),
    # A bank that never sends from loopback: spoofing it must fail.
    "bank.test": ('@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
                  '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@bank.test"\n'),
    "shop.test": ('@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
                  '_dmarc TXT "v=DMARC1; p=quarantine"\n'),
    "slow.test": '@ TXT "v=spf1 ip4:127.0.0.0/8 -all"\n',
}


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory, dns):
    srv = MailServer(tmp_path_factory.mktemp("auth"), domains=("example.test",),
                     extra_sections=f'[outbound]\nnameservers = ["{dns.nameserver}"]\n'
                                    "dns_timeout = 0.5\n")
    srv.cli("user", "add", "alice@example.test")
    srv.start()
    yield srv
    srv.stop()


def message(sender: str, subject: str = "hi", extra: str = "") -> bytes:
    return (f"From: <{sender}>\r\nTo: <alice@example.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n{extra}\r\n"
            f"Hello from {sender}.\r\n").encode()


def send(server, sender: str, body: bytes):
    with smtplib.SMTP(server.host, server.port, timeout=20) as s:
        s.ehlo("client.example")
        code, resp = s.mail(sender)
        if code != 250:
            return code, resp
        assert s.rcpt("alice@example.test")[0] == 250
        try:
            return s.data(body)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error


def wait_subject(server, subject: str, folder: str = "", timeout: float = 20.0) -> bytes:
    """The delivered copy of alice's message with this Subject (waits for it)."""
    needle = f"Subject: {subject}\r\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in server.delivered("alice@example.test", folder):
            if needle in m:
                return m
        time.sleep(0.05)
    raise AssertionError(f"no message {subject!r} in {folder or 'INBOX'}")


def auth_results(raw: bytes) -> str:
    """The unfolded Authentication-Results field of a delivered message."""
    lines = raw.split(b"\r\n")
    for i, line in enumerate(lines):
        if line.startswith(b"Authentication-Results:"):
            value = [line]
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value.append(cont.strip())
            return b" ".join(value).decode()
    raise AssertionError("no Authentication-Results in " + raw[:400].decode(errors="replace"))


def test_spoofed_sender_with_spf_fail_and_dmarc_reject_is_refused_at_end_of_data(server):
    code, resp = send(server, "ceo@bank.test", message("ceo@bank.test", "spoof"))
    assert code == 550
    assert resp.startswith(b"5.7.1") and b"DMARC policy of bank.test" in resp
    log = server.log()
    assert "check=dmarc" in log and "dmarc=fail p=reject" in log and "from=bank.test" in log
    assert not [m for m in server.delivered("alice@example.test") if b"spoof" in m]


def test_signed_message_from_a_published_domain_passes_everything(server):
    body = message("news@good.test", "signed")
    sig = sign_message(body, [SigningKey("good.test", "s1", "rsa-sha256", SENDER_KEY)])
    code, _ = send(server, "news@good.test", sig + body)
    assert code == 250
    ar = auth_results(wait_subject(server, "signed"))
    assert ar.startswith("Authentication-Results: mx.example.test;")
    assert "spf=pass smtp.mailfrom=news@good.test" in ar
    assert "dkim=pass" in ar and "header.d=good.test" in ar and "header.s=s1" in ar
    assert "dmarc=pass" in ar and "header.from=good.test" in ar
    assert "arc=none" in ar


def test_tampered_signature_fails_dkim_but_aligned_spf_still_passes_dmarc(server):
    body = message("news@good.test", "tampered")
    sig = sign_message(body, [SigningKey("good.test", "s1", "rsa-sha256", SENDER_KEY)])
    code, _ = send(server, "news@good.test", sig + body.replace(b"Hello", b"Jello"))
    assert code == 250
    ar = auth_results(wait_subject(server, "tampered"))
    assert "dkim=fail" in ar and "spf=pass" in ar and "dmarc=pass" in ar


def test_dmarc_quarantine_goes_to_the_junk_folder_with_the_reason(server):
    code, _ = send(server, "offers@shop.test", message("offers@shop.test", "cheap stuff"))
    assert code == 250
    junk = wait_subject(server, "cheap stuff", folder="Junk")
    assert b"X-Mailwright-Quarantine: dmarc=fail (p=quarantine) header.from=shop.test" in junk
    assert not [m for m in server.delivered("alice@example.test") if b"cheap stuff" in m]


def test_forged_results_and_quarantine_marks_from_outside_are_removed(server):
    forged = ("Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
              "Authentication-Results: other.example; spf=pass\r\n"
              "X-Mailwright-Quarantine: nothing to see\r\n")
    body = message("news@good.test", "forged", extra=forged)
    sig = sign_message(body, [SigningKey("good.test", "s1", "rsa-sha256", SENDER_KEY)],
                       headers=["from", "to", "subject", "message-id"])
    code, _ = send(server, "news@good.test", sig + body)
    assert code == 250
    got = wait_subject(server, "forged")
    assert got.count(b"Authentication-Results: mx.example.test;") == 1
    assert b"dkim=pass header.d=bank.test" not in got
    assert b"Authentication-Results: other.example; spf=pass" in got   # not ours: kept
    assert b"X-Mailwright-Quarantine" not in got
    assert "dkim=pass" in auth_results(got)


def test_dns_timeout_is_a_temporary_failure_never_a_pass(server, dns):
    """SPF runs in the background from MAIL on; its temperror answers end of data with
    451 4.7.24 (RFC 7372 §3.2): the sender retries, nothing is accepted unchecked."""
    dns.set_behaviour("slow.test", "timeout")
    try:
        code, resp = send(server, "someone@slow.test", message("someone@slow.test", "slow"))
        assert code == 451 and resp.startswith(b"4.7.24")
    finally:
        dns.clear_behaviour()
    assert not [m for m in server.delivered("alice@example.test") if b"Subject: slow" in m]


def test_mail_we_send_verifies_at_a_receiving_mailwright(tmp_path, dns):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    receiver = MailServer(tmp_path / "b", domains=("remote.test",), hostname="mx.remote.test",
                          extra_sections=f'[outbound]\nnameservers = ["{dns.nameserver}"]\n')
    receiver.cli("user", "add", "bob@remote.test")
    receiver.start()
    try:
        sender = MailServer(tmp_path / "a", domains=("example.test",), submission=True,
                            extra_sections=f'[outbound]\nport = {receiver.port}\n'
                                           f'nameservers = ["{dns.nameserver}"]\n'
                                           "dns_timeout = 1\n")
        sender.cli("user", "add", "alice@example.test", "--password-stdin",
                   input="correct horse\n")
        rsa_key = json.loads(sender.cli("dkim", "keygen", "example.test", "--selector", "r1",
                                        "--json").stdout)
        ed_key = json.loads(sender.cli("dkim", "keygen", "example.test", "--selector", "e1",
                                       "--algorithm", "ed25519", "--json").stdout)
        # Publish what the sender's admin is told to publish.
        dns.load({"example.test": f"@ TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n"
                                  f"r1._domainkey TXT {txt(rsa_key['txt'])}\n"
                                  f"e1._domainkey TXT {txt(ed_key['txt'])}\n"
                                  '_dmarc TXT "v=DMARC1; p=reject"\n',
                  "remote.test": "@ MX 10 mx\nmx A 127.0.0.1\n"})
        sender.start()
        try:
            with smtplib.SMTP(sender.host, sender.sub_port, timeout=20) as s:
                s.starttls(context=tls_context())
                s.ehlo("laptop.test")
                s.login("alice@example.test", "correct horse")
                s.sendmail("alice@example.test", ["bob@remote.test"],
                           b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n"
                           b"Subject: across\r\n\r\nsigned on the way out\r\n")
            got = receiver.wait_delivered("bob@remote.test", 1, timeout=30)
        finally:
            sender.stop()
    finally:
        receiver.stop()
    raw = got[-1]
    assert raw.count(b"DKIM-Signature:") == 2
    ar = auth_results(raw)
    assert ar.startswith("Authentication-Results: mx.remote.test;")
    assert "spf=pass smtp.mailfrom=alice@example.test" in ar
    assert "header.s=r1" in ar and "header.s=e1" in ar
    assert ar.count("dkim=pass") == 2
    assert "dmarc=pass" in ar and "header.from=example.test" in ar


def test_forwarding_through_an_alias_adds_a_verifiable_arc_set(tmp_path, dns):
    """RFC 8617 §5.1: mail we forward to an external address (alias expansion) leaves with
    an ARC set sealed by the primary domain's key, carrying our Authentication-Results; the
    chain validates at the next hop."""
    import asyncio

    from e2e.test_outbound import ThreadedSink, wait_for
    from mailwright.mailauth.arc import verify_chain
    from mailwright.net.dns import Resolver
    from outbound.sink import free_port

    port = free_port(["127.0.0.2"])
    with ThreadedSink(host="127.0.0.2", port=port, name="mx.remote.test") as sink:
        srv = MailServer(tmp_path, domains=("example.test",),
                         extra_sections=f'[outbound]\nport = {port}\n'
                                        f'nameservers = ["{dns.nameserver}"]\ndns_timeout = 1\n')
        srv.cli("alias", "add", "fwd@example.test", "bob@remote.test")
        key = json.loads(srv.cli("dkim", "keygen", "example.test", "--selector", "arc1",
                                 "--json").stdout)
        dns.load({"example.test": f"arc1._domainkey TXT {txt(key['txt'])}\n",
                  "remote.test": "@ MX 10 mx\nmx A 127.0.0.2\n"})
        srv.start()
        try:
            body = message("news@good.test", "forwarded")
            sig = sign_message(body, [SigningKey("good.test", "s1", "rsa-sha256", SENDER_KEY)])
            with smtplib.SMTP(srv.host, srv.port, timeout=20,
                              local_hostname="mx.good.test") as s:
                s.sendmail("news@good.test", ["fwd@example.test"], sig + body)
            assert wait_for(lambda: any(t.body for t in sink.transactions), timeout=30)
        finally:
            srv.stop()
    got = [t for t in sink.transactions if t.body][0].body
    assert got.count(b"ARC-Seal:") == 1 and got.count(b"ARC-Message-Signature:") == 1
    aar = got[got.index(b"ARC-Authentication-Results: i=1;"):].split(b"\r\n")
    folded = itertools.takewhile(lambda x: x[:1] in (b" ", b"\t"), aar[1:])
    aar = b" ".join([aar[0], *(x.strip() for x in folded)])
    assert b"mx.example.test" in aar and b"dkim=pass" in aar and b"arc=none" in aar

    async def verify():
        resolver = Resolver([dns.nameserver], timeout=2)
        return await verify_chain(resolver, got)
    result = asyncio.run(verify())
    assert result.cv == "pass", result
    assert result.sealer_domain == "example.test" and result.instances == 1
