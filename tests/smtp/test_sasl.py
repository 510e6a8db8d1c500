"""smtp/sasl.py (PLAIN, LOGIN, SCRAM-SHA-256) and the helpers around submission:
policy/auth_limits.py, policy/submission.py, message/headers.py."""
import base64
import hashlib
import hmac

import pytest

from mailwright.config.submission import SubmissionSettings
from mailwright.message.headers import HeaderCapture, analyse, submission_fixups
from mailwright.policy.auth_limits import AuthLimiter
from mailwright.policy.submission import SenderAuthorization, owns_address
from mailwright.policy.verdict import Action
from mailwright.routing.directory import Directory
from mailwright.smtp import sasl
from mailwright.store.base import DirectorySnapshot

# ---------------------------------------------------------------- PLAIN / LOGIN


def test_plain_rfc4616_message():
    m = sasl.new_mechanism("plain")
    out = m.start(b"\0tim\0tanstaaftanstaaf")          # RFC 4616 §4 example
    assert out == sasl.VerifyPassword("tim", "tanstaaftanstaaf")
    assert "tanstaaf" not in repr(out)
    assert m.password_checked(True) == sasl.Success("tim")


def test_plain_authzid_rules():
    assert isinstance(sasl.new_mechanism("PLAIN").start(b"tim\0tim\0pw"), sasl.VerifyPassword)
    out = sasl.new_mechanism("PLAIN").start(b"Ursel\0Kurt\0xipj3plmq")
    assert isinstance(out, sasl.Failure) and out.authcid == "Kurt"


@pytest.mark.parametrize("msg", [b"", b"\0\0", b"a\0b", b"\0user\0", b"\0\0pw",
                                 b"\0us\xffer\0pw", b"\0a\0b\0c"])
def test_plain_malformed(msg):
    out = sasl.new_mechanism("PLAIN").start(msg)
    assert isinstance(out, sasl.Failure)


def test_plain_wrong_password():
    m = sasl.new_mechanism("PLAIN")
    m.start(b"\0u@x.test\0nope")
    assert m.password_checked(False) == sasl.Failure("bad password", "u@x.test")


def test_login_with_and_without_initial_response():
    m = sasl.new_mechanism("LOGIN")
    assert m.start(None) == sasl.Challenge(b"Username:")
    assert m.step(b"u@x.test") == sasl.Challenge(b"Password:")
    assert m.step(b"pw") == sasl.VerifyPassword("u@x.test", "pw")
    m = sasl.new_mechanism("LOGIN")
    assert m.start(b"u@x.test") == sasl.Challenge(b"Password:")
    assert isinstance(m.step(b""), sasl.Failure)


def test_unknown_mechanism():
    assert sasl.new_mechanism("CRAM-MD5") is None


# ---------------------------------------------------------------- SCRAM-SHA-256

