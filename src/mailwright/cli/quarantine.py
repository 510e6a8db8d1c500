"""``mailwright quarantine``: messages held in quarantine by the anti-abuse checks.

    mailwright quarantine list [--limit N] [--json]
    mailwright quarantine show ID [--json]
    mailwright quarantine release ID... [--json]
    mailwright quarantine delete ID... [--json]

A message is in quarantine when a "quarantine" action (content rule, attachment type,
``quarantine_threshold``, rspamd) held it at acceptance: every recipient HELD, the reason
stored with it. ``list`` shows the reason; ``show`` the envelope, recipients and the
header section; ``release`` delivers it normally (to the INBOX) and wakes a running
server; ``delete`` removes it, nobody is told. The Junk folder ("junk" actions, DMARC
p=quarantine) is another thing: that mail was delivered.

How: a thin face over ``admin.quarantine.QuarantineOps`` (GUIDE idea 15), registered in
cli/main.py like the other command groups. It works with the server stopped (it talks to
the store). Release and delete are audited (``mailwright queue audit`` lists them; with
``[log] file`` set, also a line in that file).

Exit status: 0 done; 1 an id is not in quarantine (nothing was changed); 2 usage.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["register"]


def register(group: Callable[..., Any], sub: Callable[..., Any]) -> None:
    qg = group("quarantine", "messages held in quarantine by the anti-abuse checks")
    ls = sub(qg, "list", "list quarantined messages with the reason", cmd_quarantine_list,
             json_flag=True)
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    sub(qg, "show", "show one quarantined message: envelope, reason, header section",
        cmd_quarantine_show, json_flag=True).add_argument("queue_id", metavar="ID")
    for name, text, fn in (
            ("release", "deliver quarantined messages normally (wakes the server)",
             cmd_quarantine_release),
            ("delete", "delete quarantined messages (nobody is told)", cmd_quarantine_delete)):
        sub(qg, name, text, fn, json_flag=True).add_argument("queue_ids", nargs="+",
                                                               metavar="ID")


def _ops(ctx: Any) -> Any:
    from ..admin.quarantine import QuarantineOps
    from .sendmail import wake_server
    settings = ctx.settings
    return QuarantineOps(ctx.service.store, wake=lambda: wake_server(settings))


async def cmd_quarantine_list(ctx: Any) -> int:
    from ..admin.service import message_to_dict
    from .main import table, when
    msgs = await _ops(ctx).list(ctx.args.limit)
    if ctx.args.json:
        ctx.json([{**message_to_dict(m), "reason": m.envelope.quarantine} for m in msgs])
        return 0
    if not msgs:
        ctx.print("quarantine is empty")
        return 0
    ctx.print(table([(m.queue_id, when(m.envelope.received_at), m.envelope.size,
                      m.envelope.sender or "<>", len(m.recipients), m.envelope.quarantine)
                     for m in msgs],
                    ("QUEUE-ID", "RECEIVED", "SIZE", "SENDER", "RCPTS", "REASON")))
    ctx.print(f"-- {len(msgs)} message(s)")
    return 0


async def cmd_quarantine_show(ctx: Any) -> int:
    from ..admin.service import message_to_dict
    from .main import table, when
    m, header = await _ops(ctx).show(ctx.args.queue_id)
    text = header.decode("utf-8", "replace")
    if ctx.args.json:
        ctx.json({**message_to_dict(m), "reason": m.envelope.quarantine, "header": text})
        return 0
    e = m.envelope
    for k, v in (("queue id", m.queue_id), ("received", when(e.received_at)),
                 ("reason", e.quarantine), ("sender", e.sender or "<>"), ("size", e.size),
                 ("client", f"{e.client_name or '-'} [{e.client_ip}]:{e.client_port}"),
                 ("helo", e.helo or "-"), ("listener", e.listener)):
        ctx.print(f"{k.ljust(8)}  {v}")
    ctx.print("")
    ctx.print(table([(r.address, r.state.value) for r in m.recipients],
                    ("RECIPIENT", "STATE")))
    ctx.print("")
    ctx.print(text.replace("\r\n", "\n").rstrip("\n"))
    return 0


async def cmd_quarantine_release(ctx: Any) -> int:
    from .queue import _AuditFile
    with _AuditFile(ctx.settings):
        changed = await _ops(ctx).release(ctx.args.queue_ids)
    if ctx.args.json:
        ctx.json({"released": changed})
        return 0
    for qid, n in changed.items():
        ctx.print(f"released {qid} ({n} recipient(s))")
    return 0


async def cmd_quarantine_delete(ctx: Any) -> int:
    from .queue import _AuditFile
    with _AuditFile(ctx.settings):
        deleted = await _ops(ctx).delete(ctx.args.queue_ids)
    if ctx.args.json:
        ctx.json({"deleted": deleted})
        return 0
    for qid in deleted:
        ctx.print(f"deleted {qid}")
    return 0
