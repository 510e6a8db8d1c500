"""Per-destination concurrency across the cluster (issue 6): leased slots in PostgreSQL.

* the slot protocol between two stores ("nodes") on one schema: never more than the
  limit, an expired lease is taken over, release and renew;
* end to end: two server nodes relay to one real SMTP peer on loopback that answers the
  final dot slowly; with ``per_destination_concurrency = 2`` the peer never sees more
  than 2 transactions at once although each node alone would allow 2 (4 together).
"""
from __future__ import annotations

import asyncio
import smtplib
import time

from cluster.pgtools import PG_DSN, store_sections
from mailwright.cluster.limits import ClusterDestinationLimiter
from mailwright.store.postgres import PostgresStore
from outbound.sink import Sink, free_port
from support import MailServer


async def _open(schema: str, node: str, tmp_path) -> PostgresStore:
    s = PostgresStore(PG_DSN, schema=schema, node=node, cache_dir=str(tmp_path / node),
                      pool_size=4)
    await s.open()
    return s


def test_slots_hold_across_nodes_and_expire(tmp_path, pg_schema):
    async def run():
        a = await _open(pg_schema, "a", tmp_path)
        b = await _open(pg_schema, "b", tmp_path)
        try:
            now = time.time()
            got = [await a.acquire_slot("remote.test", 2, "a:1", 5, now),
                   await b.acquire_slot("remote.test", 2, "b:1", 5, now),
                   await b.acquire_slot("remote.test", 2, "b:2", 5, now)]
            assert got == [0, 1, None]
            assert await a.acquire_slot("other.test", 2, "a:2", 5, now) == 0
            assert await b.slots_in_use(now) == {"other.test": 1, "remote.test": 2}
            # renew extends only the owner's lease
            assert await a.renew_slot("remote.test", 0, "a:1", 60, now)
            assert not await b.renew_slot("remote.test", 0, "b:1", 60, now)
            # a's lease on slot 0 now runs to now+60; b's slot 1 expires at now+5
            assert await b.acquire_slot("remote.test", 2, "b:3", 5, now + 6) == 1
            await a.release_slot("remote.test", 0, "a:1")
            assert await b.acquire_slot("remote.test", 2, "b:4", 5, now + 6) == 0
            # many concurrent claimers from both nodes: never more than the limit
            holders = 0
            peak = 0
            limiters = [ClusterDestinationLimiter(s, 3, s.node, lease_seconds=5)
                        for s in (a, b)]

            async def deliver(lim):
                nonlocal holders, peak
                async with lim.hold("busy.test"):
                    holders += 1
                    peak = max(peak, holders)
                    await asyncio.sleep(0.05)
                    holders -= 1
            await asyncio.gather(*(deliver(limiters[i % 2]) for i in range(40)))
            assert peak == 3
            assert "busy.test" not in await a.slots_in_use()     # all released
        finally:
            await b.close()
            await a.close()
    asyncio.run(run())


class CountingSink(Sink):
    """The loopback SMTP peer of tests/outbound, counting transactions in progress."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.in_progress = 0
        self.txn_peak = 0

    async def _finish(self, txn, send) -> None:
        self.in_progress += 1
        self.txn_peak = max(self.txn_peak, self.in_progress)
        try:
            await super()._finish(txn, send)
        finally:
            self.in_progress -= 1


def test_two_nodes_share_one_destination_limit(tmp_path, pg_schema):
    async def run():
        port = free_port(["127.0.0.2"])
        sink = await CountingSink(host="127.0.0.2", port=port, name="mx.remote.test",
                                  delay=0.4).start()
        extra = (f"[outbound]\nper_destination_concurrency = 2\nidle_connection_timeout = 0.5\n"
                 f'[[outbound.routes]]\ndomain = "remote.test"\n'
                 f'next_hop = "[127.0.0.2]:{port}"\n'
                 f'[relay]\ntrusted_networks = ["127.0.0.0/8"]\n')
        nodes = []
        for name in ("node-a", "node-b"):
            (tmp_path / name).mkdir()
            nodes.append(MailServer(tmp_path / name, extra_sections=store_sections(
                pg_schema, name, extra=extra)))
        try:
            for n in nodes:
                await asyncio.to_thread(n.start)

            def submit(i: int) -> None:
                srv = nodes[i % 2]
                with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
                    s.sendmail("c@client.test", [f"r{i}@remote.test"],
                               f"Subject: {i}\r\n\r\nx\r\n")
            await asyncio.gather(*(asyncio.to_thread(submit, i) for i in range(16)))
            deadline = time.monotonic() + 40
            while len(sink.transactions) < 16 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            for n in nodes:
                await asyncio.to_thread(n.stop)
            await sink.stop()
        return sink, nodes
    sink, nodes = asyncio.run(run())
    print(f"\ndelivered={len(sink.transactions)} peak transactions={sink.txn_peak} "
          f"peak connections={sink.peak}")
    assert len(sink.transactions) == 16
    assert sink.txn_peak == 2          # the limit, reached, never exceeded by two nodes
    per_node = [sum(1 for line in n.log().splitlines() if "rcpt=" in line and " ok: " in line)
                for n in nodes]
    assert all(per_node), f"one node delivered nothing: {per_node}"
