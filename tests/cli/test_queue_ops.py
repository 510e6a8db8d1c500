"""Queue control (issue 5): filters, operator actions, audit; against the real SQLite store,
in-process CLI runs and a real running server with a loopback SMTP peer and DNS."""
from __future__ import annotations

import asyncio
import getpass
import json
import re
import time
from pathlib import Path

import pytest

from mailwright.admin.queue_ops import BOUNCE_REPLY, QueueOps
from mailwright.cli import main as cli_main
from mailwright.config import load_settings
from mailwright.queue.model import DeliveryResult, Envelope, RecipientRequest
from mailwright.store.base import NotFoundError, QueueFilter
from store.bodies import has_body

HOUR = 3600.0


def with_store(config: Path, fn):
    async def go():
        store = cli_main.open_settings_store(load_settings(config, {}))
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()
    return asyncio.run(go())


async def put(store, sender: str, rcpts: list, age: float = 0.0, subject: str = "hi") -> str:
    """Commit a message; ``rcpts`` items are addresses or (address, notify) pairs."""
    blob = store.new_blob()
    blob.write(f"From: {sender or 'mailer-daemon@example.test'}\r\nSubject: {subject}\r\n"
               f"\r\nbody\r\n".encode())
    reqs = [RecipientRequest(r) if isinstance(r, str) else RecipientRequest(r[0], r[1])
            for r in rcpts]
    env = Envelope(sender=sender, recipients=reqs, received_at=time.time() - age,
                   client_ip="192.0.2.1", helo="client.example", size=blob.size)
    return await store.commit_message(env, blob)


def ids(result) -> list[str]:
    return [m["queue_id"] for m in json.loads(result.out)]


@pytest.fixture
def queue(config):
    """Four messages of various ages, senders and recipient domains."""
    async def go(store):
        return {
            "old": await put(store, "a@sender.test", ["x@remote.test"], age=3 * 86400),
            "mid": await put(store, "b@other.test", ["y@remote.test", "z@far.test"], age=2 * HOUR),
            "new": await put(store, "a@sender.test", ["z@far.test"], age=60),
            "null": await put(store, "", ["x@remote.test"], age=10),
        }
    return with_store(config, go)


# ---------------------------------------------------------------- selection

def test_list_filters(run, queue):
    q = queue
    assert ids(run("queue", "list", "--json")) == [q["old"], q["mid"], q["new"], q["null"]]
    assert ids(run("queue", "list", "--json", "--sender", "A@Sender.test")) == [q["old"], q["new"]]
    assert ids(run("queue", "list", "--json", "--sender", "@other.test")) == [q["mid"]]
    assert ids(run("queue", "list", "--json", "--sender", "<>")) == [q["null"]]
    assert ids(run("queue", "list", "--json", "--domain", "far.test")) == [q["mid"], q["new"]]
    assert ids(run("queue", "list", "--json", "--recipient", "@remote.test")) == \
        [q["old"], q["mid"], q["null"]]
    assert ids(run("queue", "list", "--json", "--recipient", "y@remote.test")) == [q["mid"]]
    assert ids(run("queue", "list", "--json", "--older-than", "1d")) == [q["old"]]
    assert ids(run("queue", "list", "--json", "--older-than", "30m",
                   "--newer-than", "1d")) == [q["mid"]]
    assert ids(run("queue", "list", "--json", "--newer-than", "5m")) == [q["new"], q["null"]]
    assert ids(run("queue", "list", "--json", "--limit", "2")) == [q["old"], q["mid"]]
    assert ids(run("queue", "list", "--json", "--state", "held")) == []
    r = run("queue", "list", "--domain", "nowhere.test")
    assert r.rc == 0 and "no matching messages" in r.out
    r = run("queue", "list", "--older-than", "soon")
    assert r.rc == 2 and "invalid duration" in r.err
    assert run("queue", "list", "--recipient", "not-an-address").rc == 2


def test_error_filter_and_show_history(run, config, queue):
    q = queue

    async def go(store):
        [m] = await store.queue_select(QueueFilter(queue_ids=(q["mid"],)))
        y = next(r for r in m.recipients if r.address == "y@remote.test")
        await store.record_results(m.queue_id, [DeliveryResult(
            y.id, ok=False, reply="451 4.3.0 try later", remote_mta="mx.remote.test")],
            time.time(), time.time() + HOUR)
    with_store(config, go)
    assert ids(run("queue", "list", "--json", "--error", "4.3.0")) == [q["mid"]]
    assert ids(run("queue", "list", "--json", "--error", "TRY LATER")) == [q["mid"]]
    assert ids(run("queue", "list", "--json", "--error", "5.1.1")) == []
    assert "451 4.3.0 try later" in run("queue", "list").out
    shown = json.loads(run("queue", "show", q["mid"], "--json").out)
    [attempt] = shown["attempts"]
    assert attempt["reply"] == "451 4.3.0 try later" and attempt["remote_mta"] == "mx.remote.test"
    by_addr = {r["address"]: r for r in shown["recipients"]}
    assert by_addr["y@remote.test"]["attempts"] == 1
    assert by_addr["y@remote.test"]["next_attempt_at"] > time.time() + HOUR - 60
    text = run("queue", "show", q["mid"]).out
    assert "deferred" in text and "mx.remote.test" in text and "NEXT ATTEMPT" in text


