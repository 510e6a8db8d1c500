"""Sans-IO SASL server mechanisms for SMTP AUTH: PLAIN, LOGIN and SCRAM-SHA-256.

What: one object per authentication exchange (``new_mechanism(name)``).  The driver feeds it
the decoded client responses; it answers with an *outcome* saying what to do next::

    mech = new_mechanism("PLAIN")
    out = mech.start(initial_response_or_None)
    loop:
        Challenge(data)          -> send "334 base64(data)"; out = mech.step(client_bytes)
        VerifyPassword(...)      -> check the password (scrypt, in a thread);
                                    out = mech.password_checked(ok)
        NeedVerifier(authcid)    -> look up the stored SCRAM verifier (or None);
                                    out = mech.verifier_found(verifier_or_None)
        Success(authcid)         -> "235 2.7.0"
        Failure(reason, authcid) -> "535 5.7.8" (after the driver's growing delay)

How:

* PLAIN (RFC 4616 §2): one message ``[authzid] NUL authcid NUL passwd`` in UTF-8.  Without
  an initial response the server first sends an empty challenge (RFC 4954 §4).
* LOGIN (draft-murchison-sasl-login-00, obsolete but universal): challenges
  ``Username:`` and ``Password:``; an initial response is the user name.
* SCRAM-SHA-256 (RFC 5802 §5, RFC 7677): client-first ``gs2-header n=user,r=cnonce``;
  server-first ``r=cnonce+snonce,s=salt,i=iterations``; client-final
  ``c=biws,r=nonce,p=proof``; the server checks ``H(proof XOR HMAC(StoredKey, AuthMessage))
  == StoredKey`` and answers ``v=ServerSignature`` as a further 334 challenge, because SMTP
  AUTH has no "additional data with success" (RFC 4954 §4): the client then sends an empty
  response and gets 235.  Channel binding (``p=``) is not offered, so a client asking for
  it fails (RFC 5802 §6); ``y`` is accepted since we do not advertise ``-PLUS``.
* ``derive_scram_verifier(password)`` and ``ScramVerifier`` give the stored form
  ``salt_b64$iterations$storedkey_b64$serverkey_b64`` (store column ``scram_sha256``).

Invariants:

* Nothing here does I/O or reads a clock; randomness comes from ``secrets`` (nonces,
  salts) and can be injected for tests (``nonce=``).
* Passwords are normalised to NFKC before use, as admin/passwords.py does (a stand-in for
  SASLprep, RFC 4013), so the scrypt hash and the SCRAM verifier agree.
* An authorization identity different from the authentication identity is refused: we do
  not implement proxy authorization.
* Outcomes never carry anything from the client back to the peer; ``Failure.reason`` is for
  the log only and never contains the password or the proof.
* An unknown SCRAM user gets a plausible server-first message (salt derived from the name
  with a per-process key, RFC 5802 §5.1 "mock" reply), so the exchange does not reveal
  which accounts exist; it fails at the proof like a wrong password.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass

__all__ = [
    "MECHANISMS", "new_mechanism", "Challenge", "VerifyPassword", "NeedVerifier", "Success",
    "Failure", "ScramVerifier", "derive_scram_verifier", "scram_client_proof",
    "SCRAM_ITERATIONS",
]

MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
SCRAM_ITERATIONS = 4096          # RFC 7677 §4: at least 4096
_MAX_ITERATIONS = 1_000_000
_MOCK_KEY = secrets.token_bytes(32)


# ---------------------------------------------------------------- outcomes

@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334 base64(data)`` and feed the client's answer to ``step``."""
    data: bytes


@dataclass(frozen=True, slots=True)
class VerifyPassword:
    """PLAIN/LOGIN: the driver checks ``password`` for ``authcid`` and calls
    ``password_checked(ok)``.  ``repr`` hides the password."""
    authcid: str
    password: str

    def __repr__(self) -> str:
        return f"VerifyPassword(authcid={self.authcid!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class NeedVerifier:
    """SCRAM: the driver looks up the stored verifier and calls ``verifier_found``."""
    authcid: str


@dataclass(frozen=True, slots=True)
class Success:
    authcid: str


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str                  # for the log; never a credential
    authcid: str = ""            # the account, when the client named one


Outcome = Challenge | VerifyPassword | NeedVerifier | Success | Failure


# ---------------------------------------------------------------- helpers

