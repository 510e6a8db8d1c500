"""``mailwright dmarc report [--dry-run] [--json]``: DMARC aggregate reports now.

Builds the aggregate reports (RFC 7489 §7.2) of every ended period from the results the
server recorded (``[auth] dmarc_reports = true``) and queues them, exactly as the server
does once per ``dmarc_report_interval``. ``--dry-run`` prints what would be sent (period,
counts, destinations, destinations skipped and why, and the XML) and changes nothing.
"""
from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["register"]


def register(group: Callable[..., Any], sub: Callable[..., Any]) -> None:
    dm = group("dmarc", "DMARC aggregate reports")
    r = sub(dm, "report", "build and queue the aggregate reports of ended periods",
            cmd_dmarc_report, json_flag=True)
    r.add_argument("--dry-run", action="store_true",
                   help="print what would be sent; queue nothing, keep the data")


async def cmd_dmarc_report(ctx: Any) -> int:
    from ..app import dmarc_report_identity, shared_resolver
    from .sendmail import wake_server
    from ..mailauth.dmarc_reporting import plan_reports, queue_reports
    s = ctx.settings
    store = ctx.service.store
    ident = dmarc_report_identity(s)
    plans = await plan_reports(store, shared_resolver(s), **ident,
                               interval=s.auth.dmarc_report_interval)
    queued: list[str] = []
    if not ctx.args.dry_run:
        queued = await queue_reports(store, plans, ident["org_email"])
        if queued:
            wake_server(s)
    if ctx.args.json:
        ctx.json({"dry_run": ctx.args.dry_run, "reports": [p.to_dict() for p in plans],
                  "queued": queued})
        return 0
    if not plans:
        ctx.print("no DMARC results waiting for a report")
        return 0
    for p in plans:
        span = (time.strftime("%Y-%m-%d %H:%M", time.gmtime(p.begin)) + " - "
                + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(p.end)))
        ctx.print(f"{p.policy_domain}: report {p.report_id}, {span}, {p.messages_counted} "
                  f"message(s) in {p.rows} row(s)")
        for address, message in p.sends:
            verb = "would send" if ctx.args.dry_run else "queued"
            ctx.print(f"  {verb} to {address} ({len(message)} octets)")
        for uri, reason in p.skipped:
            ctx.print(f"  skipped {uri}: {reason}")
        if ctx.args.dry_run:
            ctx.print(p.xml.decode("utf-8"))
    return 0

