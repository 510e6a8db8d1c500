"""Verdicts: what a policy check says about one step of a transaction."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..smtp.replies import Reply


class Action(enum.Enum):
    CONTINUE = "continue"    # no objection; the next check decides
    ACCEPT = "accept"        # accept now, skip the remaining checks for this step
    REJECT = "reject"        # permanent refusal (5xx)
    TEMPFAIL = "tempfail"    # temporary refusal (4xx): the client retries


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    check: str = ""                  # which check decided
    reply: Reply | None = None       # for REJECT/TEMPFAIL (and an optional custom ACCEPT reply)
    reason: str = ""                 # for logs and the message trace; never sent to the peer
    data: dict = field(default_factory=dict)   # what the check established (e.g. targets)


CONTINUE = Verdict(Action.CONTINUE)
