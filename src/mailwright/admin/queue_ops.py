"""Operator queue control: select queued messages by filters and act on them, audited.

What: ``parse_duration`` ("30m", "2h", "3d"), ``make_filter`` (operator input →
``store.base.QueueFilter``, validated) and ``QueueOps(store, user=..., wake=...)``, which
``AdminService.queue_ops`` hands to the CLI (and later the web page):

* ``select(flt, limit)`` and ``show(queue_id)`` (message + attempt history);
* ``act(action, flt, dry_run=..., everything=...)`` for ``hold`` (queued → held),
  ``release`` (held → queued, due now), ``retry`` (queued recipients due now), ``flush``
  (every queued recipient due now), ``delete`` (gone, no DSN) and ``bounce`` (every
  remaining recipient fails with ``550 5.0.0 Message deleted by the operator``; the
  sender gets a DSN through the ordinary ``dsn_pending`` path, NOTIFY respected, never to
  the null sender; the message then completes normally);
* ``audit(limit)``: the audit rows.

How: selection rules are those of ``QueueFilter`` (store/base.py): filters pick messages;
hold/release/retry touch the picked messages' recipients that match the recipient
conditions, delete and bounce take whole messages. Each action is ONE store transaction,
which also writes the audit row (who: the OS user; when; what; which ids). The same line
goes to the ``mailwright.audit`` logger (the CLI points it at the configured log file).
After release/retry/flush/bounce the running server is woken (``wake``: the CLI passes
``cli.sendmail.wake_server``) so it acts at once; with the server stopped everything still
works, through the store, and takes effect when it starts.

Invariants:
* Nothing is lost: a bounce never drops a recipient without the DSN its NOTIFY asks for,
  and a message being delivered at that moment (live lease) is skipped and reported, so
  a late result cannot contradict the DSN. A deleted message cannot come back: the
  manager's late ``record_results`` finds no message (``NotFoundError``) and writes
  nothing.
* An action with no filter and no id needs ``everything=True`` (the CLI's ``--all``);
  ``flush`` is the only action on everything by definition.
* ``dry_run`` computes what would change with the same rules and changes nothing.
"""
from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..message import dsn as dsnlib
from ..queue.model import QueuedMessage, QueuedRecipient, RecipientState
from ..store.base import AttemptRecord, AuditRecord, NotFoundError, QueueFilter, Store
from .service import InvalidInput, NotFound, normalise_domain, parse_state

__all__ = ["ACTIONS", "BOUNCE_REPLY", "Outcome", "QueueOps", "make_filter", "parse_duration",
           "describe_filter"]

audit_log = logging.getLogger("mailwright.audit")

