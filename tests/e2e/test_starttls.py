"""STARTTLS: the server-side injection cases of smtp-security/starttls-injection-cases.yaml,
and the state reset of RFC 3207 §4.2, over real TLS with the server's generated certificate."""
import socket
import ssl

import pytest
import yaml

from support import CONFORMANCE, RawClient

SUITE = yaml.safe_load((CONFORMANCE / "smtp-security" / "starttls-injection-cases.yaml").read_text())
CASES = {c["id"]: c for c in SUITE["server_cases"]}


def _tls_reply_or_none(c: RawClient, timeout=1.0):
    c.sock.settimeout(timeout)
    try:
        return c.reply()
    except (socket.timeout, ssl.SSLError, TimeoutError):
        return None


@pytest.mark.parametrize("case_id", ["inj-ehlo", "inj-rset", "inj-mailfrom"])
def test_plaintext_injected_after_starttls_is_discarded(server, case_id):
    case = CASES[case_id]
    c = RawClient(server.host, server.port)
    assert c.reply()[0] == 220
    first, second = case["plaintext_segments"]
    c.send(first)
    assert c.reply()[0] == 250
    c.send(second)               # STARTTLS plus injected commands in ONE segment
    code, _ = c.reply()
    assert code == 220
    c.starttls()
    after = case.get("after_tls_send", "NOOP\r\n")
    c.send(after)
    code, lines = c.reply()
    # The first TLS-side reply answers what we sent inside TLS, not the injected command.
    if after.startswith("FAKE"):
        assert code in (500, 502), lines
    else:
        assert code == 250 and "2.0.0" in lines[0]
    # Injected MAIL FROM was not executed: RCPT now is a sequence error (after EHLO).
    assert c.cmd("EHLO t")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 503
    c.close()


def test_starttls_twice_refused_and_not_advertised(server):
    c = RawClient(server.host, server.port)
    c.reply()
    code, lines = c.cmd("EHLO t")
    assert any("STARTTLS" in l for l in lines)
    assert c.cmd("STARTTLS")[0] == 220
    c.starttls()
    code, lines = c.cmd("EHLO t")
    assert code == 250 and not any("STARTTLS" in l for l in lines)
    assert c.cmd("STARTTLS")[0] in (502, 503, 554)
    c.close()


def test_state_reset_after_tls(server):
    c = RawClient(server.host, server.port)
    c.reply()
    c.cmd("EHLO t")
    code, _ = c.cmd("MAIL FROM:<a@sender.example>")
    assert code == 250
    code, _ = c.cmd("STARTTLS")
    assert code == 503, "STARTTLS inside a transaction is refused"
    assert c.cmd("RSET")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    c.starttls()
    # RFC 3207 §4.2: prior knowledge discarded; MAIL needs a fresh EHLO.
    assert c.cmd("MAIL FROM:<a@sender.example>")[0] == 503
    assert c.cmd("EHLO t")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 503
    c.close()


def test_data_containing_starttls_is_body(server):
    before = len(server.delivered("alice@example.test"))
    c = RawClient(server.host, server.port)
    c.reply()
    c.cmd("EHLO t")
    c.cmd("MAIL FROM:<a@sender.example>")
    c.cmd("RCPT TO:<alice@example.test>")
    assert c.cmd("DATA")[0] == 354
    c.send("Subject: tls\r\n\r\nSTARTTLS\r\nRSET\r\n.\r\n")
    assert c.reply()[0] == 250
    c.close()
    got = server.wait_delivered("alice@example.test", before + 1)
    assert b"\r\nSTARTTLS\r\nRSET\r\n" in got[-1]


def test_auth_not_offered_on_port_25(server):
    c = RawClient(server.host, server.port)
    c.reply()
    code, lines = c.cmd("EHLO t")
    assert not any("AUTH" in l for l in lines)
    assert c.cmd("AUTH PLAIN AGFhYQBiYmI=")[0] >= 500
    c.close()
