"""Typed settings for the message trace (issue 5): the ``[trace]`` table.

What: whether SMTP transactions are recorded for ``mailwright trace`` and how long the
records are kept. Delivery attempts are kept with the queue (they are part of a message's
history) and go when the message's rows are pruned; this bounds the transaction records,
refused ones included, which would otherwise grow without limit.
"""
from __future__ import annotations

from dataclasses import dataclass

from .settings import _bool, _key, _pos_int

__all__ = ["TraceSettings"]


@dataclass(frozen=True, slots=True)
class TraceSettings:
    enabled: bool = _key(
        True, conv=_bool,
        doc="Record every SMTP transaction (accepted or refused, with the policy verdicts) "
            "for `mailwright trace`.")
    retention_days: int = _key(
        30, conv=_pos_int, doc="Days transaction records are kept before they are pruned.")
