"""Session-level behaviour of smtp.server: timers, STARTTLS, robustness, speed."""
import random
import time

import pytest
import yaml
from smtp.test_server_support import ENVELOPE, QUEUED, Peer, parse_replies
from support import CONFORMANCE

from mailwright.smtp.events import (
    NEED_DATA, NEEDS_RESPONSE, PAUSED, BodyComplete, CloseConnection, Hello, StartTLS,
    TransactionReset,
)
from mailwright.smtp.framing import DataDecoder
from mailwright.smtp.replies import Reply
from mailwright.smtp.server import ServerConfig, ServerConnection, State

STARTTLS_CASES = CONFORMANCE / "smtp-security" / "starttls-injection-cases.yaml"


# ------------------------------------------------------------------ timers (RFC 5321 §4.5.3.2)


def test_command_timeout():
    p = Peer(now=1000.0, command_timeout=300.0)
    assert p.conn.get_timer() == 1300.0
    p.conn.handle_timer(1299.9)
    assert not p.conn.closed
    p.conn.handle_timer(1300.0)
    p.pump()
    assert p.out.endswith(b"421 4.4.2 mx.test Error: timeout exceeded\r\n")
    assert p.events == [CloseConnection("timeout")]
    assert p.conn.get_timer() is None


def test_timer_restarts_on_complete_commands_only():
    p = Peer(command_timeout=300.0)
    p.send(b"NOOP\r\n", now=100.0)
    assert p.conn.get_timer() == 400.0
    p.send(b"NO", now=200.0)                 # a partial line does not keep the session alive
    assert p.conn.get_timer() == 400.0
    p.send(b"OP\r\n", now=250.0)
    assert p.conn.get_timer() == 550.0


def test_no_timer_while_waiting_for_the_driver():
    conn = ServerConnection(ServerConfig("mx.test"), 0.0)
    conn.receive_data(b"EHLO c\r\n", 10.0)
    assert isinstance(conn.next_event(), Hello)
    assert conn.get_timer() is None
    conn.handle_timer(10_000.0)
    assert not conn.closed
    conn.respond(now=500.0)
    assert conn.get_timer() == 800.0


def test_data_timeout_is_per_block():
    p = Peer(command_timeout=300.0, data_timeout=60.0)
    p.send(ENVELOPE + b"DATA\r\n", now=0.0)
    assert p.conn.get_timer() == 60.0
    p.send(b"a" * 100, now=50.0)
    p.send(b"b" * 100, now=100.0)
    assert p.conn.get_timer() == 160.0
    p.conn.handle_timer(160.0)
    p.pump()
    assert p.replies()[-1] == "421 4.4.2" and p.conn.closed
    assert p.messages == []


def test_bdat_chunk_uses_data_timeout():
    p = Peer(command_timeout=300.0, data_timeout=30.0)
    p.send(ENVELOPE + b"BDAT 10\r\nabc", now=5.0)
    assert p.conn.get_timer() == 35.0
    p.send(b"defghij", now=20.0)
    assert p.conn.get_timer() == 320.0       # chunk complete: back to command timeout


# ------------------------------------------------------------------ STARTTLS (RFC 3207)


def tls_peer(**kw) -> Peer:
    kw.setdefault("tls_available", True)
    return Peer(**kw)


def test_starttls_discards_pipelined_plaintext():
    p = tls_peer()
    p.send(b"EHLO t\r\n")
    p.take_replies()
    new = p.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b.c>\r\n")
    assert new == [StartTLS()] and p.take_replies() == ["220 2.0.0"]
    assert p.conn.state is State.TLS
    p.send(b"NOOP\r\n")                      # plaintext before the handshake: dropped too
    assert p.take_replies() == [] and p.conn.next_event() is NEED_DATA
    p.conn.tls_established(1.0)
    assert p.pump() == [TransactionReset()]
    assert p.conn.tls_active and p.conn.helo_name is None and not p.conn.esmtp
    p.send(b"MAIL FROM:<a@b.c>\r\nEHLO t\r\nSTARTTLS\r\n")
    out = p.out
    assert parse_replies(out) == ["503 5.5.1", "250", "503 5.5.1"]
    assert b"STARTTLS" not in out.split(b"503")[1]     # not offered after TLS


