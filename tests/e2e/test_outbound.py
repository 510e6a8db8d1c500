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

ZONES = {"remote.test": "@ MX 10 mx\nmx A 127.0.0.2\n"}


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
