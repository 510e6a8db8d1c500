"""A tiny asyncio HTTP/1.1 server for one page: the Prometheus scrape endpoint.

What: ``MetricsHTTPServer(address, port, path, render)`` answers ``GET path`` (and
``HEAD``) with ``200`` and ``render()``'s bytes as ``text/plain; version=0.0.4``; any other
path is ``404``, any other method on the path ``405``, a malformed request ``400``.

How: ``asyncio.start_server``; each connection reads one request head (request line and
header fields up to the blank line), answers it with ``Connection: close`` and closes.
Prometheus opens a connection per scrape or reuses one; closing after each answer is
allowed by HTTP/1.1 and keeps this server stateless.

Invariants:
* A request head is bounded (``MAX_HEAD`` bytes, else ``431``) and must arrive within
  ``idle_timeout`` seconds, else the connection is closed without an answer: a slow or
  idle client cannot hold memory or a connection for long.
* A request body is never read; the connection is closed after the answer (after an
  oversized head, with a bounded "lingering close" so the 431 reaches the client).
* An exception from ``render`` becomes a ``500`` (logged), never a crash of the server.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .registry import CONTENT_TYPE

__all__ = ["MetricsHTTPServer", "MAX_HEAD"]

log = logging.getLogger("mailwright.metrics")

MAX_HEAD = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class MetricsHTTPServer:
    def __init__(self, address: str, port: int, path: str,
                 render: Callable[[], Awaitable[bytes]], *, idle_timeout: float = 10.0) -> None:
        self.address = address
        self.port = port
        self.path = path
        self.render = render
        self.idle_timeout = idle_timeout
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.address, self.port,
                                                  limit=MAX_HEAD + 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
        """The request head up to its blank line, or None when it is over ``MAX_HEAD``."""
        head = b""
        while True:
            try:
                line = await reader.readline()
            except ValueError:                       # one line over the reader's limit
                return None
            if not line:
                raise ConnectionError("closed before the end of the request head")
            head += line
            if len(head) > MAX_HEAD:
                return None
            if line in (b"\r\n", b"\n"):
                return head

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(self._read_head(reader), self.idle_timeout)
            except (asyncio.TimeoutError, ConnectionError):
                return                               # idle or gone: close, no answer
            if head is None:
                await self._answer(writer, 431, b"request head too long\n")
                await self._linger(reader, writer)
                return
            status, body, send_body = await self._respond(head)
            await self._answer(writer, status, body, send_body)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After answering a request we did not read in full: half-close, then discard a
        bounded amount of input for a moment, so closing with unread bytes (a TCP reset)
        does not destroy the answer before the client has read it."""
        try:
            if writer.can_write_eof():
                writer.write_eof()
            deadline = asyncio.get_running_loop().time() + 1.0
            left = 256 * 1024
            while left > 0:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
                if not chunk:
                    return
                left -= len(chunk)
        except (asyncio.TimeoutError, ConnectionError, OSError, ValueError):
            return

    async def _respond(self, head: bytes) -> tuple[int, bytes, bool]:
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, b"bad request\n", True
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target.decode("latin-1") != self.path:
            return 404, b"not found\n", method != b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", True
        try:
            body = await self.render()
        except Exception:
            log.exception("rendering the metrics failed")
            return 500, b"internal error\n", True
        return 200, body, method == b"GET"

    async def _answer(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                      send_body: bool = True) -> None:
        ctype = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                + ("Allow: GET, HEAD\r\n" if status == 405 else "")
                + "Connection: close\r\n\r\n").encode("ascii")
        writer.write(head + (body if send_body else b""))
        await writer.drain()