# ---------------------------------------------------------------- actions

def test_filterless_action_needs_all(run, queue):
    for action in ("hold", "release", "retry", "delete"):
        r = run("queue", action)
        assert r.rc == 2 and "--all" in r.err, action
    assert run("queue", "list", "--state", "held", "--json").out.strip() == "[]"
    r = run("queue", "hold", "--all")
    assert r.rc == 0 and "matched 4 message(s); held 5 recipient(s) of 4 message(s)" in r.out


def test_dry_run_matches_the_real_action(run, queue):
    q = queue
    before = run("queue", "list", "--json").out
    dry = json.loads(run("queue", "hold", "--domain", "remote.test", "--dry-run", "--json").out)
    assert run("queue", "list", "--json").out == before          # nothing changed
    real = json.loads(run("queue", "hold", "--domain", "remote.test", "--json").out)
    assert dry["dry_run"] and not real["dry_run"]
    assert dry["changed"] == real["changed"] == {q["old"]: 1, q["mid"]: 1, q["null"]: 1}
    # only the remote.test recipient of the mixed message is held
    mid = json.loads(run("queue", "show", q["mid"], "--json").out)
    assert {r["address"]: r["state"] for r in mid["recipients"]} == \
        {"y@remote.test": "held", "z@far.test": "queued"}
    r = run("queue", "delete", "--sender", "@sender.test", "--dry-run")
    assert r.rc == 0 and "2 message(s) match" in r.out and q["old"] in r.out
    assert len(ids(run("queue", "list", "--json"))) == 4


def test_hold_release_retry_by_id_and_filter(run, config, queue):
    q = queue
    assert "held 1 recipient(s) of " + q["new"] in run("queue", "hold", q["new"]).out
    r = run("queue", "release", "--sender", "a@sender.test")
    assert "matched 2 message(s); released 1 recipient(s) of 1 message(s)" in r.out

    async def due(store):
        return {m.queue_id: [r.next_attempt_at for r in m.recipients]
                for m in await store.queue_select(QueueFilter())}

    async def later(store):
        for m in await store.queue_select(QueueFilter()):
            await store.record_results(m.queue_id, [DeliveryResult(
                r.id, ok=False, reply="421 4.4.2 timeout") for r in m.recipients],
                time.time(), time.time() + 10 * HOUR)
    with_store(config, later)
    r = run("queue", "retry", "--domain", "far.test", "--json")
    out = json.loads(r.out)
    assert out["changed"] == {q["mid"]: 1, q["new"]: 1} and out["woke"] is False
    now = time.time()
    after = with_store(config, due)
    assert after[q["new"]][0] <= now
    assert after[q["old"]][0] > now + 9 * HOUR          # not selected: unchanged
    assert sorted(after[q["mid"]])[0] <= now < sorted(after[q["mid"]])[1]
    r = run("queue", "flush")
    assert "matched 4 message(s)" in r.out and "no running server" in r.out
    assert all(t <= time.time() for ts in with_store(config, due).values() for t in ts)
    r = run("queue", "hold", "NOSUCHID", q["old"])
    assert r.rc == 1 and "NOSUCHID" in r.err
    assert json.loads(run("queue", "show", q["old"], "--json").out)["recipients"][0]["state"] \
        == "queued"                                      # all-or-nothing on unknown ids


