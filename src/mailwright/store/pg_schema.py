"""PostgreSQL schema and its migrations, versioned in a ``schema_version`` table.

What: ``MIGRATIONS[i]`` is the list of statements that takes a store schema from
version ``i`` to ``i + 1``; ``migrate(conn, schema)`` creates the schema if needed and
applies whatever is missing; ``current_version(conn)`` reads it. The same names as the
SQLite backend's ``migrations`` module. To change the schema later, append a new list
(never edit a shipped one).

How: each step runs in its own transaction holding ``pg_advisory_xact_lock`` on the
schema's name and re-reads the version inside it, so several nodes opening the store at
once apply each step exactly once (the others wait on the lock, then see the new
version). DDL is transactional in PostgreSQL: a failed step leaves the previous version.
``schema_version`` keeps one row per applied version (with its time): the current
version is the highest.

Schema (version 1; the SQLite schema 4 with these PostgreSQL differences):

* ``meta(key, value)``: ``directory_version`` is bumped in the transaction of every
  directory change: a cheap change counter for every node.
* ``domains``, ``mailboxes`` (with ``scram_sha256``), ``aliases`` (``targets`` a
  ``text[]`` in the given order), ``send_as``. Names are stored lower-cased.
* ``messages``: envelope fields, ``node`` (the node that received it), ``next_due``
  (the earliest ``next_attempt_at`` of its QUEUED recipients, NULL when none is
  queued, kept up to date in every transaction that changes recipient states) with the
  partial index ``messages_due``: ``claim_due`` is one index walk with ``FOR UPDATE
  SKIP LOCKED``. The lease: ``lease_owner`` (the
  worker), ``lease_node`` (its node) and ``lease_until``. ``completed_at`` when every
  recipient is final and no DSN is owed (rows stay for history).
* ``recipients`` and ``attempts`` as in SQLite (``notify`` a ``text[]``; NULL = no
  NOTIFY parameter). Ids come from identity columns.
* ``bodies(queue_id, seq, data bytea)``: the message body in chunks, written in the
  commit transaction and deleted in the transaction that completes the message.
* ``nodes(name, started_at, last_heartbeat, info jsonb)``: cluster members.

Version 2 adds ``dkim_keys(domain, selector, algorithm, private_key PEM, created_at,
active)`` (SQLite schema 5), with a partial unique index: one active key per domain and
algorithm.

Version 3 adds ``trace_events`` (SQLite schema 6): the message trace.

Version 4 adds ``dmarc_results`` (SQLite schema 8): DMARC evaluations awaiting a report.

Version 5 (PostgreSQL only) adds ``mailbox_messages`` (``[delivery] mailbox_store =
"postgres"``: one row per delivered copy, ``UNIQUE (queue_id, recipient_id)`` makes
delivery idempotent) and ``destination_slots`` (cluster-wide per-destination delivery
slots, leased like messages) and ``audit`` (SQLite schema 7: operator actions on the
queue).

Version 6 adds ``messages.quarantine`` (SQLite schema 9): the reason a message is held
in quarantine (committed with every recipient HELD and ``next_due`` NULL; cleared when an
operator releases it).
"""
from __future__ import annotations

import asyncpg

from .pg_conn import quote_ident

