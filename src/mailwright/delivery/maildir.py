"""Local delivery into Dovecot-compatible Maildirs (transport "maildir").

What: ``MaildirAgent`` writes one copy per recipient to ``<root>/<domain>/<user>/``
(``Route.mailbox`` = "user@domain"), or to the Maildir++ sub-folder ``.<Folder>`` when
``Route.folder`` is set, and returns exactly one ``DeliveryResult`` per task.

How (D. J. Bernstein, "Using maildir format", cr.yp.to/proto/maildir.html; Dovecot's
Maildir++ layout and file naming):
1. Look the mailbox up in the directory (the Store): gone since acceptance → permanent
   ``550 5.1.1``. Its ``quota_bytes`` (0 = unlimited) bounds the Maildir's size.
2. In a worker thread (``asyncio.to_thread``, the event loop never blocks on disk):
   create ``cur/ new/ tmp/`` (mode 0o700) on first delivery; check idempotence (below);
   check the quota; write trace headers (message/trace.py) + the stored body, streamed in
   64 KiB chunks and otherwise byte-identical, to ``tmp/<unique>`` with
   ``unique = <sec>.M<usec>P<pid>Q<counter>R<random>.<host>``; fsync the file; ``link()``
   it into ``new/`` under its final name, unlink the tmp name, fsync ``new/``. Only then
   the result is ok (GUIDE idea 5: success only after a durable write).

Final names and exactly-once delivery. The name in ``new/`` is a function of the queue
entry, not of the time of the attempt::

    <received_at>.Q<queue_id>R<recipient_id>.<host>,S=<size>

(``<host>`` with "/" → "\\057", ":" → "\\072", "," → "\\054" as the Maildir spec and Dovecot
do; ``S=`` is the file size, which Dovecot reads instead of stat()ing.) If the process
dies after the link into ``new/`` but before the store records the result, the retry finds
its own file and reports success without writing a second copy. The check is cheap: one
``os.path.exists`` on the exact ``new/`` name (size is known before writing: headers are
deterministic and the body size comes from one stat), then, only if that misses, one
``os.scandir`` pass over ``new/`` and ``cur/`` with a prefix match on ``<base>,`` /
``<base>:`` (an IMAP server moves files from new/ to cur/, appending ``:2,<flags>``, and
keeps the base name; new/ is matched by prefix too in case the header size changed, e.g.
across an upgrade). The same pass counts the quota, so a delivery costs one directory scan
(no extra marker files to create, fsync and clean up). A copy
the user has already moved to another folder or deleted is not detected; that needs the
crash to hit the sub-second window between link and the store's commit *and* a user
action before the retry.

Quota (Maildir++ semantics, counted by scanning rather than with a ``maildirsize`` file,
so that deletions by an IMAP server that does not maintain ``maildirsize`` are never
missed): the sum of sizes (from ``,S=`` or stat) of all files in ``new/`` and ``cur/`` of
the Maildir and its ``.Folder`` sub-folders. Current size + this copy > quota → temporary
``452 4.2.2 Mailbox full`` (RFC 3463 X.2.2), retried by the queue.

Errors (GUIDE idea 4): disk errors (ENOSPC, EIO, EACCES, an unreadable body...) are
temporary ``451 4.3.0``; EDQUOT (filesystem quota) is ``452 4.2.2``. A failed write unlinks
its tmp file, so ``new/`` only ever holds complete, fsync'd messages. Any unexpected
exception becomes a temporary failure for that recipient; ``deliver`` never raises.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Protocol, Sequence

from ..fsutil import fsync_dir, rename_noreplace
from ..message.headers import quarantine_reason
from ..message.trace import local_delivery_headers
from ..queue.body import MessageBody
from ..queue.model import DeliveryResult, QueuedMessage
from ..store.base import Mailbox
from .base import DeliveryTask

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DIR_MODE = 0o700
FILE_MODE = 0o600

OK_REPLY = "250 2.0.0 Delivered to maildir"
ALREADY_REPLY = "250 2.0.0 Already delivered to maildir"
UNAVAILABLE_REPLY = "550 5.1.1 Mailbox unavailable"
FULL_REPLY = "452 4.2.2 Mailbox full"
LOCAL_ERROR_REPLY = "451 4.3.0 Temporary local delivery error"


class MailboxDirectory(Protocol):
    """The part of the Store the agent needs (the Store satisfies it)."""

    def get_mailbox(self, address: str) -> Awaitable[Mailbox | None]: ...


class _Temporary(Exception):
    """A failure reported as a temporary DeliveryResult with ``reply``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


