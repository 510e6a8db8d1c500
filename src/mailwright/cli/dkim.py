"""``mailwright dkim``: DKIM signing keys (RFC 6376, RFC 8463).

    mailwright dkim keygen DOMAIN [--selector S] [--algorithm rsa|ed25519] [--bits N]
                                  [--inactive] [--json]
    mailwright dkim list [DOMAIN] [--json]
    mailwright dkim activate DOMAIN SELECTOR
    mailwright dkim remove DOMAIN SELECTOR

``keygen`` stores a new key and prints the exact DNS TXT record to publish (zone-file
line). Rotation: ``keygen --inactive`` with a new selector, publish its record, wait for
the DNS TTL, then ``activate`` it; keep the old record published for a few days (mail
in flight still carries the old signature), then ``remove`` the old key. A thin face over
``AdminService`` (GUIDE idea 15).
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["register"]


def register(group: Callable[..., Any], sub: Callable[..., Any]) -> None:
    dk = group("dkim", "DKIM signing keys")
    k = sub(dk, "keygen", "create a signing key and print its DNS record", cmd_dkim_keygen,
            json_flag=True)
    k.add_argument("domain")
    k.add_argument("--selector", help="selector (default: <yyyymm>r or <yyyymm>e)")
    k.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    k.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    k.add_argument("--inactive", action="store_true",
                   help="store the key without signing with it yet (rotation)")
    sub(dk, "list", "list DKIM keys and their DNS records", cmd_dkim_list,
        json_flag=True).add_argument("domain", nargs="?")
    a = sub(dk, "activate", "sign with this key from now on (per algorithm)",
            cmd_dkim_activate)
    a.add_argument("domain")
    a.add_argument("selector")
    r = sub(dk, "remove", "delete a key (withdraw its DNS record after a few days)",
            cmd_dkim_remove)
    r.add_argument("domain")
    r.add_argument("selector")


async def cmd_dkim_keygen(ctx: Any) -> int:
    a = ctx.args
    info = await ctx.service.dkim_keygen(a.domain, a.selector, a.algorithm, a.bits,
                                         activate=not a.inactive)
    if a.json:
        ctx.json(info.to_dict())
        return 0
    state = "active: signs from now on" if info.active else "inactive: `mailwright dkim " \
        f"activate {info.domain} {info.selector}` once the record is published"
    ctx.print(f"created {info.algorithm} key {info.selector} for {info.domain} ({state})")
    ctx.print("publish this DNS record:")
    ctx.print(info.zone_line)
    return 0


async def cmd_dkim_list(ctx: Any) -> int:
    keys = await ctx.service.list_dkim_keys(ctx.args.domain)
    if ctx.args.json:
        ctx.json([k.to_dict() for k in keys])
        return 0
    if not keys:
        ctx.print("no DKIM keys")
        return 0
    from .main import table, when
    ctx.print(table([(k.domain, k.selector, k.algorithm, "yes" if k.active else "no",
                      when(k.created_at)) for k in keys],
                    ("DOMAIN", "SELECTOR", "ALGORITHM", "ACTIVE", "CREATED")))
    ctx.print("")
    for k in keys:
        ctx.print(k.zone_line)
    return 0


async def cmd_dkim_activate(ctx: Any) -> int:
    domain = await ctx.service.dkim_activate(ctx.args.domain, ctx.args.selector)
    ctx.print(f"{ctx.args.selector.lower()} now signs for {domain}")
    return 0


async def cmd_dkim_remove(ctx: Any) -> int:
    domain = await ctx.service.dkim_remove(ctx.args.domain, ctx.args.selector)
    ctx.print(f"removed DKIM key {ctx.args.selector.lower()} of {domain}")
    return 0
