"""Node identity and the store a process opens from its settings.

What: ``node_name(settings)`` is the name this node uses in leases and heartbeats
(``[store] node``, else the host name); ``open_settings_store(settings, sync_method)``
builds the (unopened) store ``[store] backend`` names, for the server and for every
admin command alike, so they always open the same database.

Invariants: every process of one node uses the same name and the same ``cache_dir``
(``PostgresStore.recover`` relies on both); different nodes need different names.
"""
from __future__ import annotations

import socket
from typing import Any

from ..config.settings import Settings


def node_name(settings: Settings) -> str:
    return settings.store.node or socket.gethostname()


def postgres_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``PostgresStore`` from ``[store]``."""
    s = settings.store
    return {"dsn": s.dsn, "schema": s.schema, "node": node_name(settings),
            "cache_dir": str(settings.resolve(s.cache_dir)), "pool_size": s.pool_size}


def open_settings_store(settings: Settings, sync_method: str | None = None) -> Any:
    """The unopened store of ``settings`` (``sync_method`` applies to SQLite only; None =
    the backend's default). Local directories it needs are created here."""
    from ..store import open_store
    if settings.store.backend == "postgres":
        return open_store("postgres", **postgres_options(settings))
    paths = settings.paths
    paths.store_db.parent.mkdir(parents=True, exist_ok=True)
    paths.blob_dir.mkdir(parents=True, exist_ok=True)
    extra: dict = {"inline_body_max": settings.store.inline_body_max}
    if sync_method is not None:
        extra["sync_method"] = sync_method
    return open_store("sqlite", path=str(paths.store_db), blob_dir=str(paths.blob_dir),
                      **extra)