@pytest.mark.parametrize("config, wire, expected", [
    ({"tls_available": False}, b"EHLO t\r\nSTARTTLS\r\n", "502 5.5.1"),
    ({}, b"STARTTLS\r\n", "503 5.5.1"),                                 # before EHLO
    ({}, b"HELO t\r\nSTARTTLS\r\n", "503 5.5.1"),                       # not an ESMTP session
    ({}, b"EHLO t\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\n", "503 5.5.1"),  # mid-transaction
    ({}, b"EHLO t\r\nSTARTTLS now\r\n", "501 5.5.4"),
    ({"tls_active": True}, b"EHLO t\r\nSTARTTLS\r\n", "503 5.5.1"),     # implicit TLS (465)
])
def test_starttls_refusals(config, wire, expected):
    p = tls_peer(**config)
    p.send(wire)
    assert p.replies()[-1] == expected
    assert not any(isinstance(e, StartTLS) for e in p.events)


def injection_cases():
    doc = yaml.safe_load(STARTTLS_CASES.read_text())
    return [pytest.param(c, id=c["id"]) for c in doc["server_cases"] if "plaintext_segments" in c]


@pytest.mark.parametrize("case", injection_cases())
def test_starttls_injection_cases(case):
    p = tls_peer()
    for segment in case["plaintext_segments"]:
        p.send(segment.encode())
        if p.conn.state is State.TLS:
            break
    assert p.conn.state is State.TLS
    p.take_replies()
    p.conn.tls_established(1.0)
    p.pump()
    assert p.take_replies() == []            # nothing injected is answered inside TLS
    assert not any(isinstance(e, NEEDS_RESPONSE) for e in p.events[p.events.index(StartTLS()):])
    p.send(case.get("after_tls_send", "FAKE x\r\n").encode())
    assert p.take_replies()[0].startswith("50")


def test_injection_cases_present():
    assert len(injection_cases()) >= 3


# ------------------------------------------------------------------ robustness


FRAGMENTS = [b"EHLO x\r\n", b"HELO y\r\n", b"MAIL FROM:<a@b.c>\r\n", b"MAIL FROM:<> SIZE=9\r\n",
             b"RCPT TO:<d@e.f>\r\n", b"RCPT TO:<postmaster>\r\n", b"DATA\r\n", b"\r\n.\r\n",
             b".\r\n", b"BDAT 3\r\n", b"BDAT 2 LAST\r\n", b"RSET\r\n", b"NOOP\r\n", b"STARTTLS\r\n",
             b"VRFY x\r\n", b"\r", b"\n", b".", b"\x00", b"\xff\xfe", b"<", b">", b"@", b"\"",
             b"SMTPUTF8", b" NOTIFY=NEVER", b"\xc3\xa9", b"x" * 300]


def fuzz_session(rng: random.Random) -> Peer:
    def decide(ev):
        roll = rng.random()
        if isinstance(ev, BodyComplete):
            return QUEUED if roll < 0.7 else Reply(451, "4.3.0", "later")
        if roll < 0.1:
            return Reply(550, "5.7.1", "no")
        if roll < 0.12:
            return Reply(421, "4.7.0", "bye")
        return None
    p = Peer(decide=decide, tls_available=True, max_line_length=256, max_message_size=2000,
             max_errors=rng.choice([3, 10, 1000]))
    noise = rng.choice([0.02, 0.1, 0.3])
    wire = b"".join(rng.choice(FRAGMENTS) if rng.random() > noise
                    else bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
                    for _ in range(rng.randint(1, 80)))
    i, now = 0, 0.0
    while i < len(wire) and not p.conn.closed:
        n = rng.randint(1, 40)
        now += rng.random()
        p.send(wire[i:i + n], now=now)
        if p.conn.state is State.TLS and rng.random() < 0.8:
            p.conn.tls_established(now)
            p.pump()
        if rng.random() < 0.01:
            p.conn.handle_timer(now + rng.choice([1.0, 1000.0]))
            p.pump()
        i += n
    if rng.random() < 0.5:
        p.eof()
    return p