ACTIONS = ("hold", "release", "retry", "flush", "delete", "bounce")
WAKE_AFTER = frozenset({"release", "retry", "flush", "bounce"})
BOUNCE_REPLY = "550 5.0.0 Message deleted by the operator"
BOUNCE_STATUS = "5.0.0"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from "90", "45s", "30m", "2h", "3d", "1w"."""
    m = _DURATION.match(text or "")
    if not m:
        raise InvalidInput(f"invalid duration {text!r}: expected a number with s, m, h, d "
                           "or w (e.g. 30m, 2h, 3d)")
    return float(m.group(1)) * _UNIT[m.group(2).lower()]


def _address_or_domain(text: str, what: str) -> str:
    t = text.strip().lower()
    if t.startswith("@"):
        return "@" + normalise_domain(t[1:])
    local, at, domain = t.rpartition("@")
    if not at or not local:
        raise InvalidInput(f"invalid {what} {text!r}: expected local@domain or @domain")
    return f"{local}@{normalise_domain(domain)}"


def make_filter(*, ids: Sequence[str] = (), state: str | RecipientState | None = None,
                sender: str | None = None, recipient: str | None = None,
                domain: str | None = None, older_than: str | float | None = None,
                newer_than: str | float | None = None, error: str | None = None,
                now: float | None = None) -> QueueFilter:
    """A validated ``QueueFilter``. Durations are strings ("2h") or seconds; sender "<>"
    or "" means the null sender."""
    now = time.time() if now is None else now

    def age(v: str | float | None) -> float | None:
        if v is None:
            return None
        return now - (parse_duration(v) if isinstance(v, str) else float(v))

    if sender is not None:
        s = sender.strip()
        sender = "" if s in ("", "<>") else _address_or_domain(s, "sender")
    if error is not None and not error.strip():
        raise InvalidInput("--error needs some text to look for")
    return QueueFilter(
        queue_ids=tuple(dict.fromkeys(i.strip() for i in ids if i.strip())),
        state=parse_state(state), sender=sender,
        recipient=_address_or_domain(recipient, "recipient") if recipient else None,
        domain=normalise_domain(domain) if domain else None,
        received_before=age(older_than), received_after=age(newer_than), error=error)


def describe_filter(flt: QueueFilter) -> str:
    """The selection in words, for the audit line."""
    def ts(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
    parts = []
    if flt.queue_ids:
        parts.append("ids=" + ",".join(flt.queue_ids))
    if flt.state is not None:
        parts.append(f"state={flt.state.value}")
    if flt.sender is not None:
        parts.append(f"sender={flt.sender or '<>'}")
    for name in ("recipient", "domain"):
        if getattr(flt, name) is not None:
            parts.append(f"{name}={getattr(flt, name)}")
    if flt.received_before is not None:
        parts.append(f"received<={ts(flt.received_before)}")
    if flt.received_after is not None:
        parts.append(f"received>={ts(flt.received_after)}")
    if flt.error is not None:
        parts.append(f"error~{flt.error!r}")
    return " ".join(parts) or "all"


def _selects_everything(flt: QueueFilter) -> bool:
    return flt == QueueFilter()


@dataclass(slots=True)
class Outcome:
    """What an action matched and changed (``changed``: queue id → recipients, or 1 per
    deleted message; ``skipped``: bounces refused because a delivery was in progress)."""
    action: str
    dry_run: bool
    matched: list[str]
    changed: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    woke: bool | None = None        # None: no wake needed/attempted

    @property
    def messages(self) -> list[str]:
        return [q for q, n in self.changed.items() if n]

    @property
    def recipients(self) -> int:
        return sum(self.changed.values())

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "dry_run": self.dry_run, "matched": self.matched,
                "changed": self.changed, "messages": self.messages,
                "recipients": self.recipients, "skipped": self.skipped, "woke": self.woke}


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:          # no name for this uid (containers)
        return f"uid:{os.getuid()}"


class AuditedOps:
    """Operator actions over one ``Store`` on behalf of ``user`` (default: the OS user),
    waking the running server with ``wake`` after a change (queue, quarantine)."""

    def __init__(self, store: Store, *, user: str | None = None,
                 wake: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.user = user or _os_user()
        self.wake = wake
        self.clock = clock

    @staticmethod
    def _check_limit(limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise InvalidInput(f"invalid limit {limit}: expected 1 or more")


class QueueOps(AuditedOps):
    """Queue selection and audited operator actions over one ``Store``."""

    async def select(self, flt: QueueFilter, limit: int | None = 1000) -> list[QueuedMessage]:
        self._check_limit(limit)
        return await self.store.queue_select(flt, limit)

    async def show(self, queue_id: str) -> tuple[QueuedMessage, list[AttemptRecord]]:
        msg = await self.store.get_message(queue_id.strip())
        if msg is None:
            raise NotFound(f"message {queue_id} is not in the queue")
        return msg, await self.store.list_attempts(msg.queue_id)

    async def body(self, queue_id: str) -> bytes:
        """The stored message as it will be delivered (the fields added at intake
        included), wherever the store keeps it: a file, a database row (``postcat -q``)."""
        msg = await self.store.get_message(queue_id.strip())
        if msg is None:
            raise NotFound(f"message {queue_id} is not in the queue")
        try:
            return (await self.store.fetch_body(msg)).read()
        except (NotFoundError, FileNotFoundError):
            raise NotFound(f"message {msg.queue_id} has no body any more "
                           "(delivered or bounced; its history is kept)") from None

    async def audit(self, limit: int = 100) -> list[AuditRecord]:
        return await self.store.list_audit(limit)

    async def act(self, action: str, flt: QueueFilter, *, dry_run: bool = False,
                  everything: bool = False) -> Outcome:
        if action not in ACTIONS:
            raise InvalidInput(f"unknown queue action {action!r}")
        if action == "flush":
            flt = QueueFilter()
        elif _selects_everything(flt) and not everything:
            raise InvalidInput(f"{action}: no message ids and no filter: this would act on "
                               "every queued message; add --all to mean it")
        if flt.queue_ids:
            found = {m.queue_id for m in await self.store.queue_select(
                QueueFilter(queue_ids=flt.queue_ids), None)}
            missing = [q for q in flt.queue_ids if q not in found]
            if missing:
                raise NotFound(f"not in the queue: {', '.join(missing)}")
        now = self.clock()
        if dry_run:
            return await self._preview(action, flt)
        record = AuditRecord(at=now, user=self.user, action=action,
                             detail=describe_filter(flt))
        store = self.store
        skipped: list[str] = []
        if action == "hold":
            changed = await store.queue_hold(flt, audit=record)
        elif action == "release":
            changed = await store.queue_release(flt, now, audit=record)
        elif action in ("retry", "flush"):
            changed = await store.queue_retry(flt, now, audit=record)
        elif action == "delete":
            changed = dict.fromkeys(await store.queue_delete(flt, audit=record), 1)
        else:
            msgs = await store.queue_select(flt, None)
            failures = {m.queue_id: {r.id: self._owed(m, r) for r in m.recipients
                                     if r.state in _BOUNCEABLE} for m in msgs}
            done, skipped = await store.queue_bounce(failures, BOUNCE_REPLY, BOUNCE_STATUS,
                                                     now, audit=record)
            changed = {m.queue_id: done.get(m.queue_id, 0) for m in msgs}
        out = Outcome(action, False, list(changed), changed, skipped)
        audit_log.info("operator=%s action=%s selection=%s matched=%d changed=%d ids=%s%s",
                       self.user, action, record.detail, len(out.matched),
                       out.recipients, ",".join(out.messages) or "-",
                       f" skipped={','.join(skipped)}" if skipped else "")
        if action in WAKE_AFTER and out.messages and self.wake is not None:
            out.woke = self.wake()
        return out

    @staticmethod
    def _owed(msg: QueuedMessage, r: QueuedRecipient) -> str | None:
        """The DSN a bounced recipient is owed: never to the null sender; NOTIFY rules."""
        if not msg.envelope.sender:
            return None
        return dsnlib.owed_action(r.notify, ok=False, permanent=True,
                                  delay_already=r.dsn_delayed)

    async def _preview(self, action: str, flt: QueueFilter) -> Outcome:
        msgs = await self.store.queue_select(flt, None)
        want = {"hold": (RecipientState.QUEUED,), "release": (RecipientState.HELD,),
                "retry": (RecipientState.QUEUED,), "flush": (RecipientState.QUEUED,)}
        changed: dict[str, int] = {}
        for m in msgs:
            if action == "delete":
                changed[m.queue_id] = 1
            elif action == "bounce":
                changed[m.queue_id] = sum(r.state in _BOUNCEABLE for r in m.recipients)
            else:
                changed[m.queue_id] = sum(
                    r.state in want[action] and flt.recipient_matches(r.address, r.last_reply)
                    for r in m.recipients)
        return Outcome(action, True, list(changed), changed)


_BOUNCEABLE = (RecipientState.QUEUED, RecipientState.HELD)


def attempt_to_dict(a: AttemptRecord) -> dict[str, Any]:
    return dataclasses.asdict(a)


def audit_to_dict(a: AuditRecord) -> dict[str, Any]:
    d = dataclasses.asdict(a)
    d["ids"] = list(a.ids)
    return d
