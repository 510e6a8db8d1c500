"""PostgreSQL connections for the store: session settings and error translation.

What: ``session_settings(schema, node)`` are the server settings every connection of a
``PostgresStore`` gets (its pool, its LISTEN connection, its body fetcher);
``translate(exc)`` turns a driver exception into the store's ``StoreError`` family;
``quote_ident`` quotes a schema name; ``count_rows``/``exec_count`` read a command's
row count.

How: every connection sets ``search_path`` to the store's schema (so SQL stays
unqualified and a test or a second installation can live in its own schema of the same
database) and ``synchronous_commit = on`` whatever the server default is: a COMMIT then
returns only after its WAL record was flushed (PostgreSQL 15 docs, "runtime-config-wal",
synchronous_commit), which is what lets ``commit_message`` precede the 250.

Invariants: nothing here keeps state. A connection-level failure (the server went away,
an administrator terminated the backend, a socket error, a timeout) becomes
``StoreUnavailable``, any other server error ``StoreError``: the SMTP layer answers 451
for both and the asyncpg pool replaces dead connections on the next ``acquire``.
"""
from __future__ import annotations

import asyncio
import re

import asyncpg

from .base import StoreError

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Driver failures that mean "the server is not reachable right now" (SQLSTATE class 08
# connection exception, class 57 operator intervention such as admin_shutdown after
# pg_terminate_backend; the driver's own interface errors on a closed connection).
_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
                OSError, asyncio.TimeoutError, ConnectionError, EOFError)


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached (or the connection was lost mid-query). ``transient``:
    the same call may succeed once the server is back (the queue manager retries)."""
    transient = True


def valid_schema(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier (checked, since it is spliced
    into DDL and ``search_path``); ValueError otherwise."""
    if not _IDENT.fullmatch(schema):
        raise ValueError(f"schema must match {_IDENT.pattern}: {schema!r}")
    return schema


def quote_ident(name: str) -> str:
    return '"' + valid_schema(name) + '"'


def session_settings(schema: str, node: str) -> dict[str, str]:
    return {
        "search_path": quote_ident(schema),
        "synchronous_commit": "on",
        "application_name": f"mailwright {node}"[:63],
    }


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE)


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction may simply be run again."""
    return isinstance(exc, asyncpg.exceptions.TransactionRollbackError)


def translate(exc: BaseException) -> StoreError:
    """The ``StoreError`` to raise for a driver exception."""
    if isinstance(exc, StoreError):
        return exc
    if is_unavailable(exc):
        return StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}")
    return StoreError(f"database error: {type(exc).__name__}: {exc}")


def count_rows(status: str) -> int:
    """Rows affected, from a command status such as ``UPDATE 3``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def exec_count(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    """Run one statement; how many rows it changed."""
    return count_rows(await conn.execute(sql, *args))


def is_driver_error(exc: BaseException) -> bool:
    """Something ``translate`` should handle (not the store's own or a caller's error)."""
    return isinstance(exc, (asyncpg.PostgresError,) + _UNAVAILABLE) and not isinstance(
        exc, StoreError)
