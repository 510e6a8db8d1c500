"""The ``mailwright`` command: run the server, administer it, check its configuration.

What: ``main(argv) -> exit status`` (the console script and ``python -m
mailwright.cli.main``). Commands::

    mailwright [-c FILE] serve
    mailwright [-c FILE] config check [--json]
    mailwright [-c FILE] domain add|remove DOMAIN | domain list [--json]
    mailwright [-c FILE] user add ADDRESS [--password-stdin] [--quota BYTES]
    mailwright [-c FILE] user list [DOMAIN] [--json] | user remove ADDRESS
    mailwright [-c FILE] user passwd ADDRESS [--password-stdin] [--clear]
    mailwright [-c FILE] user quota ADDRESS BYTES
    mailwright [-c FILE] user grant LOGIN ADDRESS | user revoke LOGIN ADDRESS
    mailwright [-c FILE] user grants LOGIN [--json]
    mailwright [-c FILE] alias add SOURCE TARGET... | alias list [--json] | alias remove SOURCE
    mailwright [-c FILE] queue list|show|hold|release|retry|delete|flush|audit ...  (cli/queue.py)
    mailwright [-c FILE] quarantine list|show|release|delete ...      (cli/quarantine.py)
    mailwright [-c FILE] policy test --ip IP --helo NAME --from S --to R... FILE [--json]
                                                                      (cli/policy.py)
    mailwright [-c FILE] trace QUEUE-ID|MESSAGE-ID|ADDRESS [--since D] [--json] (cli/trace.py)
    mailwright [-c FILE] dkim keygen|list|activate|remove ...          (cli/dkim.py)
    mailwright [-c FILE] dmarc report [--dry-run] [--json]             (cli/dmarc.py)
    mailwright [-c FILE] dns records|check DOMAIN [--ip IP]... [--json] (cli/dns.py)
    mailwright [-c FILE] diag smtp HOST[:PORT] [--starttls|--tls] [--auth USER]
                         [--send FROM TO] [--json]                    (cli/diag.py)
    mailwright [-c FILE] sendmail [sendmail options] [RECIPIENT...]   (cli/sendmail.py)
    mailwright [-c FILE] cluster status | db migrate | mailbox list|show  (cli/cluster.py)
    mailwright --version

How: a thin face over ``admin.service.AdminService`` (GUIDE idea 15). Admin commands load
the settings, open the store named there (the same files the server uses; SQLite allows it
while the server runs, and nothing needs the server to run), migrate it, make sure the
configured ``local_domains`` exist, call one service method and print the result: a table
by default, JSON with ``--json``. ``serve`` imports ``mailwright.app`` only when run.

Invariants:
* Exit status 0 = done, 1 = the operation failed (not found, exists, refused, store error),
  2 = usage or configuration error (bad arguments, bad config key, malformed address).
* Errors go to stderr as one ``mailwright: ...`` line each; results go to stdout.
* Password hashes are never printed; passwords are read from stdin (``--password-stdin``,
  first line) or prompted for on a terminal, never taken from the command line.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import inspect
import json
import re
import sys
import time
from typing import Any, Awaitable, Callable, Sequence, TextIO

from .. import __version__
from ..config import (
    DEFAULT_SOURCE, ConfigError, Settings, load_settings, settings_to_dict, settings_to_toml,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "mailwright"


class UsageError(Exception):
    """Bad command-line input detected after parsing (exit 2)."""


# --------------------------------------------------------------------------- parsing

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: str) -> int:
    """Bytes from "1000", "500K", "20M", "1G" (binary units); 0 = unlimited."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected bytes, "
                                         "optionally with K, M, G or T")
    return int(m.group(1)) * _UNITS[(m.group(2) or "")[:1].lower()]