def test_rfc7677_test_vector():
    """RFC 7677 §3: user "user", password "pencil", the published nonces and salt."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = sasl.ScramVerifier.decode(sasl.derive_scram_verifier("pencil", salt=salt))
    m = sasl.ScramSha256Mechanism(nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    out = m.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert out == sasl.NeedVerifier("user")
    out = m.verifier_found(verifier)
    assert out == sasl.Challenge(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                 b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    out = m.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                 b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert out == sasl.Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert m.step(b"") == sasl.Success("user")


def test_scram_wrong_proof_and_unknown_user_look_alike():
    m = sasl.ScramSha256Mechanism(nonce="SN")
    m.start(b"n,,n=ghost,r=CN")
    first = m.verifier_found(None)
    assert isinstance(first, sasl.Challenge) and b",i=4096" in first.data
    out = m.step(b"c=biws,r=CNSN,p=" + base64.b64encode(b"x" * 32))
    assert out == sasl.Failure("bad password", "ghost")


@pytest.mark.parametrize("first", [b"p=tls-unique,,n=u,r=x", b"n,,r=x", b"q,,n=u,r=x",
                                   b"n,,n=u,r=x,m=ext", b"n,a=other,n=u,r=x", b"n,,n=a=2Xb,r=x"])
def test_scram_bad_client_first(first):
    assert isinstance(sasl.ScramSha256Mechanism().start(first), sasl.Failure)


def test_scram_saslname_and_authzid():
    out = sasl.ScramSha256Mechanism().start(b"n,a=a=2Cb@x.test,n=a=2Cb@x.test,r=x")
    assert out == sasl.NeedVerifier("a,b@x.test")


def test_scram_nonce_and_channel_binding_checked():
    v = sasl.ScramVerifier.decode(sasl.derive_scram_verifier("pw"))
    m = sasl.ScramSha256Mechanism(nonce="S")
    m.start(b"n,,n=u,r=C")
    m.verifier_found(v)
    assert m.step(b"c=biws,r=CX,p=" + base64.b64encode(b"x" * 32)).reason == "nonce mismatch"
    m = sasl.ScramSha256Mechanism(nonce="S")
    m.start(b"y,,n=u,r=C")
    m.verifier_found(v)
    assert "channel binding" in m.step(b"c=biws,r=CS,p=" + base64.b64encode(b"x" * 32)).reason


def test_verifier_round_trip_and_rejects_garbage():
    text = sasl.derive_scram_verifier("pw", iterations=4096)
    v = sasl.ScramVerifier.decode(text)
    assert v is not None and v.encode() == text and v.iterations == 4096
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", v.salt, 4096)
    ck = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert hashlib.sha256(ck).digest() == v.stored_key
    for bad in ("", "a$b", "YWJj$100$x$y", "YWJj$4096$YWJj$YWJj"):
        assert sasl.ScramVerifier.decode(bad) is None


# ---------------------------------------------------------------- auth limits

def test_limiter_per_ip_lockout_and_growing_delay():
    lim = AuthLimiter(max_per_ip=3, max_per_account=10, window=60, lockout=100,
                      base_delay=0.5, max_delay=1.5)
    delays = [lim.record_failure("192.0.2.1", f"u{i}", now=float(i)) for i in range(3)]
    assert delays == [0.5, 1.0, 1.5]
    assert lim.ip_locked("192.0.2.1", 3.0) and not lim.ip_locked("192.0.2.2", 3.0)
    assert not lim.ip_locked("192.0.2.1", 103.0)


def test_limiter_per_account_across_addresses():
    lim = AuthLimiter(max_per_ip=100, max_per_account=2, window=60, lockout=30)
    lim.record_failure("192.0.2.1", "Alice@x.test", 0.0)
    assert not lim.account_locked("alice@x.test", 0.0)
    lim.record_failure("198.51.100.7", "alice@x.test", 1.0)
    assert lim.account_locked("ALICE@x.test", 1.0)
    assert not lim.account_locked("alice@x.test", 40.0)


def test_limiter_window_forgets_and_success_clears_account():
    lim = AuthLimiter(max_per_ip=2, max_per_account=2, window=10, lockout=10)
    lim.record_failure("a", "u", 0.0)
    lim.record_failure("a", "u", 11.0)               # the first one left the window
    assert not lim.ip_locked("a", 11.0) and not lim.account_locked("u", 11.0)
    lim.record_success("a", "u")
    lim.record_failure("b", "u", 12.0)
    assert not lim.account_locked("u", 12.0)


def test_limiter_memory_is_bounded():
    lim = AuthLimiter(max_per_ip=5, max_per_account=5, max_keys=10)
    for i in range(100):
        lim.record_failure(f"ip{i}", f"acct{i}", 0.0)
    assert len(lim._ips._times) <= 10 and len(lim._accounts._times) <= 10


# ---------------------------------------------------------------- sender authorization

def directory():
    snap = DirectorySnapshot(
        version=1, domains=frozenset({"example.test", "other.test"}),
        mailboxes=frozenset({"alice@example.test", "bob@example.test"}),
        aliases={"sales@example.test": ("alice@example.test", "bob@example.test"),
                 "team@example.test": ("sales@example.test",),
                 "bobonly@example.test": ("bob@example.test",),
                 "@other.test": ("alice@example.test",)},
        quotas={})
    return Directory(snap, "example.test")


@pytest.mark.parametrize("address,grants,ok", [
    ("alice@example.test", (), True),
    ("Alice@EXAMPLE.test", (), True),
    ("alice+lists@example.test", (), True),
    ("sales@example.test", (), True),            # alias delivering to alice
    ("team@example.test", (), True),             # nested alias
    ("sales+x@example.test", (), True),
    ("bobonly@example.test", (), False),
    ("bob@example.test", (), False),
    ("anything@other.test", (), False),          # catch-all does not confer ownership
    ("anything@other.test", ("*@other.test",), True),
    ("ceo@example.test", ("ceo@example.test",), True),
    ("ceo@example.test", ("cfo@example.test",), False),
    ("alice%bob@example.test", (), False),
])
def test_owns_address(address, grants, ok):
    assert owns_address("alice@example.test", address, directory(), grants) is ok


def test_sender_policy_per_domain():
    d = directory()
    strict = SenderAuthorization(SubmissionSettings())
    assert strict.check_sender("alice@example.test", "bob@example.test", d).action \
        is Action.REJECT
    assert strict.check_sender("alice@example.test", "", d).action is Action.CONTINUE
    v = strict.check_sender("alice@example.test", "bob@example.test", d)
    assert (v.reply.code, v.reply.enhanced) == (553, "5.7.1")
    loose = SenderAuthorization(SubmissionSettings(sender_any_domains=("example.test",)))
    assert loose.check_sender("alice@example.test", "x@y.test", d).action is Action.CONTINUE
    mixed = SenderAuthorization(SubmissionSettings(sender_policy="any",
                                                   sender_strict_domains=("example.test",)))
    assert mixed.check_sender("alice@example.test", "x@y.test", d).action is Action.REJECT
    v = strict.check_header_from("alice@example.test", ["alice@example.test", "bob@example.test"], d)
    assert (v.reply.code, v.reply.enhanced) == (550, "5.7.1")
    assert strict.check_header_from("alice@example.test", [], d).action is Action.CONTINUE


# ---------------------------------------------------------------- header capture

def _stream(capture, chunks):
    out = b""
    for c in chunks:
        out += capture.feed(c)
    out += capture.finish()
    return out


@pytest.mark.parametrize("split", [1, 2, 3, 5, 1000])
def test_capture_reproduces_input(split):
    msg = (b"Received: a\r\nReceived: b\r\n\tcont\r\nFrom: A <a@x.test>, b@y.test\r\n"
           b"Subject: s\r\n\r\nbody\r\n\r\nReceived: not a header\r\n")
    cap = HeaderCapture()
    rest = _stream(cap, [msg[i:i + split] for i in range(0, len(msg), split)])
    assert cap.header + rest == msg
    assert cap.header.endswith(b"Subject: s\r\n\r\n")
    assert cap.info.received == 2 and not cap.info.has_date
    assert cap.info.from_addresses == ["a@x.test", "b@y.test"]


def test_capture_bound_and_empty_header_and_headers_only():
    cap = HeaderCapture(limit=100)
    big = b"X-A: " + b"a" * 200 + b"\r\n\r\nbody"
    rest = _stream(cap, [big[i:i + 50] for i in range(0, len(big), 50)])
    assert cap.header + rest == big and not cap.info.complete
    assert len(cap.header) == 100
    cap = HeaderCapture()
    assert _stream(cap, [b"\r\nbody\r\n"]) == b"\r\nbody\r\n" and cap.header == b""
    cap = HeaderCapture()
    assert _stream(cap, [b"Subject: x\r\n"]) == b"" and cap.header == b"Subject: x\r\n"


def test_submission_fixups():
    info = analyse(b"Subject: x\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n")
    text = submission_fixups(info, hostname="mx.test", auth_user="alice@example.test",
                             helo="laptop", client_ip="192.0.2.9", tls="TLSv1.3 X",
                             protocol="ESMTPSA", now=0, hide_client=False).decode()
    assert text.startswith("Received: from laptop (unknown [192.0.2.9])\r\n")
    assert "(Authenticated sender: alice@example.test)" in text
    assert "with ESMTPSA;" in text and "Message-ID: <" in text and "\r\nDate:" not in text
    hidden = submission_fixups(analyse(b""), hostname="mx.test", auth_user="a@b.test",
                               helo="laptop", client_ip="192.0.2.9", tls="", protocol="ESMTPSA",
                               now=0, hide_client=True).decode()
    assert "192.0.2.9" not in hidden and "laptop" not in hidden and "Date: " in hidden
