"""Authentication-Results (RFC 8601): writing, folding, quoting, removing forged fields."""
from __future__ import annotations

import email
import email.policy

import pytest

from mailwright.mailauth.authresults import (
    AuthResultsSyntaxError, MethodResult, format_header, parse_authserv_id, strip_forged)

ID = "mx.example.org"

TYPICAL = [
    MethodResult("spf", "pass", props=[("smtp", "mailfrom", "sender@example.com")]),
    MethodResult("dkim", "pass", props=[("header", "d", "example.com"),
                                        ("header", "s", "sel2024"),
                                        ("header", "b", "dGhpcyBp")]),
    MethodResult("dmarc", "fail", props=[("header", "from", "example.com")]),
    MethodResult("arc", "pass"),
]


def _unfold(field: bytes) -> str:
    """The value as a reader sees it: CRLF removed before WSP (RFC 5322 §2.2.3)."""
    text = field.decode("utf-8")
    name, _, value = text.partition(":")
    assert name == "Authentication-Results"
    assert text.endswith("\r\n")
    return value[:-2].replace("\r\n", "")


def _squash(value: str) -> str:
    return " ".join(value.split())


def test_format_typical():
    field = format_header(ID, TYPICAL)
    assert _squash(_unfold(field)) == (
        "mx.example.org; spf=pass smtp.mailfrom=sender@example.com; "
        "dkim=pass header.d=example.com header.s=sel2024 header.b=dGhpcyBp; "
        "dmarc=fail header.from=example.com; arc=pass")


def test_format_is_one_folded_field_with_crlf():
    field = format_header(ID, TYPICAL)
    lines = field.split(b"\r\n")
    assert lines[-1] == b""                       # ends in CRLF
    assert b"\n" not in b"".join(lines)           # no bare LF anywhere
    assert lines[0].startswith(b"Authentication-Results: ")
    for cont in lines[1:-1]:
        assert cont[:1] in (b" ", b"\t")          # every other line is a continuation
    assert all(len(line.expandtabs(8)) <= 78 for line in lines)


def test_format_folds_long_results_within_78_columns():
    results = [MethodResult("dkim", "pass", props=[
        ("header", "d", "a-rather-long-signing-domain.example.com"),
        ("header", "i", "@a-rather-long-signing-domain.example.com"),
        ("header", "s", "selector-2024-with-a-long-name"),
        ("header", "a", "rsa-sha256"),
        ("header", "b", "AbCdEfGh")])] * 3
    field = format_header(ID, results)
    lines = field.split(b"\r\n")[:-1]
    assert len(lines) > 4
    assert all(len(line.expandtabs(8)) <= 78 for line in lines)
    assert _squash(_unfold(field)).count("dkim=pass") == 3


def test_format_piece_longer_than_a_line_stays_whole():
    long_domain = ".".join(["label" + str(i) for i in range(14)]) + ".example"
    field = format_header(ID, [MethodResult("spf", "pass",
                                            props=[("smtp", "mailfrom", long_domain)])])
    assert f"smtp.mailfrom={long_domain}".encode() in field
    assert all(len(line) <= 998 for line in field.split(b"\r\n"))


def test_format_none_when_nothing_was_checked():
    assert format_header(ID, []) == b"Authentication-Results: mx.example.org; none\r\n"


def test_format_parses_with_the_stdlib_email_package():
    raw = format_header(ID, TYPICAL) + b"Subject: x\r\n\r\nbody\r\n"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "x"
    assert _squash(str(msg["Authentication-Results"])).startswith("mx.example.org; spf=pass")


@pytest.mark.parametrize("value,written", [
    ("example.com", "example.com"),                 # token
    ("sender@example.com", "sender@example.com"),   # local-part "@" domain (§2.2 pvalue)
    ("@example.com", "@example.com"),
    ("first.last@sub.example.com", "first.last@sub.example.com"),
    ("abc/def+gh=", '"abc/def+gh="'),               # tspecials "/" and "=" need quotes
    ("two words", '"two words"'),
    ('say "hi"', '"say \\"hi\\""'),                 # quoted-pair for DQUOTE
    ("back\\slash", '"back\\\\slash"'),
    ("", '""'),
    ('"odd"@example.com', '"\\"odd\\"@example.com"'),
    ("a@b@c.example", '"a@b@c.example"'),
    ("x@example.com\r\nX-Injected: yes", '"x@example.comX-Injected: yes"'),  # CTLs dropped
])
def test_property_value_quoting(value, written):
    field = format_header(ID, [MethodResult("x-test", "pass", props=[("header", "v", value)])])
    assert _unfold(field).endswith(f" header.v={written}")


def test_reason_is_a_value():
    field = format_header(ID, [MethodResult("spf", "fail", reason="not permitted")])
    assert _squash(_unfold(field)) == 'mx.example.org; spf=fail reason="not permitted"'
    field = format_header(ID, [MethodResult("spf", "fail", reason="policy")])
    assert _squash(_unfold(field)) == "mx.example.org; spf=fail reason=policy"


def test_quoted_authserv_id_when_not_a_token():
    field = format_header("mail server", [])
    assert field == b'Authentication-Results: "mail server"; none\r\n'
    assert parse_authserv_id(field.split(b":", 1)[1]) == "mail server"


def test_no_value_can_inject_a_header():
    evil = "a\r\nBcc: victim@example.net\r\n"
    field = format_header(ID, [MethodResult("spf", "pass", reason=evil,
                                            props=[("smtp", "mailfrom", evil)])])
    for line in field.split(b"\r\n")[1:-1]:
        assert line[:1] in (b" ", b"\t")
    assert b"\r\nBcc" not in field


