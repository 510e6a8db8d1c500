"""``mailwright queue``: list, inspect and control the mail queue (operator actions audited).

    mailwright queue list [FILTERS] [--limit N] [--json]
    mailwright queue show ID [--json | --body]
    mailwright queue hold|release|retry [ID...] [FILTERS] [--all] [--dry-run] [--json]
    mailwright queue delete [ID...] [--bounce] [FILTERS] [--all] [--dry-run] [--json]
    mailwright queue flush [--dry-run] [--json]
    mailwright queue audit [--limit N] [--json]

FILTERS: ``--state S``, ``--sender ADDR|@DOMAIN|<>``, ``--recipient ADDR|@DOMAIN``,
``--domain DOMAIN`` (recipient domain), ``--older-than D``, ``--newer-than D`` (D like
30m, 2h, 3d), ``--error TEXT`` (in the last reply). Without ``--state`` only messages still
in the queue are selected.

How: a thin face over ``AdminService.queue_ops`` (admin/queue_ops.py; GUIDE idea 15). It
works with the server stopped (it talks to the store); after release, retry, flush and
bounce it pokes a running server through its wake socket, as ``mailwright sendmail`` does.
Every action is recorded in the store's audit table and, when ``[log] file`` is set, as a
line in that log file.

Exit status: 0 done; 1 an id is not in the queue, or some messages were skipped (a bounce
while they were being delivered: run it again); 2 usage (a filterless action without
``--all``, a bad duration or address).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Callable

__all__ = ["register"]


def register(group: Callable[..., Any], sub: Callable[..., Any]) -> None:
    qu = group("queue", "the mail queue")
    ls = sub(qu, "list", "list queued messages (filters: see --help)", cmd_queue_list,
             json_flag=True)
    _filters(ls)
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    sh = sub(qu, "show", "show one message, its recipients and its delivery attempts",
             cmd_queue_show, json_flag=True)
    sh.add_argument("queue_id", metavar="ID")
    sh.add_argument("--body", action="store_true",
                    help="write the stored message itself to standard output")
    helps = {
        "hold": "hold queued recipients (no delivery until released)",
        "release": "release held recipients for delivery now",
        "retry": "make queued recipients due now",
        "delete": "delete messages (no DSN; with --bounce the sender gets one)",
    }
    for name, text in helps.items():
        p = sub(qu, name, text, _action(name), json_flag=True)
        p.add_argument("queue_ids", nargs="*", metavar="ID")
        _filters(p)
        p.add_argument("--all", action="store_true",
                       help="allow acting without ids or filters (every queued message)")
        p.add_argument("--dry-run", action="store_true", help="show what would change")
        if name == "delete":
            p.add_argument("--bounce", action="store_true",
                           help="fail the remaining recipients (550 5.0.0) so the sender "
                                "gets a DSN (NOTIFY respected); the message then completes")
    fl = sub(qu, "flush", "make every queued recipient due now and wake the server",
             _action("flush"), json_flag=True)
    fl.add_argument("--dry-run", action="store_true", help="show what would change")
    au = sub(qu, "audit", "list the operator actions on the queue", cmd_queue_audit,
             json_flag=True)
    au.add_argument("--limit", type=int, default=100, help="the newest N (100)")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", choices=["queued", "delivered", "failed", "held"],
                   help="messages with a recipient in this state (default: still queued)")
    p.add_argument("--sender", metavar="ADDR", help="sender address, @domain, or <>")
    p.add_argument("--recipient", metavar="ADDR", help="recipient address or @domain")
    p.add_argument("--domain", help="recipient domain")
    p.add_argument("--older-than", metavar="AGE", help="received at least AGE ago (30m, 2h, 3d)")
    p.add_argument("--newer-than", metavar="AGE", help="received at most AGE ago")
    p.add_argument("--error", metavar="TEXT", help="TEXT in the recipient's last reply")


# --------------------------------------------------------------------------- helpers

def _filter(ctx: Any, ids: list[str] | tuple[str, ...] = ()) -> Any:
    from ..admin.queue_ops import make_filter
    a = ctx.args
    return make_filter(ids=ids, state=getattr(a, "state", None),
                       sender=getattr(a, "sender", None),
                       recipient=getattr(a, "recipient", None),
                       domain=getattr(a, "domain", None),
                       older_than=getattr(a, "older_than", None),
                       newer_than=getattr(a, "newer_than", None),
                       error=getattr(a, "error", None))


def _ops(ctx: Any) -> Any:
    from .sendmail import wake_server
    settings = ctx.settings
    return ctx.service.queue_ops(wake=lambda: wake_server(settings))


class _AuditFile:
    """Send ``mailwright.audit`` lines to the configured log file while a command runs."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.handler: logging.Handler | None = None

    def __enter__(self) -> "_AuditFile":
        path = self.settings.paths.log_file
        if path is not None:
            from ..logs import JsonFormatter
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.handler = logging.FileHandler(path)
            except OSError:
                return self           # the store row is the record; the log is a copy
            self.handler.setFormatter(
                JsonFormatter() if self.settings.log.format == "json" else logging.Formatter(
                    "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
            logger = logging.getLogger("mailwright.audit")
            logger.addHandler(self.handler)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handler is not None:
            logging.getLogger("mailwright.audit").removeHandler(self.handler)
            self.handler.close()


def _states(msg: Any) -> str:
    counts: dict[str, int] = {}
    for r in msg.recipients:
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def _last_reply(msg: Any, width: int = 60) -> str:
    replies = [r.last_reply for r in msg.recipients if r.last_reply and r.state.value
               in ("queued", "held", "failed")]
    text = replies[0] if replies else "-"
    return text if len(text) <= width else text[:width - 3] + "..."


# --------------------------------------------------------------------------- commands

async def cmd_queue_list(ctx: Any) -> int:
    from ..admin.service import message_to_dict
    from .main import table, when
    msgs = await _ops(ctx).select(_filter(ctx), ctx.args.limit)
    if ctx.args.json:
        ctx.json([message_to_dict(m) for m in msgs])
        return 0
    if not msgs:
        a = ctx.args
        filtered = any(getattr(a, k) is not None for k in (
            "state", "sender", "recipient", "domain", "older_than", "newer_than", "error"))
        ctx.print("no matching messages" if filtered else "queue is empty")
        return 0
    rows = [(m.queue_id, when(m.envelope.received_at), m.envelope.size,
             m.envelope.sender or "<>", len(m.recipients), _states(m), _last_reply(m))
            for m in msgs]
    ctx.print(table(rows, ("QUEUE-ID", "RECEIVED", "SIZE", "SENDER", "RCPTS", "STATES",
                           "LAST REPLY")))
    ctx.print(f"-- {len(msgs)} message(s)")
    return 0


async def cmd_queue_show(ctx: Any) -> int:
    from ..admin.queue_ops import attempt_to_dict
    from ..admin.service import message_to_dict
    from .main import table, when
    if ctx.args.body:
        data = await _ops(ctx).body(ctx.args.queue_id)
        ctx.out.flush()
        raw = getattr(ctx.out, "buffer", None)
        if raw is not None:
            raw.write(data)                 # the octets as stored: CRLF, 8-bit
            raw.flush()
        else:                               # a text stream (tests): one char per octet
            ctx.out.write(data.decode("latin-1"))
        return 0
    m, attempts = await _ops(ctx).show(ctx.args.queue_id)
    if ctx.args.json:
        ctx.json({**message_to_dict(m), "attempts": [attempt_to_dict(a) for a in attempts]})
        return 0
    e = m.envelope
    info = [("queue id", m.queue_id), ("received", when(e.received_at)),
            ("sender", e.sender or "<>"), ("size", e.size),
            ("client", f"{e.client_name or '-'} [{e.client_ip}]:{e.client_port}"),
            ("helo", e.helo or "-"), ("protocol", e.protocol), ("tls", e.tls or "-"),
            ("auth user", e.auth_user or "-"), ("listener", e.listener),
            ("body", e.body_type + (" SMTPUTF8" if e.smtputf8 else "")),
            ("attempts", len(attempts))]
    if e.quarantine:
        info.append(("quarantine", f"{e.quarantine} (mailwright quarantine release|delete)"))
    width = max(len(k) for k, _ in info)
    for k, v in info:
        ctx.print(f"{k.ljust(width)}  {v}")
    ctx.print("")
    ctx.print(table([(r.address, r.state.value, r.attempts,
                      when(r.next_attempt_at) if r.state.value == "queued" else "-",
                      r.dsn_pending or r.dsn_sent or "-", r.last_reply or "-")
                     for r in m.recipients],
                    ("RECIPIENT", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "DSN", "LAST REPLY")))
    if attempts:
        ctx.print("")
        ctx.print(table([(when(a.at), a.address,
                          "ok" if a.ok else ("failed" if a.permanent else "deferred"),
                          a.remote_mta or "-", a.reply or "-") for a in attempts],
                        ("AT", "RECIPIENT", "RESULT", "REMOTE MTA", "REPLY")))
    return 0


_VERBS = {"hold": "held", "release": "released", "retry": "made due now",
          "flush": "made due now", "delete": "deleted", "bounce": "bounced"}


def _action(name: str) -> Callable[[Any], Any]:
    async def handler(ctx: Any) -> int:
        a = ctx.args
        action = "bounce" if name == "delete" and getattr(a, "bounce", False) else name
        ids = list(getattr(a, "queue_ids", None) or ())
        flt = _filter(ctx, ids)
        with _AuditFile(ctx.settings):
            out = await _ops(ctx).act(action, flt, dry_run=a.dry_run,
                                      everything=getattr(a, "all", False))
        if a.json:
            ctx.json(out.to_dict())
        else:
            _report(ctx, action, out, by_id=bool(ids) and not _has_filters(a))
        if out.skipped:
            from .main import PROG
            print(f"{PROG}: {len(out.skipped)} message(s) were being delivered and were "
                  f"not bounced; run the command again: {' '.join(out.skipped)}",
                  file=ctx.err)
            return 1
        return 0
    handler.__name__ = f"cmd_queue_{name}"
    return handler


def _has_filters(a: argparse.Namespace) -> bool:
    return any(getattr(a, k, None) is not None for k in (
        "state", "sender", "recipient", "domain", "older_than", "newer_than", "error"))


def _report(ctx: Any, action: str, out: Any, by_id: bool) -> None:
    verb = _VERBS[action]
    unit = "message(s)" if action == "delete" else "recipient(s)"
    if out.dry_run:
        ctx.print(f"dry run: {len(out.matched)} message(s) match; would have {verb} "
                  f"{out.recipients} {unit} of {len(out.messages)} message(s)")
        for qid in out.messages:
            ctx.print(f"  {qid}  {out.changed[qid]}")
        return
    if by_id:
        for qid in out.matched:
            ctx.print(f"deleted {qid}" if action == "delete"
                      else f"{verb} {out.changed[qid]} recipient(s) of {qid}")
    else:
        ctx.print(f"matched {len(out.matched)} message(s); {verb} {out.recipients} {unit}"
                  + ("" if action == "delete" else f" of {len(out.messages)} message(s)"))
    if action == "bounce" and out.recipients:
        ctx.print("DSNs to the senders are sent by the queue (NOTIFY respected)")
    if out.woke is False:
        ctx.print("note: no running server answered its wake socket; this takes effect "
                  "when the server runs")


async def cmd_queue_audit(ctx: Any) -> int:
    from ..admin.queue_ops import audit_to_dict
    from .main import table, when
    rows = await _ops(ctx).audit(ctx.args.limit)
    if ctx.args.json:
        ctx.json([audit_to_dict(r) for r in rows])
    elif not rows:
        ctx.print("no operator actions recorded")
    else:
        ctx.print(table([(when(r.at), r.user, r.action, len(r.ids), r.detail,
                          " ".join(r.ids[:3]) + (" ..." if len(r.ids) > 3 else ""))
                         for r in rows], ("AT", "USER", "ACTION", "MSGS", "SELECTION", "IDS")))
    return 0
