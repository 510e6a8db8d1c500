"""A scriptable asyncio SMTP sink for outbound delivery tests (loopback only).

``Sink(host="127.0.0.2", port=0, **options)`` runs in the test's event loop
(``await sink.start()`` / ``await sink.stop()``) and records every connection and
transaction.  Options shape its behaviour:

* ``starttls`` (an ssl.SSLContext or None), ``pipelining``, ``chunking``, ``smtputf8``,
  ``dsn``, ``eightbit``, ``size`` (0 = no SIZE keyword): what EHLO offers;
* ``greeting`` (a full reply line, default "220 <name> ESMTP sink"), ``refuse_ehlo``;
* ``rcpt_replies`` {address: "450 4.2.1 Busy"}, ``mail_reply``, ``data_reply``,
  ``final_reply`` (reply lines used instead of the defaults);
* ``drop`` = "greeting" | "mail" | "data": close the connection at that point;
* ``auth`` {user: password}: offer AUTH PLAIN LOGIN (after TLS only) and require it;
* ``delay``: seconds to wait before answering the final dot (concurrency tests).

Records: ``connections`` (count), ``transactions`` (list of ``Txn``), ``active`` /
``peak`` concurrent connections, ``commands`` (every command line, in order).
"""
from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from dataclasses import dataclass, field


@dataclass
class Txn:
    mail: str                          # the MAIL command line
    rcpts: list[str] = field(default_factory=list)        # accepted RCPT lines
    wire: bytes = b""                  # DATA as on the wire (dot-stuffed, with terminator) or BDAT payloads
    body: bytes = b""                  # un-stuffed content
    bdat: bool = False
    tls: bool = False
    auth_user: str = ""
    helo: str = ""
    connection: int = 0


