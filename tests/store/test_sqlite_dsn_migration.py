"""Schema 3 (DSN bookkeeping) upgrades a version 2 database in place; rows keep working."""
import asyncio
import sqlite3

from mailwright.queue.model import RecipientState
from mailwright.store import migrations
from mailwright.store.sqlite import SQLiteStore


def test_version_2_database_upgrades_to_3(tmp_path):
    db = tmp_path / "queue.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for stmt in migrations.MIGRATIONS[0] + migrations.MIGRATIONS[1]:
        conn.execute(stmt)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO messages (queue_id, sender, received_at, blob, created_at)"
                 " VALUES ('Q1', 'a@example.org', 1, 'Q1/Q1', 1)")
    conn.execute("INSERT INTO recipients (queue_id, address, state, next_attempt_at)"
                 " VALUES ('Q1', 'b@example.net', 'failed', 1)")
    conn.close()

    async def main():
        store = SQLiteStore(db, tmp_path / "blobs")
        await store.open()
        try:
            msg = await store.get_message("Q1")
            assert await store.pending_dsns() == []
            return msg
        finally:
            await store.close()
    msg = asyncio.run(main())
    r = msg.recipients[0]
    assert r.state is RecipientState.FAILED
    assert (r.dsn_pending, r.dsn_delayed, r.dsn_sent, r.dsn_queue_id) == (None, False, "", None)
    assert (r.remote_mta, r.status) == ("", "")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION >= 3
    conn.close()