QUARANTINE_PEEK = 16 * 1024     # our fields come first; this covers them


def _quarantined(body: MessageBody) -> bool:
    """True if the stored message carries our quarantine field (message/headers.py; it is
    removed from everything that arrives, so only our checks can have set it)."""
    try:
        head = body.head(QUARANTINE_PEEK)
    except OSError:
        return False            # the write below reports the unreadable body
    return quarantine_reason(head) is not None


def _escape_name_part(value: str) -> str:
    """Maildir spec: '/' and ':' in the host part are written as octal escapes; we also
    escape ',' (Dovecot's ",S=" field separator) and '\\' (the escape character)."""
    return (value.replace("\\", "\\134").replace("/", "\\057")
            .replace(":", "\\072").replace(",", "\\054"))


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one recipient's copy goes."""
    maildir: str        # the mailbox's top Maildir (quota is counted over all of it)
    folder_dir: str     # the Maildir (top or ".Folder") receiving this copy
    base: str           # deterministic name without ",S=" (idempotence key)
    junk_dir: str = ""  # where a quarantined copy goes instead ("" = no junk folder)


class MaildirAgent:
    """Delivery agent for transport "maildir". See the module docstring."""

    transport = "maildir"

    def __init__(self, root: str, hostname: str, fsync: bool = True, *,
                 directory: MailboxDirectory | None = None, junk_folder: str = "Junk") -> None:
        self.root = os.path.abspath(root)
        self.hostname = hostname
        self.fsync = fsync
        # Without a directory every mailbox is assumed to exist and to be unlimited.
        self.directory = directory
        self.junk_folder = junk_folder
        self._name_host = _escape_name_part(hostname or "localhost")
        self._counter = itertools.count(1)

    # ------------------------------------------------------------------ public API
    async def deliver(self, message: QueuedMessage, body: MessageBody,
                      tasks: Sequence[DeliveryTask]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for task in tasks:
            try:
                result = await self._deliver_task(message, body, task)
            except Exception:  # never raise to the manager; unknown means temporary
                log.exception("maildir delivery of %s recipient %s failed",
                              message.queue_id, task.recipient.id)
                result = DeliveryResult(task.recipient.id, ok=False, permanent=False,
                                        reply=LOCAL_ERROR_REPLY)
            results.append(result)
        return results

    def maildir_path(self, mailbox: str) -> str | None:
        """``<root>/<domain>/<user>`` for "user@domain", or None if the name is unsafe
        (empty part, path separator, NUL, leading dot: never escape the root)."""
        user, at, domain = mailbox.rpartition("@")
        if not at:
            return None
        user, domain = user.lower(), domain.lower()
        for part in (user, domain):
            if (not part or part.startswith(".") or "/" in part or "\x00" in part
                    or "\\" in part):
                return None
        return os.path.join(self.root, domain, user)

    # ------------------------------------------------------------------ one recipient
    async def _deliver_task(self, message: QueuedMessage, body: MessageBody,
                            task: DeliveryTask) -> DeliveryResult:
        rid = task.recipient.id
        mailbox_name = (task.route.mailbox or task.route.address).lower()
        maildir = self.maildir_path(mailbox_name)
        if maildir is None:
            log.warning("unsafe mailbox name %r for %s", mailbox_name, message.queue_id)
            return DeliveryResult(rid, ok=False, permanent=True, reply=UNAVAILABLE_REPLY)
        quota = 0
        if self.directory is not None:
            mailbox = await self.directory.get_mailbox(mailbox_name)
            if mailbox is None:
                return DeliveryResult(rid, ok=False, permanent=True, reply=UNAVAILABLE_REPLY)
            quota = mailbox.quota_bytes
        headers = local_delivery_headers(
            message.envelope, queue_id=message.queue_id, hostname=self.hostname,
            recipient=task.recipient.address,
            delivered_to=task.route.address or mailbox_name)
        target = _Target(maildir=maildir,
                         folder_dir=self._folder_dir(maildir, task.route.folder),
                         base=self._final_base(message, rid),
                         junk_dir=self._folder_dir(maildir, self.junk_folder)
                         if self.junk_folder else "")
        try:
            reply = await asyncio.to_thread(self._write, target, headers, body, quota,
                                            message.reclaimed)
        except _Temporary as exc:
            return DeliveryResult(rid, ok=False, permanent=False, reply=exc.reply)
        except OSError as exc:
            log.warning("maildir delivery of %s to %s failed: %s",
                        message.queue_id, mailbox_name, exc)
            reply = FULL_REPLY if exc.errno == errno.EDQUOT else LOCAL_ERROR_REPLY
            return DeliveryResult(rid, ok=False, permanent=False, reply=reply)
        return DeliveryResult(rid, ok=True, reply=reply)

    @staticmethod
    def _folder_dir(maildir: str, folder: str) -> str:
        """Maildir++: sub-folder "A/B" (or "A.B") lives in ``<maildir>/.A.B``. INBOX and
        unusable names (empty components, "..", NUL) deliver to the top Maildir."""
        if not folder or folder.upper() == "INBOX":
            return maildir
        parts = folder.replace("/", ".").split(".")
        if any(p in ("", "..") or "\x00" in p or "\\" in p for p in parts):
            log.warning("unusable folder name %r, delivering to INBOX", folder)
            return maildir
        return os.path.join(maildir, "." + ".".join(parts))

    def _final_base(self, message: QueuedMessage, recipient_id: int) -> str:
        qid = _escape_name_part(message.queue_id)
        return f"{int(message.envelope.received_at)}.Q{qid}R{recipient_id}.{self._name_host}"

    def _tmp_name(self) -> str:
        now = time.time()
        sec, usec = int(now), int((now % 1) * 1_000_000)
        return (f"{sec}.M{usec}P{os.getpid()}Q{next(self._counter)}"
                f"R{secrets.token_hex(8)}.{self._name_host}")

    # ------------------------------------------------------------------ blocking part
    def _write(self, target: _Target, headers: bytes, body: MessageBody, quota: int,
               maybe_delivered: bool = True) -> str:
        """Runs in a worker thread. Returns the ok reply; raises _Temporary or OSError."""
        if target.junk_dir and _quarantined(body):
            # Our quarantine mark (DMARC p=quarantine, content rules): the Junk folder.
            target = _Target(target.maildir, target.junk_dir, target.base)
        self._ensure_maildir(target.maildir, sub_folder=False)
        if target.folder_dir != target.maildir:
            self._ensure_maildir(target.folder_dir, sub_folder=True)
        new_dir = os.path.join(target.folder_dir, "new")

        try:
            body_size = body.size()
        except OSError as exc:
            log.error("message body %s unreadable: %s", body, exc)
            raise _Temporary(LOCAL_ERROR_REPLY) from exc
        size = len(headers) + body_size
        final_name = f"{target.base},S={size}"

        # Idempotence first: the exact new/ name is one stat. The folder scan (which also
        # finds a copy an IMAP client already moved to cur/) costs O(mailbox size), so it
        # runs only when an earlier attempt may have delivered (``maybe_delivered``: the
        # message was reclaimed after a crash) or when the quota needs the usage anyway.
        if os.path.exists(os.path.join(new_dir, final_name)):
            return ALREADY_REPLY
        used = 0
        if maybe_delivered or quota > 0:
            found, used = scan_maildir(target.maildir, target.folder_dir, target.base,
                                       count_size=quota > 0)
            if found:
                return ALREADY_REPLY
        if quota > 0 and used + size > quota:
            raise _Temporary(FULL_REPLY)

        tmp_path = os.path.join(target.folder_dir, "tmp", self._tmp_name())
        try:
            self._write_tmp(tmp_path, headers, body, size)
            try:
                # Into new/ without ever replacing a file: renameat2(RENAME_NOREPLACE),
                # or link + unlink where that is missing (the Maildir way).
                rename_noreplace(tmp_path, os.path.join(new_dir, final_name))
            except FileExistsError:
                pass  # a concurrent attempt of the same recipient won: same content
        finally:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a stale tmp file is harmless; IMAP servers clean tmp/
                log.warning("could not remove %s: %s", tmp_path, exc)
        if self.fsync:
            fsync_dir(new_dir)
        return OK_REPLY

    def _write_tmp(self, tmp_path: str, headers: bytes, body: MessageBody, size: int) -> None:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "wb", buffering=0) as out, body.open() as src:
            _write_all(out, headers)
            while chunk := src.read(CHUNK):
                _write_all(out, chunk)
            written = out.tell()
            if written != size:  # the blob changed under us: never link a wrong copy
                raise _Temporary(LOCAL_ERROR_REPLY)
            if self.fsync:
                os.fsync(out.fileno())

    def _ensure_maildir(self, path: str, *, sub_folder: bool) -> None:
        """Create ``path`` with cur/ new/ tmp/ (and parents) at mode 0o700, fsyncing each
        directory whose entries changed so a crash cannot lose a delivered file's path."""
        if os.path.isdir(os.path.join(path, "new")) and os.path.isdir(os.path.join(path, "tmp")):
            return
        created = _makedirs(path)
        changed = set(os.path.dirname(p) for p in created)
        for sub in ("cur", "new", "tmp"):
            try:
                os.mkdir(os.path.join(path, sub), DIR_MODE)
                changed.add(path)
            except FileExistsError:
                pass
        if sub_folder:
            marker = os.path.join(path, "maildirfolder")  # Maildir++ sub-folder marker
            if not os.path.exists(marker):
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
                changed.add(path)
        if self.fsync:
            for d in sorted(changed, key=len, reverse=True):
                fsync_dir(d)


