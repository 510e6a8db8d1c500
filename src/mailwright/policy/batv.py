"""Bounce Address Tag Validation, the ``prvs`` scheme: pure functions (no I/O, no clock).

What: ``sign`` turns an envelope sender ``local@domain`` into
``prvs=KDDDSSSSSS=local@domain`` (draft-levine-smtp-batv-01, "prvs" private signature):

* ``K``: key number, one digit (0-9), so two keys can be valid during a rotation;
* ``DDD``: the day the tag expires, as days since 1970-01-01 (UTC) modulo 1000;
* ``SSSSSS``: the first 6 hex digits of an HMAC over ``K DDD address`` (the draft's
  hash-source) with the secret of key ``K``.

``parse`` recognises such an address (case-insensitively: relays may fold case) and
``verify`` says whether its tag is ``valid``, ``expired``, ``bad-signature`` or
``unknown-key``.

How: HMAC-SHA256 instead of the draft's SHA-1: only the signer ever checks a prvs tag, so
the hash is a local choice.  The address is lower-cased before hashing (our directory
folds case; a relay that folds the local part must not break the tag).  A tag is valid
from signing until the end of its expiry day: ``(DDD - today) mod 1000`` must be at most
``days``, the lifetime given when signing (the day field wraps every 1000 days, which is
why lifetimes are bounded well below that).

Invariants: ``verify(parse(sign(a, k, s, now, d)), {k: s}, now + t, d)`` is ``valid`` for
``0 <= t < d days`` (until the end of the expiry day) and ``expired`` a day after;
``sign`` never tags what it cannot tag cleanly (null sender, an already tagged address, a
local part that is not a plain dot-atom or would exceed 64 octets, RFC 5321 §4.5.3.1.1):
it returns the address unchanged.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Tagged", "Status", "TAG_TYPE", "day_number", "signature", "sign", "can_tag", "parse",
           "verify", "MAX_LOCAL"]

TAG_TYPE = "prvs"
DAY = 86400
MAX_LOCAL = 64                   # RFC 5321 §4.5.3.1.1: local part at most 64 octets
_TAG_LEN = len("prvs=0123abcdef=")

_PRVS = re.compile(r"prvs=([0-9])([0-9]{3})([0-9a-f]{6})=(.+)", re.I | re.S)
# RFC 5321 Dot-string (atext of RFC 5322 §3.2.3, ASCII): tags are only put on such.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


class Status(enum.Enum):
    VALID = "valid"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_KEY = "unknown-key"


@dataclass(frozen=True, slots=True)
class Tagged:
    """A parsed ``prvs=KDDDSSSSSS=local@domain`` address."""
    key: int
    day: int              # 0-999
    sig: str              # six lower-case hex digits
    address: str          # local@domain without the tag, as received


def day_number(now: float) -> int:
    """Days since 1970-01-01 UTC."""
    return int(now // DAY)


def signature(secret: bytes, key: int, day: int, address: str) -> str:
    source = f"{key}{day % 1000:03d}{address.lower()}".encode("utf-8")
    return hmac.new(secret, source, hashlib.sha256).hexdigest()[:6]


def parse(address: str) -> Tagged | None:
    """The tag of ``address``, or None if it is not a prvs address."""
    local, sep, domain = address.rpartition("@")
    if not sep or not domain:
        return None
    m = _PRVS.fullmatch(local)
    if m is None or not m.group(4):
        return None
    return Tagged(int(m.group(1)), int(m.group(2)), m.group(3).lower(),
                  f"{m.group(4)}@{domain}")


def can_tag(address: str) -> bool:
    local, sep, domain = address.rpartition("@")
    return (bool(sep and local and domain) and parse(address) is None
            and _DOT_ATOM.fullmatch(local) is not None
            and len(local) + _TAG_LEN <= MAX_LOCAL)


def sign(address: str, key: int, secret: bytes, now: float, days: int) -> str:
    """``address`` tagged with key ``key``, expiring ``days`` days after ``now``; the
    address unchanged when it cannot be tagged (see the module docstring)."""
    if not 0 <= key <= 9:
        raise ValueError("key number must be 0-9")
    if not can_tag(address):
        return address
    day = (day_number(now) + days) % 1000
    return f"{TAG_TYPE}={key}{day:03d}{signature(secret, key, day, address)}={address}"


def verify(tag: Tagged, keys: Mapping[int, bytes], now: float, days: int) -> Status:
    """Check a parsed tag against the known keys at time ``now``; ``days`` is the
    lifetime tags are signed with (a tag further in the future is not ours)."""
    secret = keys.get(tag.key)
    if secret is None:
        return Status.UNKNOWN_KEY
    if not hmac.compare_digest(signature(secret, tag.key, tag.day, tag.address), tag.sig):
        return Status.BAD_SIGNATURE
    if (tag.day - day_number(now)) % 1000 > days:
        return Status.EXPIRED
    return Status.VALID
