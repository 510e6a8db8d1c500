"""The primary's hourly housekeeping prunes completed messages after
``[queue] completed_retention_days`` (the store's part is in tests/store/test_contract.py)."""
from __future__ import annotations

import asyncio
import time
import types

from mailwright.app import Worker
from mailwright.config.settings import parse_settings
from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest
from mailwright.store import queueid
from mailwright.store import sqlite as sqlite_store
from mailwright.store.sqlite import SQLiteStore


async def _completed_message(store: SQLiteStore, at: float) -> str:
    """A message received and delivered at unix time ``at`` (its queue id carries the
    arrival time: store/queueid.py)."""
    received_id = queueid.lower_bound(at)[:11] + "x7k2q"
    original = sqlite_store.new_queue_id
    sqlite_store.new_queue_id = lambda: received_id
    try:
        qid = await _commit(store)
    finally:
        sqlite_store.new_queue_id = original
    assert qid == received_id
    [m] = await store.claim_due(time.time() + 1, 10, "w", 60)
    await store.record_results(qid, [DeliveryResult(m.recipients[0].id, True, reply="250 ok")],
                               at, None)
    return qid


async def _commit(store: SQLiteStore) -> str:
    blob = store.new_blob()
    blob.write(b"Subject: old\r\n\r\nbody\r\n")
    qid = await store.commit_message(Envelope(sender="a@example.org",
                                              recipients=[RecipientRequest("b@example.net")],
                                              received_at=time.time()), blob)
    return qid


async def _run_housekeeping(tmp_path, days: int) -> tuple[bool, bool]:
    settings = parse_settings({"data_dir": str(tmp_path),
                               "queue": {"completed_retention_days": days}}, env={})
    store = SQLiteStore(tmp_path / "q.db", tmp_path / "queue", sync_method="fsync")
    await store.open()
    try:
        old = await _completed_message(store, time.time() - 3 * 86400)
        fresh = await _completed_message(store, time.time())
        worker = types.SimpleNamespace(settings=settings)
        task = asyncio.ensure_future(Worker._prune_history(worker, store, interval=3600))
        try:
            for _ in range(100):                   # the first pass runs at once
                if await store.get_message(old) is None:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return await store.get_message(old) is None, await store.get_message(fresh) is None
    finally:
        await store.close()


def test_completed_messages_older_than_the_retention_are_pruned(tmp_path):
    old_gone, fresh_gone = asyncio.run(_run_housekeeping(tmp_path, days=1))
    assert old_gone and not fresh_gone


def test_zero_keeps_completed_messages(tmp_path):
    old_gone, fresh_gone = asyncio.run(_run_housekeeping(tmp_path, days=0))
    assert not old_gone and not fresh_gone