def _normalise(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _utf8(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# ---------------------------------------------------------------- mechanisms

class _Mechanism:
    name = ""

    def __init__(self) -> None:
        self.done = False

    def start(self, initial: bytes | None) -> Outcome:
        raise NotImplementedError

    def step(self, response: bytes) -> Outcome:
        raise NotImplementedError

    def password_checked(self, ok: bool) -> Outcome:
        return self._fail("unexpected password result")

    def verifier_found(self, verifier: "ScramVerifier | None") -> Outcome:
        return self._fail("unexpected verifier")

    def _fail(self, reason: str, authcid: str = "") -> Failure:
        self.done = True
        return Failure(reason, authcid)


class PlainMechanism(_Mechanism):
    """RFC 4616 §2: ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``."""
    name = "PLAIN"

    def __init__(self) -> None:
        super().__init__()
        self._authcid = ""

    def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"")            # RFC 4954 §4: empty challenge, then the message
        return self.step(initial)

    def step(self, response: bytes) -> Outcome:
        parts = response.split(b"\0")
        if len(parts) != 3:
            return self._fail("malformed PLAIN message")
        authzid, authcid, passwd = (_utf8(p) for p in parts)
        if authzid is None or authcid is None or passwd is None or not authcid or not passwd:
            return self._fail("malformed PLAIN message")
        if authzid and authzid != authcid:
            return self._fail("authorization identity differs", authcid)
        if len(authcid) > 255 or len(passwd) > 1024:
            return self._fail("PLAIN field too long", authcid[:255])
        self._authcid = authcid
        return VerifyPassword(authcid, passwd)

    def password_checked(self, ok: bool) -> Outcome:
        self.done = True
        if not self._authcid:
            return Failure("no credentials")
        return Success(self._authcid) if ok else Failure("bad password", self._authcid)


class LoginMechanism(_Mechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login-00 §2)."""
    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._authcid: str | None = None

    def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"Username:")
        return self.step(initial)

    def step(self, response: bytes) -> Outcome:
        text = _utf8(response)
        if self._authcid is None:
            if not text or len(text) > 255:
                return self._fail("malformed LOGIN user name")
            self._authcid = text
            return Challenge(b"Password:")
        if not text or len(text) > 1024:
            return self._fail("malformed LOGIN password", self._authcid)
        return VerifyPassword(self._authcid, text)

    def password_checked(self, ok: bool) -> Outcome:
        self.done = True
        if not self._authcid:
            return Failure("no credentials")
        return Success(self._authcid) if ok else Failure("bad password", self._authcid)


# ---------------------------------------------------------------- SCRAM-SHA-256

@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """What the server stores for SCRAM (RFC 5802 §3): never the password."""
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        return (f"{_b64(self.salt)}${self.iterations}${_b64(self.stored_key)}"
                f"${_b64(self.server_key)}")

    @classmethod
    def decode(cls, text: str) -> "ScramVerifier | None":
        """Parse the stored form; None for "" or anything malformed."""
        parts = text.split("$") if isinstance(text, str) else []
        if len(parts) != 4:
            return None
        try:
            salt, stored, server = _unb64(parts[0]), _unb64(parts[2]), _unb64(parts[3])
            iterations = int(parts[1])
        except (ValueError, binascii.Error):
            return None
        if (not salt or not 4096 <= iterations <= _MAX_ITERATIONS
                or len(stored) != 32 or len(server) != 32):
            return None
        return cls(salt, iterations, stored, server)


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # RFC 5802 §2.2: Hi() is PBKDF2 with HMAC as the PRF.
    return hashlib.pbkdf2_hmac("sha256", _normalise(password), salt, iterations)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def derive_scram_verifier(password: str, *, salt: bytes | None = None,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    """The stored SCRAM-SHA-256 verifier for ``password`` (RFC 5802 §3), encoded."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = _salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramVerifier(salt, iterations, hashlib.sha256(client_key).digest(),
                         _hmac(salted, b"Server Key")).encode()


def scram_client_proof(password: str, salt: bytes, iterations: int,
                       auth_message: bytes) -> tuple[bytes, bytes]:
    """(ClientProof, expected ServerSignature) as a client computes them (RFC 5802 §3).
    Used by tests and by an SMTP client offering SCRAM."""
    salted = _salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return proof, _hmac(_hmac(salted, b"Server Key"), auth_message)


