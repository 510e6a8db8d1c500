"""BATV end to end: a real Mailwright process with ``batv = true`` relays a local sender's
message (trusted client) to a loopback peer MX that records a prvs= MAIL FROM; bounces
(null sender) from another loopback address to the tagged address are delivered, to the
untagged address or with an expired or forged tag refused with 550 5.7.1."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest

from dnsserver import DNSServer
from e2e.test_outbound import ThreadedSink, wait_for
from mailwright.policy import batv
from mailwright.policy.batv_keys import read_keys
from outbound.sink import free_port
from support import MailServer, RawClient

ZONES = {"remote.test": "@ MX 10 mx\nmx A 127.0.0.2\n",
         ".": "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"}
MAIL_FROM = re.compile(r"MAIL FROM:<([^>]*)>", re.I)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batv")
    port = free_port(["127.0.0.2"])
    with DNSServer(ZONES) as dns, ThreadedSink(host="127.0.0.2", port=port,
                                               name="mx.remote.test") as sink:
        srv = MailServer(tmp, extra_sections=(
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\n"
            '[relay]\ntrusted_networks = ["127.0.0.1/32"]\n'
            "[antiabuse]\nbatv = true\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.start()
        try:
            yield srv, sink
        finally:
            srv.stop()


class Client(RawClient):
    """RawClient from a chosen loopback source address (127.0.0.1 is trusted here)."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""


def client(srv, source: str):
    c = Client(srv.port, source)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO peer.remote.test")[0] == 250
    return c


def transaction(c, sender: str, rcpt: str, body: bytes) -> list[tuple[int, str]]:
    out = []
    for cmd in (f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>"):
        code, lines = c.cmd(cmd)
        out.append((code, lines[-1][4:9]))
        if code >= 400:
            c.cmd("RSET")
            return out
    assert c.cmd("DATA")[0] == 354
    c.send(body + b".\r\n")
    code, lines = c.reply()
    out.append((code, lines[-1]))
    return out


def tagged_sender(setup) -> str:
    """Relay one message from alice (trusted client) to the peer; the MAIL FROM it saw."""
    srv, sink = setup
    before = len(sink.transactions)
    c = client(srv, "127.0.0.1")
    got = transaction(c, "alice@example.test", "bob@remote.test",
                      b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: out\r\n"
                      b"\r\nhello\r\n")
    c.close()
    assert got[-1][0] == 250, got
    assert wait_for(lambda: len([t for t in sink.transactions[before:] if t.body]) == 1)
    txn = [t for t in sink.transactions[before:] if t.body][0]
    assert b"From: alice@example.test\r\n" in txn.body          # the header is untouched
    assert b"prvs=" not in txn.body
    return MAIL_FROM.search(txn.mail).group(1)


def bounce(address: str) -> bytes:
    return (b"From: MAILER-DAEMON@mx.remote.test\r\nTo: " + address.encode() +
            b"\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nbob is gone\r\n")


def test_outbound_mail_from_is_tagged_and_its_bounce_comes_home(setup):
    srv, _ = setup
    sender = tagged_sender(setup)
    tag = batv.parse(sender)
    assert tag is not None and tag.address == "alice@example.test", sender
    assert re.fullmatch(r"prvs=[0-9]{4}[0-9a-f]{6}=alice@example\.test", sender)
    # the key file: created on first use, 0600, and it verifies the tag
    keyfile = srv.data_dir / "batv.keys"
    assert keyfile.stat().st_mode & 0o777 == 0o600
    keys = dict(read_keys(str(keyfile)))
    assert batv.verify(tag, keys, time.time(), 7) is batv.Status.VALID

    c = client(srv, "127.0.0.3")
    got = transaction(c, "", sender, bounce(sender))
    assert got[1] == (250, "2.1.5") and got[-1][0] == 250, got
    # a reply (non-null sender) to the tagged address is accepted too
    got = transaction(c, "bob@remote.test", sender, b"Subject: re: out\r\n\r\nthanks\r\n")
    assert got[-1][0] == 250, got
    c.close()
    mails = srv.wait_delivered("alice@example.test", 2)
    assert len(mails) == 2
    assert any(b"Return-Path: <>" in m and b"bob is gone" in m for m in mails)
    # the trace records the tag and its validity
    qid = got[-1][1].rsplit(" ", 1)[-1]
    def accepted_step():       # trace rows are written in batches (within 0.2 s)
        steps = json.loads(srv.cli("trace", qid, "--json", check=False).stdout or "{}")
        first = (steps.get("steps") or [{}])[0]
        return first if first.get("kind") == "accepted" else None
    assert wait_for(accepted_step)
    data = accepted_step()["data"]
    assert data["rewritten"] == {sender: {"batv": "valid", "address": "alice@example.test"}}
    assert data["routes"][0]["targets"] == ["alice@example.test"]


def test_bounce_to_untagged_address_is_refused(setup):
    srv, _ = setup
    c = client(srv, "127.0.0.3")
    assert transaction(c, "", "alice@example.test", bounce("alice@example.test")) == \
        [(250, "2.1.0"), (550, "5.7.1")]
    # ordinary mail to the same address is not affected
    got = transaction(c, "carol@remote.test", "alice@example.test", b"Subject: hi\r\n\r\nx\r\n")
    assert got[-1][0] == 250
    # postmaster still takes bounces (RFC 5321 §4.5.1)
    assert transaction(c, "", "postmaster@example.test", bounce("postmaster"))[1][0] == 250
    c.close()
    assert "bounce to an untagged address" in srv.log()


def test_expired_and_forged_tags_are_refused(setup):
    srv, _ = setup
    keys = read_keys(str(srv.data_dir / "batv.keys"))
    number, secret = keys[0]
    expired = batv.sign("alice@example.test", number, secret, time.time() - 9 * 86400, 7)
    assert batv.verify(batv.parse(expired), dict(keys), time.time(), 7) is batv.Status.EXPIRED
    valid = batv.sign("alice@example.test", number, secret, time.time(), 7)
    forged = valid[:9] + ("000000" if valid[9:15] != "000000" else "111111") + valid[15:]
    other_key = batv.sign("alice@example.test", (number + 5) % 10, secret, time.time(), 7)
    c = client(srv, "127.0.0.3")
    for address in (expired, forged, other_key):
        assert transaction(c, "", address, bounce(address)) == \
            [(250, "2.1.0"), (550, "5.7.1")], address
    # a forged tag is refused whoever sends; an expired one only to bounces
    assert transaction(c, "spam@remote.test", forged, b"x\r\n") == \
        [(250, "2.1.0"), (550, "5.7.1")]
    assert transaction(c, "list@remote.test", expired, b"Subject: list\r\n\r\nx\r\n")[-1][0] == 250
    c.close()
