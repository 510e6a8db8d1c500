"""``mailwright trace QUERY``: where a message is and why (admin/trace.py).

    mailwright trace QUEUE-ID | MESSAGE-ID | ADDRESS | CLIENT-IP [--since DURATION]
                     [--until DURATION] [--json]

QUERY is a queue id, a Message-ID (``<...>``), an address (as sender or recipient) or a
client IP address (every transaction and refused connection from it).
``--since 2h`` / ``--until 30m`` bound the time window (s, m, h, d; relative to now).
Prints a readable timeline; ``--json`` the same for scripts. Exit 0 when something was
found, 1 when nothing was recorded.
"""
from __future__ import annotations

import argparse
import re
import time
from typing import Any

__all__ = ["register", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.I)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: e.g. 90s, 30m, 2h, 7d")
    return float(m.group(1)) * _UNIT[m.group(2).lower()]


def register(cmds: Any, common: Any, as_json: Any) -> None:
    p = cmds.add_parser("trace", help="where is this message and why (timeline)",
                        parents=[common, as_json],
                        description="Trace messages by queue id, Message-ID or address.")
    p.add_argument("query", metavar="QUERY",
                   help="queue id, <message-id>, address or client IP")
    p.add_argument("--since", type=parse_duration, metavar="DURATION",
                   help="only events newer than this (e.g. 2h)")
    p.add_argument("--until", type=parse_duration, metavar="DURATION",
                   help="only events older than this (e.g. 30m)")
    p.set_defaults(func=cmd_trace)


async def cmd_trace(ctx: Any) -> int:
    from ..admin.trace import render, trace
    now = time.time()
    a = ctx.args
    t = await trace(ctx.service.store, a.query,
                    since=now - a.since if a.since is not None else None,
                    until=now - a.until if a.until is not None else None, now=now)
    if a.json:
        ctx.json(t.to_dict())
    else:
        ctx.print(render(t))
    return 0 if t.steps else 1
