"""The message trace: "where is this message and why", in one timeline.

What: ``trace(store, query, since=None, until=None) -> Trace`` finds the SMTP transactions
and queued messages a query names (a queue id, a Message-ID, an address as sender or
recipient, or a client IP address) and merges what the store knows about them into one time-ordered list of
``Step`` values: the transaction outcome with the connection (client, HELO, TLS,
authenticated user) and every policy verdict with its reason (``trace_events``, written by
net/session.py), the routing of each recipient, every delivery attempt with the remote
host and reply (``attempts``), deferrals with the next retry time, the DSN sent for each
recipient, and each recipient's current state. Refused transactions are there too, so
"why was my mail refused" has an answer.

How: one ``query_trace`` for the events, then ``get_message`` and ``list_attempts`` for each
queue id seen (and for the DSNs those messages caused). Pure formatting (``render``) is
separate from gathering, and ``Trace.to_dict`` is the ``--json`` form.
"""
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..queue.model import RecipientState

QUEUE_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{16}$")


@dataclass(slots=True)
class Step:
    at: float
    kind: str             # accepted | rejected | refused | route | attempt | deferred |
                          # delivered | failed | dsn | state
    queue_id: str
    summary: str
    detail: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "queue_id": self.queue_id,
                "summary": self.summary, "detail": self.detail, "data": self.data}


@dataclass(slots=True)
class Trace:
    query: str
    query_kind: str
    steps: list[Step]
    queue_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "query_kind": self.query_kind,
                "queue_ids": self.queue_ids, "steps": [s.to_dict() for s in self.steps]}


def classify(query: str) -> str:
    q = query.strip()
    if QUEUE_ID.match(q.lower()):
        return "queue_id"
    try:
        ipaddress.ip_address(q)
        return "client_ip"
    except ValueError:
        pass
    if q.startswith("<") and q.endswith(">"):
        return "message_id"
    if "@" in q:
        return "address"
    return "message_id"


def _verdict_lines(data: dict) -> list[str]:
    out = []
    for v in data.get("verdicts", ()):
        line = f"policy {v.get('check')}: {v.get('action')}"
        if v.get("reason"):
            line += f" - {v['reason']}"
        if v.get("reply"):
            line += f" [{v['reply']}]"
        out.append(line)
        record = (v.get("evidence") or {}).get("record")
        if record:
            out.append(f"  {v.get('check')} record: {record}")
    return out


def _connection(e) -> str:
    d = e.data
    rdns = d.get("rdns") or {}
    name = rdns.get("name") or (f"unknown (PTR {rdns['ptr']}: {rdns.get('status')})"
                                if rdns.get("ptr") else "unknown")
    parts = [f"client {name} [{e.client_ip}]:{d.get('port', '')}",
             f"helo={d.get('helo') or '-'}", f"tls={d.get('tls') or 'no'}"]
    if d.get("auth_user"):
        parts.append(f"user={d['auth_user']}")
    parts.append(f"listener={d.get('listener', '')}")
    parts.append(f"session={e.session_id}")
    return " ".join(parts)


def _event_step(e) -> Step:
    d = e.data
    sender = f"<{e.sender}>"
    if e.kind == "accepted":
        summary = (f"accepted from {sender} for {len(e.recipients)} recipient(s), "
                   f"{d.get('size', 0)} octets")
    elif e.kind == "refused":
        summary = f"connection refused: {d.get('reply', '')}"
    else:
        summary = f"rejected at {d.get('step', '?').upper()} from {sender}"
        if d.get("reply"):
            summary += f": {d['reply']}"
    detail = [_connection(e)]
    if e.message_id:
        detail.append(f"message-id {e.message_id}")
    detail += _verdict_lines(d)
    for r in d.get("routes", ()):
        targets = ", ".join(r.get("targets", ())) or "-"
        detail.append(f"route {r.get('rcpt')}: {r.get('kind')} -> {targets}")
    for r in d.get("refused", ()):
        detail.append(f"refused {r.get('rcpt')}: {r.get('reply')} ({r.get('check')}: "
                      f"{r.get('reason')})")
    if d.get("quarantine"):
        detail.append(f"quarantined: {d['quarantine']}")
    if d.get("held"):
        detail.append(f"held in quarantine: {d['held']}")
    return Step(e.at, e.kind, e.queue_id, summary, detail,
                {"session_id": e.session_id, "client_ip": e.client_ip, "sender": e.sender,
                 "recipients": list(e.recipients), "message_id": e.message_id, **d})