def free_port(hosts: list[str]) -> int:
    """A TCP port free on every one of ``hosts`` (MX tests share one port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")


class Sink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, name: str = "sink.test",
                 starttls: ssl.SSLContext | None = None, pipelining: bool = True,
                 chunking: bool = False, smtputf8: bool = True, dsn: bool = True,
                 eightbit: bool = True, size: int = 0, greeting: str | None = None,
                 refuse_ehlo: bool = False, rcpt_replies: dict[str, str] | None = None,
                 mail_reply: str | None = None, data_reply: str | None = None,
                 final_reply: str | None = None, drop: str = "",
                 auth: dict[str, str] | None = None, delay: float = 0.0,
                 rset_reply: str | None = None) -> None:
        self.host, self.port, self.name = host, port, name
        self.starttls = starttls
        self.pipelining, self.chunking, self.smtputf8 = pipelining, chunking, smtputf8
        self.dsn, self.eightbit, self.size = dsn, eightbit, size
        self.greeting = greeting or f"220 {name} ESMTP sink"
        self.refuse_ehlo = refuse_ehlo
        self.rcpt_replies = rcpt_replies or {}
        self.mail_reply, self.data_reply, self.final_reply = mail_reply, data_reply, final_reply
        self.drop = drop
        self.auth = auth
        self.delay = delay
        self.rset_reply = rset_reply
        #: for each RSET: was more input already waiting (sent in the same group)?
        self.rset_pipelined: list[bool] = []
        self.connections = 0
        self.transactions: list[Txn] = []
        self.commands: list[str] = []
        self.active = 0
        self.peak = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "Sink":
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    def ehlo_lines(self, tls: bool, authed: bool) -> list[str]:
        caps = []
        if self.pipelining:
            caps.append("PIPELINING")
        if self.size:
            caps.append(f"SIZE {self.size}")
        if self.eightbit:
            caps.append("8BITMIME")
        if self.smtputf8:
            caps.append("SMTPUTF8")
        if self.dsn:
            caps.append("DSN")
        if self.chunking:
            caps.append("CHUNKING")
        caps.append("ENHANCEDSTATUSCODES")
        if self.starttls is not None and not tls:
            caps.append("STARTTLS")
        if self.auth is not None and tls and not authed:
            caps.append("AUTH PLAIN LOGIN")
        return [self.name] + caps

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        conn_no = self.connections
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self._session(reader, writer, conn_no)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self.active -= 1
            self._tasks.discard(task)
            writer.close()

    async def _session(self, reader, writer, conn_no: int) -> None:
        async def send(*lines: str) -> None:
            writer.write("".join(line + "\r\n" for line in lines).encode())
            await writer.drain()

        if self.drop == "greeting":
            return
        await send(self.greeting)
        if not self.greeting.startswith("220"):
            await reader.readline()
            await send("221 2.0.0 Bye")
            return
        tls = authed = False
        auth_user = helo = ""
        txn: Txn | None = None
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                if self.refuse_ehlo and verb == "EHLO":
                    await send("502 5.5.1 No EHLO here")
                    continue
                helo = line[5:]
                txn = None
                lines = self.ehlo_lines(tls, authed) if verb == "EHLO" else [self.name]
                await send(*[f"250-{x}" for x in lines[:-1]], f"250 {lines[-1]}")
            elif verb == "STARTTLS" and self.starttls is not None and not tls:
                await send("220 2.0.0 Ready to start TLS")
                await writer.start_tls(self.starttls)
                tls = True
                txn = None
            elif verb == "AUTH" and self.auth is not None and tls:
                parts = line.split()
                user = pw = ""
                if parts[1].upper() == "PLAIN":
                    if len(parts) > 2:
                        resp = parts[2]
                    else:
                        await send("334 ")
                        resp = (await reader.readline()).decode().strip()
                    _, user, pw = base64.b64decode(resp).decode().split("\0")
                else:
                    await send("334 VXNlcm5hbWU6")
                    user = base64.b64decode((await reader.readline()).strip()).decode()
                    await send("334 UGFzc3dvcmQ6")
                    pw = base64.b64decode((await reader.readline()).strip()).decode()
                if self.auth.get(user) == pw:
                    authed, auth_user = True, user
                    await send("235 2.7.0 Authentication successful")
                else:
                    await send("535 5.7.8 Authentication credentials invalid")
            elif verb == "MAIL":
                if self.drop == "mail":
                    return
                if self.auth is not None and not authed:
                    await send("530 5.7.0 Authentication required")
                    continue
                if self.mail_reply:
                    await send(self.mail_reply)
                    continue
                txn = Txn(mail=line, tls=tls, auth_user=auth_user, helo=helo,
                          connection=conn_no)
                await send("250 2.1.0 Ok")
            elif verb == "RCPT":
                if txn is None:
                    await send("503 5.5.1 Need MAIL")
                    continue
                addr = line[line.find("<") + 1:line.find(">")]
                reply = self.rcpt_replies.get(addr)
                if reply:
                    await send(reply)
                else:
                    txn.rcpts.append(line)
                    await send("250 2.1.5 Ok")
            elif verb == "DATA":
                if txn is None or not txn.rcpts:
                    await send("554 5.5.1 No valid recipients")
                    continue
                if self.data_reply:
                    await send(self.data_reply)
                    continue
                await send("354 End data with <CR><LF>.<CR><LF>")
                if self.drop == "data":
                    return
                wire = await reader.readuntil(b"\r\n.\r\n")
                txn.wire = wire
                content = b"\r\n" + wire[:-5]
                txn.body = content.replace(b"\r\n..", b"\r\n.")[2:] + b"\r\n"
                if wire == b".\r\n":
                    txn.body = b""
                await self._finish(txn, send)
                txn = None
            elif verb == "BDAT":
                parts = line.split()
                n = int(parts[1])
                chunk = await reader.readexactly(n)
                if txn is None or not txn.rcpts:
                    await send("503 5.5.1 No valid recipients")
                    continue
                txn.bdat = True
                txn.wire += chunk
                txn.body += chunk
                if len(parts) > 2 and parts[2].upper() == "LAST":
                    await self._finish(txn, send)
                    txn = None
                else:
                    await send(f"250 2.0.0 {n} octets received")
            elif verb == "RSET":
                self.rset_pipelined.append(bool(reader._buffer))  # noqa: SLF001 - test aid
                if self.rset_reply:
                    await send(self.rset_reply)
                    continue
                txn = None
                await send("250 2.0.0 Ok")
            elif verb == "NOOP":
                await send("250 2.0.0 Ok")
            elif verb == "QUIT":
                await send("221 2.0.0 Bye")
                return
            else:
                await send("502 5.5.2 Unknown command")

    async def _finish(self, txn: Txn, send) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.final_reply:
            await send(self.final_reply)
            return
        self.transactions.append(txn)
        await send(f"250 2.0.0 Ok queued as Q{len(self.transactions)}")
