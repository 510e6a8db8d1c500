"""DMARC aggregate-report data in the store (schema 8): every backend."""
from __future__ import annotations

T0 = 1_700_000_000.0


async def test_record_list_and_delete_results(store):
    await store.record_dmarc([
        (T0, "Bank.TEST", {"source_ip": "192.0.2.1", "disposition": "reject"}),
        (T0 + 10, "bank.test", {"source_ip": "192.0.2.2", "disposition": "none"}),
        (T0 + 100, "other.test", {"source_ip": "192.0.2.3", "disposition": "none"}),
    ])
    got = await store.dmarc_results(T0 + 50)
    assert [(r[2], r[3]["source_ip"]) for r in got] == [("bank.test", "192.0.2.1"),
                                                         ("bank.test", "192.0.2.2")]
    assert got[0][1] == T0
    assert await store.delete_dmarc_results([r[0] for r in got]) == 2
    assert await store.dmarc_results(T0 + 50) == []
    assert [r[2] for r in await store.dmarc_results(T0 + 1000)] == ["other.test"]
    assert await store.delete_dmarc_results([]) == 0
