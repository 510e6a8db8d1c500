"""Measure store commit throughput (not a test).

Compares the two sync methods of SQLiteStore: "syncfs" (one syncfs(2) per group-commit
batch) and "fsync" (per-file fsync, optionally on a thread pool, plus one fsync per
touched directory). Both end with one SQLite transaction (WAL fsync) per batch.

Runs N concurrent committers, each in a loop: new_blob(), write a 5 KB body in 1 KB
chunks, commit_message(). Prints commits/s and the average group-commit batch size.

    .venv/bin/python bench/store_commit.py [--seconds 3] [--concurrency 1 50]
                                           [--method syncfs fsync] [--fsync-threads 1 8] [--dir /path/on/disk]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time

from mailwright.queue.model import Envelope, RecipientRequest
from mailwright.store.sqlite import SQLiteStore

BODY = (b"X" * 1022 + b"\r\n") * 5


async def run(root: str, concurrency: int, seconds: float, method: str,
              fsync_threads: int) -> None:
    store = SQLiteStore(os.path.join(root, "queue.db"), os.path.join(root, "blobs"),
                        sync_method=method, fsync_threads=fsync_threads)
    await store.open()
    count = 0
    stop_at = time.perf_counter() + seconds

    async def committer() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            blob = store.new_blob()
            for i in range(0, len(BODY), 1024):
                blob.write(BODY[i:i + 1024])
            env = Envelope(sender="bench@example.org",
                           recipients=[RecipientRequest("rcpt@example.net")],
                           received_at=time.time())
            await store.commit_message(env, blob)
            count += 1

    t0 = time.perf_counter()
    b0, i0 = store._writer.batches, store._writer.committed_items
    await asyncio.gather(*(committer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    batches = store._writer.batches - b0
    items = store._writer.committed_items - i0
    await store.close()
    print(f"{method:6s} fsync_threads={fsync_threads:2d} concurrency={concurrency:3d}: "
          f"{count / elapsed:8.0f} commits/s  ({count} in {elapsed:.2f}s, "
          f"avg batch {items / max(batches, 1):.1f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--method", nargs="+", default=["syncfs", "fsync"],
                    choices=["syncfs", "fsync"])
    ap.add_argument("--fsync-threads", type=int, nargs="+", default=[1],
                    help="pool size for per-file fsyncs (sync method fsync only)")
    ap.add_argument("--dir", default=None, help="directory on the disk to measure")
    args = ap.parse_args()
    combos = [(m, t) for m in args.method
              for t in (args.fsync_threads if m == "fsync" else [1])]
    for method, threads in combos:
        for n in args.concurrency:
            root = tempfile.mkdtemp(prefix="mw-bench-", dir=args.dir)
            try:
                asyncio.run(run(root, n, args.seconds, method, threads))
            finally:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