def test_bounce_respects_notify_and_null_sender(run, config):
    async def go(store):
        return (await put(store, "a@sender.test", ["x@remote.test", ("n@remote.test", ("NEVER",)),
                                                   ("f@remote.test", ("FAILURE",))]),
                await put(store, "", ["x@remote.test"]))
    qid, null_qid = with_store(config, go)
    r = run("queue", "delete", "--bounce", "--recipient", "@remote.test")
    assert r.rc == 0 and "matched 2 message(s); bounced 4 recipient(s)" in r.out
    shown = json.loads(run("queue", "show", qid, "--json").out)
    got = {r["address"]: (r["state"], r["dsn_pending"], r["last_reply"], r["status"])
           for r in shown["recipients"]}
    assert got == {"x@remote.test": ("failed", "failed", BOUNCE_REPLY, "5.0.0"),
                   "n@remote.test": ("failed", None, BOUNCE_REPLY, "5.0.0"),
                   "f@remote.test": ("failed", "failed", BOUNCE_REPLY, "5.0.0")}
    # the DSN is owed (the queue manager sends it); the null sender's message is done
    assert ids(run("queue", "list", "--json")) == [qid]

    async def pending(store):
        return [m.queue_id for m in await store.pending_dsns()]
    assert with_store(config, pending) == [qid]
    null = json.loads(run("queue", "show", null_qid, "--json").out)
    assert null["recipients"][0]["dsn_pending"] is None
    gone = run("queue", "show", null_qid, "--body")
    assert gone.rc == 1 and "has no body any more" in gone.err
    assert run("queue", "show", qid, "--body").out.startswith("From: a@sender.test\r\n")


def test_in_flight_claim_cannot_resurrect_or_contradict(config):
    async def go(store):
        ops = QueueOps(store, user="tester")
        gone = await put(store, "a@sender.test", ["x@remote.test"])
        busy = await put(store, "a@sender.test", ["y@remote.test"])
        claimed = {m.queue_id: m for m in await store.claim_due(time.time(), 10, "w1", 300)}
        assert set(claimed) == {gone, busy}
        # plain delete while a delivery is in flight: the late result finds nothing
        out = await ops.act("delete", QueueFilter(queue_ids=(gone,)))
        assert out.changed == {gone: 1}
        rid = claimed[gone].recipients[0].id
        with pytest.raises(NotFoundError):
            await store.record_results(gone, [DeliveryResult(rid, ok=True, reply="250 ok")],
                                       time.time(), None)
        assert await store.get_message(gone) is None
        assert not has_body(store, claimed[gone])
        # bounce while in flight: skipped, so the delivery's result is the truth
        out = await ops.act("bounce", QueueFilter(queue_ids=(busy,)))
        assert out.skipped == [busy] and out.recipients == 0
        rid = claimed[busy].recipients[0].id
        await store.record_results(busy, [DeliveryResult(rid, ok=True, reply="250 ok")],
                                   time.time(), None)
        [m] = await store.queue_select(QueueFilter(queue_ids=(busy,)), None)
        assert m.recipients[0].state.value == "delivered" and m.recipients[0].dsn_pending is None
        assert await store.claim_due(time.time() + 1000, 10, "w2", 300) == []
        audit = await store.list_audit()
        assert [(a.action, a.ids, a.user) for a in audit] == \
            [("delete", (gone,), "tester"), ("bounce", (), "tester")]
    with_store(config, go)


def test_bounce_cli_reports_skipped_messages(run, config):
    async def go(store):
        qid = await put(store, "a@sender.test", ["x@remote.test"])
        await store.claim_due(time.time(), 10, "w1", 300)
        return qid
    qid = with_store(config, go)
    r = run("queue", "delete", "--bounce", qid)
    assert r.rc == 1 and "being delivered" in r.err and qid in r.err


def test_audit_in_store_and_log_file(tmp_path, run, config, queue):
    q = queue
    config.write_text(config.read_text().replace(
        "[delivery]", '[log]\nfile = "mailwright.log"\n[delivery]'))
    run("queue", "hold", q["old"])
    run("queue", "release", "--domain", "remote.test")
    run("queue", "delete", q["null"])
    run("queue", "delete", "--dry-run", "--all")            # a dry run is not an action
    rows = json.loads(run("queue", "audit", "--json").out)
    me = getpass.getuser()
    assert [(r["user"], r["action"], r["ids"]) for r in rows] == [
        (me, "hold", [q["old"]]), (me, "release", [q["old"]]), (me, "delete", [q["null"]])]
    assert rows[1]["detail"] == "domain=remote.test"
    assert all(abs(r["at"] - time.time()) < 60 for r in rows)
    text = run("queue", "audit").out
    assert "release" in text and me in text
    log = (tmp_path / "data" / "mailwright.log").read_text()
    lines = [l for l in log.splitlines() if "mailwright.audit" in l]
    assert len(lines) == 3
    assert re.search(rf"operator={re.escape(me)} action=delete selection=ids={q['null']} "
                     rf"matched=1 changed=1 ids={q['null']}", lines[2])


# ---------------------------------------------------------------- a running server

