"""message/dsn.py: NOTIFY policy tables, status codes, and reports parsed back with the
stdlib email package field by field (RFC 3464, RFC 6522, RFC 3461, RFC 6533)."""
from __future__ import annotations

import email
from email import policy

import pytest

from mailwright.message import dsn
from mailwright.message.dsn import RecipientReport, Report, build_dsn

T0 = 1_700_000_000.0
ORIGINAL = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
            b"Message-ID: <orig@example.com>\r\nSubject: lunch\r\n\r\nSee you at noon.\r\n")


# ---------------------------------------------------------------- policy (RFC 3461 §4.1)

@pytest.mark.parametrize("notify, ok, permanent, relayed, delay_due, already, expected", [
    (None, False, True, False, False, False, "failed"),          # default = FAILURE,DELAY
    (None, False, False, False, True, False, "delayed"),
    (None, False, False, False, True, True, None),               # one delay warning only
    (None, False, False, False, False, False, None),             # not yet due
    (None, True, False, False, False, False, None),              # no success by default
    (("NEVER",), False, True, False, False, False, None),
    (("NEVER",), False, False, False, True, False, None),
    (("SUCCESS",), True, False, False, False, False, "delivered"),
    (("SUCCESS",), True, False, True, False, False, "relayed"),
    (("SUCCESS",), False, True, False, False, False, None),      # FAILURE not asked for
    (("FAILURE",), False, True, False, False, False, "failed"),
    (("FAILURE",), False, False, False, True, False, None),      # DELAY not asked for
    (("DELAY",), False, False, False, True, False, "delayed"),
    (("SUCCESS", "FAILURE", "DELAY"), True, False, False, False, False, "delivered"),
    (("success", "failure"), False, True, False, False, False, "failed"),
])
def test_owed_action(notify, ok, permanent, relayed, delay_due, already, expected):
    assert dsn.owed_action(notify, ok=ok, permanent=permanent, relayed=relayed,
                           delay_due=delay_due, delay_already=already) == expected


@pytest.mark.parametrize("reply, code", [
    ("550 5.1.1 Mailbox unavailable", "5.1.1"),
    ("550-5.7.1 rejected", "5.7.1"),
    ("451 4.4.7 Message expired; last error: 452 4.2.2 Mailbox full", "4.4.7"),
    ("250 2.0.0 Delivered to maildir", "2.0.0"),
    ("554 no enhanced code", ""),
    ("", ""),
    ("5.2.2 mailbox full", "5.2.2"),
    ("550 5.1.10 x", "5.1.10"),
])
def test_enhanced_status(reply, code):
    assert dsn.enhanced_status(reply) == code


@pytest.mark.parametrize("action, status, reply, expected", [
    ("failed", "", "550 5.1.1 x", "5.1.1"),
    ("failed", "5.2.1", "550 5.1.1 x", "5.2.1"),                 # the agent's code wins
    ("failed", "", "554 no code", "5.0.0"),
    ("failed", "4.4.7", "451 4.4.7 Message expired", "4.4.7"),   # expiry: failed + 4.4.7
    ("failed", "", "250 2.0.0 odd", "5.0.0"),                    # contradicting class
    ("delayed", "", "452 4.2.2 Mailbox full", "4.2.2"),
    ("delayed", "", "", "4.0.0"),
    ("delivered", "", "250 2.0.0 ok", "2.0.0"),
    ("relayed", "", "250 2.6.0 queued", "2.6.0"),
    ("relayed", "", "", "2.0.0"),
])
def test_status_for(action, status, reply, expected):
    assert dsn.status_for(action, status, reply) == expected


# ---------------------------------------------------------------- the report

def report(*rcpts: RecipientReport, **kw) -> Report:
    kw.setdefault("reporting_mta", "mx.example.org")
    kw.setdefault("sender", "alice@example.com")
    kw.setdefault("arrival_date", T0)
    return Report(recipients=list(rcpts), **kw)


FAILED_BOB = RecipientReport("bob@example.net", "failed", original_recipient="rfc822;Bob@Example.NET",
                             remote_mta="mx.example.net",
                             diagnostic="550 5.1.1 <bob@example.net>: no such user",
                             last_attempt=T0 + 60)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=policy.default)


def check_lines(data: bytes) -> None:
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    for line in data.split(b"\r\n"):
        assert len(line) <= 998


