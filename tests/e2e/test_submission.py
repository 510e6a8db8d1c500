"""Submission end to end (RFC 6409, RFC 8314, RFC 4954): a real server with an mx listener,
"submission" (STARTTLS) and "submissions" (implicit TLS), driven with smtplib."""
import base64
import json
import secrets
import smtplib
import ssl
import time

import pytest

from support import MailServer, RawClient

PASSWORD = "Corr3ct-Horse-" + secrets.token_hex(4)   # unique: grepped for in the log
WRONG = "wrong-" + secrets.token_hex(4)
ALICE = "alice@example.test"


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MailServer(tmp_path_factory.mktemp("sub"), domains=("example.test",),
                     submission=True,
                     extra_sections="[submission]\nauth_failure_delay = 0.01\n"
                                    "auth_failure_max_delay = 0.05\n")
    srv.cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    srv.cli("user", "add", "bob@example.test")
    srv.cli("alias", "add", "sales@example.test", ALICE, "bob@example.test")
    srv.cli("user", "grant", ALICE, "ceo@example.test")
    srv.start()
    yield srv
    srv.stop()


def submit(srv, implicit=False):
    if implicit:
        s = smtplib.SMTP_SSL(srv.host, srv.subs_port, context=tls_context(), timeout=15)
    else:
        s = smtplib.SMTP(srv.host, srv.sub_port, timeout=15)
        s.starttls(context=tls_context())
    s.ehlo("laptop.test")
    return s


def message(sender=ALICE, to="bob@example.test", subject="hi", extra=""):
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\n"
            f"hello {secrets.token_hex(4)}\r\n").encode()


def queued_id(reply: bytes) -> str:
    return reply.decode().rsplit(" ", 1)[-1]


def test_auth_before_starttls_refused_on_587(server):
    c = RawClient(server.host, server.sub_port)
    assert c.reply()[0] == 220
    code, lines = c.cmd("EHLO t")
    assert code == 250 and not any("AUTH" in l for l in lines)
    plain = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    code, lines = c.cmd(f"AUTH PLAIN {plain}")
    assert code == 530 and "5.7.0" in lines[0]
    code, lines = c.cmd("MAIL FROM:<alice@example.test>")
    assert code == 530 and "5.7.0" in lines[0]
    assert c.cmd("STARTTLS")[0] == 220
    c.starttls()
    code, lines = c.cmd("EHLO t")
    assert any(l.endswith("AUTH PLAIN LOGIN SCRAM-SHA-256") for l in lines)
    code, lines = c.cmd("MAIL FROM:<alice@example.test>")    # TLS but no AUTH
    assert code == 530 and "5.7.0" in lines[0]
    c.close()


def test_submit_over_587_is_queued_with_auth_user_and_fixups(server):
    s = submit(server)
    s.login(ALICE, PASSWORD)
    s.mail(ALICE)
    s.rcpt("bob@example.test")
    code, reply = s.data(message())                # no Date, no Message-ID
    s.quit()
    assert code == 250
    qid = queued_id(reply)
    shown = json.loads(server.cli("queue", "show", qid, "--json").stdout)
    assert shown["envelope"]["auth_user"] == ALICE
    assert shown["envelope"]["protocol"] == "ESMTPSA"
    assert shown["envelope"]["listener"] == "submission"
    got = server.wait_delivered("bob@example.test", 1)
    body = got[-1]
    head = body.split(b"\r\n\r\n", 1)[0]
    assert b"(Authenticated sender: alice@example.test)" in head
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head
    # The stored body begins with the added fields (then the client's own).
    stored = body.split(b"Delivered-To: bob@example.test\r\n", 1)[1]
    assert stored.startswith(b"Received: from laptop.test")


def test_relay_to_remote_when_authenticated(server):
    s = submit(server)
    s.login(ALICE, PASSWORD)
    s.mail(ALICE)
    assert s.rcpt("someone@remote.example")[0] == 250
    s.rset()
    s.quit()


def test_login_mechanism_and_alias_and_grant_senders(server):
    s = submit(server)
    s.user, s.password = ALICE, PASSWORD
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235
    for sender in ("sales@example.test", "ceo@example.test", "alice+x@example.test"):
        assert s.mail(sender)[0] == 250, sender
        assert s.rcpt("bob@example.test")[0] == 250
        code, _ = s.data(message(sender=sender, extra="Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"))
        assert code == 250, sender
    s.quit()


def test_forged_sender_refused(server):
    s = submit(server)
    s.login(ALICE, PASSWORD)
    code, reply = s.mail("bob@example.test")
    assert (code, reply[:5]) == (553, b"5.7.1")
    code, reply = s.mail("boss@elsewhere.example")
    assert (code, reply[:5]) == (553, b"5.7.1")
    # Envelope fine, header From forged: refused at end of data.
    assert s.mail(ALICE)[0] == 250
    assert s.rcpt("bob@example.test")[0] == 250
    code, reply = s.data(message(sender="Bob <bob@example.test>"))
    assert (code, reply[:5]) == (550, b"5.7.1")
    s.quit()


def test_implicit_tls_465(server):
    s = submit(server, implicit=True)
    assert "PLAIN" in s.esmtp_features["auth"]
    assert not s.has_extn("starttls")
    s.login(ALICE, PASSWORD)
    assert s.sendmail(ALICE, ["bob@example.test"], message(subject="465")) == {}
    s.quit()


