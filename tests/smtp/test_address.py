"""Path and parameter parsing (smtp.address), table-driven."""
import pytest

from mailwright.smtp import catalog
from mailwright.smtp.address import (
    ParseError, decode_xtext, is_valid_helo, parse_mail_params, parse_path, parse_rcpt_params, split_argument,
)
from mailwright.smtp.events import Address, MailParams, RcptParams

BAD = catalog.BAD_SENDER_SYNTAX


@pytest.mark.parametrize("arg, path, params", [
    ("<a@b.c>", "a@b.c", ""),
    (" <a@b.c>", "a@b.c", ""),                          # lenient space after colon
    ("<a@b.c> SIZE=10 BODY=8BITMIME", "a@b.c", "SIZE=10 BODY=8BITMIME"),
    ("<a@b.c>   SIZE=10  ", "a@b.c", "SIZE=10"),
    ("<>", "", ""),
    ("<> SIZE=1", "", "SIZE=1"),
    ("user@testserver", "user@testserver", ""),          # missing brackets, single word
    (' <"a>b"@c.d> X=1', '"a>b"@c.d', "X=1"),          # ">" inside a quoted string
    ('<"a\\">"@c.d>', '"a\\">"@c.d', ""),
])
def test_split_argument(arg, path, params):
    assert split_argument(arg, BAD) == (path, params)


@pytest.mark.parametrize("arg", [
    "", "   ", "<a@b.c", "<a@b.c>SIZE=1", "a@b.c SIZE=1", "a@b.c>", '<"a@b.c>',
])
def test_split_argument_errors(arg):
    with pytest.raises(ParseError) as e:
        split_argument(arg, BAD)
    assert e.value.reply is BAD


@pytest.mark.parametrize("path, sender, utf8, expected", [
    ("a@b.c", True, False, Address("a", "b.c", raw="a@b.c")),
    ("", True, False, Address("", "", raw="")),
    ("First.Last+tag@Example.COM", False, False,
     Address("First.Last+tag", "Example.COM", raw="First.Last+tag@Example.COM")),
    ("foo.@docomo.ne.jp", False, False, Address("foo.", "docomo.ne.jp", raw="foo.@docomo.ne.jp")),
    ('"a b"@x.y', False, False, Address("a b", "x.y", raw='"a b"@x.y', quoted=True)),
    ('"a\\"b\\\\c"@x.y', False, False, Address('a"b\\c', "x.y", raw='"a\\"b\\\\c"@x.y', quoted=True)),
    ("@a.example,@b.example:user@c.example", False, False,
     Address("user", "c.example", raw="@a.example,@b.example:user@c.example",
             source_route="@a.example,@b.example")),
    ("@[1.2.3.4]:u@c.d", False, False,
     Address("u", "c.d", raw="@[1.2.3.4]:u@c.d", source_route="@[1.2.3.4]")),
    ("u@[192.0.2.1]", False, False, Address("u", "[192.0.2.1]", raw="u@[192.0.2.1]", is_literal=True)),
    ("u@[IPv6:2001:db8::1]", False, False,
     Address("u", "[IPv6:2001:db8::1]", raw="u@[IPv6:2001:db8::1]", is_literal=True)),
    ("u@[x-tag:stuff]", False, False, Address("u", "[x-tag:stuff]", raw="u@[x-tag:stuff]", is_literal=True)),
    ("postmaster", False, False, Address("postmaster", "", raw="postmaster")),
    ("PostMaster", False, False, Address("postmaster", "", raw="PostMaster")),
    ("pelé@exämple.test", True, True, Address("pelé", "exämple.test", raw="pelé@exämple.test", utf8=True)),
    ("x@under_score.test", False, False, Address("x", "under_score.test", raw="x@under_score.test")),
])
def test_parse_path(path, sender, utf8, expected):
    assert parse_path(path, sender=sender, smtputf8=utf8) == expected


