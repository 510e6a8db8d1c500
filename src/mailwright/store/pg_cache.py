"""The local body cache of a PostgreSQL store node: files delivery agents can open.

What: bodies live in PostgreSQL (table ``bodies``) where every node can read them; this
store hands them to delivery agents as local files (``fetch_body`` → ``MessageBody``
with a path; ``body_path`` for synchronous callers). ``BodyCache`` keeps local copies
under ``cache_dir`` with the layout of ``blobs.BlobDir``::

    cache_dir/tmp/<random>          bodies being received, and cache files being written
    cache_dir/<fanout>/<queue_id>   a complete copy of a committed body
    cache_dir/.lock                 flock(2), shared while a store is open (see recover)

How: a copy is written under a temp name and renamed into place, so a reader sees a
complete file or none. The node that received a message keeps the copy it already has
(``PgBlobWriter.publish``); another node materialises one on demand from the database.
Copies are never fsync'd: they are a cache, not the durable copy, and ``recover`` on a
node where no other store process runs drops them all (after a power loss a renamed but
unsynced file may be empty or short).

Invariants: a body is immutable once committed, so a complete cache file is never stale;
a cache file exists only for a message that was committed (it may outlive the message,
until the node completes it, ``PostgresStore.cleanup_cache`` or ``recover`` removes it).
"""
from __future__ import annotations

import os
from typing import Iterable

from ..fsutil import unlink_quiet
from .blobs import BlobDir


class BodyCache:
    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.dir = BlobDir(cache_dir)

    @property
    def root(self) -> str:
        return self.dir.root

    @property
    def tmp(self) -> str:
        return self.dir.tmp

    def open(self) -> None:
        self.dir.open()

    def close(self) -> None:
        self.dir.close()

    def path(self, queue_id: str) -> str:
        return self.dir.path(self.dir.relpath(queue_id))

    def read(self, queue_id: str) -> bytes | None:
        """The cached body, or None if this node has no copy."""
        try:
            with open(self.path(queue_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def has(self, queue_id: str) -> bool:
        return os.path.exists(self.path(queue_id))

    def store(self, queue_id: str, chunks: Iterable[bytes]) -> str:
        """Write a copy (temp name, then rename); returns its path. Raises OSError."""
        final = self.path(queue_id)
        tmp = self.dir.new_tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=False) as f:
                for chunk in chunks:
                    f.write(chunk)
        except BaseException:
            os.close(fd)
            unlink_quiet(tmp)
            raise
        os.close(fd)
        try:
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            unlink_quiet(tmp)
            raise
        return final

    def remove(self, queue_id: str) -> bool:
        return unlink_quiet(self.path(queue_id))

    def list_copies(self) -> list[tuple[str, float]]:
        """(queue_id, mtime) of every cached body."""
        return [(rel.rpartition("/")[2], mtime) for rel, mtime in self.dir.list_final()]

    # recovery helpers, as in BlobDir
    def list_tmp(self) -> list[tuple[str, float]]:
        return self.dir.list_tmp()

    def try_exclusive(self) -> bool:
        return self.dir.try_exclusive()

    def share(self) -> None:
        self.dir.share()
