"""End to end: quarantine held in the store (issue 7). A real server with a content rule
whose action is "quarantine": matching mail is accepted but held (not delivered);
``mailwright quarantine list`` shows it with the rule's reason, ``release`` delivers it to
the INBOX, ``delete`` removes another; both are audited. A "junk" rule still delivers at
once, into the Junk folder."""
from __future__ import annotations

import json
import time

import pytest

from support import MailServer, RawClient

RULES = """[antiabuse]
[[antiabuse.content_rules]]
name = "overdue"
part = "header"
pattern = "^subject:.*invoice overdue"
action = "quarantine"
[[antiabuse.content_rules]]
name = "lottery"
part = "header"
pattern = "^subject:.*you won"
action = "junk"
"""


def send(srv: MailServer, subject: str, rcpt: str = "bob@example.test") -> str:
    """One message over SMTP; returns its queue id."""
    c = RawClient(srv.host, srv.port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.example.net")[0] == 250
        assert c.cmd("MAIL FROM:<alice@sender.test>")[0] == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(f"From: alice@sender.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
               f"body of {subject}\r\n.\r\n")
        code, lines = c.reply()
        assert code == 250, lines
        c.cmd("QUIT")
        return lines[-1].rsplit(" ", 1)[1]
    finally:
        c.close()


@pytest.fixture
def server(tmp_path):
    srv = MailServer(tmp_path, extra_toml=RULES)
    srv.cli("user", "add", "bob@example.test")
    srv.start()
    yield srv
    srv.stop()


def listed(srv: MailServer) -> dict[str, dict]:
    return {m["queue_id"]: m for m in json.loads(srv.cli("quarantine", "list", "--json").stdout)}


def test_quarantine_holds_then_release_delivers_and_delete_removes(server):
    held1 = send(server, "Invoice overdue #1")
    held2 = send(server, "Invoice OVERDUE #2")
    send(server, "lunch?")                         # ordinary mail: delivered at once
    [inbox] = server.wait_delivered("bob@example.test", 1)
    assert b"Subject: lunch?" in inbox
    time.sleep(0.5)                                # the held ones had every chance
    assert len(server.delivered("bob@example.test")) == 1

    shown = listed(server)
    assert sorted(shown) == sorted([held1, held2])
    for qid in (held1, held2):
        assert shown[qid]["reason"] == "content rule overdue"
        assert [r["state"] for r in shown[qid]["recipients"]] == ["held"]
    text = server.cli("quarantine", "list").stdout
    assert held1 in text and "content rule overdue" in text
    detail = server.cli("quarantine", "show", held1).stdout
    assert "Subject: Invoice overdue #1" in detail and "content rule overdue" in detail

    out = server.cli("quarantine", "release", held1).stdout
    assert f"released {held1} (1 recipient(s))" in out
    got = server.wait_delivered("bob@example.test", 2)
    assert len(got) == 2 and any(b"Subject: Invoice overdue #1" in m for m in got)
    assert server.delivered("bob@example.test", "Junk") == []
    assert sorted(listed(server)) == [held2]

    assert f"deleted {held2}" in server.cli("quarantine", "delete", held2).stdout
    assert listed(server) == {}
    assert server.cli("queue", "show", held2, check=False).returncode == 1
    again = server.cli("quarantine", "release", held2, check=False)
    assert again.returncode == 1 and "not in quarantine" in again.stderr
    time.sleep(0.3)
    assert len(server.delivered("bob@example.test")) == 2      # #2 never delivered

    audit = json.loads(server.cli("queue", "audit", "--json").stdout)
    assert [(a["action"], a["ids"]) for a in audit] == [
        ("quarantine-release", [held1]), ("quarantine-delete", [held2])]
    trace = server.cli("trace", held1).stdout
    assert "held in quarantine: content rule overdue" in trace


def test_junk_action_delivers_to_the_junk_folder_at_once(server):
    qid = send(server, "You won a prize")
    deadline = time.monotonic() + 20
    while not server.delivered("bob@example.test", "Junk") and time.monotonic() < deadline:
        time.sleep(0.05)
    [junk] = server.delivered("bob@example.test", "Junk")
    assert b"X-Mailwright-Quarantine: content rule lottery" in junk
    assert qid not in listed(server)
