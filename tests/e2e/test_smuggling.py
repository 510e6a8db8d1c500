"""SMTP smuggling (CVE-2023-51764 class): the 13 sequences of the shared suite, in place.

Procedure from smtp-security/smtp-smuggling-sequences.yaml: a message whose body carries a
malformed end-of-data sequence followed by a smuggled transaction. PASS = zero or one message
delivered, none with Subject "smuggled", and no 250 to the smuggled MAIL/RCPT/DATA.
"""
import time

import pytest
import yaml

from support import CONFORMANCE, RawClient

SUITE = yaml.safe_load((CONFORMANCE / "smtp-security" / "smtp-smuggling-sequences.yaml").read_text())
SEQUENCES = SUITE["sequences"]


def test_suite_has_all_13_sequences():
    assert len(SEQUENCES) == 13


@pytest.mark.parametrize("seq", SEQUENCES, ids=[s["id"] for s in SEQUENCES])
def test_smuggled_transaction_never_accepted(server, seq):
    rcpt = "bob@example.test"
    before = len(server.delivered(rcpt))
    c = RawClient(server.host, server.port)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO t.example")[0] == 250
    assert c.cmd("MAIL FROM:<a@sender.example>")[0] == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    payload = (b"Subject: s\r\n\r\nbody" + seq["bytes"].encode("latin-1")
               + b"MAIL FROM:<smuggled@sender.example>\r\n"
               + f"RCPT TO:<{rcpt}>\r\n".encode()
               + b"DATA\r\nSubject: smuggled\r\n\r\nX\r\n.\r\n")
    c.send(payload)
    codes = [c.reply()[0]]
    # Then, if still open, the real terminator; collect every further reply.
    try:
        c.send(b"\r\n.\r\n")
        c.sock.settimeout(1.5)
        while True:
            codes.append(c.reply()[0])
    except (OSError, ConnectionError):
        pass
    c.close()
    # The first reply ends the one message the server saw; no later reply may be a 250/354
    # (that would be the smuggled MAIL, RCPT or DATA being executed).
    assert all(code not in (250, 354) for code in codes[1:]), codes
    # Our documented policy: a bare CR/LF or NUL in data rejects the message (554).
    assert codes[0] == 554, codes
    time.sleep(0.3)
    delivered = server.delivered(rcpt)[before:]
    assert len(delivered) <= 1
    assert not any(b"Subject: smuggled" in m for m in delivered)


def test_pipelining_after_data_is_honoured(server):
    """related check pipelining-after-data: our policy is RFC 2920 — it works."""
    rcpt = "bob@example.test"
    before = len(server.delivered(rcpt))
    c = RawClient(server.host, server.port)
    c.reply()
    c.cmd("EHLO t.example")
    c.send("MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
    c.send(b"Subject: one\r\n\r\nx\r\n.\r\nMAIL FROM:<a@sender.example>\r\n"
           b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    c.send(b"Subject: two\r\n\r\ny\r\n.\r\nQUIT\r\n")
    assert [c.reply()[0] for _ in range(2)] == [250, 221]
    got = server.wait_delivered(rcpt, before + 2)[before:]
    assert len(got) == 2
    assert {b"Subject: one" in m for m in got} == {True, False}
