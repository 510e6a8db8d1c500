"""``mailwright diag smtp``: the CLI face of ``admin/diag.py`` (test an SMTP server).

What::

    mailwright [-c FILE] diag smtp HOST[:PORT] [--starttls | --tls] [--auth USER]
        [--send FROM TO] [--helo NAME] [--timeout S] [--cafile FILE] [--json]

HOST is a name, an IPv4 address or ``[IPv6]``; a name without a port is tested as a mail
domain (MX lookup, preferred host, port 25 or ``[outbound] port``, the port our own
deliveries use). ``--tls`` is implicit TLS (port 465 by
default), ``--starttls`` makes STARTTLS required (by default it is used when offered).
With ``--auth`` the password is the first line of standard input (or a prompt on a
terminal); it is never printed. Lookups use ``[outbound] nameservers``.

How: ``register(cmds, common, as_json)`` adds the ``diag`` group to main's parser; the
handler has main's ``async def handler(ctx) -> int`` shape. Output: the dialogue as
``C:``/``S:`` lines, each step's verdict as a ``[status]`` line, then a summary; ``--json``
prints ``DiagReport.to_dict()`` instead.

Invariants: exit 0 = no problem found (warnings allowed), 1 = a problem found, 2 = usage.
"""
from __future__ import annotations

import argparse
import getpass
import os
from typing import TYPE_CHECKING, Any

from ..policy.context import parse_ip

if TYPE_CHECKING:
    from ..admin import diag

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
PROG = "mailwright"

# admin/diag.py (and through it the SMTP client, dnspython and cryptography.x509) is
# imported when a diag command runs, not by every `mailwright` invocation: the argument
# parser registers every sub-command, and `mailwright sendmail` starts for each message.


def _mark(status: str) -> str:
    from ..admin import diag
    return {diag.OK: "[ok]", diag.PROBLEM: "[PROBLEM]", diag.WARNING: "[warning]",
            diag.INFO: "[info]"}.get(status, status)


def register(cmds: argparse._SubParsersAction, common: argparse.ArgumentParser,
             as_json: argparse.ArgumentParser) -> None:
    """Add ``diag smtp`` to main's sub-command set ``cmds``."""
    grp = cmds.add_parser("diag", help="diagnostics (test an SMTP server)", parents=[common])
    actions = grp.add_subparsers(dest="action", metavar="ACTION", required=True)
    help_ = "test an SMTP server step by step (like swaks): banner, EHLO, TLS, AUTH, a message"
    sp = actions.add_parser("smtp", help=help_, description=help_, parents=[common, as_json])
    sp.set_defaults(func=cmd_diag_smtp)
    sp.add_argument("target", metavar="HOST[:PORT]",
                    help="a mail domain (MX lookup), a host name or an address")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--starttls", action="store_true",
                     help="require STARTTLS (default: use it when offered)")
    how.add_argument("--tls", action="store_true",
                     help="implicit TLS from the start (port 465 by default)")
    sp.add_argument("--auth", metavar="USER", default="",
                    help="AUTH PLAIN as USER; the password is read from standard input")
    sp.add_argument("--send", nargs=2, metavar=("FROM", "TO"),
                    help="send a test message (use '' or '<>' for the null sender)")
    sp.add_argument("--helo", metavar="NAME", default="",
                    help="name for EHLO (default: outbound.helo_name, else hostname)")
    sp.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="seconds to wait for the connection and for each reply (30)")
    sp.add_argument("--cafile", metavar="FILE", default="",
                    help="verify the certificate against FILE instead of the system store")


def _usage(ctx: Any, message: str) -> int:
    print(f"{PROG}: {message}", file=ctx.err)
    return EXIT_USAGE


def _password(ctx: Any) -> str:
    if ctx.stdin.isatty():
        return getpass.getpass(f"Password for {ctx.args.auth}: ")
    return ctx.stdin.readline().rstrip("\r\n")


def options_from_args(ctx: Any) -> diag.DiagOptions:
    """DiagOptions from the parsed arguments and settings; ValueError for bad input."""
    from ..admin import diag
    a = ctx.args
    host, port = diag.parse_target(a.target)
    if not a.timeout > 0:
        raise ValueError("--timeout must be positive")
    if a.cafile and not os.path.isfile(a.cafile):
        raise ValueError(f"--cafile: no such file: {a.cafile}")
    password = ""
    if a.auth:
        password = _password(ctx)
        if not password:
            raise ValueError("--auth: no password on standard input")
    settings = ctx.settings
    helo = a.helo or settings.outbound.helo_name or settings.hostname
    tls = "implicit" if a.tls else "starttls" if a.starttls else "auto"
    return diag.DiagOptions(
        host=host, port=port, mx_port=settings.outbound.port, tls=tls, helo=helo, timeout=a.timeout, cafile=a.cafile, auth_user=a.auth,
        auth_password=password, mail_from=a.send[0] if a.send else None,
        rcpt_to=a.send[1] if a.send else None)


async def cmd_diag_smtp(ctx: Any) -> int:
    from ..admin import diag
    try:
        opts = options_from_args(ctx)
    except ValueError as exc:
        return _usage(ctx, str(exc))
    resolver = None
    if parse_ip(opts.host) is None:          # a name: MX / address lookups
        try:
            from ..net.dns import resolver_from_settings
            resolver = resolver_from_settings(ctx.settings)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: cannot set up DNS: {exc}", file=ctx.err)
            return EXIT_PROBLEM
    report = await diag.run_diag(opts, resolver)
    if ctx.args.json:
        ctx.json(report.to_dict())
    else:
        print_report(ctx, report)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def print_report(ctx: Any, report: diag.DiagReport) -> None:
    ctx.print(f"Testing {report.target} (port {report.port}, TLS: {report.tls_mode})")
    for step in report.steps:
        for line in step.dialogue:
            ctx.print(f"{line.direction}: {line.text}")
        if step.detail:
            ctx.print(f"{_mark(step.status)} {step.name}: {step.detail}")
        if step.name == "certificate":
            for i, cert in enumerate(step.data.get("chain", [])):
                ctx.print(f"    #{i} subject: {cert['subject']}")
                ctx.print(f"       issuer:  {cert['issuer']}"
                          + (" (self-signed)" if cert["self_signed"] else ""))
                ctx.print(f"       SANs:    {', '.join(cert['sans']) or '(none)'}")
                ctx.print(f"       valid:   {cert['not_before']} to {cert['not_after']} "
                          f"({cert['days_left']} days left)")
    ctx.print("")
    problems, warnings = report.problems, report.warnings
    if report.ok:
        ctx.print("Summary: ok, no problems found"
                  + (f" ({len(warnings)} warning(s))" if warnings else ""))
    else:
        ctx.print(f"Summary: {len(problems)} problem(s) found")
    for s in problems + warnings:
        ctx.print(f"  {_mark(s.status)} {s.name}: {s.detail}")
