"""The spam score: contributions of the anti-abuse rules, summed and judged at end of data.

What: checks that find something short of a refusal add points with ``add_points(facts,
rule, points)`` to ``SessionInfo.facts`` (client-level: DNSBL, HELO, rDNS, early talker)
or ``TransactionInfo.facts`` (message-level: sender RHSBL, links, content rules, rspamd);
``mark_spam(txn, rule)`` forces the spam flag (content rules with action "tag", rspamd's
"add header").  ``SpamScoreStage`` runs last among the anti-abuse data checks: it sums both,
fills ``MessageView.spam_score``/``spam_tags``, and applies the thresholds:

* ``reject_threshold`` (> 0): ``554 5.7.1`` (RFC 3463 §3.8 X.7.1: delivery not
  authorized, message refused);
* ``quarantine_threshold`` (> 0): held in the store's quarantine (``MessageView.hold``,
  released or deleted with ``mailwright quarantine``);
* ``junk_threshold`` (> 0): the recipient's Junk folder (``MessageView.quarantine``);
* ``tag_threshold`` or a forced flag: ``X-Spam-Flag: YES``.

Whenever any rule contributed, ``X-Spam-Status: Yes|No, score=S tagged_above=T
tests=rule(points),...`` and ``X-Spam-Score: S`` are added (SpamAssassin's field names, so
existing Sieve and client filters work).  ``spam_header_filter`` removes arriving fields of
those names: only we may set them.

Invariants: contributions are (rule, points) pairs in the order found; each rule counts once
per session/transaction (a later contribution of the same rule replaces the earlier one).
"""
from __future__ import annotations

from typing import Any

from ..message.headers import remove_fields
from ..smtp.replies import Reply
from .context import MessageView, SessionInfo, TransactionInfo
from .verdict import CONTINUE, Action, Verdict

__all__ = ["add_points", "mark_spam", "contributions", "SpamScoreStage", "spam_header_filter",
           "SPAM_REJECTED", "SCORE_FACT"]

SCORE_FACT = "antiabuse.score"
FLAG_FACT = "antiabuse.flag"

#: RFC 3463 X.7.1; RFC 5321 §4.2.5: 554 refuses the transaction after the final dot.
SPAM_REJECTED = Reply(554, "5.7.1", "Message rejected as spam")

_SPAM_FIELDS = frozenset({b"x-spam-flag", b"x-spam-status", b"x-spam-score"})


def add_points(facts: dict[str, Any], rule: str, points: float) -> None:
    scores: dict[str, float] = facts.setdefault(SCORE_FACT, {})
    scores[rule] = float(points)


def mark_spam(facts: dict[str, Any], rule: str) -> None:
    facts.setdefault(FLAG_FACT, []).append(rule)


def contributions(session: SessionInfo, txn: TransactionInfo) -> dict[str, float]:
    out: dict[str, float] = dict(session.facts.get(SCORE_FACT, {}))
    out.update(txn.facts.get(SCORE_FACT, {}))
    return out


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def spam_header_filter(header: bytes) -> bytes:
    """The arriving header section without X-Spam-Flag/-Status/-Score."""
    if b"x-spam-" not in header.lower():
        return header                           # most mail: nothing to remove
    out, _ = remove_fields(header, lambda name, raw: name in _SPAM_FIELDS)
    return out


class SpamScoreStage:
    name = "spamscore"

    def __init__(self, *, tag: float, quarantine: float, reject: float,
                 junk: float = 0.0) -> None:
        self.tag = tag
        self.quarantine_at = quarantine
        self.junk_at = junk
        self.reject = reject

    def check_data(self, session: SessionInfo, txn: TransactionInfo,
                   message: MessageView) -> Verdict:
        scores = contributions(session, txn)
        forced = list(txn.facts.get(FLAG_FACT, ()))
        if not scores and not forced:
            return CONTINUE
        total = round(sum(scores.values()), 3)
        tests = [f"{rule}({_fmt(p)})" for rule, p in scores.items()]
        tests += [rule for rule in forced if rule not in scores]
        message.spam_score = total
        message.spam_tags = list(scores) + [r for r in forced if r not in scores]
        why = f"score {_fmt(total)} tests={','.join(tests) or 'none'}"
        if self.reject > 0 and total >= self.reject:
            return Verdict(Action.REJECT, self.name, SPAM_REJECTED,
                           f"{why} >= reject threshold {_fmt(self.reject)}")
        is_spam = bool(forced) or total >= self.tag
        if is_spam:
            message.add_header(b"X-Spam-Flag: YES\r\n")
        message.add_header(f"X-Spam-Score: {_fmt(total)}\r\n".encode())
        message.add_header(
            (f"X-Spam-Status: {'Yes' if is_spam else 'No'}, score={_fmt(total)} "
             f"tagged_above={_fmt(self.tag)}\r\n tests={','.join(tests) or 'none'}\r\n")
            .encode("utf-8", "replace"))
        if self.quarantine_at > 0 and total >= self.quarantine_at:
            message.hold(f"spam score {_fmt(total)}")
            return Verdict(Action.CONTINUE, self.name, reason=f"{why}: quarantined (held)")
        if self.junk_at > 0 and total >= self.junk_at:
            message.quarantine(f"spam score {_fmt(total)}")
            return Verdict(Action.CONTINUE, self.name, reason=f"{why}: to Junk")
        return Verdict(Action.CONTINUE, self.name, reason=why + (" (tagged)" if is_spam else ""))
