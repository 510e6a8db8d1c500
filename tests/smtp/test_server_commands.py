"""Command handling of smtp.server.ServerConnection: replies, events, sequence rules."""
import io
import smtplib

import pytest
from smtp.test_server_support import ENVELOPE, Peer, session

from mailwright.smtp import catalog
from mailwright.smtp.events import Address, Hello, MailFrom, MailParams, RcptParams, RcptTo
from mailwright.smtp.replies import Reply
from mailwright.smtp.server import (
    SEQUENCE, TRANSITIONS, ServerConfig, ServerConnection, State, transition_diagram,
)


def test_greeting_and_ehlo_capabilities():
    p = Peer(tls_available=True, max_message_size=1000)
    p.send(b"EHLO client.test\r\n")
    assert p.out == (b"220 mx.test ESMTP Mailwright\r\n"
                     b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
                     b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n"
                     b"250 STARTTLS\r\n")
    assert p.events == [Hello("client.test", True)]
    assert p.conn.helo_name == "client.test" and p.conn.esmtp


def test_greeting_text_is_configurable():
    p = Peer(greeting_text="ready")
    assert p.out == b"220 mx.test ready\r\n"


def test_ehlo_reply_parses_with_smtplib():
    p = Peer(tls_available=True)
    p.take_replies()
    p.send(b"EHLO x\r\n")
    client = smtplib.SMTP()
    client.file = io.BytesIO(p.out)
    client.putcmd = lambda *a, **k: None
    code, _ = client.ehlo("x")
    assert code == 250
    assert client.esmtp_features["size"] == str(25 * 1024 * 1024)
    for ext in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking",
                "dsn", "starttls"):
        assert client.has_extn(ext), ext


def test_starttls_not_offered_without_tls_or_when_active():
    assert b"STARTTLS" not in session(b"EHLO x\r\n").out
    assert b"STARTTLS" not in session(b"EHLO x\r\n", tls_available=True, tls_active=True).out


def test_helo_reply_and_no_esmtp():
    p = session(b"HELO client\r\n")
    assert p.out.endswith(b"250 mx.test\r\n")
    assert p.events == [Hello("client", False)] and not p.conn.esmtp


