#!/usr/bin/env python3
"""Cluster benchmark: intake and end-to-end throughput of one node on SQLite, one node on
PostgreSQL and two nodes on PostgreSQL, printed side by side (issue 6).

What it does, per setup:

1. Starts the node(s) (``python -m mailwright.cli.main serve``, ``workers = 1``) on
   loopback with a generated config: SQLite with Maildirs (the single-machine default),
   or ``[store] backend = "postgres"`` with ``[delivery] mailbox_store = "postgres"`` (the
   cluster setup) on a schema of its own in the local PostgreSQL (``--dsn``, default the
   test database), dropped afterwards.
2. Sends ``--messages`` messages of ``--size`` bytes over ``--sessions`` concurrent SMTP
   sessions (connections reused, as smtp-source -d), spread evenly over the nodes, from
   an asyncio client in this process (on a small machine the client takes CPU from the
   servers: figures are comparative).
3. Intake = messages / time until the last 250. End to end = messages / time from the
   first MAIL until every message sits in its mailbox (Maildir files, or rows in
   ``mailbox_messages``).

Usage: ``.venv/bin/python bench/cluster.py [--messages 3000] [--sessions 20]``.
Loopback only; every wait has a timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopback_dns  # noqa: E402  (SPF/DMARC lookups stay on loopback)

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
RCPT = "bench@example.test"
DNS = None          # the loopback DNS server, started in main()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, root: Path, name: str, store: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.config = self.dir / "mailwright.toml"
        self.config.write_text(
            f'hostname = "mx.example.test"\ndata_dir = "{self.dir / "data"}"\nworkers = 1\n'
            f'local_domains = ["example.test"]\n[log]\nlevel = "warning"\n'
            f'[[listeners]]\nname = "smtp"\naddress = "127.0.0.1"\nport = {self.port}\n'
            f'role = "mx"\ntls = "none"\n' + store)
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> None:
        subprocess.run([PY, "-m", "mailwright.cli.main", "-c", str(self.config), *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        env = dict(os.environ, MAILWRIGHT__ANTIABUSE__ENABLED="false",
                   MAILWRIGHT__OUTBOUND__NAMESERVERS=f'["{DNS.nameserver}"]')
        self.proc = subprocess.Popen(
            [PY, "-m", "mailwright.cli.main", "-c", str(self.config), "serve"],
            stdout=open(self.dir / "server.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"node {self.dir} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


async def session(port: int, count: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line
    await reply()
    writer.write(b"EHLO bench.test\r\n")
    await reply()
    for _ in range(count):
        writer.write(b"MAIL FROM:<load@client.test>\r\n")
        assert (await reply()).startswith(b"250")
        writer.write(f"RCPT TO:<{RCPT}>\r\n".encode())
        assert (await reply()).startswith(b"250")
        writer.write(b"DATA\r\n")
        assert (await reply()).startswith(b"354")
        writer.write(body + b".\r\n")
        r = await reply()
        assert r.startswith(b"250"), r
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def message(size: int) -> bytes:
    head = b"From: <load@client.test>\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def run_load(nodes: list[Node], messages: int, sessions: int, size: int,
                   delivered) -> tuple[float, float]:
    body = message(size)
    per = [messages // sessions + (1 if i < messages % sessions else 0) for i in range(sessions)]
    t0 = time.monotonic()
    await asyncio.gather(*(session(nodes[i % len(nodes)].port, n, body)
                           for i, n in enumerate(per)))
    intake = time.monotonic() - t0
    deadline = time.monotonic() + 300
    while await delivered() < messages:
        if time.monotonic() > deadline:
            raise RuntimeError("deliveries did not finish")
        await asyncio.sleep(0.05)
    return intake, time.monotonic() - t0


async def bench(kind: str, n_nodes: int, args) -> tuple[float, float]:
    root = Path(tempfile.mkdtemp(prefix="mw-bench-cluster-"))
    schema = "mw_bench_" + secrets.token_hex(4)
    nodes: list[Node] = []
    try:
        for i in range(n_nodes):
            store = ("" if kind == "sqlite" else
                     f'[store]\nbackend = "postgres"\ndsn = "{args.dsn}"\nschema = "{schema}"\n'
                     f'node = "n{i}"\n[delivery]\nmailbox_store = "postgres"\n')
            nodes.append(Node(root, f"n{i}", store))
        nodes[0].cli("user", "add", RCPT)
        for n in nodes:
            n.start()
        if kind == "sqlite":
            box = nodes[0].dir / "data" / "mail" / "example.test" / "bench" / "new"

            async def delivered() -> int:
                return len(os.listdir(box)) if box.is_dir() else 0
            return await run_load(nodes, args.messages, args.sessions, args.size, delivered)
        conn = await asyncpg.connect(args.dsn, server_settings={"search_path": schema})
        try:
            async def delivered() -> int:
                return await conn.fetchval("SELECT count(*) FROM mailbox_messages")
            return await run_load(nodes, args.messages, args.sessions, args.size, delivered)
        finally:
            await conn.close()
    finally:
        for n in nodes:
            n.stop()
        if kind != "sqlite":
            conn = await asyncpg.connect(args.dsn)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = p.parse_args()
    global DNS
    DNS = loopback_dns.start()
    setups = [("1 node, SQLite + Maildir", "sqlite", 1),
              ("1 node, PostgreSQL", "postgres", 1),
              ("2 nodes, PostgreSQL", "postgres", 2)]
    rows = []
    for label, kind, n in setups:
        intake, e2e = asyncio.run(bench(kind, n, args))
        rows.append((label, args.messages / intake, args.messages / e2e))
        print(f"  {label}: intake {rows[-1][1]:.0f} msg/s, end to end {rows[-1][2]:.0f} msg/s",
              file=sys.stderr)
    print(f"\n{args.messages} messages of {args.size} B, {args.sessions} sessions "
          f"(connections reused), {os.cpu_count()} CPUs, client in the same machine\n")
    print(f"{'setup':28} {'intake msg/s':>13} {'end-to-end msg/s':>17}")
    for label, i, e in rows:
        print(f"{label:28} {i:13.0f} {e:17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
