"""Authentication failure limits: counters per client IP and per account, and a growing delay.

What: ``AuthLimiter`` remembers failed SMTP AUTH attempts in a sliding window and answers
three questions for the session driver (net/session.py):

* ``ip_locked(ip, now)``: the address failed ``max_per_ip`` times within ``window``
  seconds; it stays locked for ``lockout`` seconds after the last counted failure.  The
  driver answers AUTH with ``421 4.7.0`` and closes (RFC 4954 §6 leaves the choice of
  reply to the server; Postfix's anvil and Dovecot's auth penalty do the same in spirit).
* ``account_locked(account, now)``: the same per account; the driver answers
  ``454 4.7.0`` without checking the password, so guessing gets nowhere even from many
  addresses.  (The price, as everywhere: an attacker can lock an account out for
  ``lockout`` seconds.  Successful logins from elsewhere keep working once it expires.)
* ``record_failure(ip, account, now) -> delay``: how long to wait before sending
  ``535 5.7.8``: ``base_delay * 2**(n-1)`` for the n-th failure of that address in the
  window, capped at ``max_delay`` (the growing delay slows a single client down; the
  counters stop a patient one).

How: per key a deque of failure times, pruned on access; keys are dropped when empty.
Memory is bounded by ``max_keys`` per table: beyond it the oldest keys are evicted (an
attacker rotating addresses then loses history, but each address still meets the
per-account limit and the delay).  Time comes in as ``now`` (monotonic seconds): the
class reads no clock, so tests need no sleeping.

Invariants / limits:
* In memory, per process.  With ``workers > 1`` each worker counts on its own, so the
  effective limit is up to ``workers`` times higher; the cluster issue should move the
  counters into the shared store.  A restart forgets them.
* Account keys are case-folded; nothing here ever sees a password.
"""
from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["AuthLimiter"]


class _Counter:
    """Failure times per key, with lockouts."""

    def __init__(self, limit: int, window: float, lockout: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.max_keys = max_keys
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def _prune(self, key: str, now: float) -> deque[float] | None:
        times = self._times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[key]
            return None
        return times

    def locked(self, key: str, now: float) -> bool:
        until = self._locked_until.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._locked_until[key]
        return False

    def count(self, key: str, now: float) -> int:
        times = self._prune(key, now)
        return len(times) if times is not None else 0

    def add(self, key: str, now: float) -> int:
        times = self._prune(key, now)
        if times is None:
            times = self._times[key] = deque()
        else:
            self._times.move_to_end(key)
        times.append(now)
        if len(times) >= self.limit:
            self._locked_until[key] = now + self.lockout
        while len(self._times) > self.max_keys:
            self._times.popitem(last=False)          # the least recently failing key
        if len(self._locked_until) > self.max_keys:
            for k in [k for k, t in self._locked_until.items() if t <= now]:
                del self._locked_until[k]
        return len(times)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)
        self._locked_until.pop(key, None)


class AuthLimiter:
    def __init__(self, *, max_per_ip: int = 10, max_per_account: int = 5,
                 window: float = 900.0, lockout: float = 900.0, base_delay: float = 1.0,
                 max_delay: float = 8.0, max_keys: int = 100_000) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._ips = _Counter(max_per_ip, window, lockout, max_keys)
        self._accounts = _Counter(max_per_account, window, lockout, max_keys)

    @classmethod
    def from_settings(cls, s) -> "AuthLimiter":
        """From a ``config.submission.SubmissionSettings``."""
        return cls(max_per_ip=s.max_auth_failures_per_ip,
                   max_per_account=s.max_auth_failures_per_account,
                   window=float(s.auth_failure_window), lockout=float(s.auth_lockout),
                   base_delay=s.auth_failure_delay, max_delay=s.auth_failure_max_delay)

    def ip_locked(self, ip: str, now: float) -> bool:
        return self._ips.locked(ip, now)

    def account_locked(self, account: str, now: float) -> bool:
        return bool(account) and self._accounts.locked(account.lower(), now)

    def record_failure(self, ip: str, account: str, now: float) -> float:
        """Count one failure; returns the delay (seconds) before answering it."""
        n = self._ips.add(ip, now)
        if account:
            self._accounts.add(account.lower(), now)
        if self.base_delay <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * (2 ** min(n - 1, 30)))

    def record_success(self, ip: str, account: str) -> None:
        """A good login clears the account's failures (not the address's)."""
        self._accounts.clear(account.lower())

    def failures(self, ip: str, now: float) -> int:
        return self._ips.count(ip, now)