def build_parser() -> argparse.ArgumentParser:
    # -c may come before or after the command: the sub-parsers share it with default
    # SUPPRESS so a -c given before the command is not overwritten.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: $MAILWRIGHT_CONFIG, "
                             "else built-in defaults)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    p = argparse.ArgumentParser(prog=PROG, description="Mailwright mail server.")
    p.add_argument("-c", "--config", metavar="FILE", default=None,
                   help="TOML configuration file (default: $MAILWRIGHT_CONFIG, "
                        "else built-in defaults)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name: str, help: str) -> argparse._SubParsersAction:
        g = cmds.add_parser(name, help=help, parents=[common])
        return g.add_subparsers(dest="action", metavar="ACTION", required=True)

    def sub(parent: argparse._SubParsersAction, name: str, help: str, fn: Callable,
            json_flag: bool = False) -> argparse.ArgumentParser:
        parents = [common, as_json] if json_flag else [common]
        sp = parent.add_parser(name, help=help, parents=parents, description=help)
        sp.set_defaults(func=fn)
        return sp

    serve = cmds.add_parser("serve", help="run the mail server", parents=[common])
    serve.set_defaults(func=cmd_serve)
    # Listed for --help only: main() hands "sendmail" and its raw arguments to cli/sendmail.
    cmds.add_parser("sendmail", help="queue a message from standard input "
                                     "(sendmail-compatible: -t -i -f -F RECIPIENT...)")

    cfg = group("config", "configuration")
    sub(cfg, "check", "validate the configuration and print the effective settings",
        cmd_config_check, json_flag=True)

    dom = group("domain", "local domains")
    sub(dom, "add", "add a local domain", cmd_domain_add).add_argument("domain")
    sub(dom, "list", "list local domains", cmd_domain_list, json_flag=True)
    r = sub(dom, "remove", "remove a local domain", cmd_domain_remove)
    r.add_argument("domain")
    r.add_argument("--force", action="store_true",
                   help="also remove the domain's mailboxes and aliases")

    usr = group("user", "mailboxes")
    a = sub(usr, "add", "create a mailbox", cmd_user_add)
    a.add_argument("address")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    a.add_argument("--quota", type=parse_size, default=0, metavar="BYTES",
                   help="mailbox quota in bytes (K, M, G suffixes allowed; 0 = unlimited)")
    sub(usr, "list", "list mailboxes", cmd_user_list, json_flag=True).add_argument(
        "domain", nargs="?")
    sub(usr, "remove", "delete a mailbox (its stored mail is kept)",
        cmd_user_remove).add_argument("address")
    pw = sub(usr, "passwd", "set a mailbox password", cmd_user_passwd)
    pw.add_argument("address")
    how = pw.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    how.add_argument("--clear", action="store_true",
                     help="remove the password (the mailbox can no longer log in)")
    q = sub(usr, "quota", "change a mailbox quota", cmd_user_quota)
    q.add_argument("address")
    q.add_argument("quota", type=parse_size, metavar="BYTES")
    g = sub(usr, "grant", "let LOGIN send as ADDRESS (or *@domain) on submission",
            cmd_user_grant)
    g.add_argument("login")
    g.add_argument("address")
    g = sub(usr, "revoke", "withdraw a send-as grant", cmd_user_revoke)
    g.add_argument("login")
    g.add_argument("address")
    sub(usr, "grants", "list the send-as grants of LOGIN", cmd_user_grants,
        json_flag=True).add_argument("login")

    al = group("alias", "aliases")
    a = sub(al, "add", "add an alias (SOURCE may be @domain: catch-all)", cmd_alias_add)
    a.add_argument("source")
    a.add_argument("targets", nargs="+", metavar="TARGET")
    sub(al, "list", "list aliases", cmd_alias_list, json_flag=True)
    sub(al, "remove", "remove an alias", cmd_alias_remove).add_argument("source")

    from . import diag as diag_cli, dkim as dkim_cli, dns as dns_cli, trace as trace_cli
    from . import policy as policy_cli, quarantine as quarantine_cli, queue as queue_cli
    queue_cli.register(group, sub)
    quarantine_cli.register(group, sub)
    policy_cli.register(group, sub)
    from . import dmarc as dmarc_cli
    trace_cli.register(cmds, common, as_json)
    dkim_cli.register(group, sub)
    dmarc_cli.register(group, sub)
    diag_cli.register(cmds, common, as_json)
    dns_cli.register(cmds, common, as_json)
    from . import cluster as cluster_cli
    cluster_cli.register(group, sub)
    return p


# --------------------------------------------------------------------------- helpers

class Context:
    """What a command handler gets: parsed args, settings, the service, output streams."""

    def __init__(self, args: argparse.Namespace, settings: Settings, service: Any,
                 out: TextIO, err: TextIO, stdin: TextIO) -> None:
        self.args, self.settings, self.service = args, settings, service
        self.out, self.err, self.stdin = out, err, stdin

    def print(self, *parts: Any) -> None:
        print(*parts, file=self.out)

    def json(self, data: Any) -> None:
        json.dump(data, self.out, indent=2, ensure_ascii=False)
        self.out.write("\n")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def read_password(ctx: Context, from_stdin: bool) -> str | None:
    """The password from stdin's first line, a terminal prompt, or None (no password)."""
    if from_stdin:
        line = ctx.stdin.readline()
        pw = line.rstrip("\r\n")
        if not pw:
            raise UsageError("--password-stdin: standard input held no password")
        return pw
    if ctx.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if not pw:
            return None
        if getpass.getpass("Repeat password: ") != pw:
            raise UsageError("passwords do not match")
        return pw
    return None


# --------------------------------------------------------------------------- commands

def cmd_serve(ctx: Context) -> int:
    try:
        from .. import app
    except ImportError as e:
        if e.name not in ("mailwright.app",):
            raise
        print(f"{PROG}: the server is not available in this build (no mailwright.app)",
              file=ctx.err)
        return EXIT_FAILED
    kwargs = {}
    if "config_path" in inspect.signature(app.serve).parameters:
        # Worker processes re-read the same file (environment overrides are inherited).
        kwargs["config_path"] = None if ctx.settings.source == DEFAULT_SOURCE \
            else ctx.settings.source
    result = app.serve(ctx.settings, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result if isinstance(result, int) else EXIT_OK


def cmd_config_check(ctx: Context) -> int:
    s = ctx.settings
    problems = []
    if not s.tls.self_signed:
        for key, path in (("tls.cert_file", s.paths.tls_cert), ("tls.key_file", s.paths.tls_key)):
            if not path.is_file():
                problems.append(f"{s.source}: {key}: file not found: {path}")
    if ctx.args.json:
        ctx.json({"source": s.source, "ok": not problems, "problems": problems,
                  "settings": settings_to_dict(s)})
    else:
        ctx.out.write(settings_to_toml(s))
    for p in problems:
        print(f"{PROG}: {p}", file=ctx.err)
    return EXIT_USAGE if problems else EXIT_OK


async def cmd_domain_add(ctx: Context) -> int:
    name = await ctx.service.add_domain(ctx.args.domain)
    ctx.print(f"added domain {name}")
    return EXIT_OK


async def cmd_domain_list(ctx: Context) -> int:
    domains = await ctx.service.list_domains()
    if ctx.args.json:
        ctx.json(domains)
    else:
        for d in domains:
            ctx.print(d)
    return EXIT_OK


async def cmd_domain_remove(ctx: Context) -> int:
    name = await ctx.service.remove_domain(ctx.args.domain, force=ctx.args.force)
    ctx.print(f"removed domain {name}")
    if name in ctx.settings.local_domains:
        print(f"{PROG}: note: {name} is in local_domains of {ctx.settings.source}; "
              "it will be added again at the next start", file=ctx.err)
    return EXIT_OK


async def cmd_user_add(ctx: Context) -> int:
    pw = read_password(ctx, ctx.args.password_stdin)
    user = await ctx.service.add_user(ctx.args.address, pw, ctx.args.quota)
    ctx.print(f"added mailbox {user.address}" + ("" if user.has_password
                                                 else " (no password: cannot log in)"))
    return EXIT_OK


async def cmd_user_list(ctx: Context) -> int:
    users = await ctx.service.list_users(ctx.args.domain)
    if ctx.args.json:
        ctx.json([u.to_dict() for u in users])
    elif users:
        ctx.print(table([(u.address, human_size(u.quota_bytes) if u.quota_bytes else "unlimited",
                          "yes" if u.has_password else "no", when(u.created_at))
                         for u in users], ("ADDRESS", "QUOTA", "PASSWORD", "CREATED")))
    return EXIT_OK


async def cmd_user_remove(ctx: Context) -> int:
    addr = await ctx.service.remove_user(ctx.args.address)
    ctx.print(f"removed mailbox {addr}")
    return EXIT_OK


async def cmd_user_passwd(ctx: Context) -> int:
    if ctx.args.clear:
        pw = None
    else:
        pw = read_password(ctx, ctx.args.password_stdin)
        if pw is None:
            raise UsageError("no password given (use --password-stdin, a terminal, "
                             "or --clear to remove the password)")
    addr = await ctx.service.set_password(ctx.args.address, pw)
    ctx.print(f"password {'cleared' if pw is None else 'set'} for {addr}")
    return EXIT_OK


async def cmd_user_quota(ctx: Context) -> int:
    addr = await ctx.service.set_quota(ctx.args.address, ctx.args.quota)
    ctx.print(f"quota of {addr} set to "
              f"{human_size(ctx.args.quota) if ctx.args.quota else 'unlimited'}")
    return EXIT_OK


async def cmd_user_grant(ctx: Context) -> int:
    addr = await ctx.service.grant_send_as(ctx.args.login, ctx.args.address)
    ctx.print(f"{ctx.args.login.strip().lower()} may now send as {addr}")
    return EXIT_OK


async def cmd_user_revoke(ctx: Context) -> int:
    addr = await ctx.service.revoke_send_as(ctx.args.login, ctx.args.address)
    ctx.print(f"revoked: {ctx.args.login.strip().lower()} may no longer send as {addr}")
    return EXIT_OK


async def cmd_user_grants(ctx: Context) -> int:
    grants = await ctx.service.list_send_as(ctx.args.login)
    if ctx.args.json:
        ctx.json(grants)
    else:
        for g in grants:
            ctx.print(g)
    return EXIT_OK


async def cmd_alias_add(ctx: Context) -> int:
    alias = await ctx.service.add_alias(ctx.args.source, ctx.args.targets)
    ctx.print(f"added alias {alias.source} -> {', '.join(alias.targets)}")
    return EXIT_OK


async def cmd_alias_list(ctx: Context) -> int:
    aliases = await ctx.service.list_aliases()
    if ctx.args.json:
        ctx.json([a.to_dict() for a in aliases])
    elif aliases:
        ctx.print(table([(a.source, ", ".join(a.targets)) for a in aliases],
                        ("SOURCE", "TARGETS")))
    return EXIT_OK


async def cmd_alias_remove(ctx: Context) -> int:
    src = await ctx.service.remove_alias(ctx.args.source)
    ctx.print(f"removed alias {src}")
    return EXIT_OK


# --------------------------------------------------------------------------- running

def open_settings_store(settings: Settings) -> Any:
    """The (unopened) store the settings name: the same files or database the server
    uses (cluster/node.py)."""
    from ..cluster.node import open_settings_store as _open
    return _open(settings)


async def _run_admin(handler: Callable[[Context], Awaitable[int]], args: argparse.Namespace,
                     settings: Settings, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..admin.service import AdminService
    store = open_settings_store(settings)
    await store.open()                      # creates and migrates the schema
    try:
        service = AdminService(store)
        await service.ensure_domains(settings.local_domains)
        return await handler(Context(args, settings, service, out, err, stdin))
    finally:
        await store.close()


def _sendmail_argv(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """(config, arguments) if the command is ``sendmail``: its options follow sendmail's
    conventions (``-fADDR``, ``-oi``), which argparse cannot parse."""
    config = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config") and i + 1 < len(argv):
            config = argv[i + 1]
            i += 2
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
            i += 1
        elif arg == "sendmail":
            return config, argv[i + 1:]
        else:
            return None
    return None


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failed, 2 usage/config)."""
    from ..admin.service import AdminError
    from ..store.base import StoreError
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    inp = stdin or sys.stdin
    split = _sendmail_argv(list(sys.argv[1:] if argv is None else argv))
    if split is not None:
        from . import sendmail
        config, rest = split
        binary = getattr(inp, "buffer", None) if stdin is not None else sys.stdin.buffer
        return sendmail.main(rest, config=config, stdin=binary, stderr=err)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:            # --help, --version (0) or a usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        for line in e.errors:
            print(f"{PROG}: {line}", file=err)
        return EXIT_USAGE
    handler = args.func
    try:
        if not inspect.iscoroutinefunction(handler):
            return handler(Context(args, settings, None, out, err, inp))
        return asyncio.run(_run_admin(handler, args, settings, out, err, inp))
    except UsageError as e:
        print(f"{PROG}: {e}", file=err)
        return EXIT_USAGE
    except AdminError as e:
        print(f"{PROG}: {e}", file=err)
        return e.exit_code
    except StoreError as e:
        print(f"{PROG}: store error: {e}", file=err)
        return EXIT_FAILED
    except OSError as e:
        print(f"{PROG}: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
