"""SQLite schema and its migrations, versioned with ``PRAGMA user_version``.

What: ``MIGRATIONS[i]`` is the list of statements that takes the schema from version
``i`` to ``i + 1``. ``migrate(conn)`` applies whatever is missing. To change the
schema later, append a new list (never edit a shipped one).

How: each step runs in its own ``BEGIN IMMEDIATE`` transaction and re-reads
``user_version`` inside it, so several processes opening the same database at once
apply each step exactly once (the others wait on the write lock, then see the new
version). DDL is transactional in SQLite, so a failed step leaves the previous version.
Statements are executed one by one (``executescript`` would COMMIT the open transaction).

Schema (version 1):

* ``meta(key, value)`` -- ``directory_version`` is bumped in the same transaction as
  every directory change, so its value is a cheap, cross-process change counter.
* ``domains(name)``, ``mailboxes(address, domain → domains, password_hash,
  quota_bytes, created_at)``, ``aliases(source, domain → domains, targets JSON)``.
  All names are stored lower-cased (the store lower-cases on the way in).
* ``messages`` -- one row per committed message: the envelope fields, ``blob`` (the
  body's path relative to the blob directory), ``created_at``, the lease
  (``lease_owner``, ``lease_expires``) and ``completed_at`` (set when every
  recipient is final; the blob is then removed but rows stay for history).
* ``recipients`` -- per-recipient state (GUIDE idea 6): ``state`` in
  queued/delivered/failed/held, ``attempts``, ``next_attempt_at``,
  ``last_attempt_at``, ``last_reply``, ``final_at``. The partial index
  ``recipients_due`` covers only QUEUED rows, so ``claim_due`` stays fast however
  much delivered history is retained.
* ``attempts`` -- every delivery attempt (recipient, time, ok, permanent, reply).

Version 2 adds ``send_as(login → mailboxes, address)``: sender addresses granted to a
login for submission (``*@domain`` grants a whole domain), and ``mailboxes.scram_sha256``,
the SCRAM-SHA-256 verifier (RFC 7677) kept beside the scrypt password hash.

Version 8 adds ``dmarc_results(at, policy_domain, data JSON)``: DMARC evaluations waiting
for their aggregate report.

Version 9 adds ``messages.quarantine``: the reason a message is held in quarantine
(committed with every recipient HELD; cleared when an operator releases it).

Version 10 drops the unused index ``trace_sender`` (see the step).

Version 11 adds ``bodies(queue_id → messages, data)``: bodies kept inline (up to
``inline_body_max`` octets), committed in the same transaction as their envelope; such a
message has ``blob = ''``. The row goes when the message completes (as a body file is
unlinked then) or with its message.

Version 6 adds ``trace_events(at, kind, session_id, queue_id, message_id, sender,
recipients, client_ip, data JSON)``: the message trace (one row per SMTP transaction
outcome; recipients space-separated and lower-cased, between spaces, for LIKE queries).

Version 5 adds ``dkim_keys(domain, selector, algorithm, private_key PEM, created_at,
active)``: the DKIM signing keys; the active ones sign.

Version 7 adds ``audit(id, at, user, action, detail, ids JSON)``: one row per operator
queue action (hold, release, retry, flush, delete, bounce), with the queue ids it touched.

Version 3 adds DSN bookkeeping (RFC 3464) to ``recipients``: ``remote_mta`` and
``status`` of the last attempt (also ``attempts.remote_mta``), ``dsn_pending`` (the DSN
action owed: failed/delayed/delivered/relayed/expanded, NULL = none; partial index
``recipients_dsn``), ``dsn_delayed`` (a delay warning was owed once), ``dsn_sent`` and
``dsn_queue_id`` (the last DSN that reported on the recipient). A message is complete
(``completed_at``, body removed) only when every recipient is final *and* no DSN is owed,
because the DSN returns the body or its headers.
"""
from __future__ import annotations

import sqlite3
from typing import Callable