@pytest.mark.parametrize("path, sender, utf8, reply", [
    ("", False, False, catalog.BAD_RECIPIENT_SYNTAX),          # <> only for MAIL
    ("postmaster", True, False, catalog.BAD_SENDER_SYNTAX),    # bare postmaster only for RCPT
    ("a", True, False, catalog.BAD_SENDER_SYNTAX),
    ("a@", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("@b.c", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@b@c", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a b@c.d", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@b..c", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@.b", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@b.c.", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a(b)@c.d", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ('"unterminated@c.d', False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ('""@c.d', False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ('"a"b@c.d', False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ('"a\x01"@c.d', False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@xn---", True, False, catalog.BAD_SENDER_SYNTAX),       # label ends with "-"
    ("a@-x.test", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@x-.test", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("a@" + "l" * 64 + ".test", False, False, catalog.BAD_RECIPIENT_SYNTAX),  # label > 63
    ("u@[300.1.1.1]", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("u@[IPv6:zz::1]", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("u@[1.2.3]", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("@a.b:", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("@a.b;u@c.d", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("@:u@c.d", False, False, catalog.BAD_RECIPIENT_SYNTAX),
    ("pelé@example.test", True, False, catalog.NON_ASCII_SENDER),
    ("pele@exämple.test", False, False, catalog.NON_ASCII_RECIPIENT),
    # RFC 5321 §4.5.3.1 limits
    ("a" * 65 + "@b.c", True, False, catalog.SENDER_TOO_LONG),
    ("a@" + "b" * 250 + ".test", False, False, catalog.RECIPIENT_TOO_LONG),
    ("a" * 60 + "@" + ("d" * 60 + ".") * 3 + "d" * 15, False, False, catalog.RECIPIENT_TOO_LONG),
])
def test_parse_path_errors(path, sender, utf8, reply):
    with pytest.raises(ParseError) as e:
        parse_path(path, sender=sender, smtputf8=utf8)
    assert e.value.reply == reply


def test_length_limits_are_inclusive():
    local = "a" * 64
    domain = ("d" * 60 + ".") * 3 + "d" * 5          # 188 octets
    assert parse_path(f"{local}@{domain}", sender=True, smtputf8=False).local == local
    # path of exactly 256 octets including "<" and ">"
    path = "a" * 64 + "@" + ("d" * 62 + ".") * 2 + "d" * (254 - 64 - 1 - 126)
    assert len(path) + 2 == 256
    parse_path(path, sender=False, smtputf8=False)


@pytest.mark.parametrize("text, expected", [
    ("", MailParams()),
    ("SIZE=1000", MailParams(size=1000)),
    ("size=0 body=8bitmime", MailParams(size=0, body="8BITMIME")),
    ("BODY=7BIT", MailParams(body="7BIT")),
    ("SMTPUTF8", MailParams(smtputf8=True)),
    ("RET=hdrs ENVID=QQ+2Bx+3D1", MailParams(ret="HDRS", envid="QQ+x=1")),
    ("AUTH=<>", MailParams(auth="<>")),
    ("AUTH=user+40example.com", MailParams(auth="user@example.com")),
])
def test_mail_params(text, expected):
    assert parse_mail_params(text) == expected


@pytest.mark.parametrize("text, reply", [
    ("SIZE", catalog.BAD_PARAMETER),
    ("SIZE=", catalog.BAD_PARAMETER),
    ("SIZE=abc", catalog.BAD_PARAMETER),
    ("SIZE=-1", catalog.BAD_PARAMETER),
    ("SIZE=1 SIZE=2", catalog.DUPLICATE_PARAMETER),
    ("size=1 SIZE=1", catalog.DUPLICATE_PARAMETER),
    ("BODY=BINARYMIME", catalog.BAD_PARAMETER),
    ("BODY", catalog.BAD_PARAMETER),
    ("SMTPUTF8=yes", catalog.BAD_PARAMETER),
    ("RET=ALL", catalog.BAD_PARAMETER),
    ("ENVID=a+zz", catalog.BAD_PARAMETER),
    ("ENVID=" + "x" * 101, catalog.BAD_PARAMETER),
    ("ENVID=+0A", catalog.BAD_PARAMETER),
    ("=1", catalog.BAD_PARAMETER),
    ("-X=1", catalog.BAD_PARAMETER),
    ("X-UNKNOWN=1", catalog.UNSUPPORTED_PARAMETER),
    ("MT-PRIORITY=3", catalog.UNSUPPORTED_PARAMETER),
    ("NOTIFY=NEVER", catalog.UNSUPPORTED_PARAMETER),      # RCPT-only parameter
])
def test_mail_param_errors(text, reply):
    with pytest.raises(ParseError) as e:
        parse_mail_params(text)
    assert e.value.reply == reply


@pytest.mark.parametrize("text, expected", [
    ("", RcptParams()),
    ("NOTIFY=NEVER", RcptParams(notify=("NEVER",))),
    ("notify=success,failure", RcptParams(notify=("SUCCESS", "FAILURE"))),
    ("NOTIFY=DELAY", RcptParams(notify=("DELAY",))),
    ("ORCPT=rfc822;a+2Bb@c.d", RcptParams(orcpt="rfc822;a+b@c.d")),
    ("ORCPT=rfc822;x@y NOTIFY=FAILURE", RcptParams(notify=("FAILURE",), orcpt="rfc822;x@y")),
])
def test_rcpt_params(text, expected):
    assert parse_rcpt_params(text) == expected


@pytest.mark.parametrize("text, reply", [
    ("NOTIFY=NEVER,SUCCESS", catalog.BAD_PARAMETER),
    ("NOTIFY=", catalog.BAD_PARAMETER),
    ("NOTIFY=SUCCESS,SUCCESS", catalog.BAD_PARAMETER),
    ("NOTIFY=SOMETIMES", catalog.BAD_PARAMETER),
    ("NOTIFY=SUCCESS,", catalog.BAD_PARAMETER),
    ("NOTIFY", catalog.BAD_PARAMETER),
    ("ORCPT=rfc822", catalog.BAD_PARAMETER),
    ("ORCPT=;a@b", catalog.BAD_PARAMETER),
    ("ORCPT=rfc822;", catalog.BAD_PARAMETER),
    ("ORCPT=rfc822;a+G0", catalog.BAD_PARAMETER),
    ("ORCPT=rfc822;a NOTIFY=NEVER ORCPT=rfc822;b", catalog.DUPLICATE_PARAMETER),
    ("SIZE=10", catalog.UNSUPPORTED_PARAMETER),
])
def test_rcpt_param_errors(text, reply):
    with pytest.raises(ParseError) as e:
        parse_rcpt_params(text)
    assert e.value.reply == reply


@pytest.mark.parametrize("raw, decoded", [
    ("abc", "abc"), ("a+2Bb", "a+b"), ("+3D", "="), ("x+2b", "x+"), ("", ""),
])
def test_decode_xtext(raw, decoded):
    assert decode_xtext(raw) == decoded


@pytest.mark.parametrize("raw", ["a=b", "a b", "+", "+4", "+GG", "é", "a\x7f"])
def test_decode_xtext_errors(raw):
    with pytest.raises(ValueError):
        decode_xtext(raw)


@pytest.mark.parametrize("arg, ok", [
    ("mail.example.com", True), ("localhost", True), ("DESKTOP-AB12", True), ("my_pc", True),
    ("192.0.2.1", True), ("[192.0.2.1]", True), ("[IPv6:::1]", True), ("xn--bcher-kva.example", True),
    ("", False), ("a b", False), ("-a.test", False), ("a-.test", False), ("a..b", False),
    ("[1.2.3]", False), ("x" * 64, False), ("\u00e9.test", False), ("a\tb", False),
    (("a" * 63 + ".") * 4 + "a", False),                   # 257 octets
])
def test_is_valid_helo(arg, ok):
    assert is_valid_helo(arg) is ok
