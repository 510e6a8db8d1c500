"""A probing SMTP client connection for diagnostics (``mailwright diag smtp``).

What: ``ProbeConnection``, one TCP (and TLS) connection that drives the sans-IO client core
(smtp/client.py) step by step and records every line sent and received, with its time, for
the transcript an operator reads; ``open_probe`` makes the TCP connection; the TLS contexts
used to inspect a server's certificate (one verifying the chain, one accepting anything so
a failed chain can still be shown); ``presented_chain`` reads the certificates as sent.

How: unlike net/outbound.py (built for delivery: pooled, quiet) it keeps the dialogue,
masks what follows AUTH, and lets the caller stop after any step. It lives in ``net/``
because that is the only package that opens mail sockets (GUIDE: net/ owns sockets and TLS).

Invariants: never logs or records credentials (``masking`` while AUTH is outstanding);
every wait is bounded by the core's RFC 5321 §4.5.3.2 reply deadlines or ``timeout``.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from ..smtp.client import NEED_DATA, ClientConfig, ClientConnection, Command

__all__ = ["Line", "ProbeConnection", "open_probe", "presented_chain", "verifying_context",
           "open_context"]


@dataclass
class Line:
    direction: str                     # "C" (we sent) or "S" (the server sent)
    text: str
    ms: float                          # milliseconds since the test started

    def to_dict(self) -> dict[str, Any]:
        return {"dir": self.direction, "line": self.text, "ms": round(self.ms, 1)}



def presented_chain(ssl_object: Any) -> list[bytes]:
    """The certificates as the server sent them (DER), leaf first. Python 3.13 has the
    public ``get_unverified_chain``; 3.10-3.12 have it on the internal ``_sslobj``."""
    for obj in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(obj, "get_unverified_chain", None)
        if getter is None:
            continue
        try:
            chain = getter() or []
        except (ssl.SSLError, ValueError):
            continue
        out = []
        for cert in chain:
            out.append(cert if isinstance(cert, bytes)
                       else cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
        if out:
            return out
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def verifying_context(cafile: str) -> ssl.SSLContext:
    # OpenSSL verifies the chain (as sending MTAs do); the name is checked by
    # name_matches so that the two results are reported apart.
    ctx = ssl.create_default_context(cafile=cafile or None)
    ctx.check_hostname = False
    return ctx


def open_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ProbeConnection(asyncio.Protocol):
    """One TCP (and TLS) connection: feeds the sans-IO core, records each line."""

    def __init__(self, loop: asyncio.AbstractEventLoop, helo: str, timeout: float,
                 clock: Callable[[], float]) -> None:
        self.loop = loop
        self.timeout = timeout
        self.clock = clock                 # milliseconds since the test started
        self.config = ClientConfig(helo, {c: timeout for c in Command})
        self.core = ClientConnection(self.config, loop.time())
        self.lines: list[Line] = []        # recorded, not yet given to a step
        self.transport: asyncio.Transport | None = None
        self.ssl_object: Any = None
        self.wakeup = asyncio.Event()
        self.lost = False
        self.masking = False               # AUTH outstanding: hide what we send
        self._partial = {"C": b"", "S": b""}

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The greeting deadline (RFC 5321 §4.5.3.2.1) runs from the TCP connection.
        self.transport = transport  # type: ignore[assignment]
        self.core = ClientConnection(self.config, self.loop.time())

    def data_received(self, data: bytes) -> None:
        self._lines("S", data)
        self.core.receive_data(data, self.loop.time())
        self.wakeup.set()

    def eof_received(self) -> bool:
        self.core.eof_received()
        self.wakeup.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.core.eof_received()
        self.wakeup.set()

    # recording
    def _lines(self, direction: str, data: bytes) -> None:
        buf = self._partial[direction] + data
        *complete, rest = buf.split(b"\n")
        self._partial[direction] = rest
        for raw in complete:
            text = raw.rstrip(b"\r").decode("utf-8", "replace")
            if direction == "C" and self.masking:
                text = " ".join(text.split(" ")[:2]) + " ****" if text.upper().startswith(
                    "AUTH ") else "****"
            self.lines.append(Line(direction, text, self.clock()))

    def take_lines(self, flush_partial: bool = False) -> list[Line]:
        """The lines recorded since the last call (with an unfinished last line if
        ``flush_partial``: the connection is over)."""
        if flush_partial:
            for direction, rest in self._partial.items():
                if rest:
                    self.lines.append(Line(direction, rest.decode("utf-8", "replace")
                                           + " [no line end]", self.clock()))
                    self._partial[direction] = b""
        out, self.lines = self.lines, []
        return out

    # driving the core

    def flush(self) -> None:
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self._lines("C", data)
            self.transport.write(data)

    async def event(self) -> Any:
        """The next core event, reading under the core's reply deadline."""
        while True:
            self.flush()
            ev = self.core.next_event()
            if ev is not NEED_DATA:
                return ev
            if self.lost:
                self.core.eof_received()
                continue
            deadline = self.core.get_timer()
            if deadline is None:
                self.core.abort("waiting with no command outstanding")
                continue
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), max(0.0, deadline - self.loop.time()))
            except asyncio.TimeoutError:
                self.core.handle_timer(self.loop.time())

    async def command(self, send: Callable[..., object], *args: Any) -> Any:
        send(*args, now=self.loop.time())
        return await self.event()

    async def start_tls(self, ctx: ssl.SSLContext, server_name: str | None) -> None:
        assert self.transport is not None
        new = await asyncio.wait_for(
            self.loop.start_tls(self.transport, self, ctx, server_hostname=server_name,
                                ssl_handshake_timeout=self.timeout),
            self.timeout + 1)
        if new is None:
            raise ConnectionError("connection closed during the TLS handshake")
        self.transport = new  # type: ignore[assignment]
        self.ssl_object = new.get_extra_info("ssl_object")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort() if self.lost else self.transport.close()
        self.lost = True


async def open_probe(loop: asyncio.AbstractEventLoop, ip: str, port: int, *, helo: str,
                     timeout: float, clock: Callable[[], float]) -> ProbeConnection:
    """Connect to ``ip``:``port`` within ``timeout`` seconds (asyncio.TimeoutError,
    OSError on failure)."""
    conn = ProbeConnection(loop, helo, timeout, clock)
    await asyncio.wait_for(loop.create_connection(lambda: conn, ip, port), timeout)
    return conn
