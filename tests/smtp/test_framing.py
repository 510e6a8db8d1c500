"""DATA decoder and BDAT reader (smtp.framing), including every split point."""
import random

import pytest

from mailwright.smtp.framing import (
    REJECT_BARE_LINE_ENDING, REJECT_NUL, REJECT_SIZE, BdatReader, BodyInspector, DataDecoder,
)


def decode(pieces, max_size=10**9):
    """Feed pieces like the server does (unconsumed bytes stay buffered).
    Returns (content, rejection, leftover-after-terminator) or content=None if unfinished."""
    dec = DataDecoder(max_size)
    buf, pos, out = b"", 0, []
    for i, piece in enumerate(pieces):
        buf = buf[pos:] + piece
        pos = 0
        while True:
            new_pos, content, done = dec.feed(buf, pos)
            if content:
                out.append(content)
            progressed = new_pos != pos or done
            pos = new_pos
            if done:
                return b"".join(out), dec.inspector.rejection, buf[pos:] + b"".join(pieces[i + 1:])
            if not progressed:
                break
    return None, dec.inspector.rejection, buf[pos:]


def splits(data):
    """All two-piece splits, plus byte-by-byte."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


# input (after "DATA\r\n") -> (content, rejection, leftover)
DATA_CASES = [
    (b".\r\n", b"", None, b""),                                      # empty message
    (b".\r\nMAIL FROM:<x@y>\r\n", b"", None, b"MAIL FROM:<x@y>\r\n"),
    (b"a\r\n.\r\n", b"a\r\n", None, b""),
    (b"\r\n.\r\n", b"\r\n", None, b""),
    (b"..\r\n.\r\n", b".\r\n", None, b""),                            # stuffed dot, first line
    (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n", None, b""),
    (b".a\r\n.\r\n", b"a\r\n", None, b""),                            # RFC 5321 §4.5.2
    (b"x\r\n.\r\n.\r\n", b"x\r\n", None, b".\r\n"),                   # ends at the first
    (b"line\r\n.\r\nNOOP\r\n", b"line\r\n", None, b"NOOP\r\n"),
    (b"a" * 1500 + b"\r\n.\r\n", b"a" * 1500 + b"\r\n", None, b""),   # long lines accepted
    # smuggling: none of these end the message; they are rejected at the real end
    (b"a\n.\n.\r\n", None, None, None),
    (b"a\n.\r\n.\r\n", b"", REJECT_BARE_LINE_ENDING, b""),         # "\r\n.\r\n" at [3:8]
    (b"a\r.\r\nb\r\n.\r\n", b"", REJECT_BARE_LINE_ENDING, b""),
    (b"a\n.\r\nMAIL\r\n.\r\nQUIT\r\n", b"", REJECT_BARE_LINE_ENDING, b"QUIT\r\n"),  # CVE-2023-51764
    (b"a\r\n.\nb\r\n.\r\n", b"", REJECT_BARE_LINE_ENDING, b""),
    (b"a\r\n.\r\r\nb\r\n.\r\n", b"", REJECT_BARE_LINE_ENDING, b""),
    (b"a\r\n\x00.\r\n.\r\n", b"", REJECT_NUL, b""),
    (b"a\r\n.\x00\r\n.\r\n", b"", REJECT_NUL, b""),
    (b"a\rb\r\n.\r\n", b"", REJECT_BARE_LINE_ENDING, b""),
    (b"a\r\n\r\r\n.\r\n", b"", REJECT_BARE_LINE_ENDING, b""),
]


@pytest.mark.parametrize("data, content, rejection, leftover", DATA_CASES)
def test_data_decoder_every_split(data, content, rejection, leftover):
    for pieces in splits(data):
        got, rej, rest = decode(pieces)
        if content is None:
            assert got is None, pieces            # message not finished
            continue
        if rejection is not None:
            # content before the violation may have been emitted; the server discards it
            # (BodyRejected).  The end of the message must be the same at every split.
            assert got is not None and data.startswith(got[:1]), pieces
            got = content
        assert (got, rej, rest) == (content, rejection, leftover), pieces


def test_data_unfinished_without_terminator():
    for data in [b"", b".", b".\r", b"abc\r\n", b"abc\r\n.", b"abc\r\n.\r", b"abc\n.\n"]:
        assert decode([data])[0] is None


def test_data_holds_back_at_most_four_bytes():
    dec = DataDecoder(10**6)
    buf = b"x" * 100 + b"\r\n.\r"
    pos, content, done = dec.feed(buf, 0)
    assert not done and content == b"x" * 100 and pos == 100


def test_data_size_limit_counts_stored_octets():
    body = b"..\r\n" * 10                       # 40 octets on the wire, 30 stored
    assert decode([body + b".\r\n"], max_size=30)[:2] == (body.replace(b"..", b"."), None)
    got, rej, _ = decode([body + b".\r\n"], max_size=29)
    assert (got, rej) == (b"", REJECT_SIZE)


def test_data_size_limit_stops_content_but_consumes_to_end():
    dec = DataDecoder(100)
    buf = b"a" * 98 + b"\r\n" + b"b" * 1000 + b"\r\n.\r\nQUIT\r\n"
    chunks, pos = [], 0
    while True:
        pos, content, done = dec.feed(buf, pos)
        if content:
            chunks.append(content)
        if done:
            break
    assert dec.inspector.rejection == REJECT_SIZE
    assert buf[pos:] == b"QUIT\r\n"
    assert sum(map(len, chunks)) <= 100


def test_random_bodies_roundtrip():
    rng = random.Random(5321)
    alphabet = [b"a", b".", b"\r\n", b"..", b"x" * 40]
    for _ in range(300):
        lines = [b"".join(rng.choice(alphabet[:2] + alphabet[3:]) for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(0, 8))]
        original = b"".join(line + b"\r\n" for line in lines)
        stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
        wire = stuffed + b".\r\n"
        cuts = sorted(rng.sample(range(len(wire) + 1), k=min(3, len(wire) + 1)))
        pieces = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
        got, rej, rest = decode(pieces)
        assert (got, rej, rest) == (original, None, b""), pieces


# ------------------------------------------------------------------ inspector / BDAT


@pytest.mark.parametrize("pieces, rejection", [
    ([b"a\r\nb\r\n"], None),
    ([b"a\r", b"\nb"], None),                 # CRLF split between chunks
    ([b"a\r", b"", b"\n"], None),
    ([b"a\r", b"b"], REJECT_BARE_LINE_ENDING),
    ([b"a\n"], REJECT_BARE_LINE_ENDING),
    ([b"a\r"], REJECT_BARE_LINE_ENDING),      # CR at the very end is bare
    ([b"\n"], REJECT_BARE_LINE_ENDING),
    ([b"a\r\n", b"\n"], REJECT_BARE_LINE_ENDING),
    ([b"a\x00"], REJECT_NUL),
])
def test_inspector_line_endings(pieces, rejection):
    ins = BodyInspector(10**6)
    for p in pieces:
        ins.check_raw(p)
    ins.finish()
    assert ins.rejection == rejection


def test_bdat_reader_reads_exact_octets_raw():
    r = BdatReader(100)
    r.start_chunk(7, last=False)
    buf = b"a\r\n.\r\nXRSET\r\n"
    pos, content, done = r.feed(buf, 0)
    assert (pos, content, done) == (7, b"a\r\n.\r\nX", True)     # no dot handling


def test_bdat_reader_size_rejects_upfront():
    r = BdatReader(10)
    r.start_chunk(6, last=False)
    assert r.feed(b"123456", 0) == (6, b"123456", True)
    r.start_chunk(6, last=True)
    assert r.inspector.rejection == REJECT_SIZE
    assert r.feed(b"abc", 0) == (3, None, False)
    assert r.feed(b"def", 0) == (3, None, True)


def test_bdat_reader_partial_feeds():
    r = BdatReader(100)
    r.start_chunk(5, last=True)
    assert r.feed(b"ab", 0) == (2, b"ab", False)
    assert r.feed(b"xcde!", 1) == (4, b"cde", True)
    assert r.feed(b"!", 0) == (0, None, True)
