"""DATA and BDAT through smtp.server.ServerConnection: bodies, limits, smuggling, pipelining."""
import smtplib

import pytest
import yaml
from smtp.test_server_support import ENVELOPE, QUEUED, Peer, parse_replies
from support import CONFORMANCE

from mailwright.smtp.events import (
    BdatChunkAccepted, BodyComplete, BodyRejected, DataStarted, MailFrom, RcptTo,
)
from mailwright.smtp.replies import Reply

SMUGGLING = CONFORMANCE / "smtp-security" / "smtp-smuggling-sequences.yaml"


def data_session(body: bytes, **config) -> Peer:
    p = Peer(**config)
    p.send(ENVELOPE + b"DATA\r\n")
    p.send(body)
    return p


# ------------------------------------------------------------------ DATA


def test_simple_message():
    p = data_session(b"Subject: hi\r\n\r\nHello\r\n.\r\n")
    assert p.replies() == ["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert p.messages == [b"Subject: hi\r\n\r\nHello\r\n"]
    assert p.types()[3:] == ["DataStarted", "BodyChunk", "BodyComplete"]
    assert p.events[3] == DataStarted(chunking=False)
    assert p.out.endswith(b"250 2.0.0 Ok: queued as TEST\r\n")


def test_empty_message_right_after_data():
    p = Peer()
    p.send(ENVELOPE + b"DATA\r\n.\r\n")
    assert p.messages == [b""]
    assert p.events[-1] == BodyComplete(0)


def test_dot_unstuffing():
    p = data_session(b"..leading\r\n..\r\n...\r\nmid.dle\r\n.x\r\n.\r\n")
    assert p.messages == [b".leading\r\n.\r\n..\r\nmid.dle\r\nx\r\n"]


def test_literal_starttls_and_commands_in_body_are_content():
    body = b"STARTTLS\r\nQUIT\r\nMAIL FROM:<x@y>\r\n"
    p = data_session(body + b".\r\n")
    assert p.messages == [body]
    assert p.replies()[-1] == "250 2.0.0"


MESSAGE = b"Subject: s\r\n\r\n..a\r\nb\r\n.\r\n"
TRICKY = [
    ENVELOPE + b"DATA\r\n" + MESSAGE + b"QUIT\r\n",
    ENVELOPE + b"DATA\r\n.\r\nQUIT\r\n",
    ENVELOPE + b"DATA\r\n\r\n.\r\n..\r\n.\r\nQUIT\r\n",
]


@pytest.mark.parametrize("wire", TRICKY)
def test_every_split_point_through_the_server(wire):
    reference = Peer()
    reference.send(wire)
    assert reference.conn.closed
    def shape(peer):        # BodyChunk boundaries depend on the split; the rest must not
        return peer.out, peer.messages, [t for t in peer.types() if t != "BodyChunk"]
    for i in range(len(wire) + 1):
        p = Peer()
        p.send(wire[:i])
        p.send(wire[i:])
        assert shape(p) == shape(reference), i
    p = Peer()
    p.send_bytewise(wire)
    assert shape(p) == shape(reference)


def test_pipelined_second_message_after_final_dot():
    # RFC 2920: the next transaction may follow the final dot in the same segment.
    second = b"MAIL FROM:<c@d.e>\r\nRCPT TO:<f@g.h>\r\nDATA\r\n"
    p = Peer()
    p.send(ENVELOPE + b"DATA\r\n")
    p.send(b"one\r\n.\r\n" + second)
    p.send(b"two\r\n.\r\nQUIT\r\n")
    assert p.messages == [b"one\r\n", b"two\r\n"]
    assert p.replies()[4:] == ["354", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354",
                               "250 2.0.0", "221 2.0.0"]


def test_new_transaction_needed_after_message():
    p = data_session(b"x\r\n.\r\nRCPT TO:<z@y>\r\nDATA\r\n")
    assert p.replies()[-2:] == ["503 5.5.1", "503 5.5.1"]


def test_app_can_reject_the_message():
    decide = lambda ev: Reply(554, "5.7.1", "Spam") if isinstance(ev, BodyComplete) else None
    p = Peer(decide=decide)
    p.send(ENVELOPE + b"DATA\r\nspam\r\n.\r\nMAIL FROM:<a@b.c>\r\n")
    assert p.replies()[-2:] == ["554 5.7.1", "250 2.1.0"]
    assert p.conn.error_count == 1


def test_body_complete_needs_explicit_reply():
    p = Peer(decide=lambda ev: None)
    with pytest.raises(ValueError):
        p.send(ENVELOPE + b"DATA\r\nx\r\n.\r\n")
    p.conn.respond(QUEUED)          # still awaiting: the misuse did not lose the event
    assert p.conn.data_to_send().endswith(b"250 2.0.0 Ok: queued as TEST\r\n")


@pytest.mark.parametrize("body, expected", [
    (b"x" * 98 + b"\r\n.\r\n", "250 2.0.0"),                  # exactly 100 octets stored
    (b"x" * 99 + b"\r\n.\r\n", "552 5.3.4"),
    (b"." * 100 + b"\r\n.\r\n", "552 5.3.4"),                # 99 + 2 stored: one dot unstuffed
    (b"." * 99 + b"\r\n.\r\n", "250 2.0.0"),                 # 98 + 2 stored
    (b"..x\r\n" * 20 + b".\r\n", "250 2.0.0"),               # 100 wire, 80 stored
])
def test_size_limit(body, expected):
    p = data_session(body, max_message_size=100)
    assert p.replies()[-1] == expected


def test_oversized_message_is_consumed_then_rejected():
    p = Peer(max_message_size=1000)
    p.send(ENVELOPE + b"DATA\r\n")
    for _ in range(20):
        p.send(b"y" * 998 + b"\r\n")
    p.send(b".\r\nNOOP\r\n")
    assert p.replies()[-2:] == ["552 5.3.4", "250 2.0.0"]
    assert p.rejected == ["message size exceeds limit"]
    assert p.types().count("BodyChunk") <= 2       # stopped emitting once over the limit
    assert sum(len(e.data) for e in p.events if type(e).__name__ == "BodyChunk") <= 1000


def test_data_rejected_message_resets_transaction():
    p = data_session(b"a\nb\r\n.\r\nRCPT TO:<x@y>\r\n")
    assert p.replies()[-2:] == ["554 5.5.2", "503 5.5.1"]
    assert p.types()[-1] == "BodyRejected"


# ------------------------------------------------------------------ smuggling


def smuggling_sequences():
    doc = yaml.safe_load(SMUGGLING.read_text())
    return [pytest.param(s["bytes"].encode("latin-1"), id=s["id"]) for s in doc["sequences"]]


SMUGGLED = (b"MAIL FROM:<smuggled@test.example>\r\nRCPT TO:<b@rcpt.test>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nX\r\n.\r\n")


@pytest.mark.parametrize("seq", smuggling_sequences())
@pytest.mark.parametrize("mode", ["one-segment", "bytewise"])
def test_smuggling_sequences(seq, mode):
    p = Peer()
    p.send(b"EHLO t\r\nMAIL FROM:<a@test.example>\r\nRCPT TO:<b@rcpt.test>\r\nDATA\r\n")
    wire = b"Subject: s\r\n\r\nbody" + seq + SMUGGLED
    if mode == "bytewise":
        p.send_bytewise(wire)
    else:
        p.send(wire)
    if not p.conn.closed:
        p.send(b"\r\n.\r\n")
    replies = p.replies()
    # no message is delivered at all: the one message contains a bare CR/LF or NUL
    assert p.messages == [] and not any(isinstance(e, BodyComplete) for e in p.events)
    assert [type(e) for e in p.events].count(BodyRejected) == 1
    assert replies[replies.index("354") + 1][:3] == "554"
    # the smuggled commands are never executed
    assert not any(isinstance(e, MailFrom) and e.address.local == "smuggled" for e in p.events)
    assert sum(isinstance(e, RcptTo) for e in p.events) == 1
    assert replies.count("250 2.1.0") == 1 and replies.count("250 2.1.5") == 1
    assert replies.count("354") == 1


def test_smuggling_sequences_file_is_complete():
    assert len(smuggling_sequences()) >= 13


# ------------------------------------------------------------------ BDAT (RFC 3030)


def test_bdat_chunks():
    p = Peer()
    p.send(ENVELOPE + b"BDAT 5\r\nab\r\nc")
    p.send(b"BDAT 3 LAST\r\nd\r\nQUIT\r\n")
    assert p.replies()[4:] == ["250 2.0.0", "250 2.0.0", "221 2.0.0"]
    assert p.out.count(b"250 2.0.0 5 octets received\r\n") == 1
    assert p.messages == [b"ab\r\ncd\r\n"]
    assert p.events[3] == DataStarted(chunking=True)
    assert BdatChunkAccepted(5) in p.events and BodyComplete(8) in p.events


def test_bdat_octets_are_raw_and_can_contain_commands():
    chunk = b"x\r\n.\r\nRSET\r\n"
    p = Peer()
    p.send(ENVELOPE + b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert p.messages == [chunk]
    assert "TransactionReset" not in p.types()


def test_bdat_zero_last():
    p = Peer()
    p.send(ENVELOPE + b"BDAT 0 LAST\r\n")
    assert p.messages == [b""] and p.replies()[-1] == "250 2.0.0"


def test_bdat_every_split_point():
    wire = ENVELOPE + b"BDAT 5\r\na\r\nb\rBDAT 3 last\r\n\ncdNOOP\r\n"
    ref = Peer()
    ref.send(wire)
    assert ref.messages == [b"a\r\nb\r\ncd"]
    for i in range(len(wire) + 1):
        p = Peer()
        p.send(wire[:i])
        p.send(wire[i:])
        assert (p.out, p.messages) == (ref.out, ref.messages), i


@pytest.mark.parametrize("wire, expected", [
    (b"EHLO c\r\nBDAT 5\r\nRSETXNOOP\r\n", ["503 5.5.1", "250 2.0.0"]),       # no MAIL
    (b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nBDAT 4 LAST\r\nNOOPNOOP\r\n",
     ["250 2.1.0", "554 5.5.1", "250 2.0.0"]),                                  # no RCPT
    (b"BDAT 3\r\nabcNOOP\r\n", ["503 5.5.1", "250 2.0.0"]),                    # no EHLO
])
def test_bdat_out_of_sequence_still_consumes_octets(wire, expected):
    p = Peer()
    p.send(wire)
    assert p.replies()[-len(expected):] == expected


def test_data_after_bdat_and_rcpt_after_bdat_refused():
    p = Peer()
    p.send(ENVELOPE + b"BDAT 1\r\nxDATA\r\nRCPT TO:<x@y>\r\nMAIL FROM:<a@b.c>\r\nBDAT 1 LAST\r\ny")
    assert p.replies()[4:] == ["250 2.0.0", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250 2.0.0"]
    assert p.messages == [b"xy"]


@pytest.mark.parametrize("line", [b"BDAT\r\n", b"BDAT x\r\n", b"BDAT -1\r\n", b"BDAT 1 NOW\r\n",
                                  b"BDAT 1 LAST more\r\n", b"BDAT 99999999999999999999\r\n"])
def test_bdat_malformed_closes(line):
    p = Peer()
    p.send(ENVELOPE + line + b"NOOP\r\n")
    assert p.replies()[-2:] == ["501 5.5.4", "421 4.5.0"]
    assert p.conn.closed


@pytest.mark.parametrize("chunks, reply, reason", [
    ([b"a\r", b"\nb"], "250 2.0.0", None),              # CRLF across chunks is fine
    ([b"a\n", b"b"], "554 5.5.2", "bare CR or LF in data"),
    ([b"a\r", b"b"], "554 5.5.2", "bare CR or LF in data"),
    ([b"ab", b"c\r"], "554 5.5.2", "bare CR or LF in data"),
    ([b"a\x00", b"b"], "554 5.6.0", "NUL byte in data"),
    ([b"x" * 60, b"y" * 41], "552 5.3.4", "message size exceeds limit"),
])
def test_bdat_content_policy(chunks, reply, reason):
    p = Peer(max_message_size=100)
    p.send(ENVELOPE)
    for i, chunk in enumerate(chunks):
        last = b" LAST" if i == len(chunks) - 1 else b""
        p.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
    p.send(b"NOOP\r\n")
    replies = p.replies()
    assert reply in replies[4:] and replies[-1] == "250 2.0.0"
    assert p.rejected == ([reason] if reason else [])
    assert p.messages == ([b"".join(chunks)] if reason is None else [])


def test_bdat_rejected_chunk_fails_the_transaction():
    p = Peer()
    p.send(ENVELOPE + b"BDAT 2\r\na\nBDAT 1 LAST\r\nx")
    assert p.replies()[4:] == ["554 5.5.2", "503 5.5.1"]
    assert p.messages == []


# ------------------------------------------------------------------ a real client


class _LoopSocket:
    """A socket stand-in that connects smtplib to a Peer synchronously."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.pending = peer.out
        peer.out = b""

    def sendall(self, data: bytes) -> None:
        self.peer.send(data)
        self.pending += self.peer.out
        self.peer.out = b""

    def makefile(self, mode):
        return self

    def readline(self, size=-1):
        i = self.pending.find(b"\n")
        line, self.pending = self.pending[:i + 1], self.pending[i + 1:]
        return line

    def close(self):
        pass


def test_smtplib_session_round_trips_dot_stuffing():
    p = Peer()
    client = smtplib.SMTP()
    client.sock = _LoopSocket(p)
    assert client.getreply()[0] == 220
    body = "Subject: t\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nend"
    refused = client.sendmail("a@sender.test", ["b@rcpt.test", "c@rcpt.test"], body)
    assert refused == {}
    assert p.messages == [body.encode() + b"\r\n"]
    assert client.docmd("QUIT")[0] == 221
    assert parse_replies(p.out) == []
