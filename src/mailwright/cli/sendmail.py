"""``mailwright sendmail``: the sendmail-compatible local submission command.

What: applications and cron call ``/usr/sbin/sendmail`` with the message on standard input.
This front end accepts the usual options, puts the message into the queue of this machine
and returns a sendmail exit status (sysexits.h).  Installed as the console script
``mailwright-sendmail`` (see docs/operations.md, "Submission", for /usr/sbin/sendmail).

Options (the subset Postfix's and Sendmail's front ends share)::

    mailwright-sendmail [-t] [-i | -oi] [-f SENDER | -r SENDER] [-F FULLNAME]
                        [-C CONFIG] [-N DSN] [-v] [-bm] [-o...] [--] [RECIPIENT ...]

* ``-t``: recipients are also read from the To, Cc and Bcc fields (added to those on the
  command line, as Postfix does); Bcc fields are then removed.
* ``-i``/``-oi``: a line holding a single ``.`` is data, not the end of input.
* ``-f``/``-r``: envelope sender; default ``user@hostname`` of the invoking user.
* ``-F``: the full name used when the command adds a ``From:`` field.
* ``-C``: the Mailwright configuration file (else ``$MAILWRIGHT_CONFIG``, else
  ``/etc/mailwright/mailwright.toml`` if it exists, else the embedded defaults).
* Recipients without ``@`` get the primary local domain (``hostname`` if it is a local
  domain, else the first of ``local_domains``); the default sender is
  ``login@hostname``.
* Accepted and ignored: ``-v``, ``-bm``, ``-N``, ``-B``, ``-o`` options, ``-odi``,
  ``-odb``, ``-em``...; refused with EX_USAGE: other ``-b`` modes (``-bs``, ``-bp``...).

How: read stdin, end at ``.`` (unless ``-i``), turn line endings into CRLF (the stored form
of SMTP bodies), apply the RFC 6409 §8 fix-ups a submission server would (``Received``
naming the local user, ``From``, ``Date`` and ``Message-ID`` when missing), resolve the
recipients against the directory as RCPT TO would (aliases expanded, unknown local users
refused: EX_NOUSER), commit into the store directly -- so it works while the server is
stopped -- and finally send one datagram to ``data_dir/run/wake.sock`` so a running server
delivers at once (app.py).  A commit is durable before the command exits 0.

Invariants: exit 0 only after the durable commit; errors go to stderr as one line each;
nothing is read from or written to the network.
"""
from __future__ import annotations

import asyncio
import email.utils
import getpass
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import BinaryIO, Sequence, TextIO

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER = 0, 64, 65, 67
EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 70, 75, 78
PROG = "sendmail"
SYSTEM_CONFIG = "/etc/mailwright/mailwright.toml"

__all__ = ["main", "parse_args", "prepare_message", "Options"]


class _Usage(Exception):
    pass


@dataclass
class Options:
    extract: bool = False           # -t
    ignore_dots: bool = False       # -i / -oi
    sender: str | None = None       # -f / -r
    fullname: str | None = None     # -F
    config: str | None = None       # -C
    recipients: list[str] = field(default_factory=list)


_VALUE_FLAGS = {"f", "r", "F", "C", "N", "B", "R", "V", "X", "L", "h", "p", "q"}


def parse_args(argv: Sequence[str]) -> Options:
    """Sendmail-style options: ``-fADDR`` or ``-f ADDR``; ``-o`` takes its letters along."""
    opts = Options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        flag, rest = arg[1:2], arg[2:]
        if flag in _VALUE_FLAGS:
            if not rest:
                if i >= len(args):
                    raise _Usage(f"option -{flag} needs a value")
                rest = args[i]
                i += 1
            if flag in ("f", "r"):
                opts.sender = rest
            elif flag == "F":
                opts.fullname = rest
            elif flag == "C":
                opts.config = rest
            continue                    # -N, -B, -R, -V, -X, -L, -h, -p, -q: ignored
        if flag == "o":
            if rest == "i":
                opts.ignore_dots = True
            continue                    # -oem, -odb, -oQ... : ignored
        if flag == "b":
            if rest not in ("m", ""):
                raise _Usage(f"-b{rest} is not supported (only -bm, deliver mail)")
            continue
        if flag == "t":
            opts.extract = True
            continue
        if flag == "i":
            opts.ignore_dots = True
            continue
        if flag in ("v", "e", "m", "n", "U", "G", "A", "O", "d"):
            continue                    # verbose, error mode, me-too...: ignored
        raise _Usage(f"unknown option {arg}")
    return opts


