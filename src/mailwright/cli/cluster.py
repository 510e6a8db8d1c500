"""``mailwright cluster``, ``mailwright db`` and ``mailwright mailbox``: the cluster's
administration.

    mailwright cluster status [--json]       nodes, last heartbeat, leases, queue per state
    mailwright db migrate [--json]           create or upgrade the store's schema
    mailwright mailbox list ADDRESS [--folder F] [--json]
    mailwright mailbox show ID [--raw]       one stored copy (headers + body)

``cluster`` and ``mailbox`` need ``[store] backend = "postgres"`` (mailboxes also
``[delivery] mailbox_store = "postgres"``); ``db migrate`` works on both backends and
reports the schema version before and after. Thin faces over the store (``cluster/
status.py`` for the status), like the other admin commands (GUIDE idea 15).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

__all__ = ["register"]


def register(group: Callable[..., Any], sub: Callable[..., Any]) -> None:
    cl = group("cluster", "nodes sharing one PostgreSQL store")
    sub(cl, "status", "nodes, last heartbeat, leases held, queue per state",
        cmd_cluster_status, json_flag=True)
    db = group("db", "the store's schema")
    sub(db, "migrate", "create or upgrade the store's schema (both backends)",
        cmd_db_migrate, json_flag=True)
    mb = group("mailbox", "mailboxes stored in PostgreSQL (mailbox_store = postgres)")
    ls = sub(mb, "list", "list the messages of a mailbox", cmd_mailbox_list, json_flag=True)
    ls.add_argument("address")
    ls.add_argument("--folder", help="only this folder (INBOX, Junk...)")
    ls.add_argument("--limit", type=int, default=1000)
    sh = sub(mb, "show", "print one stored message", cmd_mailbox_show)
    sh.add_argument("id", type=int)
    sh.add_argument("--raw", action="store_true", help="the bytes only, no summary")


def _need_postgres(ctx: Any, what: str) -> None:
    from ..admin.service import AdminError
    if ctx.settings.store.backend != "postgres":
        raise AdminError(f"{what} needs [store] backend = \"postgres\" "
                         f"(this configuration uses {ctx.settings.store.backend!r})")


async def cmd_cluster_status(ctx: Any) -> int:
    from ..cluster.status import gather, render
    _need_postgres(ctx, "cluster status")
    status = await gather(ctx.service.store,
                          heartbeat_interval=ctx.settings.store.heartbeat_interval)
    if ctx.args.json:
        ctx.json(status)
    else:
        ctx.print(render(status))
    return 0


def cmd_db_migrate(ctx: Any) -> int:
    """Synchronous handler: it reads the version before opening (which migrates)."""
    from ..store.base import StoreError
    try:
        before, after = asyncio.run(_migrate(ctx.settings))
    except StoreError as exc:
        print(f"mailwright: store error: {exc}", file=ctx.err)
        return 1
    s = ctx.settings.store
    where = (f"schema {s.schema} at {s.dsn}" if s.backend == "postgres"
             else str(ctx.settings.paths.store_db))
    if ctx.args.json:
        ctx.json({"backend": s.backend, "where": where, "from": before, "to": after})
    elif before == after:
        ctx.print(f"{s.backend} {where}: schema version {after}, up to date")
    else:
        ctx.print(f"{s.backend} {where}: schema version {before} -> {after}")
    return 0


async def _migrate(settings: Any) -> tuple[int, int]:
    from ..cluster.node import open_settings_store
    store = open_settings_store(settings)
    before = await _version(settings, store)
    await store.open()                          # migrates
    try:
        return before, await _version(settings, store)
    finally:
        await store.close()


async def _version(settings: Any, store: Any) -> int:
    if settings.store.backend == "postgres":
        import asyncpg
        from ..store import pg_schema
        from ..store.pg_conn import translate
        try:
            conn = await asyncpg.connect(settings.store.dsn, timeout=10, server_settings={
                "search_path": pg_schema.quote_ident(settings.store.schema)})
        except Exception as exc:
            raise translate(exc) from exc
        try:
            return await pg_schema.current_version(conn)
        finally:
            await conn.close()
    import sqlite3
    from ..store import migrations
    path = settings.paths.store_db
    if not path.exists():
        return 0
    conn = sqlite3.connect(str(path))
    try:
        return migrations.current_version(conn)
    finally:
        conn.close()


async def cmd_mailbox_list(ctx: Any) -> int:
    _need_postgres(ctx, "mailbox list")
    items = await ctx.service.store.mailbox_list(ctx.args.address, ctx.args.folder,
                                                 ctx.args.limit)
    if ctx.args.json:
        ctx.json(items)
        return 0
    from .main import table, when
    if items:
        ctx.print(table([(m["id"], m["folder"], when(m["delivered_at"]), m["size"],
                          m["queue_id"], m["node"], m["subject"][:50]) for m in items],
                        ("ID", "FOLDER", "DELIVERED", "SIZE", "QUEUE ID", "NODE",
                         "SUBJECT")))
    return 0


async def cmd_mailbox_show(ctx: Any) -> int:
    from ..admin.service import NotFound
    _need_postgres(ctx, "mailbox show")
    item = await ctx.service.store.mailbox_get(ctx.args.id)
    if item is None:
        raise NotFound(f"no stored message {ctx.args.id}")
    if not ctx.args.raw:
        ctx.print(f"# {item['mailbox']} {item['folder']} id={item['id']} "
                  f"queue_id={item['queue_id']} node={item['node']} size={item['size']}")
    ctx.out.flush()
    out = getattr(ctx.out, "buffer", None)
    if out is not None:
        out.write(item["data"])
        out.flush()
    else:
        ctx.out.write(item["data"].decode("utf-8", "replace"))
    return 0
