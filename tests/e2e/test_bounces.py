"""End to end: bounces (RFC 3464 DSNs) from a real server process into the sender's Maildir.

One server with a fast queue: retries after 1 s, give up after 4 s, delay warning after
1 s. Every DSN is read back from the Maildir and parsed with the stdlib email package."""
import email
import json
import time
from email import policy

import pytest

from support import MailServer, RawClient

QUEUE_TOML = ("[queue]\nretry_first = 1\nretry_factor = 1.0\nretry_max_interval = 1\n"
              "max_age = 4\ndelay_warning_after = 1\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MailServer(tmp_path_factory.mktemp("bounce"), domains=("example.test",),
                     extra_toml=QUEUE_TOML)
    for user in ("alice", "bob", "carol", "dave"):
        srv.cli("user", "add", f"{user}@example.test")
    srv.cli("user", "add", "full@example.test", "--quota", "10")
    srv.start()
    yield srv
    srv.stop()


def send(server, sender, rcpt, rcpt_params="", mail_params="", body=None,
         before_data=None):
    author = sender or "MAILER-DAEMON@client.example"      # RFC 5322 §3.6.2: a mailbox
    body = body or (f"From: <{author}>\r\nTo: <{rcpt}>\r\nSubject: test to {rcpt}\r\n"
                    f"Message-ID: <{time.time_ns()}@client.example>\r\n\r\nHello\r\n")
    c = RawClient(server.host, server.port)
    c.reply()
    assert c.cmd("EHLO client.example")[0] == 250
    assert c.cmd(f"MAIL FROM:<{sender}>{mail_params}")[0] == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>{rcpt_params}")[0] == 250
    if before_data is not None:
        before_data()
    assert c.cmd("DATA")[0] == 354
    c.send(body + ".\r\n")
    code, lines = c.reply()
    assert code == 250, lines
    c.cmd("QUIT")
    c.close()
    return lines[-1].split()[-1]


def dsns(raw_messages):
    out = []
    for raw in raw_messages:
        start = raw.find(b"From: Mail Delivery System")
        if start != -1:
            out.append(email.message_from_bytes(raw[start:], policy=policy.default))
    return out


def blocks(msg):
    status = msg.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    per_msg, *rcpts = status.get_payload()
    return per_msg, rcpts


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    return predicate()


def show(server, qid):
    return json.loads(server.cli("queue", "show", qid, "--json").stdout)


def test_mailbox_removed_after_acceptance_bounces_550_5_1_1(server):
    before = len(server.delivered("alice@example.test"))
    qid = send(server, "alice@example.test", "dave@example.test",
               rcpt_params=" ORCPT=rfc822;Dave@Example.Test", mail_params=" ENVID=env-7",
               before_data=lambda: server.cli("user", "remove", "dave@example.test"))
    got = wait_for(lambda: [m for m in dsns(server.delivered("alice@example.test")[before:])
                            if m["Subject"].startswith("Undelivered")])
    assert len(got) == 1, server.log()[-3000:]
    msg = got[0]
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert msg["To"] == "alice@example.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_param("report-type") == "delivery-status"
    per_msg, [block] = blocks(msg)
    assert per_msg["Reporting-MTA"] == "dns; mx.example.test"
    assert per_msg["Original-Envelope-Id"] == "env-7"
    assert "Arrival-Date" in per_msg
    assert block["Original-Recipient"] == "rfc822; Dave@Example.Test"
    assert block["Final-Recipient"] == "rfc822; dave@example.test"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    original = msg.get_payload()[2]
    assert original.get_content_type() == "message/rfc822"
    assert original.get_payload()[0]["Subject"] == "test to dave@example.test"
    rcpt = show(server, qid)["recipients"][0]
    assert rcpt["state"] == "failed" and rcpt["dsn_sent"] == "failed"
    assert rcpt["dsn_pending"] is None and rcpt["dsn_queue_id"]


def test_expired_message_gets_a_delay_warning_then_a_failure_dsn(server):
    before = len(server.delivered("alice@example.test"))
    qid = send(server, "alice@example.test", "full@example.test")

    def both():
        got = dsns(server.delivered("alice@example.test")[before:])
        return got if len(got) >= 2 else None
    got = wait_for(both, timeout=30)
    assert got and len(got) == 2, server.log()[-3000:]
    delayed, failed = sorted(got, key=lambda m: not m["Subject"].startswith("Delayed"))
    _, [d] = blocks(delayed)
    assert (d["Action"], d["Status"]) == ("delayed", "4.2.2")
    assert "Will-Retry-Until" in d
    assert delayed.get_payload()[2].get_content_type() == "text/rfc822-headers"
    _, [f] = blocks(failed)
    assert (f["Action"], f["Status"]) == ("failed", "4.4.7")
    assert "Message expired" in f["Diagnostic-Code"]
    assert failed.get_payload()[2].get_content_type() == "message/rfc822"
    rcpt = show(server, qid)["recipients"][0]
    assert rcpt["state"] == "failed" and rcpt["dsn_delayed"] is True
    time.sleep(2)
    assert len(dsns(server.delivered("alice@example.test")[before:])) == 2   # no more


def test_notify_never_and_null_sender_get_no_dsn(server):
    before = len(server.delivered("bob@example.test"))
    q1 = send(server, "bob@example.test", "full@example.test", rcpt_params=" NOTIFY=NEVER")
    q2 = send(server, "", "full@example.test")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [show(server, q)["recipients"][0]["state"] for q in (q1, q2)]
        if states == ["failed", "failed"]:
            break
        time.sleep(0.2)
    assert states == ["failed", "failed"], server.log()[-3000:]
    time.sleep(1.5)   # a DSN would be committed in the same pass and delivered at once
    assert dsns(server.delivered("bob@example.test")[before:]) == []
    for q in (q1, q2):
        rcpt = show(server, q)["recipients"][0]
        assert rcpt["dsn_pending"] is None and rcpt["dsn_sent"] == ""
        assert rcpt["dsn_queue_id"] is None


def test_notify_success_gets_a_delivered_dsn(server):
    before = len(server.delivered("carol@example.test"))
    send(server, "carol@example.test", "bob@example.test", rcpt_params=" NOTIFY=SUCCESS")
    got = wait_for(lambda: dsns(server.delivered("carol@example.test")[before:]))
    assert len(got) == 1
    assert got[0]["Subject"] == "Successful Mail Delivery Report"
    _, [block] = blocks(got[0])
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
