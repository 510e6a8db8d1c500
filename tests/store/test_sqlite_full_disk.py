"""A full disk under the SQLite store: commits fail cleanly (the session answers 451), and
every commit that was acknowledged survives, bodies inline in the database or in files.

The file system is real: a tmpfs of a few MiB mounted for the test (this needs root or
CAP_SYS_ADMIN, as the test machine and CI have; elsewhere the test is skipped with
mount's own message), filled by the commits themselves, then grown with
``mount -o remount,size=`` as an operator would free space.
"""
from __future__ import annotations

import subprocess

import pytest

from mailwright.queue.model import Envelope, RecipientRequest
from mailwright.store import StoreError
from mailwright.store.sqlite import SQLiteStore


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:     # not root, or a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _body(n: int, size: int) -> bytes:
    head = f"Subject: {n}\r\n\r\n".encode()
    return head + bytes([65 + n % 26]) * (size - len(head))


async def _commit(store: SQLiteStore, body: bytes) -> str:
    blob = store.new_blob()
    for i in range(0, len(body), 8192):
        blob.write(body[i:i + 8192])
    return await store.commit_message(
        Envelope("a@example.org", [RecipientRequest("b@example.net")], 1_700_000_000.0), blob)


@pytest.mark.parametrize("size", [20_000, 100_000], ids=["inline", "file"])
async def test_full_disk_refuses_commits_and_keeps_every_acknowledged_one(small_fs, runner,
                                                                          size):
    store = SQLiteStore(small_fs / "queue.db", small_fs / "blobs")
    await store.open()
    acked: dict[str, int] = {}
    refused = 0
    errors: set[str] = set()
    try:
        for n in range(400):             # 400 x 20 KB > 3 MiB: the disk fills on the way
            try:
                acked[await _commit(store, _body(n, size))] = n
            except StoreError as exc:
                refused += 1
                errors.add(str(exc))
                if refused >= 5:         # a few more tries: each fails the same clean way
                    break
        print(f"acknowledged {len(acked)}, then refused {refused}: {errors}")
        assert acked and refused == 5
        assert any("full" in e or "No space" in e for e in errors), errors
    finally:
        try:
            await store.close()
        except (StoreError, OSError):
            pass                        # a checkpoint at close may not fit either
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_fs)], check=True)
    store = SQLiteStore(small_fs / "queue.db", small_fs / "blobs")
    await store.open()
    try:
        await store.recover()
        assert store.last_recovery.missing_blobs == 0
        for qid, n in acked.items():
            m = await store.get_message(qid)
            assert m is not None and store.read_body(m) == _body(n, size)
            assert bool(m.blob_path) == (size > store.inline_body_max)
        assert len(await store.list_messages(limit=10_000)) >= len(acked)
        again = await _commit(store, _body(999, size))      # room again: accepted
        assert store.read_body(await store.get_message(again)) == _body(999, size)
    finally:
        await store.close()