@pytest.mark.parametrize("bad", [
    MethodResult("spf pass", "pass"), MethodResult("spf", "pa ss"),
    MethodResult("", "pass"), MethodResult("spf", "pass;x"),
    MethodResult("spf", "pass", props=[("smtp mail", "from", "x")]),
    MethodResult("spf", "pass", props=[("smtp", "mail=from", "x")]),
])
def test_bad_names_are_programming_errors(bad):
    with pytest.raises(ValueError):
        format_header(ID, [bad])


def test_method_version_is_allowed():
    assert b"dkim/1=pass" in format_header(ID, [MethodResult("dkim/1", "pass")])


# ---------------------------------------------------------------------- reading the id

@pytest.mark.parametrize("value,ident", [
    (" mx.example.org; spf=pass", "mx.example.org"),
    ("mx.example.org;none", "mx.example.org"),
    (" mx.example.org 1; spf=pass", "mx.example.org"),          # authres-version
    (" (our MTA) mx.example.org; spf=pass", "mx.example.org"),   # comment first
    (" (nested (comment) \\) here) MX.example.org; x=y", "MX.example.org"),
    ("\r\n\tmx.example.org;\r\n spf=pass", "mx.example.org"),    # folded before the id
    (' "mx.example.org"; spf=pass', "mx.example.org"),           # quoted-string
    (' "mx\\.example.org" ; spf=pass', "mx.example.org"),        # quoted-pair
    (" mx.example.org(comment); spf=pass", "mx.example.org"),
    (b" mx.example.org; spf=pass", "mx.example.org"),
])
def test_parse_authserv_id(value, ident):
    assert parse_authserv_id(value) == ident


@pytest.mark.parametrize("value", ["", "   ", " (only a comment) ", ' "unterminated; x=y',
                                   "; spf=pass"])
def test_parse_authserv_id_errors(value):
    with pytest.raises(AuthResultsSyntaxError):
        parse_authserv_id(value)


# ---------------------------------------------------------------------- strip_forged

OTHER = b"Authentication-Results: other.example.net; spf=pass smtp.mailfrom=a@b.example\r\n"


@pytest.mark.parametrize("forged", [
    b"Authentication-Results: mx.example.org; spf=pass\r\n",
    b"Authentication-Results: MX.EXAMPLE.ORG; dkim=pass\r\n",                # case
    b"authentication-results: mx.example.org; dmarc=pass\r\n",               # name case
    b"Authentication-Results : mx.example.org; dmarc=pass\r\n",              # obs WSP
    b"Authentication-Results:mx.example.org;dkim=pass\r\n",                  # no spaces
    b"Authentication-Results: (trust me) mx.example.org; spf=pass\r\n",      # comment
    b"Authentication-Results:\r\n mx.example.org;\r\n\tspf=pass\r\n",        # folded
    b"Authentication-Results: \"mx.example.org\"; spf=pass\r\n",             # quoted
    b"Authentication-Results: mx.example.org.; spf=pass\r\n",                # trailing dot
    b"Authentication-Results: mx.example.org 1; spf=pass\r\n",               # version
    b"Authentication-Results: mx.example.org; none\r\n",
    b"Authentication-Results: mx.example.org(x); spf=pass\r\n",
])
def test_strip_forged_variants(forged):
    section = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" + forged + OTHER + \
        b"Subject: hello\r\n\r\n"
    new, removed = strip_forged(section, ID)
    assert removed == 1
    assert new == (b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" + OTHER +
                   b"Subject: hello\r\n\r\n")


@pytest.mark.parametrize("kept", [
    OTHER,
    b"Authentication-Results: mx.example.org.evil.example; spf=pass\r\n",   # longer id
    b"Authentication-Results: evil-mx.example.org; spf=pass\r\n",
    b"Authentication-Results: mx.example.or; spf=pass\r\n",
    b"X-Authentication-Results: mx.example.org; spf=pass\r\n",            # other field
    b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n",      # ARC's own
    b"Authentication-Results: ; spf=pass\r\n",                           # no id readable
])
def test_strip_forged_keeps_other_fields(kept):
    section = b"From: a@example.com\r\n" + kept + b"\r\n"
    assert strip_forged(section, ID) == (section, 0)


def test_strip_forged_counts_several_and_keeps_line_endings_and_body():
    section = (b"Authentication-Results: mx.example.org; spf=pass\n"
               b"Subject: one\n"
               b"Authentication-Results: Mx.Example.Org;\n"
               b"\tdkim=pass header.d=example.com\n"
               b"To: b@example.net\n"
               b"\n"
               b"Authentication-Results: mx.example.org; this is the body\n")
    new, removed = strip_forged(section, ID)
    assert removed == 2
    assert new == (b"Subject: one\nTo: b@example.net\n\n"
                   b"Authentication-Results: mx.example.org; this is the body\n")


def test_strip_forged_then_our_header_is_the_only_one_with_our_id():
    section = (b"Authentication-Results: mx.example.org; dmarc=pass header.from=bank.example\r\n"
               + OTHER + b"\r\n")
    cleaned, removed = strip_forged(section, ID)
    final = format_header(ID, [MethodResult("dmarc", "fail",
                                            props=[("header", "from", "bank.example")])])
    final += cleaned
    msg = email.message_from_bytes(final, policy=email.policy.compat32)
    ours = [v for v in msg.get_all("Authentication-Results")
            if parse_authserv_id(v).lower() == ID]
    assert removed == 1 and len(ours) == 1 and "dmarc=fail" in ours[0]


def test_strip_forged_without_header_end():
    section = b"Authentication-Results: mx.example.org; spf=pass\r\nSubject: x\r\n"
    assert strip_forged(section, ID) == (b"Subject: x\r\n", 1)
    assert strip_forged(b"", ID) == (b"", 0)