MIGRATIONS: list[list[str]] = [
    # 0 -> 1: the initial schema
    [
        """CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )""",
        "INSERT INTO meta (key, value) VALUES ('directory_version', 1)",
        """CREATE TABLE domains (
            name       TEXT PRIMARY KEY,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE mailboxes (
            address       TEXT PRIMARY KEY,
            domain        TEXT NOT NULL REFERENCES domains(name) ON DELETE RESTRICT,
            password_hash TEXT NOT NULL DEFAULT '',
            quota_bytes   INTEGER NOT NULL DEFAULT 0,
            created_at    REAL NOT NULL
        )""",
        "CREATE INDEX mailboxes_domain ON mailboxes(domain)",
        """CREATE TABLE aliases (
            source     TEXT PRIMARY KEY,
            domain     TEXT NOT NULL REFERENCES domains(name) ON DELETE RESTRICT,
            targets    TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX aliases_domain ON aliases(domain)",
        """CREATE TABLE messages (
            queue_id      TEXT PRIMARY KEY,
            sender        TEXT NOT NULL,
            received_at   REAL NOT NULL,
            client_ip     TEXT NOT NULL DEFAULT '',
            client_port   INTEGER NOT NULL DEFAULT 0,
            client_name   TEXT NOT NULL DEFAULT '',
            helo          TEXT NOT NULL DEFAULT '',
            protocol      TEXT NOT NULL DEFAULT 'ESMTP',
            tls           TEXT NOT NULL DEFAULT '',
            auth_user     TEXT NOT NULL DEFAULT '',
            body_type     TEXT NOT NULL DEFAULT '7BIT',
            smtputf8      INTEGER NOT NULL DEFAULT 0,
            ret           TEXT,
            envid         TEXT,
            size          INTEGER NOT NULL DEFAULT 0,
            listener      TEXT NOT NULL DEFAULT 'smtp',
            blob          TEXT NOT NULL,
            created_at    REAL NOT NULL,
            lease_owner   TEXT,
            lease_expires REAL,
            completed_at  REAL
        )""",
        "CREATE INDEX messages_active ON messages(queue_id) WHERE completed_at IS NULL",
        """CREATE TABLE recipients (
            id              INTEGER PRIMARY KEY,
            queue_id        TEXT NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
            address         TEXT NOT NULL,
            notify          TEXT,
            orcpt           TEXT,
            state           TEXT NOT NULL
                            CHECK (state IN ('queued', 'delivered', 'failed', 'held')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_attempt_at REAL,
            last_reply      TEXT NOT NULL DEFAULT '',
            final_at        REAL
        )""",
        "CREATE INDEX recipients_queue ON recipients(queue_id)",
        "CREATE INDEX recipients_due ON recipients(next_attempt_at, queue_id) WHERE state = 'queued'",
        "CREATE INDEX recipients_state ON recipients(state, queue_id)",
        """CREATE TABLE attempts (
            id           INTEGER PRIMARY KEY,
            recipient_id INTEGER NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
            at           REAL NOT NULL,
            ok           INTEGER NOT NULL,
            permanent    INTEGER NOT NULL DEFAULT 0,
            reply        TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX attempts_recipient ON attempts(recipient_id, at)",
    ],
    # 1 -> 2: send-as grants for submission (an authenticated user may use these sender
    # addresses besides their own mailbox and the aliases that deliver to it).
    [
        """CREATE TABLE send_as (
            login   TEXT NOT NULL REFERENCES mailboxes(address) ON DELETE CASCADE,
            address TEXT NOT NULL,
            PRIMARY KEY (login, address)
        )""",
        # RFC 5802/7677 SCRAM-SHA-256 verifier "salt_b64$iterations$storedkey_b64$serverkey_b64"
        # derived when the password is set ('' = SCRAM unavailable for this login).
        "ALTER TABLE mailboxes ADD COLUMN scram_sha256 TEXT NOT NULL DEFAULT ''",
    ],
    # 2 -> 3: DSN bookkeeping (RFC 3464; queue/manager.py, message/dsn.py). The owed flag
    # is set in the same transaction as the recipient's result and cleared in the same
    # transaction that commits the DSN message, so a crash can neither lose nor double it.
    [
        "ALTER TABLE recipients ADD COLUMN remote_mta TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE recipients ADD COLUMN status TEXT NOT NULL DEFAULT ''",
        """ALTER TABLE recipients ADD COLUMN dsn_pending TEXT
            CHECK (dsn_pending IN ('failed', 'delayed', 'delivered', 'relayed', 'expanded'))""",
        "ALTER TABLE recipients ADD COLUMN dsn_delayed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE recipients ADD COLUMN dsn_sent TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE recipients ADD COLUMN dsn_queue_id TEXT",
        "CREATE INDEX recipients_dsn ON recipients(queue_id) WHERE dsn_pending IS NOT NULL",
        "ALTER TABLE attempts ADD COLUMN remote_mta TEXT NOT NULL DEFAULT ''",
    ],
    # 3 -> 4: CRC-32 of each body, so recovery can tell a body that did not reach the disk
    # before a crash (sync_method "syncfs" commits the row before the single flush that
    # makes body and row durable; no 250 was sent for such a message).
    [
        "ALTER TABLE messages ADD COLUMN body_crc INTEGER",
    ],
    # 4 -> 5: DKIM signing keys (RFC 6376): one row per (domain, selector); ``active`` keys
    # sign (at most one per domain and algorithm, kept so by the store).
    [
        "CREATE TABLE dkim_keys (domain TEXT NOT NULL, selector TEXT NOT NULL, "
        "algorithm TEXT NOT NULL, private_key TEXT NOT NULL, created_at REAL NOT NULL, "
        "active INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (domain, selector))",
    ],
    # 5 -> 6: the message trace (issue 5): what happened to each SMTP transaction,
    # accepted or refused, with the policy verdicts. Delivery attempts stay in
    # ``attempts``; the trace command joins both.
    [
        "CREATE TABLE trace_events (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
        "kind TEXT NOT NULL, session_id TEXT NOT NULL DEFAULT '', "
        "queue_id TEXT NOT NULL DEFAULT '', message_id TEXT NOT NULL DEFAULT '', "
        "sender TEXT NOT NULL DEFAULT '', recipients TEXT NOT NULL DEFAULT '', "
        "client_ip TEXT NOT NULL DEFAULT '', data TEXT NOT NULL DEFAULT '{}')",
        "CREATE INDEX trace_at ON trace_events (at)",
        "CREATE INDEX trace_queue_id ON trace_events (queue_id) WHERE queue_id != ''",
        "CREATE INDEX trace_message_id ON trace_events (message_id) WHERE message_id != ''",
        "CREATE INDEX trace_sender ON trace_events (sender)",
    ],
    # 6 -> 7: the operator audit log (``mailwright queue audit``): who did what to which
    # queued messages, written in the same transaction as the action itself.
    [
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
        "user TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', "
        "ids TEXT NOT NULL DEFAULT '[]')",
        "CREATE INDEX audit_at ON audit (at)",
    ],
    # 7 -> 8: DMARC results awaiting an aggregate report (RFC 7489 §7.2): one row per
    # evaluated message; rows are deleted once their report is queued.
    [
        "CREATE TABLE dmarc_results (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
        "policy_domain TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX dmarc_results_at ON dmarc_results (at)",
    ],
    # 8 -> 9: quarantine held in the store (``mailwright quarantine``): the reason a
    # message was committed with every recipient HELD ('' = not quarantined).
    [
        "ALTER TABLE messages ADD COLUMN quarantine TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX messages_quarantine ON messages (queue_id) WHERE quarantine != ''",
    ],
    # 9 -> 10: drop ``trace_sender``. The trace search matches "sender = ? OR recipients
    # LIKE '% x %'": SQLite serves an OR with indexes only when every term has one, and
    # the LIKE cannot, so this index was never used; it only cost every accepted message
    # one more B-tree insert. (PostgreSQL keeps its own: there the recipients have a GIN
    # index and the two make a BitmapOr.)
    [
        "DROP INDEX IF EXISTS trace_sender",
    ],
    # 10 -> 11: small bodies inline (``SQLiteStore.inline_body_max``): written in the
    # transaction of their envelope, so a message costs no file to create, rename and
    # unlink. ``messages.blob`` is '' for them. A rowid table, not WITHOUT ROWID: its
    # rows are kilobytes (SQLite advises WITHOUT ROWID only for rows under ~1/20 page).
    [
        "CREATE TABLE bodies (queue_id TEXT PRIMARY KEY"
        " REFERENCES messages (queue_id) ON DELETE CASCADE, data BLOB NOT NULL)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection,
            transact: Callable[[sqlite3.Connection, Callable[[sqlite3.Connection], None]], None]
            ) -> int:
    """Bring the database to ``SCHEMA_VERSION``; returns the version found at start.

    ``transact(conn, fn)`` runs ``fn`` inside BEGIN IMMEDIATE ... COMMIT with the
    store's busy retries. Refuses a database newer than this code knows."""
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"database schema version {found} is newer than this "
                           f"program's {SCHEMA_VERSION}; refusing to touch it")
    while True:
        applied: list[int] = []

        def step(c: sqlite3.Connection) -> None:
            v = current_version(c)
            if v >= SCHEMA_VERSION:
                return
            for stmt in MIGRATIONS[v]:
                c.execute(stmt)
            c.execute(f"PRAGMA user_version = {v + 1}")
            applied.append(v + 1)

        transact(conn, step)
        if not applied:
            return found
