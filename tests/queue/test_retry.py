import random

import pytest

from mailwright.queue.retry import DAY, HOUR, MINUTE, RetrySchedule, next_attempt_delay


@pytest.mark.parametrize("attempts, base", [
    (0, 300), (1, 300), (2, 600), (3, 1200), (4, 2400), (5, 4800), (6, 9600),
    (7, 4 * HOUR), (8, 4 * HOUR), (50, 4 * HOUR), (10_000, 4 * HOUR),
])
def test_delay_without_jitter_is_exponential_and_capped(attempts, base):
    assert next_attempt_delay(attempts, random.Random(1), jitter=0) == base


def test_jitter_table_with_seeded_rng():
    # Jitter only shortens: delay = base * (1 - 0.1 * u), u from the seeded RNG.
    rng = random.Random(42)
    us = [random.Random(42).random()]
    expected_first = 300 * (1 - 0.1 * us[0])
    assert next_attempt_delay(1, rng) == pytest.approx(expected_first)
    # A fresh RNG with the same seed reproduces the sequence exactly.
    seq_a = [next_attempt_delay(n, random.Random(7)) for n in range(1, 10)]
    seq_b = [next_attempt_delay(n, random.Random(7)) for n in range(1, 10)]
    assert seq_a == seq_b


@pytest.mark.parametrize("attempts", range(1, 40))
def test_jitter_bounds(attempts):
    rng = random.Random(attempts)
    base = min(300 * 2 ** (attempts - 1), 4 * HOUR)
    for _ in range(50):
        d = next_attempt_delay(attempts, rng)
        assert 0.9 * base <= d <= base <= 4 * HOUR


def test_jitter_spreads_a_herd():
    rng = random.Random(3)
    delays = {round(next_attempt_delay(3, rng), 3) for _ in range(100)}
    assert len(delays) > 90


@pytest.mark.parametrize("kwargs", [
    dict(first=0), dict(factor=0.5), dict(max_interval=0), dict(jitter=1.0), dict(jitter=-0.1),
])
def test_invalid_parameters(kwargs):
    with pytest.raises(ValueError):
        next_attempt_delay(1, random.Random(0), **kwargs)
    with pytest.raises(ValueError):
        RetrySchedule(**kwargs)


def test_schedule_defaults():
    s = RetrySchedule()
    assert (s.first, s.factor, s.max_interval, s.max_age, s.jitter) == (
        300, 2, 4 * HOUR, 5 * DAY, 0.1)


# now offset from queued_at, attempts → expected next attempt offset (None = give up)
@pytest.mark.parametrize("now, attempts, expected", [
    (0, 1, 300),
    (300, 2, 300 + 600),
    (1000, 7, 1000 + 4 * HOUR),
    (5 * DAY - 10 * MINUTE, 20, 5 * DAY),     # clamped: last try at the deadline
    (5 * DAY - 1, 1, 5 * DAY),
    (5 * DAY, 20, None),                      # at the deadline: expired
    (6 * DAY, 3, None),
])
def test_next_attempt_table(now, attempts, expected):
    s = RetrySchedule(jitter=0, rng=random.Random(0))
    queued_at = 1_700_000_000.0
    got = s.next_attempt(queued_at + now, attempts, queued_at)
    assert got == (None if expected is None else queued_at + expected)


def test_next_attempt_with_jitter_is_reproducible():
    a = RetrySchedule(rng=random.Random(99))
    b = RetrySchedule(rng=random.Random(99))
    xs = [a.next_attempt(1000.0 * n, n, 0.0) for n in range(1, 20)]
    ys = [b.next_attempt(1000.0 * n, n, 0.0) for n in range(1, 20)]
    assert xs == ys
    for n, x in enumerate(xs, start=1):
        assert 1000.0 * n < x <= 1000.0 * n + 4 * HOUR


def test_whole_life_of_a_failing_recipient_ends_in_expiry():
    s = RetrySchedule(rng=random.Random(5))
    queued_at = now = 0.0
    attempts = 0
    while True:
        attempts += 1
        nxt = s.next_attempt(now, attempts, queued_at)
        if nxt is None:
            break
        assert nxt > now
        now = nxt
    assert now == 5 * DAY
    # 5 min doubling to 4 h (≈ 8.5 h of ramp), then ≥ 3.6 h steps over the remaining ~4.6 days
    assert 30 <= attempts <= 40