# --------------------------------------------------------------------------- the message

def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """Standard input as CRLF text; without -i a line with a lone "." ends it. LF, CRLF
    and a lone CR each end a line (Unix programs write LF; a lone CR must never reach the
    queue, RFC 5321 §2.3.8)."""
    data = stream.read()
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines and lines[-1] == b"":
        lines.pop()
    if not ignore_dots:
        try:
            lines = lines[:lines.index(b".")]
        except ValueError:
            pass
    return b"".join(line + b"\r\n" for line in lines)


def _split_header(message: bytes) -> tuple[bytes, bytes]:
    if message.startswith(b"\r\n"):
        return b"", message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end + 2], message[end + 2:]


def _name(field_: bytes) -> bytes:
    return field_.split(b":", 1)[0].strip().lower()


def prepare_message(message: bytes, *, sender: str, fullname: str | None, extract: bool,
                    hostname: str, uid: int, now: float
                    ) -> tuple[bytes, list[str]]:
    """Fix-ups and -t extraction. Returns (message, recipients found in the header)."""
    from ..message.headers import new_message_id, split_fields
    from ..message.trace import rfc5322_date, sanitize_host, sanitize_text

    header, body = _split_header(message)
    fields = split_fields(header)
    names = {_name(f) for f in fields}
    found: list[str] = []
    if extract:
        parsed = BytesHeaderParser(policy=compat32).parsebytes(header + b"\r\n")
        values = [str(v) for name in ("To", "Cc", "Bcc") for v in parsed.get_all(name, [])]
        found = [addr for _, addr in email.utils.getaddresses(values) if addr]
        fields = [f for f in fields if _name(f) not in (b"bcc", b"resent-bcc")]
    # RFC 5321 §4.4 / RFC 5322 §3.6.7: a trace field for the local submission.
    added = (f"Received: by {sanitize_host(hostname) or 'localhost'} (Mailwright sendmail, "
             f"from userid {uid});\r\n\t{rfc5322_date(now)}\r\n")
    if b"from" not in names:
        name = sanitize_text(fullname or "", 200).replace('"', "")
        added += f"From: {email.utils.formataddr((name, sender)) if name else sender}\r\n"
    if b"date" not in names:
        added += f"Date: {rfc5322_date(now)}\r\n"
    if b"message-id" not in names:
        added += f"Message-ID: {new_message_id(hostname)}\r\n"
    text = added.encode("utf-8") + b"".join(f + b"\r\n" for f in fields)
    if not body:
        body = b"\r\n"
    return text + body, found


# --------------------------------------------------------------------------- running

def _load(opts: Options):
    from ..config import load_settings
    path = opts.config
    if path is None and not os.environ.get("MAILWRIGHT_CONFIG") and os.path.exists(SYSTEM_CONFIG):
        path = SYSTEM_CONFIG
    return load_settings(path)


def _login() -> tuple[str, int]:
    uid = os.getuid()
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name, uid
    except (ImportError, KeyError):
        return getpass.getuser(), uid


