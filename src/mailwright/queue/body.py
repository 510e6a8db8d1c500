"""A queued message's body as delivery agents receive it: in memory or in a file.

What: ``MessageBody`` is what ``Store.fetch_body`` returns and ``DeliveryAgent.deliver``
takes. A store that keeps small bodies inline (SQLite: in its ``bodies`` table, written
in the same transaction as the envelope) hands over the bytes it read with the claim;
a body kept as a file (large ones, and every body of a store without inline bodies)
is handed over as its path and read or streamed by the agent.

How: agents never care which: ``size()``, ``read()``, ``read_async()`` (a file is read on
a thread, bytes in memory are returned at once), ``open()`` (a binary file object:
``io.BytesIO`` over the bytes, or the file) and ``head(n)`` work on both. ``path`` is ""
for a body in memory; ``str(body)`` names it for log lines.

Invariants: immutable; reading a file-backed body raises ``OSError`` like ``open`` does
(agents turn it into a temporary failure); an in-memory body never raises.
"""
from __future__ import annotations

import asyncio
import io
import os
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True, slots=True)
class MessageBody:
    path: str = ""              # the file holding the body, or "" when it is in memory
    data: bytes | None = None   # the body itself, when the store kept it inline

    @classmethod
    def in_file(cls, path: str | os.PathLike[str]) -> "MessageBody":
        return cls(path=os.fspath(path))

    @classmethod
    def in_memory(cls, data: bytes) -> "MessageBody":
        return cls(data=bytes(data))

    def size(self) -> int:
        """Length in octets. Raises OSError for an unreadable file."""
        if self.data is not None:
            return len(self.data)
        return os.stat(self.path).st_size

    def read(self) -> bytes:
        """The whole body. Raises OSError for an unreadable file."""
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            return f.read()

    async def read_async(self) -> bytes:
        """``read()`` without blocking the event loop on a file."""
        if self.data is not None:
            return self.data
        return await asyncio.to_thread(self.read)

    def open(self) -> BinaryIO:
        """A binary file object positioned at the start (close it when done)."""
        if self.data is not None:
            return io.BytesIO(self.data)
        return open(self.path, "rb")

    def head(self, n: int) -> bytes:
        """At most the first ``n`` octets."""
        if self.data is not None:
            return self.data[:n]
        with open(self.path, "rb") as f:
            return f.read(n)

    def __str__(self) -> str:
        return self.path if self.data is None else f"<{len(self.data)} octets in memory>"
