"""End to end over loopback: smtplib (with STARTTLS) → queue → Maildir."""
import smtplib
import ssl
import time

import pytest

from support import MailServer, RawClient


def _tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def split_delivered(raw: bytes) -> tuple[list[bytes], bytes]:
    """Separate the trace headers Mailwright prepends from the stored message."""
    trace = []
    rest = raw
    while rest.startswith((b"Return-Path:", b"Delivered-To:", b"Received:",
                           b"Authentication-Results: mx.example.test;")):
        end = rest.index(b"\r\n")
        while rest[end + 2:end + 3] in (b" ", b"\t"):
            end = rest.index(b"\r\n", end + 2)
        trace.append(rest[:end])
        rest = rest[end + 2:]
    return trace, rest


BODY = (b"From: Carol <carol@sender.example>\r\nTo: alice@example.test\r\n"
        b"Subject: hello\r\n\r\nFirst line\r\n.leading dot\r\n\r\n\xc3\xa9t\xc3\xa9 8bit\r\n")


def test_starttls_delivery_is_byte_identical_with_trace_headers(server):
    before = len(server.delivered("alice@example.test"))
    with smtplib.SMTP(server.host, server.port, timeout=10) as s:
        s.ehlo("client.sender.example")
        assert s.has_extn("starttls") and s.has_extn("pipelining") and s.has_extn("chunking")
        s.starttls(context=_tls_ctx())
        s.ehlo("client.sender.example")
        code, resp = s.mail("carol@sender.example", ["BODY=8BITMIME"])
        assert code == 250
        assert s.rcpt("alice@example.test")[0] == 250
        code, resp = s.data(BODY)
        assert code == 250 and resp.startswith(b"2.0.0 Ok: queued as ")
        queue_id = resp.split()[-1].decode()
    got = server.wait_delivered("alice@example.test", before + 1)
    assert len(got) == before + 1
    trace, stored = split_delivered(got[-1])
    # Above the message as sent: our Authentication-Results (RFC 8601; the loopback DNS
    # has no records for sender.example: spf=none, no DKIM, no DMARC policy).
    ar = b" ".join(t for t in trace if t.startswith(b"Authentication-Results"))
    assert ar.startswith(b"Authentication-Results: mx.example.test;")
    assert b"spf=none" in ar and b"dkim=none" in ar and b"dmarc=none" in ar
    assert stored == BODY
    assert trace[0] == b"Return-Path: <carol@sender.example>"
    assert trace[1] == b"Delivered-To: alice@example.test"
    received = b" ".join(t for t in trace[2:] if t.startswith(b"Received")).decode()
    assert "from client.sender.example" in received and "[127.0.0.1]" in received
    assert queue_id in received and "ESMTPS" in received and "TLSv1.3" in received
    # The queue records the recipient as delivered.
    shown = server.cli("queue", "show", queue_id, "--json").stdout
    assert '"delivered"' in shown


def test_unknown_local_user_rejected_at_rcpt(server):
    with smtplib.SMTP(server.host, server.port, timeout=10) as s:
        s.ehlo("c.example")
        s.mail("x@sender.example")
        code, resp = s.rcpt("nobody@example.test")
        assert code == 550 and resp.startswith(b"5.1.1")


@pytest.mark.parametrize("rcpt", ["postmaster", "POSTMASTER", "PostMaster@Example.Test"])
def test_postmaster_always_accepted(server, rcpt):
    before = len(server.delivered("postmaster@example.test"))
    c = RawClient(server.host, server.port)
    c.reply()
    c.cmd("EHLO c.example")
    assert c.cmd("MAIL FROM:<x@sender.example>")[0] == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send("Subject: pm\r\n\r\nhi\r\n.\r\n")
    assert c.reply()[0] == 250
    c.close()
    assert len(server.wait_delivered("postmaster@example.test", before + 1)) == before + 1


def test_subaddress_and_case_insensitive_mailbox(server):
    before = len(server.delivered("bob@example.test"))
    with smtplib.SMTP(server.host, server.port, timeout=10) as s:
        s.sendmail("x@sender.example", ["Bob+lists@EXAMPLE.test"], b"Subject: tag\r\n\r\nx\r\n")
    got = server.wait_delivered("bob@example.test", before + 1)
    assert len(got) == before + 1
    assert b"Delivered-To: bob@example.test" in got[-1]


