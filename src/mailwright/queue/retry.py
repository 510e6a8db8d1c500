"""Retry schedule: when to try a deferred recipient again, and when to give up.

What: a pure function of (attempts made, now, time of acceptance) and a random source.
No I/O, no clock: the queue manager passes ``now`` in, tests pass a seeded ``random.Random``.

How: exponential back-off with jitter (RFC 5321 §4.5.4.1 asks for a retry interval of at
least 30 minutes between attempts to one destination and a give-up time of at least 4-5
days; we start lower for local transient errors such as a full mailbox and grow quickly):

    base(n)  = min(first * factor ** (n - 1), max_interval)     n = attempts made, n >= 1
    delay(n) = base(n) * (1 - jitter * u),                      u uniform in [0, 1)

Jitter only shortens the delay, so ``max_interval`` stays a hard upper bound and a herd of
messages deferred at the same moment (e.g. a remote outage) spreads out over the next
``jitter * base`` seconds instead of retrying in lock-step.

Invariants:
* ``(1 - jitter) * first <= delay(n) <= max_interval`` for every n >= 1 (attempts <= 0 is
  treated as 1).
* ``next_attempt`` never schedules past the deadline ``queued_at + max_age``: the last try
  happens at the deadline, and a failure at or after it returns ``None`` (give up: the
  recipient becomes FAILED with a "4.4.7 message expired" reply and a DSN is due,
  RFC 3463 §3.5 X.4.7 "Delivery time expired").
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# Exponents beyond this cannot matter (2**64 * anything positive exceeds any sane cap) and
# would overflow float for large attempt counts.
_MAX_EXPONENT = 64


def next_attempt_delay(attempts: int, rng: random.Random | None = None, *,
                       first: float = 5 * MINUTE, factor: float = 2.0,
                       max_interval: float = 4 * HOUR, jitter: float = 0.1) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt before the next one."""
    if first <= 0 or factor < 1 or max_interval <= 0 or not 0 <= jitter < 1:
        raise ValueError("need first > 0, factor >= 1, max_interval > 0, 0 <= jitter < 1")
    n = max(attempts, 1)
    exponent = min(n - 1, _MAX_EXPONENT)
    base = min(first * factor ** exponent, max_interval)
    u = (rng or random).random() if jitter else 0.0
    return base * (1.0 - jitter * u)


@dataclass(slots=True)
class RetrySchedule:
    """Back-off policy for transiently failed recipients (defaults: 5 min doubling to 4 h,
    give up after 5 days, 10 % jitter)."""
    first: float = 5 * MINUTE
    factor: float = 2.0
    max_interval: float = 4 * HOUR
    max_age: float = 5 * DAY
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_age <= 0:
            raise ValueError("max_age must be > 0")
        # Validate the remaining fields once, here, rather than at the first deferral.
        next_attempt_delay(1, random.Random(0), first=self.first, factor=self.factor,
                           max_interval=self.max_interval, jitter=self.jitter)

    def delay(self, attempts: int) -> float:
        """Seconds until the next attempt after ``attempts`` failed attempts."""
        return next_attempt_delay(attempts, self.rng, first=self.first, factor=self.factor,
                                  max_interval=self.max_interval, jitter=self.jitter)

    def deadline(self, queued_at: float) -> float:
        """The time after which a still-failing recipient is given up."""
        return queued_at + self.max_age

    def next_attempt(self, now: float, attempts: int, queued_at: float) -> float | None:
        """When to try again after the ``attempts``-th failure at ``now``; ``None`` = expired.

        ``queued_at`` is the message's acceptance time (Envelope.received_at).
        """
        deadline = self.deadline(queued_at)
        if now >= deadline:
            return None
        return min(now + self.delay(attempts), deadline)
