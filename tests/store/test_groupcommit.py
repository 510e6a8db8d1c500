"""The group committer (store/groupcommit.py) on a real SQLite connection."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from mailwright.store.groupcommit import GroupCommitter


def committer(tmp_path, sizes):
    def connect():
        conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None,
                               check_same_thread=False)
        conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        return conn

    def commit_batch(conn, items):
        sizes.append(len(items))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?)", [(p.payload,) for p in items])
        conn.execute("COMMIT")
        for p in items:
            p.result = p.payload * 10
    g = GroupCommitter("test-writer", connect, commit_batch)
    g.start()
    return g


def test_commits_of_one_loop_pass_make_one_batch(tmp_path):
    sizes: list[int] = []
    g = committer(tmp_path, sizes)
    try:
        async def main():
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0.05)            # the writer is idle, waiting
            futs = []
            for i in range(20):                  # one pass, as sessions served in turn
                futs.append(g.submit_commit(i, loop))
                time.sleep(0.002)                # the GIL is free: a woken writer would run
            return await asyncio.gather(*futs)
        assert asyncio.run(main()) == [i * 10 for i in range(20)]
        assert sizes == [20]                     # one transaction, one wake-up
    finally:
        g.stop()
    rows = sqlite3.connect(tmp_path / "g.db").execute("SELECT count(*) FROM t").fetchone()
    assert rows == (20,)


def test_commits_from_another_thread_and_at_stop_are_processed(tmp_path):
    sizes: list[int] = []
    g = committer(tmp_path, sizes)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        # submitted from this thread (not the loop's): the writer is woken at once
        fut = g.submit_commit(7, loop)
        assert asyncio.run_coroutine_threadsafe(_await(fut), loop).result(5) == 70
    finally:
        g.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert sum(sizes) == 1


async def _await(fut):
    return await fut
