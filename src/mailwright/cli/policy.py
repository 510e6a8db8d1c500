"""``mailwright policy test``: would the live policy accept this message from this client?

    mailwright policy test --ip IP --helo NAME --from SENDER --to RCPT [--to RCPT...]
                           [--listener NAME|ROLE] [--auth-user LOGIN] MESSAGE_FILE [--json]

Replays the saved message step by step (connect, helo, mail, each rcpt, data) through the
checks the server would run with this configuration (admin/policy_test.py) and prints every
verdict and the header fields the data checks would add. Nothing is delivered or queued.
``MESSAGE_FILE`` may be ``-`` for standard input. Exit status: 0 accepted for every
recipient; 1 refused, deferred, or accepted for only some recipients; 2 usage.
"""
from __future__ import annotations

from typing import Any

__all__ = ["register"]


def register(group: Any, sub: Any) -> None:
    po = group("policy", "the policy checks")
    t = sub(po, "test", "replay a saved message through the live policy checks",
            cmd_policy_test, json_flag=True)
    t.add_argument("--ip", required=True, help="the client's IP address")
    t.add_argument("--helo", required=True, help="the HELO/EHLO name it gives")
    t.add_argument("--from", dest="sender", required=True, metavar="SENDER",
                   help="envelope sender (MAIL FROM); '' or <> for the null sender")
    t.add_argument("--to", dest="recipients", required=True, action="append",
                   metavar="RCPT", help="envelope recipient (repeat for several)")
    t.add_argument("--listener", metavar="NAME|ROLE",
                   help="listener name or role (default: the first 'mx' listener)")
    t.add_argument("--auth-user", default="", metavar="LOGIN",
                   help="as if the client had authenticated as LOGIN (submission)")
    t.add_argument("message", metavar="MESSAGE_FILE", help="the message (RFC 5322), or -")


def _read(ctx: Any, path: str) -> bytes:
    if path == "-":
        buf = getattr(ctx.stdin, "buffer", None)
        return buf.read() if buf is not None else ctx.stdin.read().encode("utf-8")
    with open(path, "rb") as f:
        return f.read()


async def cmd_policy_test(ctx: Any) -> int:
    import ipaddress
    from ..admin.policy_test import replay
    from .main import UsageError
    a = ctx.args
    try:
        ipaddress.ip_address(a.ip)
    except ValueError:
        raise UsageError(f"--ip {a.ip!r} is not an IP address") from None
    data = _read(ctx, a.message)
    result = await replay(ctx.settings, ctx.service.store, ip=a.ip, helo=a.helo,
                          sender=a.sender, recipients=a.recipients, message=data,
                          listener=a.listener, auth_user=a.auth_user)
    if a.json:
        ctx.json(result.to_dict())
    else:
        _print(ctx, result)
    return 0 if result.accepted else 1


def _print(ctx: Any, r: Any) -> None:
    ctx.print(f"listener {r.listener} (role {r.role}); client "
              f"{'trusted' if r.trusted else 'not trusted'}")
    for step in r.steps:
        ctx.print(f"{step.step:<7} {step.subject or '<>'}: {step.action} -> {step.reply}")
        for v in step.verdicts:
            line = f"          {v.check}: {v.action}"
            if v.reply:
                line += f" [{v.reply}]"
            if v.reason:
                line += f" ({v.reason})"
            ctx.print(line)
    if r.added_headers:
        ctx.print("header fields the checks would add:")
        for f in r.added_headers:
            ctx.print("  " + f.replace("\r\n", "\n  "))
    if r.quarantine:
        ctx.print(f"quarantine (Junk folder): {r.quarantine}")
    if r.held:
        ctx.print(f"held in quarantine (mailwright quarantine): {r.held}")
    ctx.print(f"outcome: {r.outcome}")
