"""Directory, submission grants and DKIM keys of the PostgreSQL store.

What: ``DirectoryOps``, the part of ``PostgresStore`` that keeps domains, mailboxes,
aliases (``base.Store`` "directory"), send-as grants and SCRAM verifiers ("submission")
and DKIM signing keys, with the semantics of ``SQLiteStore``.

How: each change is one transaction (``_txn``) that also bumps
``meta.directory_version``, so every node sees a cheap change counter; unique and
foreign-key violations become ``DuplicateError``/``NotFoundError``; single reads are
one statement (``_one``); ``directory_snapshot`` reads in one REPEATABLE READ snapshot
(``_read``) so the version and the contents agree.

Invariants: names are lower-cased on the way in (lookups compare case-insensitively);
the counter changes in the same transaction as every directory change and never
otherwise; at most one active DKIM key per domain and algorithm (RFC 6376 signers).
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import asyncpg

from .base import (
    Alias, DirectorySnapshot, DkimKey, DuplicateError, Mailbox, NotFoundError, StoreError,
)
from .pg_conn import count_rows as _count, exec_count

T = TypeVar("T")

_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'directory_version'"


def _norm(name: str) -> str:
    return name.strip().lower()


def _domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not domain:
        raise ValueError(f"not an address: {address!r}")
    return domain


class DirectoryOps:
    """Mixin for ``PostgresStore``, which provides the transaction helpers below."""

    async def _txn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   isolation: str = "read_committed", readonly: bool = False) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _one(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    # ------------------------------------------------------------------ directory
    @staticmethod
    async def _require_domain(c: asyncpg.Connection, domain: str) -> None:
        if await c.fetchval("SELECT 1 FROM domains WHERE name = $1 FOR KEY SHARE",
                            domain) is None:
            raise NotFoundError(f"unknown domain {domain}")

    async def add_domain(self, domain: str) -> None:
        d = _norm(domain)
        if not d or "@" in d:
            raise ValueError(f"not a domain: {domain!r}")

        async def fn(c: asyncpg.Connection) -> None:
            try:
                await c.execute("INSERT INTO domains (name, created_at) VALUES ($1, $2)",
                                d, time.time())
            except asyncpg.UniqueViolationError:
                raise DuplicateError(f"domain {d} exists") from None
            await c.execute(_BUMP)
        await self._txn(fn)

    async def remove_domain(self, domain: str) -> bool:
        """Remove an empty domain; False if unknown. A domain that still has mailboxes or
        aliases is refused with StoreError (remove those first)."""
        d = _norm(domain)

        async def fn(c: asyncpg.Connection) -> bool:
            n_mb = await c.fetchval("SELECT count(*) FROM mailboxes WHERE domain = $1", d)
            n_al = await c.fetchval("SELECT count(*) FROM aliases WHERE domain = $1", d)
            if n_mb or n_al:
                raise StoreError(f"domain {d} still has {n_mb} mailbox(es) and {n_al} "
                                 "alias(es); remove them first")
            try:
                n = _count(await c.execute("DELETE FROM domains WHERE name = $1", d))
            except asyncpg.ForeignKeyViolationError:
                raise StoreError(f"domain {d} is in use; remove its mailboxes and aliases"
                                 " first") from None
            if n:
                await c.execute(_BUMP)
            return n > 0
        return await self._txn(fn)

    async def list_domains(self) -> list[str]:
        rows = await self._one(lambda c: c.fetch("SELECT name FROM domains ORDER BY name"))
        return [r[0] for r in rows]

    async def add_mailbox(self, address: str, password_hash: str, quota_bytes: int = 0,
                          scram_sha256: str = "") -> None:
        a = _norm(address)
        d = _domain_of(a)
        if a.startswith("@"):
            raise ValueError(f"not a mailbox address: {address!r}")

        async def fn(c: asyncpg.Connection) -> None:
            await self._require_domain(c, d)
            try:
                await c.execute(
                    "INSERT INTO mailboxes (address, domain, password_hash, quota_bytes,"
                    " created_at, scram_sha256) VALUES ($1, $2, $3, $4, $5, $6)",
                    a, d, password_hash, int(quota_bytes), time.time(), scram_sha256)
            except asyncpg.UniqueViolationError:
                raise DuplicateError(f"mailbox {a} exists") from None
            await c.execute(_BUMP)
        await self._txn(fn)

    async def _directory_update(self, sql: str, *args: Any) -> bool:
        """Run one UPDATE/DELETE; bump the directory version if it changed a row."""
        async def fn(c: asyncpg.Connection) -> bool:
            n = _count(await c.execute(sql, *args))
            if n:
                await c.execute(_BUMP)
            return n > 0
        return await self._txn(fn)

    async def set_password(self, address: str, password_hash: str,
                           scram_sha256: str = "") -> bool:
        """Replace the scrypt hash and the SCRAM-SHA-256 verifier together ("" = none)."""
        return await self._directory_update(
            "UPDATE mailboxes SET password_hash = $1, scram_sha256 = $2 WHERE address = $3",
            password_hash, scram_sha256, _norm(address))

    async def set_quota(self, address: str, quota_bytes: int) -> bool:
        """Extra (not in ``base.Store``, as in SQLite): change a mailbox quota."""
        return await self._directory_update(
            "UPDATE mailboxes SET quota_bytes = $1 WHERE address = $2", int(quota_bytes),
            _norm(address))

    async def remove_mailbox(self, address: str) -> bool:
        return await self._directory_update("DELETE FROM mailboxes WHERE address = $1",
                                            _norm(address))

    @staticmethod
    def _mailbox(row: asyncpg.Record) -> Mailbox:
        return Mailbox(address=row[0], password_hash=row[1], quota_bytes=row[2],
                       created_at=row[3])

    async def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]:
        sql = "SELECT address, password_hash, quota_bytes, created_at FROM mailboxes"
        if domain is None:
            rows = await self._one(lambda c: c.fetch(sql + " ORDER BY address"))
        else:
            rows = await self._one(lambda c: c.fetch(
                sql + " WHERE domain = $1 ORDER BY address", _norm(domain)))
        return [self._mailbox(r) for r in rows]

    async def get_mailbox(self, address: str) -> Mailbox | None:
        row = await self._one(lambda c: c.fetchrow(
            "SELECT address, password_hash, quota_bytes, created_at FROM mailboxes"
            " WHERE address = $1", _norm(address)))
        return None if row is None else self._mailbox(row)

    async def add_alias(self, source: str, targets: Sequence[str]) -> None:
        """``source`` is "user@domain" or "@domain" (catch-all); the domain must exist
        (NotFoundError). Targets are lower-cased and kept in the given order."""
        s = _norm(source)
        d = _domain_of(s)
        if isinstance(targets, str):
            raise ValueError("targets must be a sequence of addresses, not a string")
        ts = [_norm(t) for t in targets]
        if not ts or not all(ts):
            raise ValueError("an alias needs at least one non-empty target")

        async def fn(c: asyncpg.Connection) -> None:
            await self._require_domain(c, d)
            try:
                await c.execute("INSERT INTO aliases (source, domain, targets, created_at)"
                                " VALUES ($1, $2, $3, $4)", s, d, ts, time.time())
            except asyncpg.UniqueViolationError:
                raise DuplicateError(f"alias {s} exists") from None
            await c.execute(_BUMP)
        await self._txn(fn)

    async def remove_alias(self, source: str) -> bool:
        return await self._directory_update("DELETE FROM aliases WHERE source = $1",
                                            _norm(source))

    async def list_aliases(self) -> list[Alias]:
        rows = await self._one(lambda c: c.fetch(
            "SELECT source, targets FROM aliases ORDER BY source"))
        return [Alias(source=r[0], targets=tuple(r[1])) for r in rows]

    async def directory_snapshot(self) -> DirectorySnapshot:
        """Domains, mailboxes, aliases and the version in one REPEATABLE READ snapshot."""
        async def fn(c: asyncpg.Connection) -> DirectorySnapshot:
            version = await c.fetchval(
                "SELECT value FROM meta WHERE key = 'directory_version'")
            domains = frozenset(r[0] for r in await c.fetch("SELECT name FROM domains"))
            quotas = {r[0]: r[1] for r in await c.fetch(
                "SELECT address, quota_bytes FROM mailboxes")}
            aliases = {r[0]: tuple(r[1]) for r in await c.fetch(
                "SELECT source, targets FROM aliases")}
            return DirectorySnapshot(version=version, domains=domains,
                                     mailboxes=frozenset(quotas), aliases=aliases,
                                     quotas=quotas)
        return await self._read(fn)

    async def directory_version(self) -> int:
        """One primary-key lookup of the counter row."""
        return await self._one(lambda c: c.fetchval(
            "SELECT value FROM meta WHERE key = 'directory_version'"))

    # ------------------------------------------------------------------ submission
    async def get_scram_verifier(self, address: str) -> str:
        """The mailbox's SCRAM-SHA-256 verifier, "" if none or no such mailbox."""
        value = await self._one(lambda c: c.fetchval(
            "SELECT scram_sha256 FROM mailboxes WHERE address = $1", _norm(address)))
        return value or ""

    async def add_send_as(self, login: str, address: str) -> None:
        """Grant ``login`` (a mailbox) the sender ``address`` ("user@domain" or
        "*@domain"). NotFoundError if the mailbox is unknown, DuplicateError if granted."""
        lg, ad = _norm(login), _norm(address)

        async def fn(c: asyncpg.Connection) -> None:
            if await c.fetchval("SELECT 1 FROM mailboxes WHERE address = $1 FOR KEY SHARE",
                                lg) is None:
                raise NotFoundError(f"unknown mailbox {lg}")
            try:
                await c.execute("INSERT INTO send_as (login, address) VALUES ($1, $2)", lg, ad)
            except asyncpg.UniqueViolationError:
                raise DuplicateError(f"{lg} may already send as {ad}") from None
        await self._txn(fn)

    async def remove_send_as(self, login: str, address: str) -> bool:
        n = await self._txn(lambda c: exec_count(
            c, "DELETE FROM send_as WHERE login = $1 AND address = $2", _norm(login),
            _norm(address)))
        return n > 0

    async def list_send_as(self, login: str) -> list[str]:
        """The addresses granted to ``login``, sorted."""
        rows = await self._one(lambda c: c.fetch(
            "SELECT address FROM send_as WHERE login = $1 ORDER BY address", _norm(login)))
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ DKIM keys
    async def add_dkim_key(self, key: DkimKey) -> None:
        """DuplicateError if (domain, selector) exists; an active key deactivates the
        domain's other keys of its algorithm in the same transaction."""
        dom, sel = _norm(key.domain), key.selector.lower()

        async def fn(c: asyncpg.Connection) -> None:
            if key.active:
                await c.execute("UPDATE dkim_keys SET active = false"
                                " WHERE domain = $1 AND algorithm = $2", dom, key.algorithm)
            try:
                await c.execute(
                    "INSERT INTO dkim_keys (domain, selector, algorithm, private_key,"
                    " created_at, active) VALUES ($1, $2, $3, $4, $5, $6)",
                    dom, sel, key.algorithm, key.private_key, float(key.created_at),
                    bool(key.active))
            except asyncpg.UniqueViolationError:
                raise DuplicateError(f"DKIM selector {sel} exists for {dom}") from None
        await self._txn(fn)

    async def list_dkim_keys(self, domain: str | None = None) -> list[DkimKey]:
        sql = "SELECT domain, selector, algorithm, private_key, created_at, active FROM dkim_keys"
        order = " ORDER BY domain, created_at, selector"
        if domain is None:
            rows = await self._one(lambda c: c.fetch(sql + order))
        else:
            rows = await self._one(lambda c: c.fetch(sql + " WHERE domain = $1" + order,
                                                     _norm(domain)))
        return [DkimKey(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def activate_dkim_key(self, domain: str, selector: str) -> bool:
        """Make this key the signer for its algorithm; False if unknown."""
        dom, sel = _norm(domain), selector.lower()

        async def fn(c: asyncpg.Connection) -> bool:
            algorithm = await c.fetchval("SELECT algorithm FROM dkim_keys WHERE domain = $1"
                                         " AND selector = $2 FOR UPDATE", dom, sel)
            if algorithm is None:
                return False
            # two statements: the partial unique index is checked row by row
            await c.execute("UPDATE dkim_keys SET active = false WHERE domain = $1"
                            " AND algorithm = $2 AND active", dom, algorithm)
            await c.execute("UPDATE dkim_keys SET active = true WHERE domain = $1"
                            " AND selector = $2", dom, sel)
            return True
        return await self._txn(fn)

    async def remove_dkim_key(self, domain: str, selector: str) -> bool:
        n = await self._txn(lambda c: exec_count(
            c, "DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2", _norm(domain),
            selector.lower()))
        return n > 0