def test_queue_control_on_a_running_server(tmp_path):
    """Real traffic: a loopback peer that answers 451 defers mail; the operator lists it by
    error, retries it at once, holds it, bounces it (DSN to the sender's mailbox) and
    deletes it, while the server runs and is woken through its wake socket."""
    from dnsserver import DNSServer
    from outbound.sink import free_port
    from support import MailServer
    from e2e.test_outbound import ThreadedSink, wait_for

    zones = {"remote.test": "@ MX 10 mx\nmx A 127.0.0.2\n",
             ".": "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"}
    busy = "451 4.3.0 try later"
    port = free_port(["127.0.0.2"])
    with DNSServer(zones) as dns, ThreadedSink(
            host="127.0.0.2", port=port, name="mx.remote.test",
            rcpt_replies={"bob@remote.test": busy}) as sink:
        srv = MailServer(tmp_path, extra_toml=(
            # no automatic retry within the test: every delivery after a 451 is ours
            "[queue]\nretry_first = 3600\nretry_max_interval = 7200\n"
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\nidle_connection_timeout = 0.5\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.start()

        def send(subject: str) -> str:
            srv.cli("sendmail", "-f", "alice@example.test", "bob@remote.test",
                    input=f"From: alice@example.test\nSubject: {subject}\n\nhello\n")
            assert wait_for(lambda: [m for m in listing("--error", "4.3.0")
                                     if subject_of(m) == subject])
            [m] = [m for m in listing("--error", "4.3.0") if subject_of(m) == subject]
            return m["queue_id"]

        def listing(*args: str) -> list[dict]:
            return json.loads(srv.cli("queue", "list", "--json", *args).stdout)

        def subject_of(m: dict) -> str:
            shown = srv.cli("queue", "show", m["queue_id"], "--body", check=False)
            found = re.search(r"\nSubject: (.*?)\r?\n", shown.stdout)   # text mode: \n
            return found.group(1) if found else ""

        def delivered(subject: str) -> bool:
            return any(f"Subject: {subject}".encode() in t.body for t in sink.transactions)

        try:
            # 1. deferred by the peer: listed by error, domain and age; --json parses
            first = send("one")
            assert [m["queue_id"] for m in listing("--domain", "remote.test")] == [first]
            assert listing("--older-than", "1h") == []
            assert [m["queue_id"] for m in listing("--newer-than", "1h")] == [first]
            shown = json.loads(srv.cli("queue", "show", first, "--json").stdout)
            assert shown["attempts"][0]["reply"].startswith("451 4.3.0")
            # 2. the peer recovers: retry makes it go at once (the schedule says 1h)
            sink.rcpt_replies.clear()
            r = srv.cli("queue", "retry", "--error", "4.3.0")
            assert "matched 1 message(s); made due now 1 recipient(s)" in r.stdout
            assert wait_for(lambda: delivered("one"), timeout=10)
            assert wait_for(lambda: listing() == [])
            # 3. hold stops deliveries, even through a flush; release sends it
            sink.rcpt_replies["bob@remote.test"] = busy
            second = send("two")
            assert "held 1 recipient(s) of " + second in srv.cli("queue", "hold", second).stdout
            sink.rcpt_replies.clear()
            srv.cli("queue", "flush")
            time.sleep(1.5)
            assert not delivered("two")
            assert [m["queue_id"] for m in listing("--state", "held")] == [second]
            srv.cli("queue", "release", second)
            assert wait_for(lambda: delivered("two"), timeout=10)
            # 4. delete --bounce: the sender gets a DSN in her mailbox, the message completes
            sink.rcpt_replies["bob@remote.test"] = busy
            third = send("three")
            r = srv.cli("queue", "delete", "--bounce", "--recipient", "bob@remote.test")
            assert "matched 1 message(s); bounced 1 recipient(s)" in r.stdout
            [dsn] = srv.wait_delivered("alice@example.test", 1, timeout=15)
            assert b"Return-Path: <>" in dsn and b"Action: failed" in dsn
            assert b"Status: 5.0.0" in dsn and b"deleted by the operator" in dsn
            assert b"Subject: three" in dsn
            assert wait_for(lambda: listing() == [])
            # 5. plain delete: gone, no DSN
            fourth = send("four")
            assert srv.cli("queue", "delete", fourth).stdout.strip() == f"deleted {fourth}"
            assert srv.cli("queue", "show", fourth, check=False).returncode == 1
            time.sleep(1.0)
            assert len(srv.delivered("alice@example.test")) == 1
            sink.rcpt_replies.clear()
            assert not delivered("four") and not delivered("three")
            audit = json.loads(srv.cli("queue", "audit", "--json").stdout)
            assert [(a["action"], a["ids"]) for a in audit] == [
                ("retry", [first]), ("hold", [second]), ("flush", []),
                ("release", [second]), ("bounce", [third]), ("delete", [fourth])]
        finally:
            srv.stop()
