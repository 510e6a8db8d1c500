"""Storage: one ``Store`` protocol (``base``), backends, and ``open_store``.

``open_store(kind, **options)`` builds a backend from config (GUIDE idea 11: explicit
wiring, a registry of typed factories). It returns the store *unopened*; the caller
runs ``await store.open()`` (and ``await store.recover()`` at startup) itself.

    store = open_store("sqlite", path="/var/spool/mailwright/queue.db",
                       blob_dir="/var/spool/mailwright/blobs")
"""
from __future__ import annotations

from typing import Any, Callable

from .base import (
    Alias, AttemptRecord, BlobWriter, DirectorySnapshot, DuplicateError, Mailbox,
    NotFoundError, RecoveryReport, Store, StoreError,
)


def _sqlite(*, path: str, blob_dir: str, **options: Any) -> Store:
    from .sqlite import SQLiteStore
    return SQLiteStore(path, blob_dir, **options)


def _postgres(*, dsn: str, **options: Any) -> Store:
    from .postgres import PostgresStore
    return PostgresStore(dsn, **options)


BACKENDS: dict[str, Callable[..., Store]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


def open_store(kind: str, **options: Any) -> Store:
    """A store of the named backend ("sqlite" or "postgres"), not yet opened.

    sqlite options: ``path`` (database file), ``blob_dir`` (body directory), and the
    keyword options of ``SQLiteStore`` (``busy_timeout``, ``lock_retry_seconds``,
    ``sync_method``, ``fsync_threads``, ``max_batch``, ``recover_grace_seconds``,
    ``inline_body_max``).
    postgres options: ``dsn`` and the keyword options of ``PostgresStore`` (``schema``,
    ``node``, ``cache_dir``, ``pool_size``, ...)."""
    try:
        factory = BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown store backend {kind!r}; known: "
                         f"{', '.join(sorted(BACKENDS))}") from None
    return factory(**options)


__all__ = [
    "Alias", "AttemptRecord", "BACKENDS", "BlobWriter", "DirectorySnapshot", "DuplicateError",
    "Mailbox", "NotFoundError", "RecoveryReport", "Store", "StoreError", "open_store",
]
