import email
import email.policy

import pytest

from mailwright.message.trace import (
    address_literal, delivered_to_header, fold, local_delivery_headers, received_header,
    return_path_header, rfc5322_date, sanitize_host, tls_comment,
)
from mailwright.queue.model import Envelope, RecipientRequest

T = 1136214245.75  # Mon, 02 Jan 2006 15:04:05 UTC


def env(**kw):
    base = dict(sender="alice@example.com", recipients=[RecipientRequest("bob@example.org")],
                received_at=T, client_ip="192.0.2.1", client_name="mail.example.com",
                helo="mail.example.com", protocol="ESMTP")
    base.update(kw)
    return Envelope(**base)


def test_received_postfix_style_with_tls():
    h = received_header(env(protocol="ESMTPS", tls="TLSv1.3 TLS_AES_256_GCM_SHA384"),
                        queue_id="4AbC12", hostname="mx.example.org", recipient="bob@example.org")
    assert h == (
        "Received: from mail.example.com (mail.example.com [192.0.2.1])\r\n"
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
        "\tby mx.example.org (Mailwright) with ESMTPS id 4AbC12\r\n"
        "\tfor <bob@example.org>; Mon, 02 Jan 2006 15:04:05 +0000\r\n")


def test_received_cleartext_unknown_rdns_no_for_clause():
    h = received_header(env(client_name=""), queue_id="Q1", hostname="mx.example.org")
    # "by ... id Q1; <date>" would be 81 columns: the date folds onto its own line.
    assert h == (
        "Received: from mail.example.com (unknown [192.0.2.1])\r\n"
        "\tby mx.example.org (Mailwright) with ESMTP id Q1;\r\n"
        "\tMon, 02 Jan 2006 15:04:05 +0000\r\n")


def test_received_without_client_info_has_no_from_clause():
    h = received_header(env(client_ip="", helo=""), queue_id="Q", hostname="mx",
                        recipient="b@x")
    assert h.startswith("Received: by mx (Mailwright) with ESMTP id Q\r\n\tfor <b@x>; Mon,")


@pytest.mark.parametrize("ip, literal", [
    ("192.0.2.1", "[192.0.2.1]"),
    ("2001:db8::1", "[IPv6:2001:db8::1]"),
    ("2001:0db8:0000::0001", "[IPv6:2001:db8::1]"),
    ("::ffff:192.0.2.7", "[192.0.2.7]"),
    ("fe80::1%eth0", "[IPv6:fe80::1]"),
    ("not an ip\r\n", "[not?an?ip]"),
    ("", "[unknown]"),
])
def test_address_literal(ip, literal):
    assert address_literal(ip) == literal


@pytest.mark.parametrize("raw, clean", [
    ("mail.example.com", "mail.example.com"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    ("evil\r\nX-Injected: yes", "evil??X-Injected:?yes"),
    ("a(b)c;d\\e\"f", "a?b?c?d?e?f"),
    ("tab\there", "tab?here"),
    ("\x00\x7f", "??"),
    ("bücher.de", "b?cher.de"),
    ("x" * 1000, "x" * 255),
])
def test_sanitize_host(raw, clean):
    assert sanitize_host(raw) == clean


def test_injection_attempts_never_reach_header_structure():
    e = env(helo="x\r\nBcc: victim@example.com", client_name="host)\r\n(evil",
            tls="TLSv1.3\r\nX: y (z)", sender="a@b\r\nX-Evil: 1",
            protocol="ESMTP\r\nX: 1")
    raw = local_delivery_headers(e, queue_id="Q\r\n1", hostname="mx\r\n", recipient="r@x\r\nX: 1",
                                 delivered_to="r@x\r\nY: 2")
    text = raw.decode()
    # Only CRLF followed by TAB (folding) or the start of one of our three fields.
    lines = text.split("\r\n")
    assert lines[-1] == ""
    starts = [ln.split(":", 1)[0] for ln in lines[:-1] if not ln.startswith("\t")]
    assert starts == ["Return-Path", "Delivered-To", "Received"]
    assert "\n" not in text.replace("\r\n", "")
    assert "\r" not in text.replace("\r\n", "")
    # The comment stays balanced and the ';' before the date is the only one.
    received = text[text.index("Received:"):]
    assert received.count("(") == received.count(")")
    assert received.count(";") == 1


@pytest.mark.parametrize("tls, comment", [
    ("", ""),
    ("TLSv1.3 TLS_AES_256_GCM_SHA384", "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)"),
    ("TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256", "(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256)"),
    ("TLSv1.3", "(using TLSv1.3)"),
    ("TLSv1.3 (x)", "(using TLSv1.3 with cipher ?x?)"),
])
def test_tls_comment(tls, comment):
    assert tls_comment(tls) == comment


def test_date_is_rfc5322_utc_and_parses_back():
    assert rfc5322_date(T) == "Mon, 02 Jan 2006 15:04:05 +0000"
    assert email.utils.parsedate_to_datetime(rfc5322_date(T)).timestamp() == int(T)


@pytest.mark.parametrize("sender, header", [
    ("alice@example.com", "Return-Path: <alice@example.com>\r\n"),
    ("", "Return-Path: <>\r\n"),
    ("<odd>", "Return-Path: <odd>\r\n"),
])
def test_return_path(sender, header):
    assert return_path_header(sender) == header


def test_delivered_to():
    assert delivered_to_header("bob@example.org") == "Delivered-To: bob@example.org\r\n"


def test_lines_fold_within_78_where_possible():
    e = env(helo="h" * 40 + ".example.com", client_name="r" * 40 + ".example.net",
            client_ip="2001:db8:1234:5678:9abc:def0:1234:5678", protocol="ESMTPSA",
            tls="TLSv1.3 TLS_CHACHA20_POLY1305_SHA256")
    h = received_header(e, queue_id="ABCDEF0123456789", hostname="mx1.mail.example.org",
                        recipient="someone.with.a.long.name@subdomain.example.org")
    for line in h.split("\r\n")[:-1]:
        assert len(line) <= 78, line
    # Unfolding gives back a single logical line with the expected clauses in order.
    unfolded = h.replace("\r\n\t", " ").rstrip("\r\n")
    assert unfolded.index(" from ") < unfolded.index("(using") < unfolded.index(" by ") \
        < unfolded.index(" with ESMTPSA ") < unfolded.index(" id ") < unfolded.index(" for <")


def test_overlong_token_is_not_split():
    h = fold("X", [["a" * 100, "b"]])
    assert h == "X: " + "a" * 100 + "\r\n\tb\r\n"


def test_headers_parse_with_stdlib_email():
    raw = local_delivery_headers(env(), queue_id="Q9", hostname="mx.example.org",
                                 recipient="bob@example.org", delivered_to="bob@example.org")
    msg = email.message_from_bytes(raw + b"Subject: hi\r\n\r\nbody\r\n",
                                   policy=email.policy.default)
    assert msg["Return-Path"] == "<alice@example.com>"
    assert msg["Delivered-To"] == "bob@example.org"
    assert "by mx.example.org (Mailwright) with ESMTP id Q9" in str(msg["Received"])
    assert msg["Subject"] == "hi"


def test_utf8_addresses_are_kept_as_utf8():
    raw = local_delivery_headers(env(sender="jörg@bücher.de", smtputf8=True), queue_id="Q",
                                 hostname="mx", recipient="zoë@example.org",
                                 delivered_to="zoë@example.org")
    assert "Return-Path: <jörg@bücher.de>".encode() in raw
    assert "for <zoë@example.org>".encode() in raw
