"""End to end: a real Mailwright process, a loopback DNS server serving blocklist zones,
clients on other 127.x source addresses (bound explicitly)."""
from __future__ import annotations

import json
import socket
import time

import pytest

from dnsserver import DNSServer
from support import ROOT_SOA, MailServer, RawClient

# Authoritative for the root, so every other name (SPF of the test senders) is NXDOMAIN.
# RFC 5782 §2.1: 127.0.0.2 listed (the test entry every DNSBL carries), 127.0.0.1 not.
ZONES = ROOT_SOA + """
2.0.0.127.zen.test. 300 IN A 127.0.0.2
2.0.0.127.zen.test. 300 IN TXT "listed for testing"
"""


class Client(RawClient):
    """RawClient from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""


def send_mail(c: Client, rcpt: str = "bob@example.test", body: bytes = b"Subject: t\r\n\r\nhi\r\n",
              sender: str = "alice@sender.test") -> list[tuple[int, str]]:
    codes = []
    for cmd in (f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>"):
        code, lines = c.cmd(cmd)
        codes.append((code, lines[-1][4:].split(" ")[0]))
        if code >= 400:
            if code != 421:
                c.cmd("RSET")
            return codes
    code, lines = c.cmd("DATA")
    codes.append((code, ""))
    if code != 354:
        return codes
    c.send(body + b".\r\n")
    code, lines = c.reply()
    codes.append((code, lines[-1][4:].split(" ")[0]))
    return codes


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as server:
        yield server


def server_with(tmp, dns, antiabuse: str) -> MailServer:
    srv = MailServer(tmp, extra_toml=(
        f'[outbound]\nnameservers = ["{dns.nameserver}"]\ndns_timeout = 1\n'
        f"[antiabuse]\n{antiabuse}\n"))
    srv.cli("user", "add", "bob@example.test")
    return srv.start()


@pytest.fixture(scope="module")
def screened(tmp_path_factory, dns):
    srv = server_with(tmp_path_factory.mktemp("screen"), dns,
                      'dnsbl_sites = ["zen.test=127.0.0.[2..11]*2", "wl.test*-3"]\n'
                      "dnsbl_threshold = 2\n"
                      "greet_delay = 0.3\n"
                      "message_rate_ip = 3\nrate_window = 3600\n"
                      "connection_rate = 4\n")
    yield srv
    srv.stop()


def test_listed_client_refused_and_list_logged(screened):
    c = Client(screened.port, "127.0.0.2")
    code, lines = c.reply()
    assert code == 554 and lines[0].startswith("554 5.7.1 ")
    assert "client [127.0.0.2] blocked using zen.test" in lines[0]
    assert c.closed() or c.cmd("EHLO client.example.org")[0] == 503
    c.close()
    deadline = time.monotonic() + 5
    while "blocked using zen.test" not in screened.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "check=dnsbl reason=client 127.0.0.2 blocked using zen.test" in screened.log()
    # ... and in the message trace, found by the client's address
    deadline = time.monotonic() + 5
    while True:
        traced = screened.cli("trace", "127.0.0.2", "--json", check=False)
        if traced.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [refused] = json.loads(traced.stdout)["steps"]
    assert refused["kind"] == "refused" and refused["data"]["reply"].startswith("554 5.7.1")
    [dnsbl] = [v for v in refused["data"]["verdicts"] if v["check"] == "dnsbl"]
    assert "blocked using zen.test" in dnsbl["reason"]
    # an unlisted client gets the greeting (after the delay)
    ok = Client(screened.port, "127.0.0.3")
    t0 = time.monotonic()
    assert ok.reply()[0] == 220 and time.monotonic() - t0 >= 0.25
    ok.close()


def test_early_talker_refused(screened):
    c = Client(screened.port, "127.0.0.4")
    c.send("EHLO impatient.example.org\r\n")      # before the greeting
    code, lines = c.reply()
    assert (code, lines[0][4:9]) == (554, "5.5.1")
    c.close()
    assert "talked before the greeting" in screened.log()


def test_message_rate_limit_under_load(screened):
    """A bounded load generator: 6 messages over one session from one client; the limit
    is 3 per window, so exactly 3 are accepted and the rest get 450 4.7.0."""
    c = Client(screened.port, "127.0.0.5")
    assert c.reply()[0] == 220
    assert c.cmd("EHLO load.example.org")[0] == 250
    results = [send_mail(c)[-1] for _ in range(6)]
    c.close()
    accepted = [r for r in results if r[0] == 250]
    assert len(accepted) == 3
    assert results[3:] == [(450, "4.7.0")] * 3
    assert len(screened.wait_delivered("bob@example.test", 3)) >= 3


def test_connection_rate_limit(screened):
    got = []
    for _ in range(6):
        c = Client(screened.port, "127.0.0.6")
        code, lines = c.reply()
        got.append((code, lines[0][4:9]))
        c.close()
    assert [g[0] for g in got[:4]] == [220] * 4
    assert got[4:] == [(421, "4.7.0")] * 2


def test_executable_attachment_refused(screened):
    body = (b"From: alice@sender.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            b"--b1\r\nContent-Type: application/octet-stream; name=\"invoice.exe\"\r\n"
            b"Content-Disposition: attachment; filename=\"invoice.exe\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAA=\r\n--b1--\r\n")
    c = Client(screened.port, "127.0.0.7")
    assert c.reply()[0] == 220
    assert c.cmd("EHLO sender.example.org")[0] == 250
    codes = send_mail(c, body=body)
    assert codes[-1] == (554, "5.7.1")
    # the same message without the executable is accepted
    assert send_mail(c, body=body.replace(b"invoice.exe", b"invoice.pdf"))[-1][0] == 250
    c.close()
    assert "blocked attachment 'invoice.exe'" in screened.log()


def test_greylisting_defers_then_accepts(tmp_path, dns):
    srv = server_with(tmp_path, dns, "greylist = true\ngreylist_delay = 1\n"
                                     "greylist_prefixes = [32, 128]\n")
    try:
        c = Client(srv.port, "127.0.0.8")
        assert c.reply()[0] == 220 and c.cmd("EHLO grey.example.org")[0] == 250
        assert send_mail(c)[-1] == (450, "4.7.1")
        assert send_mail(c)[-1] == (450, "4.7.1")      # retried too early
        c.close()
        time.sleep(1.2)
        c = Client(srv.port, "127.0.0.8")
        assert c.reply()[0] == 220 and c.cmd("EHLO grey.example.org")[0] == 250
        assert send_mail(c)[-1][0] == 250
        c.close()
        got = srv.wait_delivered("bob@example.test", 1)
        assert len(got) == 1
        assert "greylisted (new) 127.0.0.8/32" in srv.log()
    finally:
        srv.stop()


def test_directory_harvest_is_cut_off(tmp_path, dns):
    """Failed RCPTs per session: the guard runs before the recipient check, so the
    unknown addresses it counts are refused 550 5.1.1 until the limit, then 421 and close."""
    srv = server_with(tmp_path, dns, "max_unknown_recipients = 3\n")
    try:
        c = Client(srv.port, "127.0.0.9")
        assert c.reply()[0] == 220
        assert c.cmd("EHLO harvester.example.org")[0] == 250
        assert c.cmd("MAIL FROM:<x@sender.test>")[0] == 250
        assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250       # known: not counted
        assert c.cmd("RCPT TO:<a1@example.test>")[0] == 550
        assert c.cmd("RCPT TO:<a2@example.test>")[0] == 550
        code, lines = c.cmd("RCPT TO:<a3@example.test>")
        assert code == 421 and lines[-1][4:9] == "4.7.0"
        assert c.closed()
        assert "directory harvest" in srv.log()
    finally:
        srv.stop()