def test_fuzz_never_raises_and_keeps_answering():
    rng = random.Random(20240101)
    closed = 0
    for _ in range(400):
        p = fuzz_session(rng)                   # raises on any exception or PAUSED
        replies = p.replies()                   # every output line is a valid reply line
        assert replies[0] == "220"
        assert not any(r.endswith("4.3.0") and r.startswith("421") for r in replies)
        if p.conn.closed:
            closed += 1
            continue
        # still alive: the state machine must answer a fresh command
        for _ in range(3):                      # finish a partial line, body or chunk
            if p.conn.state is State.TLS:
                p.conn.tls_established(0.0)
            p.send(b"\r\n")
            if p.conn.state is State.DATA:
                p.send(b"\r\n.\r\n")
            while p.conn._in_chunk or p.conn._discard:
                p.send(b"x" * 10)
        if p.conn.closed:
            continue
        p.out = b""
        p.send(b"NOOP\r\n")
        assert p.replies()[-1] in ("250 2.0.0", "421 4.7.0"), p.replies()
    assert closed > 20                          # the fuzz did reach closing paths


VALID = [
    ENVELOPE + b"DATA\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
    ENVELOPE + b"RCPT TO:<c@d.e> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40d.e\r\n"
    b"BDAT 6\r\nab\r\ncdBDAT 4 LAST\r\nef\r\nMAIL FROM:<> SMTPUTF8\r\nRCPT TO:<x\xc3\xa9@y>\r\n"
    b"DATA\r\n.\r\nRSET\r\nQUIT\r\n",
    b"EHLO t\r\nSTARTTLS\r\nEHLO t\r\nMAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME\r\n"
    b"RCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(4), rng.randrange(len(buf) + 1)
        if op == 0 and at < len(buf):
            del buf[at:at + rng.randint(1, 6)]
        elif op == 1:
            buf[at:at] = rng.choice(FRAGMENTS[:15] + [b"\r", b"\n", b"\x00", b"."])
        elif op == 2 and at < len(buf):
            buf[at] = rng.randrange(256)
        else:
            buf[at:at] = buf[max(0, at - 20):at]
    return bytes(buf)


def test_mutation_fuzz_of_valid_sessions():
    rng = random.Random(3030)
    seen = set()
    for _ in range(1500):
        p = Peer(tls_available=True, max_errors=1000, max_message_size=50)
        wire = mutate(rng, rng.choice(VALID))
        i = 0
        while i < len(wire) and not p.conn.closed:
            n = rng.randint(1, 30)
            p.send(wire[i:i + n])
            if p.conn.state is State.TLS:
                p.conn.tls_established(0.0)
                p.pump()
            i += n
        p.eof()
        replies = p.replies()
        assert not any(r == "421 4.3.0" for r in replies)
        assert p.conn.closed
        seen.update(p.types())
        # a message is only ever completed for an envelope with accepted recipients
        assert len(p.messages) <= replies.count("250 2.1.5") + replies.count("250 2.1.0")
    assert {"BodyComplete", "BodyRejected", "BdatChunkAccepted", "StartTLS"} <= seen


def test_random_bytes_only():
    rng = random.Random(7)
    for _ in range(200):
        p = Peer()
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000)))
        for i in range(0, len(data), 97):
            p.send(data[i:i + 97])
        p.eof()
        parse_replies(p.out)
        assert p.conn.closed


# ------------------------------------------------------------------ speed


def test_data_decoder_has_no_per_byte_python_loop():
    body = (b"x" * 76 + b"\r\n") * 50_000 + b".\r\n"     # ~3.9 MB
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dec = DataDecoder(10**9)
        pos, content, done = dec.feed(body, 0)
        best = min(best, time.perf_counter() - t)
        assert done and len(content) == len(body) - 3
    assert best < 0.1, best                               # C-level passes: a few ms


def test_session_throughput_smoke():
    """Whole sessions through the core; prints the rate.  The bound is loose (shared CI
    machines); the target for the complete server is >1,300 messages/s on 2 cores."""
    cfg = ServerConfig("mx.test")
    body = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 65 + b".\r\n"
    segments = [b"EHLO client\r\n", b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
                body, b"QUIT\r\n"]
    n = 1000
    t = time.perf_counter()
    for _ in range(n):
        conn = ServerConnection(cfg, 0.0)
        conn.greeting()
        for seg in segments:
            conn.receive_data(seg, 0.0)
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA or isinstance(ev, CloseConnection):
                    break
                assert ev is not PAUSED
                if isinstance(ev, BodyComplete):
                    conn.respond(QUEUED)
                elif isinstance(ev, NEEDS_RESPONSE):
                    conn.respond()
            conn.data_to_send()
    elapsed = time.perf_counter() - t
    print(f"\n{n / elapsed:.0f} sessions/s ({elapsed / n * 1e6:.0f} us per 5 KB message session)")
    assert elapsed < 5.0
