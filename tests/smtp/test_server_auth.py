"""AUTH in the sans-IO core (RFC 4954): advertisement, sequence, continuations, cancel."""
import base64

import pytest
from smtp.test_server_support import Peer

from mailwright.smtp import catalog, sasl
from mailwright.smtp.events import AuthResponse, AuthStart, MailFrom
from mailwright.smtp.server import State

MECHS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
USERS = {"alice@example.test": "s3cret"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class SaslDriver:
    """Answers AuthStart/AuthResponse with real mechanisms against USERS."""

    def __init__(self):
        self.mech = None

    def __call__(self, ev):
        if isinstance(ev, AuthStart):
            self.mech = sasl.new_mechanism(ev.mechanism)
            out = self.mech.start(ev.initial_response)
        elif isinstance(ev, AuthResponse):
            out = self.mech.step(ev.data)
        else:
            return catalog.queued("T") if type(ev).__name__ == "BodyComplete" else None
        while True:
            if isinstance(out, sasl.VerifyPassword):
                out = self.mech.password_checked(USERS.get(out.authcid) == out.password)
            elif isinstance(out, sasl.NeedVerifier):
                pw = USERS.get(out.authcid)
                v = sasl.ScramVerifier.decode(sasl.derive_scram_verifier(pw)) if pw else None
                out = self.mech.verifier_found(v)
            elif isinstance(out, sasl.Challenge):
                return catalog.auth_challenge(out.data)
            elif isinstance(out, sasl.Success):
                return catalog.AUTH_OK
            else:
                return catalog.AUTH_FAILED


def peer(tls_active=True, **kw):
    kw.setdefault("auth_mechanisms", MECHS)
    p = Peer(decide=SaslDriver(), tls_active=tls_active, **kw)
    p.send(b"EHLO client.test\r\n")
    p.take_replies()
    return p


PLAIN_OK = b64(b"\0alice@example.test\0s3cret")


def test_auth_advertised_only_with_tls_and_mechanisms():
    p = Peer(auth_mechanisms=MECHS, tls_active=True)
    p.send(b"EHLO x\r\n")
    assert p.out.endswith(b"250 AUTH PLAIN LOGIN SCRAM-SHA-256\r\n")
    p = Peer(auth_mechanisms=MECHS, tls_available=True)          # 587 before STARTTLS
    p.send(b"EHLO x\r\n")
    assert b"AUTH" not in p.out
    p = Peer(auth_mechanisms=MECHS, auth_requires_tls=False)
    p.send(b"EHLO x\r\n")
    assert b"AUTH PLAIN" in p.out
    p = Peer(tls_active=True)                                    # mx: never
    p.send(b"EHLO x\r\n")
    assert b"AUTH" not in p.out


def test_auth_on_mx_is_not_implemented():
    p = Peer(tls_active=True)
    p.send(b"EHLO x\r\nAUTH PLAIN " + PLAIN_OK.encode() + b"\r\n")
    assert p.replies()[-1] == "502 5.5.1"


def test_auth_before_tls_needs_starttls():
    p = peer(tls_active=False, tls_available=True)
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert p.take_replies() == ["530 5.7.0"]
    assert not any(isinstance(e, AuthStart) for e in p.events)


def test_plain_with_initial_response():
    p = peer()
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert p.take_replies() == ["235 2.7.0"]
    assert p.conn.authenticated and p.conn.state is State.GREETED


def test_plain_without_initial_response_gets_empty_challenge():
    p = peer()
    p.send(b"AUTH plain\r\n")
    assert p.out == b"334 \r\n" and p.conn.state is State.AUTH
    p.take_replies()
    p.send(PLAIN_OK.encode() + b"\r\n")
    assert p.take_replies() == ["235 2.7.0"]


def test_login_exchange():
    p = peer()
    p.send(b"AUTH LOGIN\r\n")
    assert p.out == b"334 " + base64.b64encode(b"Username:") + b"\r\n"
    p.take_replies()
    p.send(b64(b"alice@example.test").encode() + b"\r\n")
    assert p.out == b"334 " + base64.b64encode(b"Password:") + b"\r\n"
    p.take_replies()
    p.send(b64(b"wrong").encode() + b"\r\n")
    assert p.take_replies() == ["535 5.7.8"]
    assert not p.conn.authenticated and p.conn.state is State.GREETED


def test_empty_initial_response_is_equals_sign():
    p = peer()
    p.send(b"AUTH PLAIN =\r\n")
    assert p.take_replies() == ["535 5.7.8"]         # empty PLAIN message: malformed
    start = [e for e in p.events if isinstance(e, AuthStart)][0]
    assert start.initial_response == b""


def test_cancel_with_star():
    p = peer()
    p.send(b"AUTH LOGIN\r\n*\r\n")
    assert p.replies() == ["334", "501 5.0.0"]
    assert p.conn.state is State.GREETED and not p.conn.authenticated


def test_bad_base64_in_response_and_initial_response():
    p = peer()
    p.send(b"AUTH LOGIN\r\n!!notbase64\r\n")
    assert p.take_replies() == ["334", "501 5.5.2"]
    p.send(b"AUTH PLAIN abc\r\n")                    # bad padding
    assert p.take_replies() == ["501 5.5.2"]
    assert p.conn.state is State.GREETED


def test_unknown_mechanism_and_syntax():
    p = peer()
    p.send(b"AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n")
    assert p.replies() == ["504 5.5.4", "501 5.5.4", "501 5.5.4"]


def test_auth_twice_and_inside_transaction():
    p = peer()
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert p.take_replies() == ["235 2.7.0", "503 5.5.1"]
    q = peer()
    q.send(b"MAIL FROM:<a@b.test>\r\n" + f"AUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert q.take_replies() == ["250 2.1.0", "503 5.5.1"]


def test_auth_needs_ehlo():
    p = Peer(decide=SaslDriver(), tls_active=True, auth_mechanisms=MECHS)
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\nHELO x\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert p.replies() == ["220", "503 5.5.1", "250", "503 5.5.1"]


def test_response_line_is_not_a_command():
    p = peer()
    p.send(b"AUTH LOGIN\r\n")
    p.send(b"QUIT\r\n")      # valid base64 (4 chars): taken as the user name, not as QUIT
    assert p.replies()[-1] == "334" and not p.conn.closed


def test_long_auth_line_accepted_up_to_rfc4954_limit():
    p = peer()
    p.send(b"AUTH LOGIN\r\n")
    p.send(b"A" * 8000 + b"\r\n")
    assert p.replies()[-1] != "500 5.5.2"


def test_events_hide_credentials():
    p = peer()
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())
    text = repr(p.events)
    assert "s3cret" not in text and PLAIN_OK not in text


def test_tls_established_forgets_authentication():
    p = Peer(decide=SaslDriver(), tls_available=True, auth_mechanisms=MECHS,
             auth_requires_tls=False)
    p.send(f"EHLO x\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert p.conn.authenticated
    p.send(b"STARTTLS\r\n")
    p.conn.tls_established(1.0)
    assert not p.conn.authenticated


def test_scram_sha256_exchange_in_core():
    p = peer()
    cnonce = "rOprNGfwEbeRWgbNEkqO"
    first_bare = f"n=alice@example.test,r={cnonce}"
    p.send(f"AUTH SCRAM-SHA-256 {b64(('n,,' + first_bare).encode())}\r\n".encode())
    line = p.out.split(b"\r\n")[0]
    assert line.startswith(b"334 ")
    server_first = base64.b64decode(line[4:]).decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    assert attrs["r"].startswith(cnonce)
    p.take_replies()
    final_wo_proof = f"c={b64(b'n,,')},r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_wo_proof}".encode()
    proof, server_sig = sasl.scram_client_proof("s3cret", base64.b64decode(attrs["s"]),
                                                int(attrs["i"]), auth_message)
    p.send(b64(f"{final_wo_proof},p={b64(proof)}".encode()).encode() + b"\r\n")
    line = p.out.split(b"\r\n")[0]
    assert base64.b64decode(line[4:]) == b"v=" + base64.b64encode(server_sig)
    p.take_replies()
    p.send(b"\r\n")
    assert p.take_replies() == ["235 2.7.0"]
    assert p.conn.authenticated


def test_mail_after_auth_is_normal():
    p = peer()
    p.send(f"AUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.test> AUTH=<>\r\n".encode())
    assert p.replies()[-1] == "250 2.1.0"
    assert isinstance(p.events[-1], MailFrom)


@pytest.mark.parametrize("code", [454, 421])
def test_driver_refusals(code):
    reply = catalog.AUTH_TEMP_FAILURE if code == 454 else catalog.AUTH_LOCKED_OUT
    p = Peer(decide=lambda ev: reply if isinstance(ev, AuthStart) else None,
             tls_active=True, auth_mechanisms=MECHS)
    p.send(f"EHLO x\r\nAUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n".encode())
    assert p.replies()[-1 if code == 421 else -2].startswith(str(code))
    assert p.conn.closed == (code == 421)


@pytest.mark.parametrize("bad", ["AAAA=", "AAAA==", "AAAA====", "AA=A", "AAA", "A===",
                                 "dXNlckB0ZXN0c2VydmVyAHlalala=="])
def test_non_canonical_base64_is_a_syntax_error(bad):
    from mailwright.smtp.server import _decode_base64
    assert _decode_base64(bad) is None


def test_canonical_base64_decodes():
    from mailwright.smtp.server import _decode_base64
    assert _decode_base64("AGFsaWNlAHB3") == b"\0alice\0pw"
    assert _decode_base64("QQ==") == b"A"
