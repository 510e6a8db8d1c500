"""Outbound through the whole server: alias to an external address → MX lookup on the
loopback DNS server → a real SMTP peer on 127.0.0.2; retries after a 4xx."""
import asyncio
import re
import smtplib
import threading
import time

import pytest

from dnsserver import DNSServer
from outbound.sink import Sink, free_port
from support import MailServer

# The root zone makes every other name NXDOMAIN (the senders' SPF/DMARC: none).
ZONES = {"remote.test": "@ MX 10 mx\nmx A 127.0.0.2\n",
         ".": "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"}


class ThreadedSink:
    """The test SMTP peer, running on its own event loop in a thread."""

    def __init__(self, **kw):
        self.loop = asyncio.new_event_loop()
        self.sink = Sink(**kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sink.start(), self.loop).result(10)
        return self.sink

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.sink.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def dns():
    with DNSServer(ZONES) as srv:
        yield srv


def test_alias_to_external_goes_out_via_mx_and_retries_after_4xx(tmp_path, dns):
    port = free_port(["127.0.0.2"])
    with ThreadedSink(host="127.0.0.2", port=port, name="mx.remote.test",
                      rcpt_replies={"bob@remote.test": "451 4.3.0 try later"}) as sink:
        srv = MailServer(tmp_path, extra_toml=(
            "[queue]\nretry_first = 1\nretry_max_interval = 2\n"
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\nidle_connection_timeout = 0.5\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.cli("alias", "add", "fwd@example.test", "bob@remote.test", "alice@example.test")
        srv.start()
        try:
            with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
                s.sendmail("carol@sender.example", ["fwd@example.test"],
                           b"Subject: out\r\nMessage-ID: <out-1@sender.example>\r\n\r\nhi\r\n")
            # The local target is delivered at once; the remote one is deferred by the 451 ...
            assert len(srv.wait_delivered("alice@example.test", 1)) == 1
            assert wait_for(lambda: any("bob@remote.test" in c for c in sink.commands))
            assert all(not t.body for t in sink.transactions)
            # ... then the peer recovers and the retry delivers exactly once.
            sink.rcpt_replies.clear()
            assert wait_for(lambda: len(sink.transactions) >= 1 and sink.transactions[-1].body)
            time.sleep(1.5)
            delivered = [t for t in sink.transactions if t.rcpts and t.body]
            assert len(delivered) == 1
            txn = delivered[0]
            assert "carol@sender.example" in txn.mail
            assert [r.split("<")[1].split(">")[0] for r in txn.rcpts] == ["bob@remote.test"]
            assert txn.body.startswith(b"Received: from ")
            assert b"by mx.example.test (Mailwright)" in txn.body
            assert txn.body.endswith(b"Subject: out\r\nMessage-ID: <out-1@sender.example>\r\n\r\nhi\r\n")
        finally:
            srv.stop()


def test_remote_5xx_bounces_to_the_local_sender(tmp_path, dns):
    port = free_port(["127.0.0.2"])
    with ThreadedSink(host="127.0.0.2", port=port, name="mx.remote.test",
                      rcpt_replies={"bob@remote.test": "550 5.1.1 No such user"}) as sink:
        srv = MailServer(tmp_path, extra_toml=(
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.cli("alias", "add", "fwd@example.test", "bob@remote.test")
        srv.start()
        try:
            with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
                s.sendmail("alice@example.test", ["fwd@example.test"],
                           b"Subject: doomed\r\nMessage-ID: <doomed@example.test>\r\n\r\nx\r\n")
            [dsn] = srv.wait_delivered("alice@example.test", 1)
            assert b"Return-Path: <>" in dsn
            assert b"multipart/report" in dsn and b"report-type=delivery-status" in dsn
            assert b"Action: failed" in dsn and b"Status: 5.1.1" in dsn
            assert b"Remote-MTA: dns; mx.remote.test" in dsn
            assert b"Diagnostic-Code: smtp; 550 5.1.1 No such user" in dsn
            assert re.search(rb"Original-Recipient: rfc822; ?fwd@example.test", dsn)
            assert re.search(rb"Final-Recipient: rfc822; ?bob@remote.test", dsn)
            assert b"Subject: doomed" in dsn          # the original comes back (RET default)
            assert all(not t.body for t in sink.transactions)
        finally:
            srv.stop()


def _tls():
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


SEQUENCES = __import__("yaml").safe_load(
    (__import__("support").CONFORMANCE / "smtp-security" / "smtp-smuggling-sequences.yaml")
    .read_text())["sequences"]


def test_submission_with_auth_reaches_a_loopback_mx_and_smuggling_bodies_leave_normalised(
        tmp_path, dns):
    """Issue 3 end to end: submit over 587 with AUTH → delivered to the remote MX; and every
    smuggling sequence, put into the queue by the sendmail command (which takes bare-LF
    text from Unix programs), leaves with CRLF only and no early terminator."""
    import subprocess
    import sys
    port = free_port(["127.0.0.2"])
    with ThreadedSink(host="127.0.0.2", port=port, name="mx.remote.test") as sink:
        srv = MailServer(tmp_path, submission=True, extra_toml=(
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\n"))
        srv.cli("user", "add", "alice@example.test", "--password-stdin", input="s3cret-pw\n")
        srv.start()
        try:
            with smtplib.SMTP(srv.host, srv.sub_port, timeout=10) as s:
                s.starttls(context=_tls())
                s.login("alice@example.test", "s3cret-pw")
                s.sendmail("alice@example.test", ["bob@remote.test"],
                           b"From: alice@example.test\r\nTo: bob@remote.test\r\n"
                           b"Subject: submitted\r\n\r\nhello\r\n")
            assert wait_for(lambda: any(t.body for t in sink.transactions))
            [txn] = [t for t in sink.transactions if t.body]
            assert b"Subject: submitted" in txn.body and b"with ESMTPSA" in txn.body
            assert b"Message-ID: <" in txn.body and b"Date: " in txn.body    # RFC 6409 §8

            sent = 0
            for seq in SEQUENCES:
                body = (f"From: alice@example.test\nTo: bob@remote.test\n"
                        f"Subject: seq {seq['id']}\n\nbody").encode() + \
                    seq["bytes"].encode("latin-1") + \
                    b"MAIL FROM:<smuggled@x.test>\r\nRCPT TO:<bob@remote.test>\r\nDATA\r\n" \
                    b"Subject: smuggled\r\n\r\nX\r\n.\r\n"
                r = subprocess.run([sys.executable, "-m", "mailwright.cli.main", "-c",
                                    str(srv.config), "sendmail", "-i", "-f",
                                    "alice@example.test", "bob@remote.test"],
                                   input=body, capture_output=True, timeout=60)
                if b"\0" in body:
                    assert r.returncode == 65, r.stderr      # NUL: refused, as at SMTP intake
                    continue
                assert r.returncode == 0, r.stderr
                sent += 1
            assert sent == len(SEQUENCES) - 2
            assert wait_for(lambda: len([t for t in sink.transactions if t.body])
                            == 1 + sent, timeout=30)
            for t in sink.transactions[1:]:
                wire = t.wire
                if not t.bdat:
                    # the only CRLF.CRLF is the real terminator at the very end
                    assert wire.find(b"\r\n.\r\n") == len(wire) - 5, wire[-80:]
                    wire = wire[:-3]
                stripped = wire.replace(b"\r\n", b"")
                assert b"\r" not in stripped and b"\n" not in stripped, t.wire
            # nothing was smuggled: every transaction carried exactly one message
            assert all(len(t.rcpts) == 1 for t in sink.transactions)
            assert sum(b"Subject: smuggled" in t.body.split(b"\r\n\r\n", 1)[0]
                       for t in sink.transactions) == 0
        finally:
            srv.stop()
