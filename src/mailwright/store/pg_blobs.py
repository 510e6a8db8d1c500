"""A body being received for the PostgreSQL store: in memory, spilled to a local temp file.

What: ``PgBlobWriter`` is the ``BlobWriter`` the SMTP session writes DATA/BDAT into
when the store is ``PostgresStore``. Nothing it holds is durable: the store's
``commit_message`` copies the body into the ``bodies`` table in the same transaction
as the envelope, and only that COMMIT makes it durable.

How: ``write`` appends to a buffer; once the buffer reaches ``spill_size`` (64 KiB by
default) the body moves to a temp file ``<cache>/tmp/<random>`` (``O_EXCL``, mode
0600) and later writes go there, so a session holds at most one buffer of memory.
``read_all()`` returns the whole body received so far (for end-of-data checks such as
DKIM); ``prepend(data)`` inserts bytes before it (the Authentication-Results header
written after the checks; a spilled body is copied once into a new temp file behind
the new bytes). ``chunks(n)`` yields the body in pieces of at most ``n`` bytes for the
database. After the commit the store turns the writer into the local cache copy with
``publish(path)``: a rename for a spilled body, a temp write + rename otherwise.

Invariants: ``size`` is the length of the whole body (prepended bytes included);
``abort()`` removes any temp file and is idempotent (a no-op once sealed); a sealed
writer accepts no more data; a file only ever appears under its final cache name
complete (written under a temp name first).
"""
from __future__ import annotations

import os
import shutil
from typing import Iterator

from ..fsutil import unlink_quiet
from .base import StoreError
from .blobs import BlobDir

SPILL_SIZE = 64 * 1024

_OPEN = 0
_SEALED = 1
_DONE = 2
_ABORTED = 3


class PgBlobWriter:
    """See the module docstring. Satisfies ``base.BlobWriter``."""

    __slots__ = ("owner", "tmp_path", "_fd", "_buf", "_size", "_state", "spill_size",
                 "queue_id", "__weakref__")

    def __init__(self, owner: BlobDir, spill_size: int = SPILL_SIZE) -> None:
        self.owner = owner
        self.spill_size = spill_size
        self.tmp_path = ""         # set once spilled
        self.queue_id: str | None = None
        self._fd = -1
        self._buf = bytearray()
        self._size = 0
        self._state = _OPEN

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        return self._fd >= 0

    # --- session side
    def write(self, data: bytes) -> None:
        if self._state != _OPEN:
            raise StoreError("write to a blob that was committed or aborted")
        if self._fd >= 0:
            try:
                self._write_fd(self._fd, data)
            except StoreError:
                self.abort()
                raise
        else:
            self._buf += data
            if len(self._buf) >= self.spill_size:
                self._spill()
        self._size += len(data)

    def read_all(self) -> bytes:
        """The whole body written (and prepended) so far."""
        if self._state not in (_OPEN, _SEALED):
            raise StoreError("blob was committed or aborted")
        if self._fd < 0:
            return bytes(self._buf)
        return b"".join(self._file_chunks(1 << 20))

    def prepend(self, data: bytes) -> None:
        """Insert ``data`` before everything written so far."""
        if self._state != _OPEN:
            raise StoreError("prepend to a blob that was committed or aborted")
        if not data:
            return
        if self._fd < 0:
            self._buf[0:0] = data
            if len(self._buf) >= self.spill_size:
                self._spill()
        else:
            old_fd, old_path = self._fd, self.tmp_path
            new_fd, new_path = self._create()
            try:
                self._write_fd(new_fd, data)
                os.lseek(old_fd, 0, os.SEEK_SET)
                with open(old_fd, "rb", closefd=False) as src, \
                        open(new_fd, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except OSError as exc:
                os.close(new_fd)
                unlink_quiet(new_path)
                self.abort()
                raise StoreError(f"cannot write message body: {exc.strerror}") from exc
            self._fd, self.tmp_path = new_fd, new_path
            os.close(old_fd)
            unlink_quiet(old_path)
        self._size += len(data)

    def abort(self) -> None:
        """Drop the body and any temp file. Idempotent; a no-op once sealed."""
        if self._state != _OPEN:
            return
        self._state = _ABORTED
        self.discard()

    def seal(self) -> None:
        """Hand the body over to ``commit_message``: no more writes."""
        if self._state != _OPEN:
            raise StoreError("blob was already committed or aborted")
        self._state = _SEALED

    # --- store side
    def chunks(self, size: int) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes (at least one piece, maybe empty).
        Reads the temp file of a spilled body: call it off the event loop for large ones."""
        if self._fd < 0:
            view = bytes(self._buf)
            if not view:
                yield b""
            for i in range(0, len(view), size):
                yield view[i:i + size]
        else:
            empty = True
            for piece in self._file_chunks(size):
                empty = False
                yield piece
            if empty:
                yield b""

    def publish(self, final_path: str) -> None:
        """Make this body the cache file ``final_path`` (complete or not at all) and
        release its resources. Raises OSError; the writer is done either way."""
        try:
            if self._fd < 0:
                tmp = self.owner.new_tmp_path()
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    self._write_fd(fd, self._buf)
                finally:
                    os.close(fd)
                self.tmp_path = tmp
            else:
                os.close(self._fd)
                self._fd = -1
            os.makedirs(os.path.dirname(final_path), mode=0o700, exist_ok=True)
            os.replace(self.tmp_path, final_path)
            self.tmp_path = ""
        finally:
            self.discard()
            self._state = _DONE

    def discard(self) -> None:
        """Free the buffer and remove the temp file. Never raises."""
        self._buf = bytearray()
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        if self.tmp_path:
            unlink_quiet(self.tmp_path)
            self.tmp_path = ""
        if self._state in (_OPEN, _SEALED):
            self._state = _DONE

    # --- internals
    def _create(self) -> tuple[int, str]:
        for _ in range(8):
            path = self.owner.new_tmp_path()
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o600), path
            except FileExistsError:
                continue
        raise StoreError("cannot create a unique body file")

    def _spill(self) -> None:
        try:
            fd, path = self._create()
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot create message body file: {exc.strerror}") from exc
        self._fd, self.tmp_path = fd, path
        try:
            self._write_fd(fd, self._buf)
        except StoreError:
            self.abort()
            raise
        self._buf = bytearray()

    @staticmethod
    def _write_fd(fd: int, data: bytes | bytearray) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise StoreError(f"cannot write message body: {exc.strerror}") from exc
        finally:
            view.release()

    def _file_chunks(self, size: int) -> Iterator[bytes]:
        offset = 0
        while True:
            piece = os.pread(self._fd, size, offset)
            if not piece:
                return
            offset += len(piece)
            yield piece

    def __del__(self) -> None:  # a session that vanished without abort(): no leaked fd
        if getattr(self, "_state", None) == _OPEN:
            self.abort()
