"""Helpers of the cluster tests: the PostgreSQL server they use, node configuration,
direct queries.

PostgreSQL: ``MAILWRIGHT_TEST_PG_DSN`` (default: the local test database, trust auth).
"""
from __future__ import annotations

import asyncio
import os

import asyncpg

PG_DSN = os.environ.get("MAILWRIGHT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=30)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def store_sections(schema: str, node: str, *, mailbox_store: str = "postgres",
                   lease_seconds: int | None = None, extra: str = "") -> str:
    """The TOML tables (for ``MailServer(extra_sections=...)``) of a node on ``schema``."""
    out = (f'[store]\nbackend = "postgres"\ndsn = "{PG_DSN}"\nschema = "{schema}"\n'
           f'node = "{node}"\npool_size = 4\nheartbeat_interval = 1\n'
           f'[delivery]\nmailbox_store = "{mailbox_store}"\n')
    if lease_seconds is not None:
        out += f"[queue]\nlease_seconds = {lease_seconds}\n"
    return out + extra


async def query(schema: str, sql: str, *args):
    conn = await asyncpg.connect(PG_DSN, timeout=30,
                                 server_settings={"search_path": f'"{schema}"'})
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def rows(schema: str, sql: str, *args):
    return asyncio.run(query(schema, sql, *args))
