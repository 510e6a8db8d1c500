"""Message bodies as files: written to ``tmp/``, fsync'd, then linked into place.

What: ``BlobDir`` owns a directory laid out as::

    blob_dir/tmp/<random>          bodies being received (never visible to the queue)
    blob_dir/<fanout>/<queue_id>   committed bodies (fanout = queueid.fanout(), 2 chars)
    blob_dir/.lock                 flock(2): shared while a store is open, see ``recover``

``FileBlobWriter`` is the ``BlobWriter`` the SMTP session writes DATA/BDAT into.

How (Postfix ``mail_stream.c`` fsyncs the queue file before "queued as"; chasquid's
``safeio`` writes a temp file, fsyncs, renames):

1. ``new_writer()`` names ``tmp/<random>``; ``write()`` buffers up to 64 KiB. Only a body
   larger than the buffer creates its file on the event loop thread (``O_WRONLY|O_CREAT|
   O_EXCL``, mode 0600) and streams to it with plain ``os.write`` calls. A smaller body
   (most mail) stays in memory until the committer thread creates and writes the file:
   creating a file can wait for a journal commit in progress (measured: ~0.7 ms per
   ``openat`` while fsyncs run), which must not stall every session on the loop.
2. ``seal()`` (called by ``commit_message`` on the loop thread) hands the writer over to
   the committer; from then on ``abort()`` is a no-op. The committer calls
   ``materialize()`` (create the file if needed, write what is buffered).
3. The group committer calls ``publish()``: a body still in memory is created under its
   final name directly (``O_EXCL``); a streamed one is renamed there from ``tmp/`` with
   ``renameat2(RENAME_NOREPLACE)`` (so an id clash can never replace another body). Then
   the batch is made durable: one ``syncfs()`` (``sync_method = "syncfs"``), or
   ``sync_and_close()`` (fsync of data and inode) for every body plus ``fsync_dir()`` for
   every directory touched. Only after that is the database row committed.

Invariants: the database row of a body is committed only after the body and its name are
durable; a final name without a committed message row is garbage from a crash before the
DB commit (``recover`` removes it); everything under ``tmp/`` is garbage after a crash.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import os
import secrets
import sys
import zlib

from ..fsutil import fsync_dir, rename_noreplace, unlink_quiet
from . import queueid
from .base import StoreError

_tmp_counter = itertools.count()
_tmp_prefix = ""


def _new_tmp_prefix() -> None:
    global _tmp_prefix, _tmp_counter
    _tmp_prefix = f"{os.getpid():x}.{secrets.token_hex(6)}."
    _tmp_counter = itertools.count()


_new_tmp_prefix()
os.register_at_fork(after_in_child=_new_tmp_prefix)

BUFFER_SIZE = 64 * 1024

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None

_OPEN = 0
_SEALED = 1
_CLOSED = 2
_ABORTED = 3


class FileBlobWriter:
    """A body being received into ``tmp/``. Satisfies ``base.BlobWriter``."""

    __slots__ = ("owner", "tmp_path", "final_path", "queue_id", "_fd", "_buf", "_size", "_state",
                 "crc", "inline")

    def __init__(self, owner: "BlobDir", tmp_path: str, fd: int = -1) -> None:
        self.owner = owner
        self.tmp_path = tmp_path
        self.final_path: str | None = None   # set by BlobDir.publish
        self.queue_id: str | None = None
        self._fd = fd
        self._buf = bytearray()
        self._size = 0
        self._state = _OPEN
        self.crc = 0            # CRC-32 of the body, recorded with its row
        self.inline: bytes | None = None     # set by keep_inline: no file, a database row

    @property
    def size(self) -> int:
        return self._size

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    def write(self, data: bytes) -> None:
        if self._state != _OPEN:
            raise StoreError("write to a blob that was committed or aborted")
        self._buf += data
        self._size += len(data)
        self.crc = zlib.crc32(data, self.crc)
        if len(self._buf) >= BUFFER_SIZE:
            self._flush()

    def _open(self) -> None:
        """Create the temp file (O_EXCL; a clash of the random name picks another)."""
        for _ in range(8):
            try:
                self._fd = os.open(self.tmp_path,
                                   os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                return
            except FileExistsError:
                self.tmp_path = self.owner.new_tmp_path()
        raise FileExistsError(errno.EEXIST, "cannot create a unique body file", self.tmp_path)

    def _flush(self) -> None:
        if self._fd < 0:
            try:
                self._open()
            except OSError as exc:
                self.abort()
                raise StoreError(f"cannot create message body file: {exc.strerror}") from exc
        view = memoryview(self._buf)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            view.release()
            self.abort()
            raise StoreError(f"cannot write message body: {exc.strerror}") from exc
        view.release()
        self._buf.clear()

    def read_all(self) -> bytes:
        """The whole body received so far (end-of-data checks such as DKIM need it).
        Reads the temp file back when the body was large enough to have one."""
        if self._state != _OPEN:
            raise StoreError("read of a blob that was committed or aborted")
        if self._fd < 0:
            return bytes(self._buf)
        try:
            with open(self.tmp_path, "rb") as f:
                return f.read() + bytes(self._buf)
        except OSError as exc:
            raise StoreError(f"cannot read message body back: {exc.strerror}") from exc

    def prepend(self, data: bytes) -> None:
        """Insert ``data`` before everything written (header fields added after the
        end-of-data checks, e.g. Authentication-Results). A body still in memory is
        changed in place; a streamed one is copied once into a new temp file."""
        if self._state != _OPEN:
            raise StoreError("prepend to a blob that was committed or aborted")
        if not data:
            return
        if self._fd < 0:
            self._buf[0:0] = data
            self._size += len(data)
            self.crc = zlib.crc32(self._buf)
            return
        old_path, old_fd = self.tmp_path, self._fd
        self._fd = -1
        self.tmp_path = self.owner.new_tmp_path()
        tail, self._buf = self._buf, bytearray()
        self._size, self.crc = 0, 0
        try:
            self.write(data)
            with open(old_path, "rb") as old:
                while chunk := old.read(1 << 20):
                    self.write(chunk)
            self.write(bytes(tail))
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot rewrite message body: {exc.strerror}") from exc
        finally:
            try:
                os.close(old_fd)
            except OSError:
                pass
            unlink_quiet(old_path)

    def abort(self) -> None:
        """Close and remove the partial file. Idempotent; a no-op once sealed."""
        if self._state != _OPEN:
            return
        self._state = _ABORTED
        self._buf = bytearray()
        if self._fd >= 0:
            self._close_fd()
            unlink_quiet(self.tmp_path)

    def seal(self) -> None:
        """Hand the body over to the committer (which writes what is still buffered)."""
        if self._state != _OPEN:
            raise StoreError("blob was already committed or aborted")
        self._state = _SEALED

    # --- committer side (writer thread)
    @property
    def in_memory(self) -> bool:
        """No file exists yet: the whole body is in the buffer."""
        return self._fd < 0

    def materialize(self, path: str | None = None) -> None:
        """Create the file if the body was small enough to stay in memory (at ``path``,
        its final name, when given: O_EXCL, so an existing body is never replaced), and
        write the buffered bytes. Raises OSError (FileExistsError for a taken name)."""
        if self._fd < 0:
            if path is None:
                self._open()
            else:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                   0o600)
                self.tmp_path = ""
        if self._buf:
            view = memoryview(self._buf)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            finally:
                view.release()
            self._buf = bytearray()

    def keep_inline(self, queue_id: str) -> None:
        """Committer side, for a body still in memory: it goes into the database with its
        row (the store's ``bodies`` table, from ``inline``) instead of a file. The writer
        is closed (``discard`` then has nothing to remove)."""
        if self._fd >= 0 or self._state != _SEALED:
            raise StoreError("only a sealed body still in memory can be kept inline")
        self.inline = bytes(self._buf)
        self._buf = bytearray()
        self.queue_id = queue_id
        self.tmp_path = ""
        self._state = _CLOSED

    def start_writeback(self) -> None:
        """Ask the kernel to start writing the body out now, without waiting. Called for
        every body of a batch before the first fsync: the data (and on ext4 the block
        allocations) of the whole batch then go out together, so the fsyncs that follow
        mostly just wait, instead of each forcing its own journal commit. On Linux
        POSIX_FADV_DONTNEED starts asynchronous writeback of dirty pages
        (mm/fadvise.c); elsewhere it is a harmless hint."""
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass

    def close_synced(self) -> None:
        """Close after the whole file system was synced (``BlobDir.syncfs``)."""
        self._close_fd()
        self._state = _CLOSED

    def sync_and_close(self) -> None:
        """fsync the body (data and inode) and close it. Raises OSError."""
        try:
            os.fsync(self._fd)
        finally:
            self._close_fd()
        self._state = _CLOSED

    def discard(self) -> None:
        """Remove whatever exists of this blob (temp and/or final name). Never raises."""
        self._close_fd()
        if self.tmp_path:
            unlink_quiet(self.tmp_path)
        if self.final_path is not None:
            unlink_quiet(self.final_path)
        self._state = _ABORTED

    def _close_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def __del__(self) -> None:  # a session that vanished without abort(): don't leak the fd
        if getattr(self, "_state", None) == _OPEN:
            self.abort()


class BlobDir:
    """The on-disk layout of bodies (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.tmp = os.path.join(self.root, "tmp")
        self._known_dirs: set[str] = set()
        self._lock_fd = -1

    # --- lifecycle
    def open(self) -> None:
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = -1

    def try_exclusive(self) -> bool:
        """True if no other open store shares this blob dir (we then hold LOCK_EX until
        ``share()``). Used by ``recover`` to decide whether ``tmp/`` may be emptied."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # conversion may have dropped it
            return False

    def share(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    # --- intake
    def new_tmp_path(self) -> str:
        # Unique without a system call per body (secrets.token_hex cost one getrandom(2)
        # per message): process id, a per-process random tag and a counter. The file is
        # created with O_EXCL, so a clash (a recycled pid meeting an old crash's leftovers
        # with the same tag) is detected and retried with the next name, never shared.
        return os.path.join(self.tmp, f"{_tmp_prefix}{next(_tmp_counter):x}")

    def new_writer(self) -> FileBlobWriter:
        """A writer for a new body; its file is created lazily (see the module doc)."""
        return FileBlobWriter(self, self.new_tmp_path())

    def relpath(self, queue_id: str) -> str:
        return f"{queueid.fanout(queue_id)}/{queue_id}"

    def path(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)

    def publish(self, writer: FileBlobWriter, queue_id: str) -> tuple[str, ...]:
        """Give a synced blob its final name; returns the directories to fsync (the
        fan-out directory, plus the root the first time this process uses a fan-out
        directory, since it may have just been created).
        Raises FileExistsError if the name is taken (caller picks another id)."""
        d = os.path.join(self.root, queueid.fanout(queue_id))
        final = os.path.join(d, queue_id)
        dirs: tuple[str, ...] = (d,)
        if d not in self._known_dirs:
            os.makedirs(d, mode=0o700, exist_ok=True)
            self._known_dirs.add(d)
            dirs = (d, self.root)
        if writer.in_memory:
            # Created under its final name directly: no temp name to link and unlink.
            # Until the row commits it is an orphan that recover() removes after a crash.
            writer.materialize(final)
        else:
            writer.materialize()
            rename_noreplace(writer.tmp_path, final)
        writer.final_path = final
        writer.queue_id = queue_id
        return dirs

    def checksum(self, relpath: str) -> tuple[int, int] | None:
        """(size, CRC-32) of a stored body, or None if it cannot be read."""
        crc, size = 0, 0
        try:
            with open(os.path.join(self.root, relpath), "rb") as f:
                while chunk := f.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
        except OSError:
            return None
        return size, crc

    def syncfs(self) -> None:
        """syncfs(2) on the blob directory's file system: one call makes every body,
        inode and directory entry written so far durable (one journal commit instead
        of one per file). Linux only; reports writeback errors since Linux 5.8."""
        self.syncfs_fd(self._lock_fd)

    @staticmethod
    def syncfs_fd(fd: int) -> None:
        """syncfs(2) of the file system holding the open file ``fd``."""
        if _libc is None or not hasattr(_libc, "syncfs"):
            raise OSError(errno.ENOSYS, "syncfs is not available")
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    @staticmethod
    def syncfs_available() -> bool:
        return _libc is not None and hasattr(_libc, "syncfs") and sys.platform == "linux"

    fsync_dir = staticmethod(fsync_dir)

    # --- queue side
    def remove(self, relpath: str) -> bool:
        return unlink_quiet(os.path.join(self.root, relpath))

    def read(self, relpath: str) -> bytes:
        with open(os.path.join(self.root, relpath), "rb") as f:
            return f.read()

    def exists(self, relpath: str) -> bool:
        return os.path.exists(os.path.join(self.root, relpath))

    # --- recovery
    def list_tmp(self) -> list[tuple[str, float]]:
        """(path, mtime) of every file under tmp/."""
        out = []
        with os.scandir(self.tmp) as it:
            for e in it:
                try:
                    out.append((e.path, e.stat().st_mtime))
                except FileNotFoundError:
                    pass
        return out

    def list_final(self) -> list[tuple[str, float]]:
        """(relpath, mtime) of every committed-looking body file."""
        out = []
        with os.scandir(self.root) as top:
            for d in top:
                if d.name in ("tmp", ".lock") or not d.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(d.path) as inner:
                    for e in inner:
                        if not queueid.is_valid(e.name):
                            continue
                        try:
                            out.append((f"{d.name}/{e.name}", e.stat().st_mtime))
                        except FileNotFoundError:
                            pass
        return out
