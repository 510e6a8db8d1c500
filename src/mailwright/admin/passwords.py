"""Mailbox password hashing with scrypt (stdlib ``hashlib.scrypt``).

What: ``hash_password(pw)`` returns ``"scrypt$n$r$p$salt_b64$hash_b64"``;
``verify_password(pw, stored)`` checks a password against such a string.

How: scrypt with n=2**14, r=8, p=1, a fresh 16-byte random salt and a 32-byte key.
Base64 is the standard alphabet without ``=`` padding. Passwords are normalised to NFKC
(as SASLprep does) and encoded as UTF-8 before hashing, so the same password typed on
different systems verifies.

Invariants:
* ``verify_password`` never raises on a malformed or empty stored hash: it returns False
  (an empty ``password_hash`` means "this mailbox cannot log in").
* The comparison is constant-time (``hmac.compare_digest``).
* Parameters are read from the stored string (so they can be raised later), but bounded,
  so a tampered hash cannot make verification use unbounded memory or time.
* One verification costs ~16 MiB and tens of milliseconds of CPU: async callers run it in
  an executor (``asyncio.to_thread``), never on the event loop.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata

__all__ = ["hash_password", "verify_password", "needs_rehash",
           "SCRYPT_N", "SCRYPT_R", "SCRYPT_P"]

SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
_MAX_N, _MAX_R, _MAX_P = 2 ** 20, 32, 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _encode(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` (which must be non-empty)."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(_encode(password), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$") if isinstance(stored, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        return None
    if not salt or not 16 <= len(key) <= 64:
        return None
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (a ``hash_password`` result)."""
    parsed = _parse(stored)
    if parsed is None or not isinstance(password, str) or not password:
        return False
    n, r, p, salt, key = parsed
    try:
        candidate = _derive(_encode(password), salt, n, r, p, len(key))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(candidate, key)


def needs_rehash(stored: str) -> bool:
    """True if ``stored`` uses other parameters than the current ones (rehash on login)."""
    parsed = _parse(stored)
    return parsed is None or parsed[:3] != (SCRYPT_N, SCRYPT_R, SCRYPT_P)
