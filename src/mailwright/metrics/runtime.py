"""Metrics in a running server: one ``MailMetrics`` per process, served by the primary.

What: ``MetricsRuntime(settings, primary=, slot=)`` is what app.py's ``Worker`` holds. The
primary (``[metrics] enabled``) serves the scrape endpoint (metrics/http.py); an intake
worker publishes its values to a file the primary reads at scrape time.

How, with ``workers = N > 1`` (intake workers are separate processes, each counting its own
sessions):
* Worker slot ``k`` writes its ``Registry.snapshot()`` to ``data_dir/run/metrics/
  worker-<k>.json`` once a second when something changed, and once more when it stops
  (temp file + rename: a reader never sees half a file).
* At each scrape the primary renders its own registry plus every ``worker-*.json``,
  adding them up sample by sample, and refreshes the queue gauge from the store
  (cached for ``QUEUE_CACHE_SECONDS``).
* Monotonic across a worker restart: the supervisor starts the replacement with the same
  slot, and it first ``restore``s counters and histograms from its slot's file, the exact
  values the primary last showed. Increments between the last write and a crash were never
  shown, so nothing goes backwards. Gauges start from zero (they describe the live process).
* The primary empties ``run/metrics/`` when it starts: a server restart starts every
  counter from zero, as Prometheus expects from a restarted target.
With ``workers = 1`` the primary serves sessions itself and no file is written.

Invariants: metrics never stop mail. A failing bind, file write or store read is logged
and the server goes on; a scrape with a failing store read shows the last good queue depth.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .http import MetricsHTTPServer
from .mail import MailMetrics

__all__ = ["MetricsRuntime", "METRICS_DIR", "QUEUE_CACHE_SECONDS", "recipient_counts"]

log = logging.getLogger("mailwright.metrics")

METRICS_DIR = "run/metrics"          # relative to data_dir
QUEUE_CACHE_SECONDS = 5.0
PUBLISH_INTERVAL = 1.0

_COUNT_SQL = ("SELECT state, COUNT(*) FROM recipients WHERE state IN ('queued', 'held')"
              " GROUP BY state")


async def recipient_counts(store: Any) -> dict[str, int]:
    """Recipients per non-final state. Uses ``store.recipient_counts()`` when the backend
    offers it, else one read on the backend's reader (the SQL is the same on both)."""
    counts = getattr(store, "recipient_counts", None)
    if counts is not None:
        return dict(await counts())
    backend = getattr(store, "backend", "")
    if backend == "sqlite":
        rows = await store._read(lambda c: c.execute(_COUNT_SQL).fetchall())
    elif backend == "postgres":
        rows = await store._read(lambda c: c.fetch(_COUNT_SQL))
    else:
        return {}
    return {str(state): int(n) for state, n in rows}


class MetricsRuntime:
    def __init__(self, settings: Any, *, primary: bool, slot: int = 0) -> None:
        self.mail = MailMetrics()
        self.mail.listeners(listener.name for listener in settings.listeners)
        self.config = settings.metrics
        self.primary = primary
        self.slot = slot
        self.multi = settings.effective_workers > 1
        self.dir = Path(settings.resolve(METRICS_DIR))
        self.server: MetricsHTTPServer | None = None
        self._store: Any = None
        self._queue_read_at = -QUEUE_CACHE_SECONDS
        self._publisher: asyncio.Task | None = None
        self._published: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.enabled)

    def worker_file(self, slot: int) -> Path:
        return self.dir / f"worker-{slot}.json"

    # ------------------------------------------------------------ lifecycle

    async def start(self, store: Any) -> None:
        if not self.enabled:
            return
        self._store = store
        if self.primary:
            if self.multi:
                self._clear_dir()
            self.server = MetricsHTTPServer(self.config.address, self.config.port,
                                            self.config.path, self.render)
            try:
                port = await self.server.start()
            except OSError as exc:
                log.error("metrics endpoint %s:%s unavailable (%s); serving mail without it",
                          self.config.address, self.config.port, exc)
                self.server = None
                return
            log.info("metrics at http://%s:%s%s", self.config.address, port, self.config.path)
        elif self.multi:
            self._restore()
            self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._publisher is not None:
            self._publisher.cancel()
            try:
                await self._publisher
            except (asyncio.CancelledError, Exception):
                pass
            self._publisher = None
            self._publish()

    # ------------------------------------------------------------ primary: scrape

    async def render(self) -> bytes:
        await self._refresh_queue()
        extra = self._read_workers() if self.multi else []
        return self.mail.registry.render(extra).encode("utf-8")

    async def _refresh_queue(self) -> None:
        now = time.monotonic()
        if self._store is None or now - self._queue_read_at < QUEUE_CACHE_SECONDS:
            return
        self._queue_read_at = now
        try:
            self.mail.queue_depth(await recipient_counts(self._store))
        except Exception as exc:            # keep the last good values
            log.warning("queue depth for metrics unavailable: %r", exc)

    def _read_workers(self) -> list[dict]:
        out = []
        try:
            names = sorted(p for p in os.listdir(self.dir)
                           if p.startswith("worker-") and p.endswith(".json"))
        except FileNotFoundError:
            return out
        for name in names:
            try:
                with open(self.dir / name, encoding="utf-8") as f:
                    data = json.load(f)
                if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
                    out.append(data["metrics"])
            except (OSError, ValueError) as exc:
                log.warning("metrics file %s unreadable: %r", name, exc)
        return out

    def _clear_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for p in self.dir.iterdir():
                if p.name.startswith("worker-"):
                    p.unlink()
        except OSError as exc:
            log.warning("cannot clear %s: %r", self.dir, exc)

    # ------------------------------------------------------------ worker: publish

    def _restore(self) -> None:
        try:
            with open(self.worker_file(self.slot), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("metrics of worker slot %s not restored: %r", self.slot, exc)
            return
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            self.mail.registry.restore(data["metrics"])
            log.info("worker slot %s continues its predecessor's counters", self.slot)

    async def _publish_loop(self) -> None:
        while True:
            self._publish()
            await asyncio.sleep(PUBLISH_INTERVAL)

    def _publish(self) -> None:
        text = json.dumps(self.mail.registry.snapshot(), separators=(",", ":"))
        if text == self._published:
            return
        path = self.worker_file(self.slot)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f'{{"pid":{os.getpid()},"metrics":{text}}}')
            os.replace(tmp, path)
            self._published = text
        except OSError as exc:
            log.warning("cannot write %s: %r", path, exc)
