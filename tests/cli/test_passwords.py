"""scrypt password hashes: format, verification, malformed input never raises."""
from __future__ import annotations

import base64

import pytest

from mailwright.admin.passwords import hash_password, needs_rehash, verify_password


def test_format_and_verify():
    h = hash_password("correct horse")
    scheme, n, r, p, salt, key = h.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt + "==")) == 16
    assert len(base64.b64decode(key + "=")) == 32
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsE", h)
    assert not verify_password("", h)
    assert not needs_rehash(h)


def test_salted():
    assert hash_password("x") != hash_password("x")


def test_unicode_normalised():
    # U+00E9 and e + U+0301 are the same password after NFKC.
    h = hash_password("caf\u00e9")
    assert verify_password("cafe\u0301", h)


def test_other_parameters_still_verify():
    import hashlib
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=2 ** 10, r=8, p=1, dklen=32)
    stored = "scrypt$1024$8$1$%s$%s" % (base64.b64encode(salt).decode().rstrip("="),
                                        base64.b64encode(key).decode().rstrip("="))
    assert verify_password("pw", stored)
    assert needs_rehash(stored)


@pytest.mark.parametrize("stored", [
    "", "plain", "scrypt$16384$8$1$AAAA", "bcrypt$16384$8$1$AAAA$AAAA",
    "scrypt$x$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
    "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,          # n not a power of 2
    "scrypt$4294967296$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,    # n too large
    "scrypt$16384$8$1$!!!!$" + "A" * 43,
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA",                 # key too short
])
def test_malformed_hash_is_false(stored):
    assert verify_password("pw", stored) is False


def test_empty_password_refused():
    with pytest.raises(ValueError):
        hash_password("")