MIGRATIONS: list[list[str]] = [
    # 0 -> 1: the initial schema
    [
        """CREATE TABLE meta (
            key   text PRIMARY KEY,
            value bigint NOT NULL
        )""",
        "INSERT INTO meta (key, value) VALUES ('directory_version', 1)",
        """CREATE TABLE domains (
            name       text PRIMARY KEY,
            created_at double precision NOT NULL
        )""",
        """CREATE TABLE mailboxes (
            address       text PRIMARY KEY,
            domain        text NOT NULL REFERENCES domains(name) ON DELETE RESTRICT,
            password_hash text NOT NULL DEFAULT '',
            quota_bytes   bigint NOT NULL DEFAULT 0,
            created_at    double precision NOT NULL,
            -- RFC 5802/7677 SCRAM-SHA-256 verifier ('' = SCRAM unavailable for this login)
            scram_sha256  text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX mailboxes_domain ON mailboxes(domain)",
        """CREATE TABLE aliases (
            source     text PRIMARY KEY,
            domain     text NOT NULL REFERENCES domains(name) ON DELETE RESTRICT,
            targets    text[] NOT NULL,
            created_at double precision NOT NULL
        )""",
        "CREATE INDEX aliases_domain ON aliases(domain)",
        """CREATE TABLE send_as (
            login   text NOT NULL REFERENCES mailboxes(address) ON DELETE CASCADE,
            address text NOT NULL,
            PRIMARY KEY (login, address)
        )""",
        """CREATE TABLE messages (
            queue_id     text PRIMARY KEY,
            sender       text NOT NULL,
            received_at  double precision NOT NULL,
            client_ip    text NOT NULL DEFAULT '',
            client_port  integer NOT NULL DEFAULT 0,
            client_name  text NOT NULL DEFAULT '',
            helo         text NOT NULL DEFAULT '',
            protocol     text NOT NULL DEFAULT 'ESMTP',
            tls          text NOT NULL DEFAULT '',
            auth_user    text NOT NULL DEFAULT '',
            body_type    text NOT NULL DEFAULT '7BIT',
            smtputf8     boolean NOT NULL DEFAULT false,
            ret          text,
            envid        text,
            size         bigint NOT NULL DEFAULT 0,
            listener     text NOT NULL DEFAULT 'smtp',
            node         text NOT NULL DEFAULT '',
            created_at   double precision NOT NULL,
            next_due     double precision,
            lease_owner  text,
            lease_node   text,
            lease_until  double precision,
            completed_at double precision
        )""",
        "CREATE INDEX messages_due ON messages(next_due, queue_id) WHERE next_due IS NOT NULL",
        "CREATE INDEX messages_active ON messages(queue_id) WHERE completed_at IS NULL",
        "CREATE INDEX messages_leased ON messages(lease_node) WHERE lease_owner IS NOT NULL",
        """CREATE TABLE recipients (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            queue_id        text NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
            address         text NOT NULL,
            notify          text[],
            orcpt           text,
            state           text NOT NULL
                            CHECK (state IN ('queued', 'delivered', 'failed', 'held')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at double precision NOT NULL,
            last_attempt_at double precision,
            last_reply      text NOT NULL DEFAULT '',
            final_at        double precision,
            remote_mta      text NOT NULL DEFAULT '',
            status          text NOT NULL DEFAULT '',
            dsn_pending     text CHECK (dsn_pending IN
                                ('failed', 'delayed', 'delivered', 'relayed', 'expanded')),
            dsn_delayed     boolean NOT NULL DEFAULT false,
            dsn_sent        text NOT NULL DEFAULT '',
            dsn_queue_id    text
        )""",
        "CREATE INDEX recipients_queue ON recipients(queue_id)",
        "CREATE INDEX recipients_state ON recipients(state, queue_id)",
        "CREATE INDEX recipients_dsn ON recipients(queue_id) WHERE dsn_pending IS NOT NULL",
        """CREATE TABLE attempts (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            recipient_id bigint NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
            at           double precision NOT NULL,
            ok           boolean NOT NULL,
            permanent    boolean NOT NULL DEFAULT false,
            reply        text NOT NULL DEFAULT '',
            remote_mta   text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX attempts_recipient ON attempts(recipient_id, at)",
        """CREATE TABLE bodies (
            queue_id text NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
            seq      integer NOT NULL,
            data     bytea NOT NULL,
            PRIMARY KEY (queue_id, seq)
        )""",
        """CREATE TABLE nodes (
            name           text PRIMARY KEY,
            started_at     double precision NOT NULL,
            last_heartbeat double precision NOT NULL,
            info           jsonb NOT NULL DEFAULT '{}'
        )""",
    ],
    # 1 -> 2: DKIM signing keys (RFC 6376), as SQLite schema 5: one row per (domain,
    # selector); ``active`` keys sign, at most one per domain and algorithm (the partial
    # unique index enforces what the store keeps so).
    [
        """CREATE TABLE dkim_keys (
            domain      text NOT NULL,
            selector    text NOT NULL,
            algorithm   text NOT NULL,
            private_key text NOT NULL,
            created_at  double precision NOT NULL,
            active      boolean NOT NULL DEFAULT false,
            PRIMARY KEY (domain, selector)
        )""",
        "CREATE UNIQUE INDEX dkim_keys_signer ON dkim_keys(domain, algorithm) WHERE active",
    ],
    # 2 -> 3: the message trace, as SQLite schema 6: one row per SMTP transaction
    # outcome or operator action. ``recipients`` is a lower-cased text[] (GIN index for
    # "this address as a recipient"); ``sender`` is lower-cased.
    [
        """CREATE TABLE trace_events (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at         double precision NOT NULL,
            kind       text NOT NULL,
            session_id text NOT NULL DEFAULT '',
            queue_id   text NOT NULL DEFAULT '',
            message_id text NOT NULL DEFAULT '',
            sender     text NOT NULL DEFAULT '',
            recipients text[] NOT NULL DEFAULT '{}',
            client_ip  text NOT NULL DEFAULT '',
            data       jsonb NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX trace_at ON trace_events(at)",
        "CREATE INDEX trace_queue_id ON trace_events(queue_id) WHERE queue_id <> ''",
        "CREATE INDEX trace_message_id ON trace_events(message_id) WHERE message_id <> ''",
        "CREATE INDEX trace_sender ON trace_events(sender)",
        "CREATE INDEX trace_recipients ON trace_events USING gin (recipients)",
    ],
    # 3 -> 4: DMARC results awaiting their aggregate report (SQLite schema 8).
    [
        """CREATE TABLE dmarc_results (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at            double precision NOT NULL,
            policy_domain text NOT NULL,
            data          jsonb NOT NULL
        )""",
        "CREATE INDEX dmarc_results_at ON dmarc_results(at)",
    ],
    # 4 -> 5: mailboxes in the database (delivery/pgmailbox.py) and cluster-wide
    # per-destination delivery slots (cluster/limits.py)
    [
        """CREATE TABLE mailbox_messages (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            mailbox      text NOT NULL,
            folder       text NOT NULL DEFAULT '',
            queue_id     text NOT NULL,
            recipient_id bigint NOT NULL,
            delivered_at double precision NOT NULL,
            node         text NOT NULL,
            size         bigint NOT NULL,
            flags        text NOT NULL DEFAULT '',
            data         bytea NOT NULL,
            UNIQUE (queue_id, recipient_id)
        )""",
        "CREATE INDEX mailbox_messages_box ON mailbox_messages(mailbox, folder, id)",
        """CREATE TABLE destination_slots (
            destination text NOT NULL,
            slot        integer NOT NULL,
            owner       text NOT NULL,
            node        text NOT NULL,
            lease_until double precision NOT NULL,
            PRIMARY KEY (destination, slot)
        )""",
        # the operator audit log (SQLite schema 7; store/pg_queueops.py)
        """CREATE TABLE audit (
            id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at       double precision NOT NULL,
            username text NOT NULL,
            action   text NOT NULL,
            detail   text NOT NULL DEFAULT '',
            ids      text[] NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX audit_at ON audit(at)",
    ],
    # 5 -> 6: quarantine held in the store (SQLite schema 9; ``mailwright quarantine``):
    # the reason a message was committed with every recipient HELD ('' = not).
    [
        "ALTER TABLE messages ADD COLUMN quarantine text NOT NULL DEFAULT ''",
        "CREATE INDEX messages_quarantine ON messages(queue_id) WHERE quarantine <> ''",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


async def current_version(conn: asyncpg.Connection) -> int:
    """The schema version of the connection's ``search_path`` schema (0 = empty)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Bring ``schema`` to ``SCHEMA_VERSION`` (creating it); returns the version found at
    start. ``conn`` must have ``search_path`` set to ``schema``. Refuses a schema newer
    than this code knows (RuntimeError)."""
    found: int | None = None
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"mailwright.migrate.{schema}")
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace"
                                       " WHERE nspname = $1)", schema):
                # (CREATE SCHEMA IF NOT EXISTS would need the CREATE privilege even when
                # the schema exists: a role given only its own schema could not open)
                await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            v = await current_version(conn)
            if found is None:
                found = v
            if v > SCHEMA_VERSION:
                raise RuntimeError(f"database schema version {v} is newer than this "
                                   f"program's {SCHEMA_VERSION}; refusing to touch it")
            if v == SCHEMA_VERSION:
                return found
            for stmt in MIGRATIONS[v]:
                await conn.execute(stmt)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", v + 1)