async def _message_steps(store, queue_id: str, now: float) -> tuple[list[Step], list[str]]:
    """Steps of one queued message; also the queue ids of the DSNs it caused."""
    msg = await store.get_message(queue_id)
    if msg is None:
        return [], []
    steps: list[Step] = []
    attempts = await store.list_attempts(queue_id)
    for a in attempts:
        if a.ok:
            kind, what = "delivered", "delivered"
        elif a.permanent:
            kind, what = "failed", "failed permanently"
        else:
            kind, what = "deferred", "deferred"
        where = f" via {a.remote_mta}" if a.remote_mta else ""
        steps.append(Step(a.at, kind, queue_id, f"{a.address}: {what}{where}: {a.reply}",
                          data={"recipient": a.address, "ok": a.ok, "permanent": a.permanent,
                                "reply": a.reply, "remote_mta": a.remote_mta}))
    dsns: list[str] = []
    for r in msg.recipients:
        if r.dsn_queue_id:
            dsns.append(r.dsn_queue_id)
            steps.append(Step(r.final_at or r.last_attempt_at or msg.envelope.received_at,
                              "dsn", queue_id,
                              f"{r.address}: {r.dsn_sent or 'DSN'} notice sent to "
                              f"<{msg.envelope.sender}> as {r.dsn_queue_id}",
                              data={"recipient": r.address, "dsn_queue_id": r.dsn_queue_id,
                                    "action": r.dsn_sent}))
        state = r.state.value
        summary = f"{r.address}: now {state}"
        data: dict[str, Any] = {"recipient": r.address, "state": state,
                                "attempts": r.attempts, "last_reply": r.last_reply}
        if r.state is RecipientState.QUEUED:
            summary += f", next attempt {_when(r.next_attempt_at)}"
            if r.next_attempt_at > now:
                summary += f" (in {_ago(r.next_attempt_at - now)})"
            data["next_attempt_at"] = r.next_attempt_at
        if r.last_reply and r.state is not RecipientState.DELIVERED:
            summary += f"; last reply: {r.last_reply}"
        steps.append(Step(r.final_at if r.final_at is not None else now,
                          "state", queue_id, summary, data=data))
    return steps, dsns


async def trace(store, query: str, *, since: float | None = None,
                until: float | None = None, now: float | None = None) -> Trace:
    now = time.time() if now is None else now
    q = query.strip()
    kind = classify(q)
    if kind == "queue_id":
        events = await store.query_trace(queue_ids=[q.lower()], since=since, until=until)
    elif kind == "message_id":
        mid = q if q.startswith("<") else f"<{q}>"
        events = await store.query_trace(message_id=mid, since=since, until=until)
    elif kind == "client_ip":
        events = await store.query_trace(client_ip=str(ipaddress.ip_address(q)),
                                         since=since, until=until)
    else:
        events = await store.query_trace(address=q, since=since, until=until)
    steps = [_event_step(e) for e in events]
    queue_ids: list[str] = []
    for e in events:
        if e.queue_id and e.queue_id not in queue_ids:
            queue_ids.append(e.queue_id)
    if kind == "queue_id" and q.lower() not in queue_ids:
        queue_ids.append(q.lower())
    seen: set[str] = set()
    pending = list(queue_ids)
    while pending:
        qid = pending.pop(0)
        if qid in seen:
            continue
        seen.add(qid)
        more, dsns = await _message_steps(store, qid, now)
        steps += more
        for d in dsns:
            if d not in seen:
                pending.append(d)
                if d not in queue_ids:
                    queue_ids.append(d)
    order = {"accepted": 0, "rejected": 0, "refused": 0, "deferred": 1, "delivered": 1,
             "failed": 1, "dsn": 2, "state": 3}
    steps.sort(key=lambda s: (s.kind == "state", s.at, order.get(s.kind, 5)))
    return Trace(q, kind, steps, queue_ids)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def render(t: Trace) -> str:
    if not t.steps:
        return f"nothing recorded for {t.query} ({t.query_kind})"
    lines = [f"trace of {t.query} ({t.query_kind.replace('_', ' ')}): "
             f"{len(t.queue_ids)} message(s)"]
    for s in t.steps:
        stamp = _when(s.at) + f".{int((s.at % 1) * 1000):03d}"
        qid = s.queue_id or "-" * 16
        lines.append(f"{stamp}  {qid}  {s.kind:<9} {s.summary}")
        for d in s.detail:
            lines.append(f"{'':>23}  {'':>16}  {'':<9} {d}")
    return "\n".join(lines)
