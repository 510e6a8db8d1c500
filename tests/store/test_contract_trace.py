"""The message trace in the store (schema 6): every backend."""
from __future__ import annotations

from mailwright.store.base import TraceEvent

T0 = 1_700_000_000.0


def ev(at, kind="accepted", qid="", mid="", sender="a@example.org", rcpts=("b@example.net",),
       **data):
    return TraceEvent(at, kind, "s1", qid, mid, sender, tuple(rcpts), "192.0.2.1", data)


async def test_query_by_queue_id_message_id_and_address(store):
    await store.record_trace([
        ev(T0, qid="q1", mid="<m1@x>", verdicts=[{"check": "spf", "action": "continue"}]),
        ev(T0 + 1, kind="rejected", sender="Evil@Example.COM", rcpts=("nobody@example.net",),
           step="rcpt"),
        ev(T0 + 2, qid="q2", mid="<m2@x>", rcpts=("c@example.net", "b_x@example.net")),
    ])
    got = await store.query_trace(queue_ids=["q1"])
    assert [e.queue_id for e in got] == ["q1"]
    assert got[0].data["verdicts"][0]["check"] == "spf" and got[0].client_ip == "192.0.2.1"
    assert [e.queue_id for e in await store.query_trace(message_id="<m2@x>")] == ["q2"]
    # address: sender (case-insensitive) or any recipient, whole addresses only
    assert [e.kind for e in await store.query_trace(address="evil@example.com")] == ["rejected"]
    assert [e.queue_id for e in await store.query_trace(address="b@example.net")] == ["q1"]
    assert [e.queue_id for e in await store.query_trace(address="b_x@example.net")] == ["q2"]
    assert await store.query_trace(address="b%@example.net") == []      # no wildcards
    assert await store.query_trace(address="example.net") == []
    # client address: every transaction and refusal from it
    assert len(await store.query_trace(client_ip="192.0.2.1")) == 3
    assert await store.query_trace(client_ip="192.0.2.99") == []
    # time window
    assert [e.at for e in await store.query_trace(address="a@example.org", since=T0 + 1)] \
        == [T0 + 2]
    assert [e.at for e in await store.query_trace(address="a@example.org", until=T0 + 1)] \
        == [T0]


async def test_prune_removes_only_old_records(store):
    await store.record_trace([ev(T0, qid="old"), ev(T0 + 100, qid="new")])
    assert await store.prune_trace(T0 + 50) == 1
    assert [e.queue_id for e in await store.query_trace(queue_ids=["old", "new"])] == ["new"]
