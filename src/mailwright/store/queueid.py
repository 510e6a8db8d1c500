"""Queue ids: short, sortable by time, unique across processes.

What: ``new_queue_id()`` returns 16 characters of lower-case Crockford base32
(``0-9a-z`` without ``i l o u``): 11 characters encode the unix time in microseconds
(55 bits, good until the year 3111), 5 characters are 25 random bits.

How: the alphabet is in ASCII order, so string order is time order (ids sort like
Postfix "long queue ids" do, which keeps ``ORDER BY queue_id`` meaningful and the
B-tree appends at its right edge). Within one process the time part is strictly
increasing (a clock that repeats or steps back is bumped by 1 µs), so one process
never repeats an id. Across processes a clash needs the same microsecond *and* the
same 25 random bits; the store additionally publishes blobs with ``link(2)`` (which
fails on an existing name) and keeps ``queue_id`` a PRIMARY KEY, so a clash is
detected, never silently merged.

``fanout(queue_id)`` picks the blob sub-directory from time bits 20..29 (characters
5..6): the directory changes about every second and the 1024 directories cycle
about every 18 minutes, so one group-commit batch lands in one directory (one
directory fsync per batch) while a long-lived queue still spreads over 1024
directories.
"""
from __future__ import annotations

import os
import random
import threading
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"   # Crockford base32, lower-case, ASCII-sorted
_TIME_CHARS = 11
_RAND_CHARS = 5
LENGTH = _TIME_CHARS + _RAND_CHARS
_VALID = frozenset(ALPHABET)

_lock = threading.Lock()
_last_us = 0
# The random part only has to differ between processes, not be unpredictable (ids are
# shown to clients as Postfix's are): a per-process generator seeded from the kernel,
# re-seeded in a forked child, costs no system call per id (secrets did, one getrandom).
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]      # 10 bits -> 2 characters


def _encode(value: int, width: int) -> str:
    out = []
    if width & 1:
        out.append(ALPHABET[value & 31])
        value >>= 5
        width -= 1
    pairs = _PAIRS
    for _ in range(width // 2):
        out.append(pairs[value & 1023])
        value >>= 10
    return "".join(reversed(out))


def new_queue_id(now: float | None = None) -> str:
    """A fresh id. ``now`` (unix seconds) is for tests; the default is the wall clock."""
    global _last_us
    us = int((time.time() if now is None else now) * 1_000_000)
    with _lock:
        if us <= _last_us:
            us = _last_us + 1
        _last_us = us
    return _encode(us, _TIME_CHARS) + _encode(_random.getrandbits(5 * _RAND_CHARS), _RAND_CHARS)


def lower_bound(t: float) -> str:
    """The smallest id of unix time ``t``: every id made before ``t`` sorts below it."""
    return _encode(int(t * 1_000_000), _TIME_CHARS) + ALPHABET[0] * _RAND_CHARS


def is_valid(queue_id: str) -> bool:
    """True for a well-formed id (safe to use as a file name)."""
    return len(queue_id) == LENGTH and all(c in _VALID for c in queue_id)


def timestamp(queue_id: str) -> float:
    """The unix time encoded in an id."""
    us = 0
    for c in queue_id[:_TIME_CHARS]:
        us = (us << 5) | ALPHABET.index(c)
    return us / 1_000_000


def fanout(queue_id: str) -> str:
    """The two-character blob sub-directory for an id (see module docstring)."""
    return queue_id[5:7]
