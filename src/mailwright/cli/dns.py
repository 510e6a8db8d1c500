"""``mailwright dns records|check``: the CLI face of the DNS doctor (``admin/dnsdoctor.py``).

What::

    mailwright [-c FILE] dns records DOMAIN [--ip IP]... [--mx HOST]... [--rua ADDR] [--json]
    mailwright [-c FILE] dns check DOMAIN [--ip IP]... [--mx HOST]... [--rua ADDR] [--json]

How: ``register(cmds, common, as_json)`` adds the ``dns`` group to the parser that
``cli/main.build_parser`` builds; handlers have main's ``async def handler(ctx) -> int``
shape. The facts come from the command line and the settings: MX host = ``--mx`` or the
server ``hostname``; outbound IPs = ``--ip``; DKIM selectors from the admin service's
``dkim_keys(domain)`` when it has one (a list of (selector, public TXT value)). Lookups go
through ``net.dns.Resolver`` with ``[outbound] nameservers`` and ``dns_timeout``.

Invariants: exit 0 = every item ok, 1 = something missing, wrong or not checkable (a DNS
timeout is never ok), 2 = usage (bad domain, bad IP). Results on stdout, errors on stderr
as ``mailwright: ...`` lines; no traceback reaches the user.
"""
from __future__ import annotations

import argparse
import inspect
import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..admin import dnsdoctor

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
PROG = "mailwright"

# The DNS doctor (and dnspython) is imported when a dns command runs, not by every
# `mailwright` invocation (cli/diag.py says why).


def _mark(status: str) -> str:
    from ..admin import dnsdoctor
    return {dnsdoctor.OK: "ok", dnsdoctor.MISSING: "MISSING", dnsdoctor.WRONG: "WRONG",
            dnsdoctor.UNCHECKED: "UNCHECKED", dnsdoctor.NOTE: "note"}.get(status, status)


def register(cmds: argparse._SubParsersAction, common: argparse.ArgumentParser,
             as_json: argparse.ArgumentParser) -> None:
    """Add ``dns records`` and ``dns check`` to main's sub-command set ``cmds``."""
    grp = cmds.add_parser("dns", help="DNS records to publish, and a live DNS check",
                          parents=[common])
    actions = grp.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, fn, help_ in (
            ("records", cmd_dns_records, "print the records DOMAIN must publish "
                                         "(zone-file format)"),
            ("check", cmd_dns_check, "check DOMAIN's live DNS: MX, SPF, DKIM, DMARC, "
                                     "reverse DNS")):
        sp = actions.add_parser(name, help=help_, description=help_,
                                parents=[common, as_json])
        sp.set_defaults(func=fn)
        sp.add_argument("domain")
        sp.add_argument("--ip", action="append", default=[], metavar="IP",
                        help="an outbound IP address of this server (repeatable)")
        sp.add_argument("--mx", action="append", default=[], metavar="HOST",
                        help="our MX host name (repeatable; default: the server hostname)")
        sp.add_argument("--rua", default="", metavar="ADDRESS",
                        help="DMARC aggregate report address (default dmarc-reports@DOMAIN)")


async def build_facts(ctx: Any) -> dnsdoctor.DomainFacts:
    """Facts from the arguments, the settings and (when it exists) ``service.dkim_keys``.
    Raises ValueError with an operator-readable message for bad input."""
    from ..admin import dnsdoctor
    args = ctx.args
    domain = args.domain.strip().rstrip(".").lower()
    if not domain or "." not in domain or any(c in domain for c in " @/:"):
        raise ValueError(f"not a domain name: {args.domain!r}")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"not a domain name: {args.domain!r}") from None
    for ip in args.ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"--ip: not an IP address: {ip!r}") from None
    if args.rua and "@" not in args.rua:
        raise ValueError(f"--rua: not an address: {args.rua!r}")
    dkim: list[tuple[str, str]] = []
    getter = getattr(ctx.service, "dkim_keys", None)
    if getter is not None:
        keys = getter(domain)
        if inspect.isawaitable(keys):
            keys = await keys
        dkim = [(str(sel), str(txt)) for sel, txt in keys or ()]
    return dnsdoctor.DomainFacts(domain=domain, mx_hosts=tuple(args.mx) or
                                 (ctx.settings.hostname,), ips=tuple(args.ip),
                                 dkim=tuple(dkim), rua=args.rua)


def _usage(ctx: Any, message: str) -> int:
    print(f"{PROG}: {message}", file=ctx.err)
    return EXIT_USAGE


async def cmd_dns_records(ctx: Any) -> int:
    from ..admin import dnsdoctor
    try:
        facts = await build_facts(ctx)
    except ValueError as exc:
        return _usage(ctx, str(exc))
    for host in facts.mx_hosts:
        if host == "localhost" or "." not in host:
            print(f"{PROG}: warning: {host!r} is not a public host name: set hostname in "
                  f"{ctx.settings.source} or give --mx", file=ctx.err)
    recs = dnsdoctor.records(facts)
    if ctx.args.json:
        ctx.json({"domain": facts.domain, "records": [r.to_dict() for r in recs]})
        return EXIT_OK
    ctx.print(f"; Records to publish for {facts.domain}")
    if not facts.ips:
        ctx.print("; (no outbound IP given: add --ip for A/AAAA, ip4:/ip6: and PTR)")
    if not facts.dkim:
        ctx.print("; (no DKIM keys known for this domain)")
    for r in recs:
        ctx.print("")
        if r.note:
            ctx.print(f"; {r.note}")
        if r.zone:
            ctx.print(f"; published in: {r.zone}")
        ctx.print(r.zone_line())
    return EXIT_OK


async def cmd_dns_check(ctx: Any) -> int:
    from ..admin import dnsdoctor
    try:
        facts = await build_facts(ctx)
    except ValueError as exc:
        return _usage(ctx, str(exc))
    try:
        from ..net.dns import resolver_from_settings
        resolver = resolver_from_settings(ctx.settings)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: cannot set up DNS: {exc}", file=ctx.err)
        return EXIT_PROBLEM
    findings = await dnsdoctor.check(resolver, facts)
    good = dnsdoctor.ok(findings)
    if ctx.args.json:
        ctx.json({"domain": facts.domain, "ok": good,
                  "findings": [f.to_dict() for f in findings]})
        return EXIT_OK if good else EXIT_PROBLEM
    ctx.print(f"DNS check of {facts.domain}")
    width = max(len(f.item) for f in findings) if findings else 0
    for f in findings:
        ctx.print(f"  [{_mark(f.status):>9}] {f.item.ljust(width)}  {f.detail}")
        if f.fix and f.status not in (dnsdoctor.OK, dnsdoctor.NOTE):
            ctx.print(f"  {'':>11} {''.ljust(width)}  fix: {f.fix}")
    bad = [f for f in findings if f.status not in (dnsdoctor.OK, dnsdoctor.NOTE)]
    ctx.print("")
    ctx.print("Result: all ok" if good else
              f"Result: {len(bad)} problem(s) found")
    return EXIT_OK if good else EXIT_PROBLEM