def test_full_envelope_events():
    p = session(ENVELOPE + b"RSET\r\nQUIT\r\n")
    assert p.replies() == ["220", "250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "221 2.0.0"]
    assert p.types() == ["Hello", "MailFrom", "RcptTo", "TransactionReset", "CloseConnection"]
    assert p.events[1] == MailFrom(Address("a", "sender.test", raw="a@sender.test"), MailParams())
    assert p.events[2] == RcptTo(Address("b", "rcpt.test", raw="b@rcpt.test"), RcptParams())
    assert p.conn.closed


# (input after greeting, expected replies) -- the core answers these by itself
CORE_REPLIES = [
    (b"NOOP\r\n", ["250 2.0.0"]),
    (b"noop whatever\r\n", ["250 2.0.0"]),
    (b"HELP\r\n", ["214 2.0.0"]),
    (b"VRFY root\r\n", ["252 2.5.0"]),
    (b"VRFY\r\n", ["501 5.5.4"]),
    (b"EXPN staff\r\n", ["502 5.5.1"]),
    (b"AUTH PLAIN AGFAYg==\r\n", ["502 5.5.1"]),
    (b"XCLIENT ADDR=1.2.3.4\r\n", ["502 5.5.1"]),
    (b"FOO\r\n", ["500 5.5.2"]),
    (b"\r\n", ["500 5.5.2"]),
    (b"GET / HTTP/1.0\r\n", ["500 5.5.2"]),
    (b"EHLO\r\n", ["501 5.5.4"]),
    (b"HELO   \r\n", ["501 5.5.4"]),
    (b"EHLO a\tb\r\n", ["501 5.5.4"]),
    (b"EHLO two words\r\n", ["501 5.5.4"]),
    (b"HELO " + b"a" * 1000 + b"\r\n", ["501 5.5.4"]),          # label > 63 (chasquid)
    (b"EHLO [1.2.3]\r\n", ["501 5.5.4"]),
    (b"RSET now\r\n", ["501 5.5.4"]),
    (b"QUIT now\r\n", ["501 5.5.4"]),
    (b"MAIL FROM:<a@b.c>\r\n", ["503 5.5.1"]),             # before HELO/EHLO
    (b"RCPT TO:<a@b.c>\r\n", ["503 5.5.1"]),
    (b"DATA\r\n", ["503 5.5.1"]),
    (b"NO\x00OP\r\n", ["500 5.5.2"]),
    (b"NOOP\x00\r\n", ["500 5.5.2"]),
    (b"NO\rOP\r\n", ["500 5.5.2"]),
    (b"EHLO h\xc3\xa9\r\n", ["501 5.5.2"]),                 # UTF-8 outside MAIL/RCPT
    (b"EHLO \xff\xfe\r\n", ["501 5.5.2"]),                  # invalid UTF-8
    (b"MAIL FROM:<\xff@b>\r\n", ["501 5.5.2"]),
    (b"noop\nnoop\r\n", ["250 2.0.0", "250 2.0.0"]),        # LF-only command lines accepted
]


@pytest.mark.parametrize("data, expected", CORE_REPLIES)
def test_core_replies(data, expected):
    p = Peer()
    p.take_replies()
    p.send(data)
    assert p.take_replies() == expected
    assert p.events == []


# After EHLO: MAIL/RCPT syntax, parameters, limits.
AFTER_EHLO = [
    (b"MAIL FROM:<a@b.c>\r\n", ["250 2.1.0"]),
    (b"mail from: <a@b.c>\r\n", ["250 2.1.0"]),
    (b"MAIL FROM:<>\r\n", ["250 2.1.0"]),
    (b"MAIL FROM:a@b.c\r\n", ["250 2.1.0"]),
    (b"MAIL TO:<a@b.c>\r\n", ["501 5.5.4"]),
    (b"MAIL <a@b.c>\r\n", ["501 5.5.4"]),
    (b"MAIL FROM:<a@b\r\n", ["501 5.1.7"]),
    (b"MAIL FROM:<a b@c>\r\n", ["501 5.1.7"]),
    (b"MAIL FROM:<postmaster>\r\n", ["501 5.1.7"]),
    (b"MAIL FROM:<" + b"a" * 65 + b"@b.c>\r\n", ["501 5.1.7"]),
    (b"MAIL FROM:<a@b.c> SIZE=26214400\r\n", ["250 2.1.0"]),
    (b"MAIL FROM:<a@b.c> SIZE=26214401\r\n", ["552 5.3.4"]),       # RFC 1870
    (b"MAIL FROM:<a@b.c> SIZE=x\r\n", ["501 5.5.4"]),
    (b"MAIL FROM:<a@b.c> SIZE=1 SIZE=1\r\n", ["501 5.5.4"]),
    (b"MAIL FROM:<a@b.c> FOO=bar\r\n", ["555 5.5.4"]),
    (b"MAIL FROM:<a@b.c> BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x AUTH=<>\r\n", ["250 2.1.0"]),
    (b"MAIL FROM:<p\xc3\xa9l\xc3\xa9@b.c> SMTPUTF8\r\n", ["250 2.1.0"]),
    (b"MAIL FROM:<p\xc3\xa9l\xc3\xa9@b.c>\r\n", ["553 5.6.7"]),      # RFC 6531 §3.5
    (b"RCPT TO:<a@b.c>\r\n", ["503 5.5.1"]),
    (b"DATA\r\n", ["503 5.5.1"]),
    (b"BDAT 0 LAST\r\n", ["503 5.5.1"]),
    (b"MAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n", ["250 2.1.0", "503 5.5.1"]),
    (b"MAIL FROM:<a@b.c>\r\nDATA\r\n", ["250 2.1.0", "554 5.5.1"]),  # no valid recipients
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<>\r\n", ["250 2.1.0", "501 5.1.3"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<Postmaster>\r\n", ["250 2.1.0", "250 2.1.5"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO: user@testserver\r\n", ["250 2.1.0", "250 2.1.5"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT FROM:<x@y>\r\n", ["250 2.1.0", "501 5.5.4"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y> NOTIFY=NEVER,DELAY\r\n", ["250 2.1.0", "501 5.5.4"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y\r\n",
     ["250 2.1.0", "250 2.1.5"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y> SIZE=1\r\n", ["250 2.1.0", "555 5.5.4"]),
    (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x\xc3\xa9@y>\r\n", ["250 2.1.0", "553 5.6.7"]),
    (b"MAIL FROM:<a@b.c> SMTPUTF8\r\nRCPT TO:<x\xc3\xa9@y>\r\n", ["250 2.1.0", "250 2.1.5"]),
    (b"MAIL FROM:<@r1.test,@r2.test:a@b.c>\r\n", ["250 2.1.0"]),
    (b"STARTTLS\r\n", ["502 5.5.1"]),                              # not available
]


@pytest.mark.parametrize("data, expected", AFTER_EHLO)
def test_after_ehlo(data, expected):
    p = Peer()
    p.send(b"EHLO client\r\n")
    p.take_replies()
    p.send(data)
    assert p.take_replies() == expected


def test_parameters_after_helo_are_refused():
    p = session(b"HELO c\r\nMAIL FROM:<a@b.c> SIZE=10\r\nMAIL FROM:<a@b.c>\r\n"
                b"RCPT TO:<x@y> NOTIFY=NEVER\r\nRCPT TO:<x@y>\r\n")
    assert p.replies()[2:] == ["555 5.5.4", "250 2.1.0", "555 5.5.4", "250 2.1.5"]


def test_mail_event_carries_parameters_and_route():
    p = session(b"EHLO c\r\nMAIL FROM:<@r.test:a+x@b.c> SIZE=5 BODY=8bitmime ENVID=e+2B1\r\n")
    ev = p.events[-1]
    assert ev == MailFrom(Address("a+x", "b.c", raw="@r.test:a+x@b.c", source_route="@r.test"),
                          MailParams(size=5, body="8BITMIME", envid="e+1"))


def test_app_rejection_of_recipient_is_not_counted():
    def decide(ev):
        if isinstance(ev, RcptTo) and ev.address.local == "nobody":
            return Reply(550, "5.1.1", "No such user")
        return None
    p = Peer(decide=decide, max_recipients=2)
    p.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@x>\r\nDATA\r\n")
    assert p.take_replies()[2:] == ["250 2.1.0", "550 5.1.1", "554 5.5.1"]
    p.send(b"RCPT TO:<u1@x>\r\nRCPT TO:<nobody@x>\r\nRCPT TO:<u2@x>\r\nRCPT TO:<u3@x>\r\n")
    assert p.take_replies() == ["250 2.1.5", "550 5.1.1", "250 2.1.5", "452 4.5.3"]
    assert p.conn.accepted_recipients == 2
    assert p.conn.error_count == 3        # 550, 554, 550; 452 is flow control


def test_max_recipients_is_per_transaction():
    p = Peer(max_recipients=1)
    p.send(ENVELOPE + b"RCPT TO:<c@x>\r\nRSET\r\n" + ENVELOPE[len(b"EHLO client.test\r\n"):])
    assert p.replies()[1:] == ["250", "250 2.1.0", "250 2.1.5", "452 4.5.3", "250 2.0.0",
                               "250 2.1.0", "250 2.1.5"]


def test_many_recipients_over_limit_do_not_hit_error_limit():
    p = Peer(max_recipients=100, max_errors=10)
    p.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n" + b"".join(b"RCPT TO:<u%d@x>\r\n" % i for i in range(150)))
    replies = p.replies()
    assert replies.count("250 2.1.5") == 100 and replies.count("452 4.5.3") == 50
    assert not p.conn.closed


def test_app_rejects_mail_state_stays_greeted():
    p = Peer(decide=lambda ev: Reply(550, "5.7.1", "Go away") if isinstance(ev, MailFrom) else None)
    p.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y>\r\n")
    assert p.replies()[2:] == ["550 5.7.1", "503 5.5.1"]
    assert p.conn.state is State.GREETED


def test_app_rejects_hello_needs_new_hello():
    p = Peer(decide=lambda ev: Reply(550, "5.7.1", "Bad HELO") if isinstance(ev, Hello) else None)
    p.send(b"EHLO bad\r\nMAIL FROM:<a@b.c>\r\n")
    assert p.replies()[1:] == ["550 5.7.1", "503 5.5.1"]
    assert p.conn.helo_name is None and p.conn.state is State.CONNECTED


def test_app_421_closes():
    p = Peer(decide=lambda ev: Reply(421, "4.7.0", "Try later") if isinstance(ev, MailFrom) else None)
    p.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y>\r\n")
    assert p.replies()[2:] == ["421 4.7.0"]
    assert p.types()[-1] == "CloseConnection" and p.conn.closed


def test_reissued_ehlo_resets_transaction():
    p = session(ENVELOPE + b"EHLO again\r\nRCPT TO:<x@y>\r\n")
    assert p.types() == ["Hello", "MailFrom", "RcptTo", "TransactionReset", "Hello"]
    assert p.replies()[-2:] == ["250", "503 5.5.1"]


def test_rset_always_emits_reset():
    p = session(b"RSET\r\nEHLO c\r\nRSET\r\n")
    assert p.types() == ["TransactionReset", "Hello", "TransactionReset"]
    assert p.replies() == ["220", "250 2.0.0", "250", "250 2.0.0"]


def test_case_insensitive_verbs():
    p = session(b"ehlo c\r\nMaIl FrOm:<a@b.c>\r\nrcpt to:<x@y>\r\nrset\r\nquit\r\n")
    assert p.replies() == ["220", "250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "221 2.0.0"]


def test_quit_closes_and_ignores_the_rest():
    p = session(b"QUIT\r\nNOOP\r\n")
    assert p.replies() == ["220", "221 2.0.0"]
    p.send(b"NOOP\r\n")
    assert p.replies() == ["220", "221 2.0.0"]
    assert p.conn.next_event() == p.events[-1]          # CloseConnection is sticky


# ------------------------------------------------------------------ line length, errors


def test_line_too_long_is_discarded_and_session_continues():
    p = Peer(max_line_length=64)
    p.take_replies()
    p.send(b"NOOP " + b"x" * 57 + b"\r\n")              # exactly 64 with CRLF
    p.send(b"NOOP " + b"x" * 58 + b"\r\n")              # 65
    assert p.take_replies() == ["250 2.0.0", "500 5.5.2"]
    for i in range(10):                                 # arrives in pieces, no LF for long
        p.send(b"y" * 50)
    assert p.take_replies() == []
    assert len(p.conn._buf) - p.conn._pos <= 64          # not buffered
    p.send(b"zzz\r\nNOOP\r\n")
    assert p.take_replies() == ["500 5.5.2", "250 2.0.0"]


def test_max_errors_closes_with_421():
    p = Peer(max_errors=3)
    p.send(b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n")
    assert p.replies() == ["220", "500 5.5.2", "500 5.5.2", "250 2.0.0", "500 5.5.2", "421 4.7.0"]
    assert p.types() == ["CloseConnection"] and p.events[0].reason == "too many errors"


def test_app_rejections_count_as_errors():
    p = Peer(decide=lambda ev: Reply(550, "5.1.1", "no") if isinstance(ev, RcptTo) else None,
             max_errors=2)
    p.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\nNOOP\r\n")
    assert p.replies()[-3:] == ["550 5.1.1", "550 5.1.1", "421 4.7.0"]
    assert p.conn.closed


# ------------------------------------------------------------------ pipelining, API


def test_pipelined_replies_in_order_and_paused_while_waiting():
    conn = ServerConnection(ServerConfig("mx.test"), 0.0)
    conn.receive_data(b"NOOP\r\nEHLO c\r\nNOOP\r\nMAIL FROM:<a@b.c>\r\nFOO\r\n", 0.0)
    ev = conn.next_event()
    assert isinstance(ev, Hello)
    from mailwright.smtp.events import NEED_DATA, PAUSED
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"       # only the first NOOP so far
    conn.respond()
    assert isinstance(conn.next_event(), MailFrom)
    conn.respond(Reply(451, "4.3.0", "later"))
    assert conn.next_event() is NEED_DATA
    from smtp.test_server_support import parse_replies
    assert parse_replies(conn.data_to_send()) == ["250", "250 2.0.0", "451 4.3.0", "500 5.5.2"]


def test_respond_misuse_raises():
    conn = ServerConnection(ServerConfig("mx.test"), 0.0)
    with pytest.raises(RuntimeError):
        conn.respond()
    with pytest.raises(RuntimeError):
        conn.tls_established(0.0)
    with pytest.raises(NotImplementedError):
        ServerConnection(ServerConfig("mx.test", lmtp=True), 0.0)


def test_eof_processes_buffered_commands_then_closes():
    p = Peer()
    p.conn.receive_data(b"NOOP\r\nNOOP", 0.0)
    p.eof()
    assert p.replies() == ["220", "250 2.0.0"]
    assert p.events[-1].reason == "peer closed the connection"


def test_tables_are_consistent():
    command_states = {State.CONNECTED, State.GREETED, State.MAIL, State.RCPT, State.BDAT}
    for verb, rules in SEQUENCE.items():
        assert set(rules) == command_states, verb
    for state in State:
        assert TRANSITIONS[(state, "close")] is State.CLOSED
    diagram = transition_diagram()
    for (src, trigger), dst in TRANSITIONS.items():
        assert isinstance(src, State) and isinstance(dst, State)
        if trigger != "close":
            assert f"{src.name} --> {dst.name}: {trigger}" in diagram


def test_every_catalog_reply_has_ascii_text_and_enhanced_code():
    for name in dir(catalog):
        value = getattr(catalog, name)
        if isinstance(value, Reply):
            value.to_bytes().decode("ascii")
            if value.code not in (220, 250, 354) or name == "OK":
                assert value.enhanced and value.enhanced[0] == str(value.code)[0], name
