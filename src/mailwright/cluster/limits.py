"""Per-destination delivery concurrency that holds across every node of a cluster.

What: ``ClusterDestinationLimiter(store, limit, owner)`` has the interface of
``net.outbound.DestinationLimiter`` (``async with limiter.hold(destination)``), so the
SMTP agent uses it unchanged (app.py installs it when the store is PostgreSQL). At most
``limit`` deliveries to one destination (``Route.next_hop`` or the recipient domain) are in
progress at once in the whole cluster: ``[outbound] per_destination_concurrency``.

How: a hold first takes this process's own semaphore for the destination (so one node
never asks the database for more than ``limit`` slots), then a leased slot in
``destination_slots`` (store/pg_slots.py): ``acquire_slot`` is retried with a growing,
jittered pause (25 ms up to 500 ms) while all slots are taken. While the delivery runs, a
task renews the slot's lease every third of ``lease_seconds``; leaving the block releases
it. A node that dies holding slots frees them when their leases expire (default 60 s),
exactly as it frees its messages.

Invariants: a database failure while acquiring raises (the SMTP agent turns it into a
temporary failure: the delivery is retried, never sent over the limit); a failure to
renew or release only logs (the lease then expires by itself). Waiting is bounded by the
queue manager's delivery timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from typing import Any, AsyncIterator

from ..net.outbound import DestinationLimiter

log = logging.getLogger("mailwright.cluster")


class ClusterDestinationLimiter:
    def __init__(self, store: Any, limit: int, owner: str, *, lease_seconds: float = 60.0,
                 min_pause: float = 0.025, max_pause: float = 0.5) -> None:
        self.store = store
        self.limit = limit
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.min_pause = min_pause
        self.max_pause = max_pause
        self.local = DestinationLimiter(limit)
        self.peak = self.local.peak            # per-process statistics, as DestinationLimiter
        self.waits = 0                          # acquisitions that had to wait (statistics)
        self._ids = itertools.count(1)

    @contextlib.asynccontextmanager
    async def hold(self, destination: str) -> AsyncIterator[None]:
        async with self.local.hold(destination):
            owner = f"{self.owner}:{next(self._ids)}"
            slot = await self._acquire(destination, owner)
            renewer = asyncio.ensure_future(self._renew(destination, slot, owner))
            try:
                yield
            finally:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
                try:
                    await asyncio.shield(self.store.release_slot(destination, slot, owner))
                except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                    log.warning("releasing slot %d of %s failed: %s", slot, destination, exc)

    async def _acquire(self, destination: str, owner: str) -> int:
        pause = self.min_pause
        waited = False
        while True:
            slot = await self.store.acquire_slot(destination, self.limit, owner,
                                                 self.lease_seconds)
            if slot is not None:
                self.waits += waited
                return slot
            waited = True
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, self.max_pause)

    async def _renew(self, destination: str, slot: int, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                if not await self.store.renew_slot(destination, slot, owner,
                                                   self.lease_seconds):
                    log.warning("slot %d of %s was lost (lease expired)", slot, destination)
                    return
            except Exception as exc:  # noqa: BLE001 - try again at the next round
                log.warning("renewing slot %d of %s failed: %s", slot, destination, exc)