def test_bdat_chunking(server):
    before = len(server.delivered("alice@example.test"))
    c = RawClient(server.host, server.port)
    c.reply()
    c.cmd("EHLO c.example")
    c.cmd("MAIL FROM:<x@sender.example>")
    c.cmd("RCPT TO:<alice@example.test>")
    part1 = b"Subject: bdat\r\n\r\nline one\r"
    part2 = b"\n.line two\r\n"
    c.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert c.reply()[0] == 250
    c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    code, lines = c.reply()
    assert code == 250 and "queued as" in lines[0]
    c.close()
    got = server.wait_delivered("alice@example.test", before + 1)
    assert split_delivered(got[-1])[1] == part1 + part2


def test_size_limit_at_mail_and_in_data(tmp_path):
    srv = MailServer(tmp_path, extra_toml="[limits]\nmax_message_size = 2000\n")
    srv.cli("user", "add", "alice@example.test")
    srv.start()
    try:
        c = RawClient(srv.host, srv.port)
        c.reply()
        code, lines = c.cmd("EHLO c.example")
        assert "250-SIZE 2000" in lines
        code, lines = c.cmd("MAIL FROM:<x@sender.example> SIZE=5000")
        assert code == 552 and "5.3.4" in lines[0]
        assert c.cmd("MAIL FROM:<x@sender.example>")[0] == 250
        assert c.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 40
               + b".\r\n")
        code, lines = c.reply()
        assert code == 552 and "5.3.4" in lines[0]
        assert c.cmd("NOOP")[0] == 250   # the session goes on
        c.close()
        time.sleep(0.3)
        assert srv.delivered("alice@example.test") == []
    finally:
        srv.stop()


def test_recipient_limit(tmp_path):
    srv = MailServer(tmp_path, extra_toml="[limits]\nmax_recipients = 2\n")
    srv.cli("user", "add", "alice@example.test")
    srv.start()
    try:
        c = RawClient(srv.host, srv.port)
        c.reply()
        c.cmd("EHLO c.example")
        c.cmd("MAIL FROM:<x@sender.example>")
        assert c.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert c.cmd("RCPT TO:<postmaster@example.test>")[0] == 250
        code, lines = c.cmd("RCPT TO:<alice+2@example.test>")
        assert code == 452 and "4.5.3" in lines[0]
        c.close()
    finally:
        srv.stop()


def test_connection_limits_and_idle_timeout(tmp_path):
    srv = MailServer(tmp_path, extra_toml="[limits]\nmax_connections_per_ip = 2\n"
                                          "command_timeout = 1\n")
    srv.start()
    try:
        a, b = RawClient(srv.host, srv.port), RawClient(srv.host, srv.port)
        assert a.reply()[0] == 220 and b.reply()[0] == 220
        c = RawClient(srv.host, srv.port)
        code, lines = c.reply()
        assert code == 421 and "4.7.0" in lines[0]
        assert c.closed()
        # Idle clients are cut after command_timeout with 421 4.4.2; others keep being served.
        code, lines = a.reply()
        assert code == 421 and "4.4.2" in lines[0]
        assert a.closed()
        d = RawClient(srv.host, srv.port)
        assert d.reply()[0] == 220
        assert d.cmd("NOOP")[0] == 250
    finally:
        srv.stop()


def test_garbage_and_too_many_errors_close_the_session_server_keeps_serving(server):
    c = RawClient(server.host, server.port)
    c.reply()
    codes = []
    for i in range(30):
        try:
            codes.append(c.cmd(f"BOGUS{i} \x01\x02")[0])
        except ConnectionError:
            break
    assert codes[-1] == 421
    assert all(code >= 500 for code in codes[:-1])
    c.close()
    c2 = RawClient(server.host, server.port)
    assert c2.reply()[0] == 220
    c2.send(b"EHLO x\x00y\r\n")
    assert c2.reply()[0] == 500
    c2.send(b"NOOP " + b"a" * 5000 + b"\r\n")
    code, lines = c2.reply()
    assert code == 500 and "5.5.2" in lines[0]
    assert c2.cmd("NOOP")[0] == 250
    c2.close()
