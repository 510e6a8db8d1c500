"""[log] format = "json" on a real server: every line of its output is one JSON object;
one message's connect, accept and delivery lines are found by session id and queue id;
failed AUTH attempts leave no password (plain or base64) anywhere in the log."""
import base64
import json
import secrets
import smtplib
import ssl
import time

import pytest

from support import MailServer

PASSWORD = "Json-Log-" + secrets.token_hex(6)
WRONG = "Wrong-Json-" + secrets.token_hex(6)
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MailServer(tmp_path_factory.mktemp("jsonlog"), submission=True,
                     extra_sections='[log]\nformat = "json"\nlevel = "debug"\n'
                                    "[submission]\nauth_failure_delay = 0.01\n"
                                    "auth_failure_max_delay = 0.05\n")
    srv.cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    srv.start()
    yield srv
    srv.stop()


def entries(srv) -> list[dict]:
    out = []
    for n, line in enumerate(srv.log().splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {n} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "pid", "msg"} <= set(entry), entry
        out.append(entry)
    return out


def wait_for(srv, predicate, timeout=15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in entries(srv) if predicate(e)]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_one_message_is_traced_by_session_id_and_queue_id(server):
    with smtplib.SMTP(server.host, server.port, timeout=15) as s:
        s.ehlo("client.example")
        s.mail("someone@sender.example")
        s.rcpt(ALICE)
        code, reply = s.data(b"Subject: json\r\n\r\nhello\r\n")
    assert code == 250
    qid = reply.decode().rsplit(" ", 1)[-1]
    assert len(server.wait_delivered(ALICE, 1)) >= 1

    accepted = wait_for(server, lambda e: e.get("id") == qid and e["msg"].startswith("accepted"))
    assert len(accepted) == 1
    acc = accepted[0]
    sid = acc["sid"]
    assert acc["logger"] == "mailwright.smtpd" and acc["level"] == "info"
    assert f"sid={sid}" in acc["msg"] and f"id={qid}" in acc["msg"]

    connects = [e for e in entries(server)
                if e.get("sid") == sid and e["msg"].startswith("connect")]
    assert len(connects) == 1 and connects[0]["pid"] == acc["pid"]
    assert connects[0]["ts"] <= acc["ts"]

    delivered = wait_for(server, lambda e: e.get("id") == qid
                         and e["logger"] == "mailwright.queue.manager" and " ok: " in e["msg"])
    assert len(delivered) == 1 and delivered[0]["ts"] >= acc["ts"]
    # every line about this session carries its sid; no other session's line claims it
    assert all(e.get("sid") == sid for e in entries(server) if f"sid={sid} " in e["msg"])


def tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_auth_failures_are_logged_without_the_password(server):
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP_SSL(server.host, server.subs_port, context=tls(), timeout=15) as s:
            s.ehlo("laptop.example")
            s.user, s.password = ALICE, WRONG
            auth = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth(mechanism, auth)
    with smtplib.SMTP_SSL(server.host, server.subs_port, context=tls(), timeout=15) as s:
        s.login(ALICE, PASSWORD)                       # and one success

    failures = wait_for(server, lambda e: e["msg"].startswith("auth failed"))
    assert len(failures) == 2
    for f in failures:
        assert f["level"] == "warning" and f["sid"] and f"user={ALICE}" in f["msg"]
    assert wait_for(server, lambda e: e["msg"].startswith("auth ok") and e.get("sid"))

    text = server.log()
    for secret in (WRONG, PASSWORD):
        forms = {secret, base64.b64encode(secret.encode()).decode(),
                 base64.b64encode(f"\0{ALICE}\0{secret}".encode()).decode(),
                 base64.b64encode(f"{ALICE}\0{ALICE}\0{secret}".encode()).decode()}
        for form in forms:
            assert form not in text, f"credential in the log: {form!r}"