def test_failed_dsn_every_field():
    d = build_dsn(report(FAILED_BOB, envid="ENV-42", queue_id="Q1"), ORIGINAL, now=T0 + 120,
                  message_id="<m1@mx.example.org>")
    check_lines(d.data)
    assert d.returned == "full" and not d.eight_bit and not d.smtputf8
    m = parse(d.data)
    assert m["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert m["To"] == "alice@example.com"
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["Message-ID"] == "<m1@mx.example.org>"
    assert m["Subject"] == "Undelivered Mail Returned to Sender"
    assert m["Date"].datetime.timestamp() == T0 + 120
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    human, status, orig = m.get_payload()
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "bob@example.net" in text and "550 5.1.1" in text and "Q1" in text
    assert status.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = status.get_payload()
    assert dict(per_msg) == {"Reporting-MTA": "dns; mx.example.org",
                             "Original-Envelope-Id": "ENV-42",
                             "Arrival-Date": "Tue, 14 Nov 2023 22:13:20 +0000"}
    assert dict(per_rcpt) == {
        "Original-Recipient": "rfc822; Bob@Example.NET",
        "Final-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.net>: no such user",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 22:14:20 +0000",
    }
    assert orig.get_content_type() == "message/rfc822"
    inner = orig.get_payload()[0]
    assert inner["Message-ID"] == "<orig@example.com>"
    assert inner.get_content() == "See you at noon.\r\n"


def test_multiple_recipients_and_no_optional_fields():
    r2 = RecipientReport("carol@example.org", "failed",
                         diagnostic="451 4.4.7 Message expired; last error: 452 4.2.2 Mailbox full",
                         status="4.4.7")
    d = build_dsn(report(FAILED_BOB, r2), ORIGINAL, now=T0)
    status = parse(d.data).get_payload()[1]
    per_msg, b1, b2 = status.get_payload()
    assert "Original-Envelope-Id" not in per_msg
    assert b1["Final-Recipient"] == "rfc822; bob@example.net"
    assert dict(b2) == {"Final-Recipient": "rfc822; carol@example.org", "Action": "failed",
                        "Status": "4.4.7",
                        "Diagnostic-Code": "smtp; 451 4.4.7 Message expired; last error: "
                                           "452 4.2.2 Mailbox full"}


@pytest.mark.parametrize("ret, size_cap, action, returned, ctype", [
    (None, 10_000, "failed", "full", "message/rfc822"),          # default for failures
    ("FULL", 10_000, "failed", "full", "message/rfc822"),
    ("HDRS", 10_000, "failed", "headers", "text/rfc822-headers"),
    (None, 50, "failed", "headers", "text/rfc822-headers"),      # larger than the cap
    ("FULL", 50, "failed", "headers", "text/rfc822-headers"),
    ("FULL", 10_000, "delayed", "headers", "text/rfc822-headers"),  # FULL is for failures
    (None, 10_000, "delivered", "headers", "text/rfc822-headers"),
    (None, 10_000, "relayed", "headers", "text/rfc822-headers"),
])
def test_what_is_returned(ret, size_cap, action, returned, ctype):
    r = RecipientReport("bob@example.net", action, diagnostic="250 2.0.0 ok"
                        if action in ("delivered", "relayed") else "452 4.2.2 full",
                        will_retry_until=T0 + 5 * 86400 if action == "delayed" else None)
    d = build_dsn(report(r, ret=ret), ORIGINAL, now=T0, max_original_size=size_cap)
    check_lines(d.data)
    assert d.returned == returned
    part = parse(d.data).get_payload()[2]
    assert part.get_content_type() == ctype
    raw = part.as_bytes() if ctype == "message/rfc822" else part.get_payload(decode=True)
    assert b"Subject: lunch" in raw
    if returned == "headers":
        assert b"See you at noon" not in d.data


def test_delay_dsn_fields():
    r = RecipientReport("bob@example.org", "delayed", diagnostic="452 4.2.2 Mailbox full",
                        last_attempt=T0 + 4 * 3600, will_retry_until=T0 + 5 * 86400)
    d = build_dsn(report(r), ORIGINAL, now=T0 + 4 * 3600)
    m = parse(d.data)
    assert m["Subject"].startswith("Delayed Mail")
    block = m.get_payload()[1].get_payload()[1]
    assert block["Action"] == "delayed" and block["Status"] == "4.2.2"
    assert block["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert "will retry until" in m.get_payload()[0].get_content()


def test_success_and_relayed_dsn():
    d = build_dsn(report(RecipientReport("bob@example.org", "delivered",
                                         diagnostic="250 2.0.0 Delivered to maildir"),
                         RecipientReport("x@remote.example", "relayed",
                                         remote_mta="mx.remote.example",
                                         diagnostic="250 2.0.0 Ok queued")), ORIGINAL, now=T0)
    m = parse(d.data)
    assert m["Subject"] == "Successful Mail Delivery Report"
    _, b1, b2 = m.get_payload()[1].get_payload()
    assert (b1["Action"], b1["Status"]) == ("delivered", "2.0.0")
    assert (b2["Action"], b2["Remote-MTA"]) == ("relayed", "dns; mx.remote.example")
    assert "Will-Retry-Until" not in b1


def test_no_original_available():
    d = build_dsn(report(FAILED_BOB), None, now=T0)
    check_lines(d.data)
    assert d.returned == "none"
    assert len(parse(d.data).get_payload()) == 2


def test_hostile_values_cannot_inject_fields_or_long_lines():
    evil = RecipientReport("bob@example.net\r\nX-Evil: 1", "failed",
                           original_recipient="rfc822;a\r\nX-Injected: yes",
                           remote_mta="mx\r\nX-Bad: 1",
                           diagnostic="550 5.1.1 " + "x" * 5000 + "\r\nX-Evil: 2")
    d = build_dsn(report(evil, envid="id\r\nX-Env: 1", sender="al\r\nice@example.com"),
                  ORIGINAL, now=T0)
    check_lines(d.data)
    m = parse(d.data)
    assert m["X-Evil"] is None
    for block in m.get_payload()[1].get_payload():
        for name in block.keys():
            assert not name.startswith("X-"), name


def test_original_with_over_long_lines_is_returned_as_headers_and_lf_is_normalised():
    body = b"Subject: long\nFrom: a@example.com\n\n" + b"y" * 2000 + b"\n"
    d = build_dsn(report(FAILED_BOB), body, now=T0)
    check_lines(d.data)
    assert d.returned == "headers"
    part = parse(d.data).get_payload()[2]
    assert part.get_payload(decode=True) == b"Subject: long\r\nFrom: a@example.com\r\n"


def test_eight_bit_original_marks_the_dsn_8bit():
    body = b"Subject: caf\xc3\xa9\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n"
    d = build_dsn(report(FAILED_BOB), body, now=T0)
    check_lines(d.data)
    assert d.eight_bit and not d.smtputf8
    m = email.message_from_bytes(d.data)
    assert m["Content-Transfer-Encoding"] == "8bit"
    assert body in d.data.replace(b"\r\n", b"\r\n")


def test_boundary_never_occurs_in_the_content():
    body = b"Subject: x\r\n\r\n--B\r\n--B--\r\n"
    d = build_dsn(report(FAILED_BOB), body, now=T0, boundary="B")
    m = parse(d.data)
    assert m.get_boundary() != "B"
    assert len(m.get_payload()) == 3


def test_utf8_addresses_use_global_delivery_status():
    r = RecipientReport("jösé@exämple.org", "failed", original_recipient="utf-8;jösé@exämple.org",
                        diagnostic="550 5.1.1 unknown")
    body = "From: ü@exämple.org\r\nSubject: hi\r\n\r\nx\r\n".encode()
    d = build_dsn(report(r, sender="ünï@example.com", smtputf8=True), body, now=T0)
    check_lines(d.data)
    assert d.smtputf8 and d.eight_bit
    m = email.message_from_bytes(d.data)
    parts = m.get_payload()
    assert parts[1].get_content_type() == "message/global-delivery-status"
    text = d.data.decode("utf-8")   # the stdlib has no parser for global-delivery-status
    assert "Final-Recipient: utf-8; jösé@exämple.org" in text
    assert "Original-Recipient: utf-8; jösé@exämple.org" in text
    assert parts[2].get_content_type() == "message/global"


def test_rejects_empty_or_unknown():
    with pytest.raises(ValueError):
        build_dsn(report(), ORIGINAL, now=T0)
    with pytest.raises(ValueError):
        build_dsn(report(RecipientReport("b@x.example", "bounced")), ORIGINAL, now=T0)


def test_message_id_is_unique_and_well_formed():
    a = build_dsn(report(FAILED_BOB), ORIGINAL, now=T0)
    b = build_dsn(report(FAILED_BOB), ORIGINAL, now=T0)
    assert a.message_id != b.message_id
    assert a.message_id.startswith("<") and a.message_id.endswith("@mx.example.org>")
