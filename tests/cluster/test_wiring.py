"""The server and the admin commands on PostgreSQL, mailboxes in the database, and the
queue manager's cluster hooks (issue 6, parts a and b).

Real parts only: the PostgreSQL server on loopback (a schema per test), real server
processes (tests/support.py), real SMTP, the loopback DNS server for DMARC.
"""
from __future__ import annotations

import asyncio
import json
import smtplib
import time

import pytest

from cluster.pgtools import PG_DSN, rows, store_sections
from dnsserver import DNSServer
from mailwright.config import ConfigError, parse_settings
from mailwright.delivery.pgmailbox import ALREADY_REPLY, FULL_REPLY, OK_REPLY, PgMailboxAgent
from mailwright.delivery.base import DeliveryTask
from mailwright.queue.manager import QueueManager
from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest
from mailwright.queue.retry import RetrySchedule
from mailwright.routing.directory import Directory
from mailwright.routing.route import Route
from mailwright.routing.router import Router
from mailwright.store.postgres import PostgresStore
from support import MailServer


def send(port: int, rcpts: list[str], subject: str, sender: str = "a@remote.test",
         extra: str = "") -> None:
    body = (f"From: <{sender}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@t>\r\n"
            f"{extra}\r\nhello\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        assert s.sendmail(sender, rcpts, body) == {}


def wait_for(pred, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


# ---------------------------------------------------------------- configuration

def test_postgres_mailboxes_need_the_postgres_store():
    with pytest.raises(ConfigError) as e:
        parse_settings({"delivery": {"mailbox_store": "postgres"}}, "t.toml", env={})
    assert "t.toml: delivery.mailbox_store: 'postgres' needs store.backend" in str(e.value)
    s = parse_settings({"store": {"backend": "postgres", "schema": "mw"},
                        "delivery": {"mailbox_store": "postgres"}}, "t.toml", env={})
    assert s.store.dsn.startswith("postgresql://")
    with pytest.raises(ConfigError):
        parse_settings({"store": {"schema": "Bad-Name"}}, "t.toml", env={})


# ---------------------------------------------------------------- server + CLI

def test_db_migrate_on_both_backends(tmp_path, pg_schema):
    (tmp_path / "lite").mkdir()
    (tmp_path / "pg").mkdir()
    lite = MailServer(tmp_path / "lite")
    out = json.loads(lite.cli("db", "migrate", "--json").stdout)
    assert out["backend"] == "sqlite" and out["from"] == 0 and out["to"] > 0
    pg = MailServer(tmp_path / "pg", extra_sections=store_sections(pg_schema, "n1"))
    out = json.loads(pg.cli("db", "migrate", "--json").stdout)
    assert (out["backend"], out["from"]) == ("postgres", 0) and out["to"] >= 5
    again = json.loads(pg.cli("db", "migrate", "--json").stdout)
    assert again["from"] == again["to"] == out["to"]
    assert "up to date" in pg.cli("db", "migrate").stdout
    # the schema is really there, with the mailbox table of version 5
    assert rows(pg_schema, "SELECT to_regclass('mailbox_messages') IS NOT NULL")[0][0]


def test_serve_deliver_and_administer_on_postgres(tmp_path, pg_schema):
    srv = MailServer(tmp_path, extra_sections=store_sections(pg_schema, "node-a"))
    srv.cli("user", "add", "bob@example.test")
    srv.cli("alias", "add", "team@example.test", "bob@example.test")
    assert "bob@example.test" in srv.cli("user", "list").stdout
    srv.start()
    try:
        send(srv.port, ["bob@example.test"], "first")
        send(srv.port, ["team@example.test"], "second")
        listed = wait_for(lambda: (lambda m: m if len(m) >= 2 else None)(json.loads(
            srv.cli("mailbox", "list", "bob@example.test", "--json").stdout)))
        assert sorted(m["subject"] for m in listed) == ["first", "second"]
        assert {m["folder"] for m in listed} == {"INBOX"} and {m["node"] for m in listed} \
            == {"node-a"}
        shown = srv.cli("mailbox", "show", str(listed[0]["id"]), "--raw").stdout
        # (text mode: CRLF reads as \n)
        assert shown.startswith("Return-Path: <a@remote.test>\nDelivered-To: bob@example.test")
        assert shown.endswith("\n\nhello\n")
        # nothing went to Maildirs on this node's disk
        assert srv.delivered("bob@example.test") == []
        status = json.loads(wait_for(lambda: (lambda p: p if json.loads(p)["nodes"] else None)(
            srv.cli("cluster", "status", "--json").stdout)))
        [node] = status["nodes"]
        assert node["name"] == "node-a" and node["alive"] and node["info"]["pid"] > 0
        assert status["queue"]["delivered"] == 0 and status["messages"] == 0
        text = srv.cli("cluster", "status").stdout
        assert "node-a" in text and "alive" in text
        # queue views and the trace read the same database
        assert srv.cli("queue", "list").returncode == 0
        missing = srv.cli("mailbox", "show", "999999", check=False)
        assert missing.returncode == 1 and "no stored message" in missing.stderr
    finally:
        srv.stop()
    assert "Traceback" not in srv.log()


def test_cluster_commands_refuse_sqlite(tmp_path):
    srv = MailServer(tmp_path)
    r = srv.cli("cluster", "status", check=False)
    assert r.returncode == 1 and 'backend = "postgres"' in r.stderr


def test_dmarc_quarantine_goes_to_junk_in_the_database(tmp_path, pg_schema):
    zones = {".": "@ 300 IN SOA ns.invalid. h.invalid. 1 3600 600 86400 300\n",
             "shop.test": ('@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
                           '_dmarc TXT "v=DMARC1; p=quarantine"\n')}
    with DNSServer(zones) as dns:
        srv = MailServer(tmp_path, extra_sections=store_sections(
            pg_schema, "n1", extra=f'[outbound]\nnameservers = ["{dns.nameserver}"]\n'
                                   "dns_timeout = 0.5\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.start()
        try:
            send(srv.port, ["alice@example.test"], "cheap", sender="offers@shop.test")
            send(srv.port, ["alice@example.test"], "forged", sender="x@remote.test",
                 extra="X-Mailwright-Quarantine: set from outside\r\n")
            got = wait_for(lambda: (lambda m: m if len(m) >= 2 else None)(json.loads(
                srv.cli("mailbox", "list", "alice@example.test", "--json").stdout)))
        finally:
            srv.stop()
    folders = {m["subject"]: m["folder"] for m in got}
    assert folders == {"cheap": "Junk", "forged": "INBOX"}
    junk = json.loads(srv.cli("mailbox", "list", "alice@example.test", "--folder", "Junk",
                              "--json").stdout)
    assert [m["subject"] for m in junk] == ["cheap"]


# ---------------------------------------------------------------- agent and manager

async def _open(schema: str, node: str, tmp_path) -> PostgresStore:
    s = PostgresStore(PG_DSN, schema=schema, node=node, cache_dir=str(tmp_path / node),
                      pool_size=4)
    await s.open()
    return s


async def _commit(store, rcpt: str, subject: str) -> str:
    blob = store.new_blob()
    blob.write(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    return await store.commit_message(
        Envelope("a@remote.test", [RecipientRequest(rcpt)], time.time()), blob)


def test_agent_is_idempotent_and_honours_the_quota(tmp_path, pg_schema):
    async def run():
        store = await _open(pg_schema, "n1", tmp_path)
        try:
            await store.add_domain("example.test")
            await store.add_mailbox("bob@example.test", "")
            agent = PgMailboxAgent(store, "mx.example.test")
            qid = await _commit(store, "bob@example.test", "once")
            [m] = await store.claim_due(time.time() + 1, 10, "w", 30)
            task = DeliveryTask(m, m.recipients[0], Route("maildir", "bob@example.test",
                                                          mailbox="bob@example.test"))
            body = await store.fetch_body(m)
            first = await agent.deliver(m, body, [task])
            again = await agent.deliver(m, body, [task])     # a retry after a crash
            assert [r.reply for r in first + again] == [OK_REPLY, ALREADY_REPLY]
            assert len(await store.mailbox_list("bob@example.test")) == 1
            await store.record_results(qid, first, time.time(), None)
            # a quota of 2.5 copies: the second copy fits, the third does not
            [copy] = await store.mailbox_list("bob@example.test")
            await store.set_quota("bob@example.test", int(copy["size"] * 2.5))
            outs = []
            for i in range(2):
                await _commit(store, "bob@example.test", f"more{i}")
                [m] = await store.claim_due(time.time() + 1, 10, "w", 30)
                t = DeliveryTask(m, m.recipients[0], Route("maildir", "bob@example.test"))
                [r] = await agent.deliver(m, await store.fetch_body(m), [t])
                outs.append((r.ok, r.permanent, r.reply))
                await store.record_results(m.queue_id, [r], time.time(), time.time() + 999)
            assert outs == [(True, False, OK_REPLY), (False, False, FULL_REPLY)]
            gone = await _commit(store, "bob@example.test", "gone")
            await store.remove_mailbox("bob@example.test")
            [m] = await store.claim_due(time.time() + 1, 10, "w", 30)
            [r] = await agent.deliver(m, await store.fetch_body(m), [DeliveryTask(
                m, m.recipients[0], Route("maildir", "bob@example.test"))])
            assert (m.queue_id, r.ok, r.permanent) == (gone, False, True)
        finally:
            await store.close()
    asyncio.run(run())


class SlowAgent:
    """The real mailbox agent, after a pause: a delivery longer than the lease."""
    transport = "pgmailbox"

    def __init__(self, inner: PgMailboxAgent, pause: float) -> None:
        self.inner, self.pause = inner, pause

    async def deliver(self, message, body_path, tasks) -> list[DeliveryResult]:
        await asyncio.sleep(self.pause)
        return await self.inner.deliver(message, body_path, tasks)


def test_manager_woken_by_another_nodes_commit_and_renews_its_leases(tmp_path, pg_schema):
    async def run():
        a = await _open(pg_schema, "node-a", tmp_path)
        b = await _open(pg_schema, "node-b", tmp_path)
        try:
            await a.add_domain("example.test")
            await a.add_mailbox("bob@example.test", "")
            snap = await b.directory_snapshot()
            agent = SlowAgent(PgMailboxAgent(b, "mx"), pause=0)
            mgr = QueueManager(b, Router(lambda: Directory(snap, "example.test")),
                               {"maildir": agent}, RetrySchedule(), owner="node-b:1",
                               lease_seconds=1.5, delivery_timeout=10, idle_interval=60)
            task = asyncio.ensure_future(mgr.run())
            await asyncio.sleep(0.5)                  # b is asleep now (idle_interval 60)
            t0 = time.monotonic()
            await _commit(a, "bob@example.test", "wake")     # on node a; b never .wake()s
            while not await b.mailbox_list("bob@example.test"):
                assert time.monotonic() - t0 < 5, "node b was not woken by NOTIFY"
                await asyncio.sleep(0.05)
            woke_after = time.monotonic() - t0
            # b had no copy of the body: it fetched it from the database
            assert not a.blobs.has("x")
            # a delivery longer than the lease: b renews, a cannot take the message
            agent.pause = 4.0
            qid = await _commit(a, "bob@example.test", "slow")
            await asyncio.sleep(2.5)                  # > lease_seconds since b claimed it
            stolen = await a.claim_due(time.time(), 10, "node-a:1", 1.5)
            assert stolen == [], "a lease in use was taken over"
            assert mgr.lease_renewals >= 1 and qid in mgr.leased
            while len(await b.mailbox_list("bob@example.test")) < 2:
                assert time.monotonic() - t0 < 15
                await asyncio.sleep(0.1)
            mgr.stop()
            await asyncio.wait_for(task, 10)
            msg = await a.get_message(qid)
            assert msg.recipients[0].state.value == "delivered"
            return woke_after
        finally:
            await b.close()
            await a.close()
    woke_after = asyncio.run(run())
    assert woke_after < 3


def test_start_warns_when_postgresql_runs_without_autovacuum(tmp_path, caplog):
    """The queue tables are updated and deleted all day; without autovacuum their
    statistics go stale and the planner scans the whole history. The server says so at
    start, exactly when the PostgreSQL server has it off."""
    import logging
    import os

    import asyncpg

    from cluster.pgtools import drop_schema
    from mailwright.app import prepare

    async def autovacuum() -> str:
        conn = await asyncpg.connect(PG_DSN, timeout=30)
        try:
            return await conn.fetchval("SHOW autovacuum")
        finally:
            await conn.close()

    schema = "mw_av_" + os.urandom(4).hex()
    settings = parse_settings({"data_dir": str(tmp_path), "store": {
        "backend": "postgres", "dsn": PG_DSN, "schema": schema}}, env={})
    try:
        with caplog.at_level(logging.WARNING, logger="mailwright.server"):
            asyncio.run(prepare(settings))
        warned = [r.getMessage() for r in caplog.records if "autovacuum" in r.getMessage()]
        assert bool(warned) == (asyncio.run(autovacuum()) != "on")
        assert all(schema in w for w in warned)
    finally:
        asyncio.run(drop_schema(schema))