def _saslname(text: str) -> str | None:
    """RFC 5802 §5.1: ``=2C`` is ',' and ``=3D`` is '='; any other '=' is an error."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "=":
            code = text[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                return None
            i += 3
            continue
        if ch == ",":
            return None
        out.append(ch)
        i += 1
    return "".join(out)


class ScramSha256Mechanism(_Mechanism):
    """RFC 5802 §5 / RFC 7677, server side, without channel binding."""
    name = "SCRAM-SHA-256"

    def __init__(self, nonce: str | None = None) -> None:
        super().__init__()
        self._snonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._stage = "first"
        self._authcid = ""
        self._gs2 = b""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._verifier: ScramVerifier | None = None
        self._server_signature = b""

    def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Outcome:
        if self._stage == "first":
            return self._client_first(response)
        if self._stage == "final":
            return self._client_final(response)
        if self._stage == "ack":
            self.done = True
            if response:
                return Failure("unexpected data after server-final", self._authcid)
            return Success(self._authcid)
        return self._fail("exchange already finished", self._authcid)

    def _client_first(self, response: bytes) -> Outcome:
        text = _utf8(response)
        if text is None:
            return self._fail("malformed client-first message")
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            return self._fail("malformed client-first message")
        cbind, authzid, bare = parts
        if cbind.startswith("p="):
            return self._fail("channel binding requested but not offered")
        if cbind not in ("n", "y"):
            return self._fail("malformed gs2 header")
        attrs = bare.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            return self._fail("malformed client-first message")
        if any(a.startswith("m=") for a in attrs):
            return self._fail("mandatory extension not supported")     # RFC 5802 §5.1
        user = _saslname(attrs[0][2:])
        cnonce = attrs[1][2:]
        if not user or len(user) > 255 or not cnonce or not cnonce.isprintable() \
                or "," in cnonce or len(cnonce) > 512:
            return self._fail("malformed client-first message")
        if authzid:
            if not authzid.startswith("a=") or _saslname(authzid[2:]) != user:
                return self._fail("authorization identity differs", user)
        self._authcid = user
        self._gs2 = f"{cbind},{authzid},".encode("utf-8")
        self._client_first_bare = bare
        self._nonce = cnonce + self._snonce
        self._stage = "verifier"
        return NeedVerifier(user)

    def verifier_found(self, verifier: ScramVerifier | None) -> Outcome:
        if self._stage != "verifier":
            return self._fail("unexpected verifier", self._authcid)
        self._verifier = verifier
        if verifier is None:
            # A mock server-first message (RFC 5802 §5.1): same shape as a real one.
            salt = _hmac(_MOCK_KEY, self._authcid.encode("utf-8"))[:16]
            iterations = SCRAM_ITERATIONS
        else:
            salt, iterations = verifier.salt, verifier.iterations
        self._server_first = f"r={self._nonce},s={_b64(salt)},i={iterations}"
        self._stage = "final"
        return Challenge(self._server_first.encode("ascii"))

    def _client_final(self, response: bytes) -> Outcome:
        text = _utf8(response)
        if text is None or ",p=" not in text:
            return self._fail("malformed client-final message", self._authcid)
        without_proof, _, proof_b64 = text.rpartition(",p=")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            return self._fail("malformed client-final message", self._authcid)
        try:
            cbind = _unb64(attrs[0][2:])
            proof = _unb64(proof_b64)
        except (ValueError, binascii.Error):
            return self._fail("malformed client-final message", self._authcid)
        if cbind != self._gs2:
            return self._fail("channel binding data mismatch", self._authcid)
        if attrs[1][2:] != self._nonce:
            return self._fail("nonce mismatch", self._authcid)
        verifier = self._verifier
        if verifier is None or len(proof) != 32:
            return self._fail("bad password", self._authcid)
        auth_message = ",".join((self._client_first_bare, self._server_first,
                                 without_proof)).encode("utf-8")
        signature = _hmac(verifier.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key):
            return self._fail("bad password", self._authcid)
        self._stage = "ack"
        server_signature = _hmac(verifier.server_key, auth_message)
        return Challenge(b"v=" + base64.b64encode(server_signature))


_FACTORIES = {"PLAIN": PlainMechanism, "LOGIN": LoginMechanism,
              "SCRAM-SHA-256": ScramSha256Mechanism}


def new_mechanism(name: str) -> _Mechanism | None:
    """A fresh server-side exchange for ``name`` (case-insensitive), or None if unknown."""
    factory = _FACTORIES.get(name.upper())
    return factory() if factory is not None else None
