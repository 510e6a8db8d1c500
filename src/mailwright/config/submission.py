"""Typed settings for mail submission (RFC 6409): the ``[submission]`` table.

What: ``SubmissionSettings`` (frozen dataclass) holds what the submission listeners
(roles ``submission`` on 587 and ``submissions`` on 465, RFC 8314) need: the SASL
mechanisms offered, whether AUTH needs TLS, the authentication-failure limits and delay,
whether the client address is hidden in the Received field, and the sender policy.

How: the same ``_key`` schema as config/settings.py (each field carries its converter and a
one-line meaning); settings.py registers the class as the ``[submission]`` section, so the
generic walker builds and checks it and docs/configuration.md documents every key.

Invariants:
* A built ``SubmissionSettings`` is fully valid: mechanisms are known names, upper-case and
  unique; delays are finite and ``auth_failure_max_delay >= auth_failure_delay``
  (checked by ``check``); domain lists are lower-case A-labels.
* ``sender_policy_for(login)`` is the one place that decides which policy applies: the
  policy of the *login's* domain (``sender_any_domains`` / ``sender_strict_domains``),
  else ``sender_policy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .settings import _bool, _Bad, _choice, _domain_list, _key, _pos_int, _show

__all__ = ["SubmissionSettings", "SASL_MECHANISMS"]

SASL_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


def _mechanisms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"expected an array of SASL mechanism names, got {_show(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        name = item.upper() if isinstance(item, str) else None
        if name not in SASL_MECHANISMS:
            raise _Bad(f"item {i}: expected one of {', '.join(SASL_MECHANISMS)}, "
                       f"got {_show(item)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0 or value > 3600:
        raise _Bad(f"expected a number of seconds between 0 and 3600, got {_show(value)}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SubmissionSettings:
    mechanisms: tuple[str, ...] = _key(
        conv=_mechanisms, factory=lambda: SASL_MECHANISMS,
        doc="SASL mechanisms offered on submission listeners, in EHLO order.")
    require_tls: bool = _key(
        True, conv=_bool,
        doc="Offer and accept AUTH only over TLS (STARTTLS or implicit TLS).")
    max_auth_failures_per_ip: int = _key(
        10, conv=_pos_int,
        doc="Failed authentications from one client address within auth_failure_window "
            "before that address is locked out (421 4.7.0).")
    max_auth_failures_per_account: int = _key(
        5, conv=_pos_int,
        doc="Failed authentications for one account within auth_failure_window before "
            "the account is locked out (454 4.7.0).")
    auth_failure_window: int = _key(
        900, conv=_pos_int, doc="Seconds over which failed authentications are counted.")
    auth_lockout: int = _key(
        900, conv=_pos_int, doc="Seconds a locked-out address or account stays locked.")
    auth_failure_delay: float = _key(
        1.0, conv=_seconds,
        doc="Seconds before answering the first failed authentication; doubles with each "
            "further failure from the same address.")
    auth_failure_max_delay: float = _key(
        8.0, conv=_seconds, doc="Upper bound on the failed-authentication delay, in seconds.")
    hide_client_ip: bool = _key(
        False, conv=_bool,
        doc="Leave the client's IP address and HELO name out of the Received field and the "
            "stored envelope of submitted mail.")
    sender_policy: str = _key(
        "strict", conv=_choice("strict", "any"),
        doc="'strict': MAIL FROM and header From must be addresses the user owns or was "
            "granted; 'any': any address. Default for every domain.")
    sender_any_domains: tuple[str, ...] = _key(
        conv=_domain_list, factory=tuple,
        doc="Domains whose users may use any sender address (policy 'any').")
    sender_strict_domains: tuple[str, ...] = _key(
        conv=_domain_list, factory=tuple,
        doc="Domains whose users are held to policy 'strict' whatever sender_policy says.")

    def check(self) -> list[tuple[str, str]]:
        """Cross-key problems as (key, problem)."""
        problems = []
        if self.auth_failure_max_delay < self.auth_failure_delay:
            problems.append(("auth_failure_max_delay",
                             f"must be >= auth_failure_delay ({self.auth_failure_delay}), "
                             f"got {self.auth_failure_max_delay}"))
        both = set(self.sender_any_domains) & set(self.sender_strict_domains)
        if both:
            problems.append(("sender_strict_domains",
                             f"{', '.join(sorted(both))} also in sender_any_domains"))
        return problems

    def sender_policy_for(self, login: str) -> str:
        """'strict' or 'any' for the authenticated ``login`` (by its domain)."""
        domain = login.rpartition("@")[2].lower()
        if domain in self.sender_strict_domains:
            return "strict"
        if domain in self.sender_any_domains:
            return "any"
        return self.sender_policy