def _makedirs(path: str) -> list[str]:
    """``os.makedirs`` at DIR_MODE that returns the directories it created."""
    missing: list[str] = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
            created.append(d)
        except FileExistsError:
            pass
    return created


def _write_all(out, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = out.write(view)
        if n is None or n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _file_size(entry: os.DirEntry) -> int:
    """Size from Dovecot's ",S=<n>" name field, else stat (0 if the file vanished)."""
    name = entry.name
    i = name.find(",S=")
    if i != -1:
        digits = []
        for ch in name[i + 3:]:
            if not ch.isdigit():
                break
            digits.append(ch)
        if digits:
            return int("".join(digits))
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _folders(maildir: str) -> list[str]:
    """The top Maildir and its Maildir++ ``.Folder`` sub-directories."""
    folders = [maildir]
    try:
        with os.scandir(maildir) as it:
            for entry in it:
                if (entry.name.startswith(".") and entry.name not in (".", "..")
                        and entry.is_dir(follow_symlinks=False)):
                    folders.append(entry.path)
    except FileNotFoundError:
        pass
    return folders


def scan_maildir(maildir: str, folder_dir: str, base: str, *, count_size: bool
                 ) -> tuple[bool, int]:
    """One pass over ``new/`` and ``cur/``: (a file named ``base`` — plus ``,S=...`` or
    ``:2,flags`` — exists in ``folder_dir``, bytes used by the whole Maildir tree).
    Folders other than ``folder_dir`` are read only when ``count_size`` is set."""
    prefixes = (base + ",", base + ":")
    folders = _folders(maildir) if count_size else [folder_dir]
    if folder_dir not in folders:
        folders.append(folder_dir)
    found = False
    total = 0
    for folder in folders:
        match = folder == folder_dir
        for sub in ("new", "cur"):
            try:
                with os.scandir(os.path.join(folder, sub)) as it:
                    for entry in it:
                        name = entry.name
                        if match and (name == base or name.startswith(prefixes)):
                            found = True
                            if not count_size:
                                return True, 0
                        if count_size and entry.is_file(follow_symlinks=False):
                            total += _file_size(entry)
            except FileNotFoundError:
                continue
    return found, total


def maildir_size(maildir: str) -> int:
    """Bytes in ``new/`` and ``cur/`` of a Maildir and of its Maildir++ ``.Folder``s."""
    return scan_maildir(maildir, maildir, "\x00", count_size=True)[1]