def _qualify(address: str, hostname: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address if "@" in address or not address else f"{address}@{hostname}"


class _Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _submit(settings, sender: str, recipients: list[str], message: bytes) -> str:
    from ..admin.service import AdminService
    from ..queue.model import Envelope, RecipientRequest
    from ..routing.directory import Directory, Kind
    from .main import open_settings_store

    store = open_settings_store(settings)
    await store.open()
    try:
        await AdminService(store).ensure_domains(settings.local_domains)
        from ..app import primary_domain
        directory = Directory(await store.directory_snapshot(), primary_domain(settings))
        requests: list[RecipientRequest] = []
        seen: set[str] = set()
        for rcpt in recipients:
            res = directory.resolve_address(rcpt)
            if res.kind is Kind.UNKNOWN or (res.kind is Kind.LOCAL and not res.targets):
                raise _Failed(EX_NOUSER, f"{rcpt}: user unknown")
            targets = (rcpt,) if res.kind is Kind.REMOTE else res.targets
            for target in targets:
                if target.lower() in seen:
                    continue
                seen.add(target.lower())
                orcpt = f"rfc822;{rcpt}" if target.lower() != rcpt.lower() else None
                requests.append(RecipientRequest(target, None, orcpt))
        blob = store.new_blob()
        try:
            blob.write(message)
        except BaseException:
            blob.abort()
            raise
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        envelope = Envelope(
            sender=sender, recipients=requests, received_at=time.time(),
            helo="", protocol="LOCAL",
            body_type="7BIT" if message.isascii() else "8BITMIME", smtputf8=utf8,
            size=blob.size, listener="sendmail")
        return await store.commit_message(envelope, blob)
    finally:
        await store.close()


def wake_server(settings) -> bool:
    """Poke a running server's queue manager; False if none is listening."""
    from ..app import WAKE_SOCKET
    path = str(settings.resolve(WAKE_SOCKET))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(b"w", path)
        return True
    except OSError:
        return False


def main(argv: Sequence[str] | None = None, *, config: str | None = None,
         stdin: BinaryIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command; returns a sysexits.h status."""
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse_args(argv)
    except _Usage as e:
        print(f"{PROG}: {e}", file=err)
        return EX_USAGE
    if config and not opts.config:
        opts.config = config
    from ..config import ConfigError
    try:
        settings = _load(opts)
    except ConfigError as e:
        for line in e.errors:
            print(f"{PROG}: {line}", file=err)
        return EX_CONFIG
    hostname = settings.hostname
    login, uid = _login()
    sender = _qualify(opts.sender, hostname) if opts.sender is not None \
        else f"{login}@{hostname}"
    raw = read_message(stdin or sys.stdin.buffer, opts.ignore_dots)
    if b"\0" in raw:
        # The same rule as SMTP intake (554 5.6.0): NUL is not allowed in mail text.
        print(f"{PROG}: message contains a NUL byte; refused", file=err)
        return EX_DATAERR
    message, found = prepare_message(raw, sender=sender, fullname=opts.fullname,
                                     extract=opts.extract, hostname=hostname, uid=uid,
                                     now=time.time())
    # A bare local name ("root") is qualified with the primary local domain (as RCPT
    # TO:<postmaster> is), so it reaches a local mailbox or alias.
    from ..app import primary_domain
    recipients = [_qualify(r, primary_domain(settings)) for r in opts.recipients + found]
    recipients = [r for r in dict.fromkeys(recipients) if r]
    if not recipients:
        print(f"{PROG}: no recipients given" + ("" if opts.extract else
                                                " (use -t to read them from the message)"),
              file=err)
        return EX_USAGE
    if len(message) > settings.limits.max_message_size:
        print(f"{PROG}: message is larger than limits.max_message_size "
              f"({settings.limits.max_message_size} octets)", file=err)
        return EX_DATAERR
    from ..store.base import StoreError
    try:
        queue_id = asyncio.run(_submit(settings, sender, recipients, message))
    except _Failed as e:
        print(f"{PROG}: {e}", file=err)
        return e.status
    except (StoreError, OSError) as e:
        print(f"{PROG}: cannot queue the message: {e}", file=err)
        return EX_TEMPFAIL
    wake_server(settings)
    if os.environ.get("MAILWRIGHT_SENDMAIL_VERBOSE"):
        print(f"{PROG}: queued as {queue_id}", file=err)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
