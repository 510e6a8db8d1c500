"""A node's housekeeping loop on a cluster store: heartbeats and body-cache cleanup.

What: ``run_heartbeat(store, node, interval, info)`` runs until cancelled (the primary
process of each node starts it beside the queue manager). Every ``interval`` seconds it
records ``store.heartbeat(node, now, info())`` (shown by ``mailwright cluster status``);
every ``cleanup_every`` seconds it removes this node's cached body copies of messages
that other nodes completed (``store.cleanup_cache``).

Invariants: liveness is only reported, never used to take work over: takeover is decided
by lease expiry alone (store/postgres.py), so a node with a slow heartbeat never loses
work it still holds, and a node that stops heartbeating loses nothing either. A failing
database only delays the next heartbeat; the loop never dies of it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping

log = logging.getLogger("mailwright.cluster")


async def run_heartbeat(store: Any, node: str, interval: float,
                        info: Callable[[], Mapping[str, Any]], *,
                        cleanup_every: float = 600.0,
                        clock: Callable[[], float] = time.time) -> None:
    next_cleanup = clock() + cleanup_every
    failing = False
    while True:
        try:
            await store.heartbeat(node, clock(), info())
            if failing:
                log.info("heartbeat of node %s recorded again", node)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the database may be away for a while
            if not failing:
                log.warning("heartbeat of node %s failed: %s", node, exc)
            failing = True
        if clock() >= next_cleanup:
            next_cleanup = clock() + cleanup_every
            try:
                removed = await store.cleanup_cache()
                if removed:
                    log.info("removed %d cached body copies of completed messages", removed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("body cache cleanup failed: %s", exc)
        await asyncio.sleep(interval)
