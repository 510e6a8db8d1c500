"""``mailwright sendmail`` / ``mailwright-sendmail``: local submission into the queue."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from support import MailServer

from mailwright.cli.sendmail import parse_args, prepare_message, read_message


def sendmail(srv: MailServer, *args: str, input: bytes, env=None):
    return subprocess.run([sys.executable, "-m", "mailwright.cli.main", "-c", str(srv.config),
                           "sendmail", *args], input=input, capture_output=True, timeout=60,
                          env=env)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MailServer(tmp_path_factory.mktemp("sendmail"), domains=("example.test",),
                     hostname="mx.example.test")
    srv.cli("user", "add", "alice@example.test")
    srv.cli("user", "add", "bob@example.test")
    srv.cli("user", "add", "carol@example.test")
    srv.start()
    yield srv
    srv.stop()


def test_recipients_as_arguments_delivered_promptly(server):
    before = len(server.delivered("alice@example.test"))
    t0 = time.monotonic()
    r = sendmail(server, "-i", "-f", "cron@example.test", "-F", "Cron Daemon",
                 "alice@example.test",
                 input=b"Subject: nightly\n\nall good\n.\nstill body\n")
    assert r.returncode == 0, r.stderr
    got = server.wait_delivered("alice@example.test", before + 1, timeout=10)
    assert len(got) == before + 1
    assert time.monotonic() - t0 < 8           # woken, not left for an idle pass
    msg = got[-1]
    head, body = msg.split(b"\r\n\r\n", 1)
    assert b"Return-Path: <cron@example.test>" in head
    assert b"(Mailwright sendmail, from userid" in head
    assert b"From: Cron Daemon <cron@example.test>" in head
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head
    assert body == b"all good\r\n.\r\nstill body\r\n"       # -i: the dot is data


def test_dot_ends_input_without_i(server):
    before = len(server.delivered("bob@example.test"))
    r = sendmail(server, "bob@example.test", input=b"Subject: dot\n\nline\n.\nignored\n")
    assert r.returncode == 0, r.stderr
    msg = server.wait_delivered("bob@example.test", before + 1)[-1]
    assert msg.endswith(b"\r\n\r\nline\r\n") and b"ignored" not in msg
    # default sender: the invoking user at the host name
    import pwd
    user = pwd.getpwuid(os.getuid()).pw_name
    assert f"Return-Path: <{user}@mx.example.test>".encode() in msg


def test_t_reads_to_cc_bcc_and_removes_bcc(server):
    counts = {a: len(server.delivered(a)) for a in
              ("alice@example.test", "bob@example.test", "carol@example.test")}
    r = sendmail(server, "-t", "-oi", input=(
        b"From: alice@example.test\nTo: Bob <bob@example.test>\nCc: carol@example.test\n"
        b"Bcc: alice@example.test\nSubject: t\n\nhi\n"))
    assert r.returncode == 0, r.stderr
    for addr, n in counts.items():
        got = server.wait_delivered(addr, n + 1)
        assert len(got) == n + 1, addr
        head = got[-1].split(b"\r\n\r\n", 1)[0]
        assert b"\r\nBcc:" not in head and b"From: alice@example.test" in head


def test_unknown_local_user_and_no_recipients(server):
    r = sendmail(server, "nobody@example.test", input=b"Subject: x\n\nx\n")
    assert r.returncode == 67 and b"user unknown" in r.stderr
    r = sendmail(server, input=b"Subject: x\n\nx\n")
    assert r.returncode == 64
    r = sendmail(server, "-bs", input=b"")
    assert r.returncode == 64


def test_remote_recipient_is_queued(server):
    r = sendmail(server, "-f", "alice@example.test", "someone@remote.example",
                 input=b"Subject: out\n\nx\n",
                 env={**os.environ, "MAILWRIGHT_SENDMAIL_VERBOSE": "1"})
    assert r.returncode == 0, r.stderr
    qid = r.stderr.decode().strip().rsplit(" ", 1)[-1]
    shown = json.loads(server.cli("queue", "show", qid, "--json").stdout)
    assert shown["envelope"]["listener"] == "sendmail"
    assert shown["envelope"]["sender"] == "alice@example.test"
    assert [r["address"] for r in shown["recipients"]] == ["someone@remote.example"]


def test_works_while_server_is_stopped(tmp_path):
    srv = MailServer(tmp_path, domains=("example.test",))
    srv.cli("user", "add", "alice@example.test")
    env = {**os.environ, "MAILWRIGHT_CONFIG": str(srv.config)}
    script = shutil.which("mailwright-sendmail", path=os.path.dirname(sys.executable))
    cmd = [script] if script else [sys.executable, "-m", "mailwright.cli.sendmail"]
    r = subprocess.run(cmd + ["-oi", "alice"], input=b"Subject: offline\n\nqueued\n",
                       capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert srv.delivered("alice@example.test") == []
    srv.start()
    try:
        got = srv.wait_delivered("alice@example.test", 1)
        assert len(got) == 1 and b"Subject: offline" in got[0]
    finally:
        srv.stop()


# ------------------------------------------------------------------ pure parts

def test_parse_args_sendmail_conventions():
    o = parse_args(["-t", "-oi", "-fbounce@x.test", "-F", "Name", "-odi", "-oem", "-v",
                    "-N", "never", "--", "-weird@x.test"])
    assert (o.extract, o.ignore_dots, o.sender, o.fullname) == (True, True, "bounce@x.test",
                                                                  "Name")
    assert o.recipients == ["-weird@x.test"]
    assert parse_args(["-i", "-r", "a@b.test", "c@d.test"]).recipients == ["c@d.test"]


def test_read_and_prepare_message():
    import io
    raw = read_message(io.BytesIO(b"To: a@x.test\r\nSubject: s\n\nbody\n"), ignore_dots=False)
    assert raw == b"To: a@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    out, found = prepare_message(raw + b"", sender="me@h.test", fullname=None, extract=True,
                                 hostname="h.test", uid=1000, now=0)
    assert found == ["a@x.test"]
    assert out.startswith(b"Received: by h.test (Mailwright sendmail, from userid 1000);")
    assert b"From: me@h.test\r\n" in out and out.endswith(b"\r\n\r\nbody\r\n")


def test_nul_refused_and_lone_cr_becomes_a_line_break():
    import io
    assert read_message(io.BytesIO(b"Subject: a\rb\n\nx\ry\r\n"), True) == \
        b"Subject: a\r\nb\r\n\r\nx\r\ny\r\n"


def test_sendmail_refuses_nul(server):
    r = sendmail(server, "-i", "-f", "cron@example.test", "alice@example.test",
                 input=b"Subject: nul\n\nbad\0byte\n")
    assert r.returncode == 65 and b"NUL" in r.stderr
