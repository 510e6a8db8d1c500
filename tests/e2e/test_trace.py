"""`mailwright trace` against a real running server with real traffic (issue 5).

One server, a loopback DNS server and a loopback peer MX that fails one recipient:
accepted-and-delivered, refused at RCPT, refused by DMARC at end of data, deferred by
the remote with the next retry time, bounced with the DSN linked. Every query form
(queue id, Message-ID, address, time window) and the JSON output are checked.
"""
from __future__ import annotations

import json
import smtplib
import time

import pytest

from dnsserver import DNSServer
from e2e.test_outbound import ThreadedSink, wait_for
from outbound.sink import free_port
from support import MailServer

ZONES = {
    ".": "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n",
    "remote.test": "@ MX 10 mx\nmx A 127.0.0.2\n",
    "bank.test": ('@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
                  '_dmarc TXT "v=DMARC1; p=reject"\n'),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    port = free_port(["127.0.0.2"])
    with DNSServer(ZONES) as dns, ThreadedSink(
            host="127.0.0.2", port=port, name="mx.remote.test",
            rcpt_replies={"later@remote.test": "451 4.3.0 try later",
                          "gone@remote.test": "550 5.1.1 No such user"}) as sink:
        srv = MailServer(tmp, extra_sections=(
            "[queue]\nretry_first = 300\n"
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.cli("alias", "add", "fwd-later@example.test", "later@remote.test")
        srv.cli("alias", "add", "fwd-gone@example.test", "gone@remote.test")
        srv.start()
        try:
            yield srv, sink
        finally:
            srv.stop()


def trace(srv, *args, check=True):
    return srv.cli("trace", *args, check=check)


def trace_json(srv, *args, check=True):
    """The trace as JSON. ``check=False`` while waiting: trace rows are written in batches
    (net/intake.py, at most 0.2 s after the event), so an address may not be found yet
    (exit status 1, no steps)."""
    return json.loads(trace(srv, *args, "--json", check=check).stdout)


def queued_id(resp: bytes) -> str:
    return resp.decode().rsplit(" ", 1)[-1]


def test_accepted_and_delivered_message_by_queue_id_and_message_id(setup):
    srv, _ = setup
    with smtplib.SMTP(srv.host, srv.port, timeout=10, local_hostname="client.example") as s:
        s.ehlo("client.sender.example")
        s.mail("carol@sender.example")
        s.rcpt("alice@example.test")
        code, resp = s.data(b"From: carol@sender.example\r\nSubject: t1\r\n"
                            b"Message-ID: <trace-1@sender.example>\r\n\r\nhi\r\n")
    assert code == 250
    qid = queued_id(resp)
    srv.wait_delivered("alice@example.test", 1)
    # the delivery is in the queue at once; the accepted row within 0.2 s (batched)
    assert wait_for(lambda: {"accepted", "delivered"}
                    <= {s["kind"] for s in trace_json(srv, qid)["steps"]})
    t = trace_json(srv, qid)
    assert t["query_kind"] == "queue_id" and t["queue_ids"] == [qid]
    kinds = [s["kind"] for s in t["steps"]]
    assert kinds[0] == "accepted" and "delivered" in kinds and kinds[-1] == "state"
    acc = t["steps"][0]["data"]
    assert acc["helo"] == "client.sender.example" and acc["client_ip"] == "127.0.0.1"
    assert acc["message_id"] == "<trace-1@sender.example>"
    assert acc["routes"] == [{"rcpt": "alice@example.test", "kind": "local",
                              "targets": ["alice@example.test"]}]
    checks = {v["check"] for v in acc["verdicts"]}
    assert {"spf", "dkim", "dmarc"} <= checks
    assert t["steps"][-1]["data"]["state"] == "delivered"
    by_mid = trace_json(srv, "<trace-1@sender.example>")
    assert by_mid["queue_ids"] == [qid]
    text = trace(srv, qid).stdout
    assert "accepted from <carol@sender.example>" in text and "delivered" in text
    assert "policy dmarc:" in text


def test_refused_recipient_and_dmarc_rejection_explain_why(setup):
    srv, _ = setup
    with smtplib.SMTP(srv.host, srv.port, timeout=10, local_hostname="client.example") as s:
        s.ehlo("client.example")
        s.mail("dave@sender.example")
        assert s.rcpt("nobody@example.test")[0] == 550
        s.rset()
        s.mail("ceo@bank.test")
        assert s.rcpt("alice@example.test")[0] == 250
        try:
            s.data(b"From: ceo@bank.test\r\nSubject: pay now\r\n\r\nwire money\r\n")
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 550
    assert wait_for(lambda: trace(srv, "nobody@example.test", check=False).returncode == 0)
    t = trace_json(srv, "nobody@example.test")
    step = t["steps"][0]
    assert step["kind"] == "rejected" and step["queue_id"] == ""
    assert step["data"]["refused"][0]["rcpt"] == "nobody@example.test"
    assert step["data"]["refused"][0]["reply"].startswith("550 5.1.1")
    assert step["data"]["refused"][0]["check"] == "recipient"
    assert wait_for(lambda: trace(srv, "ceo@bank.test", check=False).returncode == 0)
    t = trace_json(srv, "ceo@bank.test")
    [step] = t["steps"]
    assert step["kind"] == "rejected" and step["data"]["step"] == "data"
    assert step["data"]["reply"].startswith("550 5.7.1")
    dmarc = [v for v in step["data"]["verdicts"] if v["check"] == "dmarc"][0]
    assert dmarc["action"] == "reject" and "p=reject" in dmarc["reason"]
    assert dmarc["evidence"]["record"] == "v=DMARC1; p=reject"
    spf = [v for v in step["data"]["verdicts"] if v["check"] == "spf"][0]
    assert "spf=fail" in spf["reason"]
    assert spf["evidence"]["record"] == "v=spf1 ip4:192.0.2.0/24 -all"
    text = trace(srv, "ceo@bank.test").stdout
    assert "rejected at DATA from <ceo@bank.test>: 550 5.7.1" in text


def test_deferral_shows_the_remote_reply_and_the_next_retry(setup):
    srv, sink = setup
    with smtplib.SMTP(srv.host, srv.port, timeout=10, local_hostname="client.example") as s:
        s.sendmail("erin@sender.example", ["fwd-later@example.test"],
                   b"From: erin@sender.example\r\nSubject: later\r\n\r\nx\r\n")
    assert wait_for(lambda: any(st["kind"] == "deferred"
                                for st in trace_json(srv, "later@remote.test", check=False)["steps"]))
    t = trace_json(srv, "erin@sender.example")
    deferred = [st for st in t["steps"] if st["kind"] == "deferred"][0]
    assert deferred["data"]["reply"].startswith("451 4.3.0")
    assert deferred["data"]["remote_mta"] == "mx.remote.test"
    state = [st for st in t["steps"] if st["kind"] == "state"][0]
    assert state["data"]["state"] == "queued"
    assert state["data"]["next_attempt_at"] > time.time() + 60
    assert "next attempt" in trace(srv, "erin@sender.example").stdout


def test_bounce_links_the_dsn_and_the_time_window_filters(setup):
    srv, _ = setup
    with smtplib.SMTP(srv.host, srv.port, timeout=10, local_hostname="client.example") as s:
        s.sendmail("alice@example.test", ["fwd-gone@example.test"],
                   b"From: alice@example.test\r\nSubject: doomed\r\n"
                   b"Message-ID: <doomed-trace@example.test>\r\n\r\nx\r\n")
    assert wait_for(lambda: any(st["kind"] == "dsn" for st in
                                trace_json(srv, "<doomed-trace@example.test>", check=False)["steps"]))
    t = trace_json(srv, "<doomed-trace@example.test>")
    assert len(t["queue_ids"]) == 2                # the message and its DSN
    failed = [st for st in t["steps"] if st["kind"] == "failed"][0]
    assert failed["data"]["reply"].startswith("550 5.1.1")
    dsn = [st for st in t["steps"] if st["kind"] == "dsn"][0]
    assert dsn["data"]["dsn_queue_id"] == t["queue_ids"][1]
    # A window that ends before everything: nothing recorded (exit 1).
    assert trace(srv, "<doomed-trace@example.test>", "--until", "1h",
                 check=False).returncode == 1
    assert trace(srv, "<doomed-trace@example.test>", "--since", "1h").returncode == 0


def test_client_reverse_dns_is_confirmed_and_recorded(tmp_path):
    """The client's PTR name, forward-confirmed, goes into the Received field, the stored
    envelope and the trace; a PTR that does not resolve back is recorded as a mismatch."""
    import socket
    zones = {".": ZONES["."],
             "127.in-addr.arpa": "9.0.0 PTR client9.example.net.\n"
                                 "10.0.0 PTR liar.example.net.\n",
             "example.net": "client9 A 127.0.0.9\nliar A 192.0.2.1\n"}
    with DNSServer(zones) as dns:
        srv = MailServer(tmp_path, extra_sections=f'[outbound]\nnameservers = ["{dns.nameserver}"]\n')
        srv.cli("user", "add", "alice@example.test")
        srv.start()
        try:
            for source, subject in (("127.0.0.9", "named"), ("127.0.0.10", "liar")):
                sock = socket.create_connection((srv.host, srv.port), timeout=10,
                                                source_address=(source, 0))
                s = smtplib.SMTP()
                s.sock, s.file = sock, None
                s.getreply()
                s.ehlo("helo.example.org")
                s.sendmail(f"bob@{subject}.example", ["alice@example.test"],
                           f"Subject: {subject}\r\n\r\nhi\r\n".encode())
                s.quit()
            got = {m.split(b"Subject: ")[1][:5]: m
                   for m in srv.wait_delivered("alice@example.test", 2)}
            assert b"from helo.example.org (client9.example.net [127.0.0.9])" in got[b"named"]
            assert b"from helo.example.org (unknown [127.0.0.10])" in got[b"liar\r"]
            for sender in ("bob@named.example", "bob@liar.example"):   # rows batched
                assert wait_for(lambda: trace(srv, sender, check=False).returncode == 0)
            named = trace_json(srv, "bob@named.example")["steps"][0]["data"]
            assert named["rdns"] == {"name": "client9.example.net",
                                     "ptr": "client9.example.net", "status": "ok"}
            liar = trace_json(srv, "bob@liar.example")["steps"][0]["data"]
            assert liar["rdns"] == {"name": "", "ptr": "liar.example.net",
                                    "status": "mismatch"}
        finally:
            srv.stop()