class ScramClient:
    """A minimal client side of SCRAM-SHA-256 (RFC 5802 §3, RFC 7677) for smtplib.auth."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}"
        self.server_signature = None
        self.verified = False

    def __call__(self, challenge=None):
        import hashlib
        import hmac
        if challenge is None:
            return "n,," + self.first_bare
        text = challenge.decode()
        if text.startswith("v="):
            self.verified = hmac.compare_digest(base64.b64decode(text[2:]), self.server_signature)
            return ""
        attrs = dict(a.split("=", 1) for a in text.split(","))
        assert attrs["r"].startswith(self.nonce)
        final = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth_message = f"{self.first_bare},{text},{final}".encode()
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(),
                                     base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{final},p={base64.b64encode(proof).decode()}"


def test_scram_sha256_exchange(server):
    s = submit(server, implicit=True)
    client = ScramClient(ALICE, PASSWORD)
    code, _ = s.auth("SCRAM-SHA-256", client)
    assert code == 235 and client.verified
    assert s.sendmail(ALICE, ["bob@example.test"], message(subject="scram")) == {}
    s.quit()
    bad = submit(server)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        bad.auth("SCRAM-SHA-256", ScramClient(ALICE, WRONG))
    assert info.value.smtp_code == 535
    bad.quit()


def test_loop_limit_on_mx(server):
    c = RawClient(server.host, server.port)
    c.reply()
    c.cmd("EHLO t")
    for hops, expect in ((51, 554), (50, 250)):
        assert c.cmd("MAIL FROM:<x@remote.example>")[0] == 250
        assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        received = "".join(f"Received: from h{i} by h{i + 1}; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                           for i in range(hops))
        c.send(received + "Subject: loop\r\n\r\nbody\r\n.\r\n")
        code, lines = c.reply()
        assert code == expect, (hops, lines)
        if expect == 554:
            assert "5.4.6" in lines[0]
    c.close()


def test_credentials_never_in_log(server):
    s = submit(server)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        s.login(ALICE, WRONG)
    s.quit()
    time.sleep(0.2)
    log = server.log()
    assert "auth ok" in log and "auth failed" in log
    for secret in (PASSWORD, WRONG):
        for form in (secret, base64.b64encode(f"\0{ALICE}\0{secret}".encode()).decode(),
                     base64.b64encode(secret.encode()).decode()):
            assert form not in log


# ------------------------------------------------------------------ brute force

@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    srv = MailServer(tmp_path_factory.mktemp("brute"), domains=("example.test",),
                     submission=True,
                     extra_sections="[submission]\nauth_failure_delay = 0.05\n"
                                    "auth_failure_max_delay = 0.2\n"
                                    "max_auth_failures_per_account = 2\n"
                                    "max_auth_failures_per_ip = 4\n")
    srv.cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    srv.cli("user", "add", "carol@example.test", "--password-stdin", input=PASSWORD + "\n")
    srv.start()
    yield srv
    srv.stop()


def _auth_plain(c: RawClient, user: str, password: str):
    return c.cmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())


def test_brute_force_locked_out(guarded):
    c = RawClient(guarded.host, guarded.subs_port)
    c.sock = tls_context().wrap_socket(c.sock, server_hostname="localhost")
    assert c.reply()[0] == 220
    c.cmd("EHLO t")
    t0 = time.monotonic()
    assert _auth_plain(c, "carol@example.test", WRONG)[0] == 535
    assert _auth_plain(c, "carol@example.test", WRONG)[0] == 535
    assert time.monotonic() - t0 >= 0.15            # growing delay: 0.05 + 0.1
    # The account is locked now: even the right password gets 454 4.7.0.
    code, lines = _auth_plain(c, "carol@example.test", PASSWORD)
    assert code == 454 and "4.7.0" in lines[0]
    assert _auth_plain(c, "nobody@example.test", WRONG)[0] == 535
    assert _auth_plain(c, "nobody2@example.test", WRONG)[0] == 535     # 4th: address locked
    code, lines = _auth_plain(c, ALICE, PASSWORD)
    assert code == 421 and "4.7.0" in lines[0]
    assert c.closed()
    # A new connection from the same address is refused too, right password or not.
    c2 = RawClient(guarded.host, guarded.subs_port)
    c2.sock = tls_context().wrap_socket(c2.sock, server_hostname="localhost")
    c2.reply()
    c2.cmd("EHLO t")
    assert _auth_plain(c2, ALICE, PASSWORD)[0] == 421
    assert PASSWORD not in guarded.log() and WRONG not in guarded.log()


def test_grant_cli_and_revoke(server):
    assert server.cli("user", "grant", ALICE, "*@Other.Example").stdout.strip().endswith(
        "*@other.example")
    assert json.loads(server.cli("user", "grants", ALICE, "--json").stdout) == [
        "*@other.example", "ceo@example.test"]
    assert server.cli("user", "grant", ALICE, "ceo@example.test", check=False).returncode == 1
    assert server.cli("user", "grant", "ghost@example.test", "x@example.test",
                      check=False).returncode == 1
    s = submit(server)
    s.login(ALICE, PASSWORD)
    assert s.mail("anyone@other.example")[0] == 250
    s.quit()
    server.cli("user", "revoke", ALICE, "*@other.example")
    assert server.cli("user", "revoke", ALICE, "*@other.example", check=False).returncode == 1
    s = submit(server)
    s.login(ALICE, PASSWORD)
    assert s.mail("anyone@other.example")[0] == 553
    s.quit()
