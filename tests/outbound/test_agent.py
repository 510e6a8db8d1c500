"""End-to-end tests of the "smtp" delivery agent: real loopback DNS (tests/dnsserver.py),
real sockets to sink servers on 127.0.0.x, real TLS with certificates made here."""
from __future__ import annotations

import asyncio

import pytest

from dnsserver import dns_server_fixture
from mailwright.net.dns import Resolver
from outbound.helpers import TLSFiles, agent, fast_settings, make_message, run, tasks_for
from outbound.sink import Sink, free_port
from outbound.test_client import assert_clean_data, smuggling_sequences

ZONES = {"test": """
example       MX 10 mx1.example
example       MX 20 mx2.example
mx1.example   A  127.0.0.2
mx2.example   A  127.0.0.3
implicit      A  127.0.0.4
nullmx        MX 0 .
equal         MX 10 a.equal
equal         MX 10 b.equal
a.equal       A  127.0.0.5
b.equal       A  127.0.0.6
slow          MX 10 mx1.example
noaddr        MX 10 nothing.noaddr
"""}

dns = dns_server_fixture(ZONES, scope="module")

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]


@pytest.fixture
def port():
    return free_port(HOSTS)


def resolver(dns) -> Resolver:
    return Resolver([dns.nameserver], timeout=0.3, attempts=1)


async def with_sinks(*sinks):
    for s in sinks:
        await s.start()


async def stop(agent_, *sinks):
    await agent_.close()
    for s in sinks:
        await s.stop()


def deliver(tmp_path, dns, port, sinks, rcpts=("b@example.test",), settings=None, body=None,
            **env):
    kw = {"body": body} if body is not None else {}
    msg, path = make_message(tmp_path, rcpts, **kw, **env)

    async def main():
        await with_sinks(*sinks)
        a = agent(settings or fast_settings(port), resolver(dns))
        try:
            return await a.deliver(msg, path, tasks_for(msg))
        finally:
            await stop(a, *sinks)
    return run(main())


# ------------------------------------------------------------------ routing (RFC 5321 §5.1)

def test_mx_preference_first(tmp_path, dns, port):
    mx1, mx2 = Sink("127.0.0.2", port, name="mx1"), Sink("127.0.0.3", port, name="mx2")
    [r] = deliver(tmp_path, dns, port, [mx1, mx2])
    assert r.ok and r.reply.startswith("250 2.0.0 Ok queued as Q1")
    assert "(mx1.example.test[127.0.0.2])" in r.reply
    assert len(mx1.transactions) == 1 and not mx2.transactions


def test_fallback_to_second_mx_when_first_refuses_connections(tmp_path, dns, port):
    mx2 = Sink("127.0.0.3", port, name="mx2")           # nothing listens on 127.0.0.2
    [r] = deliver(tmp_path, dns, port, [mx2])
    assert r.ok and "mx2.example.test[127.0.0.3]" in r.reply
    assert len(mx2.transactions) == 1


@pytest.mark.parametrize("greeting", ["421 4.3.2 busy", "554 5.7.1 go away"])
def test_fallback_on_refusing_greeting(tmp_path, dns, port, greeting):
    mx1 = Sink("127.0.0.2", port, greeting=greeting)
    mx2 = Sink("127.0.0.3", port)
    [r] = deliver(tmp_path, dns, port, [mx1, mx2])
    assert r.ok and "127.0.0.3" in r.reply


def test_all_mx_down_is_temporary(tmp_path, dns, port):
    [r] = deliver(tmp_path, dns, port, [])
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.4.1")


def test_only_mx_refuses_with_5xx_greeting_is_permanent(tmp_path, dns, port):
    s = Sink("127.0.0.4", port, greeting="554 5.7.1 No SMTP service here")
    [r] = deliver(tmp_path, dns, port, [s], rcpts=("x@implicit.test",))
    assert not r.ok and r.permanent and r.reply.startswith("554 5.7.1 No SMTP service here")


def test_implicit_mx(tmp_path, dns, port):
    s = Sink("127.0.0.4", port)
    [r] = deliver(tmp_path, dns, port, [s], rcpts=("x@implicit.test",))
    assert r.ok and "implicit.test[127.0.0.4]" in r.reply


def test_equal_preferences_are_randomised(tmp_path, dns, port):
    a, b = Sink("127.0.0.5", port), Sink("127.0.0.6", port)
    msg, path = make_message(tmp_path, ("x@equal.test",))

    async def main():
        await with_sinks(a, b)
        res = resolver(dns)
        for i in range(16):
            ag = agent(fast_settings(port), res)
            [r] = await ag.deliver(msg, path, tasks_for(msg))
            assert r.ok
            await ag.close()
        await stop(ag, a, b)
    run(main())
    assert a.transactions and b.transactions          # 2**-15 chance of a false failure


def test_null_mx_is_permanent(tmp_path, dns, port):
    [r] = deliver(tmp_path, dns, port, [], rcpts=("x@nullmx.test",))
    assert not r.ok and r.permanent and r.reply.startswith("556 5.1.10")


def test_nxdomain_is_permanent(tmp_path, dns, port):
    [r] = deliver(tmp_path, dns, port, [], rcpts=("x@nosuch.test",))
    assert not r.ok and r.permanent and r.reply.startswith("550 5.1.2")


def test_mx_without_address_is_permanent(tmp_path, dns, port):
    [r] = deliver(tmp_path, dns, port, [], rcpts=("x@noaddr.test",))
    assert not r.ok and r.permanent and r.reply.startswith("550 5.4.4")


def test_dns_timeout_is_temporary(tmp_path, dns, port):
    dns.set_behaviour("slow.test", "timeout")
    try:
        [r] = deliver(tmp_path, dns, port, [], rcpts=("x@slow.test",))
    finally:
        dns.clear_behaviour()
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.4.3")


def test_dns_servfail_is_temporary(tmp_path, dns, port):
    dns.set_behaviour("slow.test", "servfail")
    try:
        [r] = deliver(tmp_path, dns, port, [], rcpts=("x@slow.test",))
    finally:
        dns.clear_behaviour()
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.4.3")


def test_local_domain_is_never_sent(tmp_path, dns, port):
    msg, path = make_message(tmp_path, ("x@example.test",))

    async def main():
        a = agent(fast_settings(port), resolver(dns), local_domains=["EXAMPLE.test"])
        return await a.deliver(msg, path, tasks_for(msg))
    [r] = run(main())
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.3.5")


# ------------------------------------------------------------------ per-recipient results

RCPTS = ("ok1@example.test", "gone@example.test", "busy@example.test", "ok2@example.test")


@pytest.mark.parametrize("pipelining, chunking", [(True, False), (False, False),
                                                  (True, True), (False, True)])
def test_mixed_recipient_results(tmp_path, dns, port, pipelining, chunking):
    s = Sink("127.0.0.2", port, pipelining=pipelining, chunking=chunking, rcpt_replies={
        "gone@example.test": "550 5.1.1 No such user",
        "busy@example.test": "450 4.2.1 Mailbox busy, try later"})
    results = deliver(tmp_path, dns, port, [s], rcpts=RCPTS)
    ok1, gone, busy, ok2 = results
    assert ok1.ok and ok2.ok and ok1.reply == ok2.reply
    assert not gone.ok and gone.permanent and gone.reply.startswith("550 5.1.1 No such user (")
    assert not busy.ok and not busy.permanent and busy.reply.startswith("450 4.2.1")
    assert len(s.transactions) == 1 and s.connections == 1      # one transaction
    txn = s.transactions[0]
    assert [ln.split("<")[1].split(">")[0] for ln in txn.rcpts] == [RCPTS[0], RCPTS[3]]
    assert txn.bdat == chunking
    # Our trace line first (RFC 5321 §4.4; no "for": two recipients share this copy), then
    # the stored message unchanged.
    trace, sep, rest = txn.body.partition(b"\r\nFrom: ")
    assert trace.startswith(b"Received: ") and b"by " in trace and b"for <" not in trace
    assert sep + rest == b"\r\nFrom: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\n" \
                        b"Hello\r\n.dot line\r\n"
    if not chunking:
        assert b"\r\n..dot line\r\n.\r\n" in txn.wire


def test_all_recipients_refused_sends_no_body(tmp_path, dns, port):
    s = Sink("127.0.0.2", port, rcpt_replies={"b@example.test": "550 5.1.1 nope"})
    [r] = deliver(tmp_path, dns, port, [s])
    assert r.permanent and not s.transactions and "DATA" in s.commands
    # pipelined DATA got 554 from the sink; no body was sent


@pytest.mark.parametrize("opt, code, permanent", [
    ({"mail_reply": "553 5.7.1 Sender rejected"}, "553", True),
    ({"mail_reply": "451 4.7.1 Greylisted"}, "451", False),
    ({"data_reply": "554 5.6.0 No"}, "554", True),
    ({"final_reply": "552 5.3.4 Too big"}, "552", True),
    ({"final_reply": "451 4.3.0 Try again"}, "451", False),
    ({"drop": "data"}, "451 4.4.2", False),
    ({"drop": "mail", "pipelining": False}, "451 4.4.", False),   # next MX tried: down
])
def test_transaction_failures(tmp_path, dns, port, opt, code, permanent):
    s = Sink("127.0.0.2", port, **opt)
    r1, r2 = deliver(tmp_path, dns, port, [s], rcpts=("x@example.test", "y@example.test"))
    for r in (r1, r2):
        assert not r.ok and r.permanent == permanent and r.reply.startswith(code), r.reply


def test_smtputf8_needed_but_not_offered(tmp_path, dns, port):
    s = Sink("127.0.0.2", port, smtputf8=False)
    [r] = deliver(tmp_path, dns, port, [s], smtputf8=True)
    assert not r.ok and r.permanent and r.reply.startswith("550 5.6.7")
    assert not any(c.startswith("MAIL") for c in s.commands)


def test_smtputf8_offered(tmp_path, dns, port):
    s = Sink("127.0.0.2", port)
    [r] = deliver(tmp_path, dns, port, [s], rcpts=("üser@example.test",), smtputf8=True,
                  body_type="8BITMIME")
    assert r.ok
    assert s.transactions[0].mail.endswith(" BODY=8BITMIME SMTPUTF8")


def test_size_limit_of_server(tmp_path, dns, port):
    s = Sink("127.0.0.2", port, size=10)
    [r] = deliver(tmp_path, dns, port, [s])
    assert r.permanent and r.reply.startswith("552 5.3.4")
    s2 = Sink("127.0.0.2", port, size=10_000)
    [r] = deliver(tmp_path, dns, port, [s2])
    assert r.ok and " SIZE=" in s2.transactions[0].mail


def test_dsn_parameters_passed_when_offered(tmp_path, dns, port):
    for dsn in (True, False):
        s = Sink("127.0.0.2", port, dsn=dsn)
        msg, path = make_message(tmp_path, ("b@example.test",), ret="HDRS", envid="id+1 x")
        msg.recipients[0].notify = ("SUCCESS", "FAILURE")
        msg.recipients[0].orcpt = "rfc822;B=@example.test"

        async def main():
            await s.start()
            a = agent(fast_settings(port), resolver(dns))
            out = await a.deliver(msg, path, tasks_for(msg))
            await stop(a, s)
            return out
        [r] = run(main())
        assert r.ok
        txn = s.transactions[0]
        if dsn:
            assert "RET=HDRS" in txn.mail and "ENVID=id+2B1+20x" in txn.mail
            assert txn.rcpts[0].endswith(" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+3D@example.test")
        else:
            assert "RET=" not in txn.mail and "NOTIFY" not in txn.rcpts[0]


@pytest.mark.parametrize("seq_id, seq", smuggling_sequences())
def test_smuggling_sequences_on_the_wire(tmp_path, dns, port, seq_id, seq):
    body = (b"Subject: s\r\n\r\nbody" + seq + b"MAIL FROM:<smuggled@test.example>\r\n"
            b"RCPT TO:<u@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nX\r\n.\r\n")
    s = Sink("127.0.0.2", port)
    [r] = deliver(tmp_path, dns, port, [s], body=body)
    assert r.ok
    assert len(s.transactions) == 1 and sum(c.startswith("MAIL") for c in s.commands) == 1
    assert_clean_data(s.transactions[0].wire)


# ------------------------------------------------------------------ connections

def test_connection_reuse_across_messages(tmp_path, dns, port):
    s = Sink("127.0.0.2", port)
    m1, p1 = make_message(tmp_path, ("a@example.test",), queue_id="M1")
    m2, p2 = make_message(tmp_path, ("b@example.test",), queue_id="M2")

    async def main():
        await s.start()
        a = agent(fast_settings(port), resolver(dns))
        [r1] = await a.deliver(m1, p1, tasks_for(m1))
        [r2] = await a.deliver(m2, p2, tasks_for(m2))
        stats = (a.pool.opened, a.pool.reused)
        await stop(a, s)
        return r1, r2, stats
    r1, r2, stats = run(main())
    assert r1.ok and r2.ok
    assert s.connections == 1 and len(s.transactions) == 2 and stats == (1, 1)
    assert "RSET" in s.commands and s.commands[-1] == "QUIT"


def test_max_messages_per_connection(tmp_path, dns, port):
    s = Sink("127.0.0.2", port)
    msgs = [make_message(tmp_path, ("a@example.test",), queue_id=f"M{i}") for i in range(3)]

    async def main():
        await s.start()
        a = agent(fast_settings(port, max_messages_per_connection=2), resolver(dns))
        for m, p in msgs:
            [r] = await a.deliver(m, p, tasks_for(m))
            assert r.ok
        await asyncio.sleep(0.1)
        await stop(a, s)
    run(main())
    assert s.connections == 2 and len(s.transactions) == 3


def test_idle_connection_is_closed(tmp_path, dns, port):
    s = Sink("127.0.0.2", port)
    msg, path = make_message(tmp_path)

    async def main():
        await s.start()
        a = agent(fast_settings(port, idle_connection_timeout=0.2), resolver(dns))
        [r] = await a.deliver(msg, path, tasks_for(msg))
        assert r.ok and a.pool.idle_count() == 1
        await asyncio.sleep(0.5)
        assert a.pool.idle_count() == 0 and s.active == 0
        await stop(a, s)
    run(main())
    assert s.commands[-1] == "QUIT"


def test_dead_pooled_connection_is_replaced(tmp_path, dns, port):
    s = Sink("127.0.0.2", port)
    m1, p1 = make_message(tmp_path, queue_id="M1")
    m2, p2 = make_message(tmp_path, queue_id="M2")

    async def main():
        await s.start()
        a = agent(fast_settings(port), resolver(dns))
        assert (await a.deliver(m1, p1, tasks_for(m1)))[0].ok
        for t in list(s._tasks):          # the server drops every open connection
            t.cancel()
        await asyncio.sleep(0.1)
        [r2] = await a.deliver(m2, p2, tasks_for(m2))
        await stop(a, s)
        return r2
    assert run(main()).ok
    assert s.connections == 2 and len(s.transactions) == 2


def _two_messages(tmp_path, dns, port, sink):
    m1, p1 = make_message(tmp_path, ("a@example.test",), queue_id="M1")
    m2, p2 = make_message(tmp_path, ("b@example.test",), queue_id="M2")

    async def main():
        await sink.start()
        a = agent(fast_settings(port), resolver(dns))
        [r1] = await a.deliver(m1, p1, tasks_for(m1))
        [r2] = await a.deliver(m2, p2, tasks_for(m2))
        stats = (a.pool.opened, a.pool.reused)
        await stop(a, sink)
        return r1, r2, stats
    return run(main())


def test_pooled_session_rset_probe_is_pipelined_with_mail(tmp_path, dns, port):
    """RFC 2920 §3.1: the RSET checking a pooled connection opens the next group."""
    s = Sink("127.0.0.2", port)
    r1, r2, stats = _two_messages(tmp_path, dns, port, s)
    assert r1.ok and r2.ok and stats == (1, 1)
    verbs = [c.split(" ", 1)[0].split(":")[0] for c in s.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    assert s.rset_pipelined == [True]           # MAIL was already waiting behind it


def test_pooled_session_without_pipelining_rset_is_a_round_trip(tmp_path, dns, port):
    s = Sink("127.0.0.2", port, pipelining=False)
    r1, r2, stats = _two_messages(tmp_path, dns, port, s)
    assert r1.ok and r2.ok and stats == (1, 1) and s.connections == 1
    assert s.rset_pipelined == [False]
    assert len(s.transactions) == 2


def test_refused_rset_probe_reconnects_and_delivers_once(tmp_path, dns, port):
    """A pooled connection whose pipelined RSET is refused is closed before any body is
    sent (the pipelined DATA's 354 is never answered with content); the message goes
    over a new connection, exactly once."""
    s = Sink("127.0.0.2", port, rset_reply="502 5.5.2 RSET not here")
    r1, r2, stats = _two_messages(tmp_path, dns, port, s)
    assert r1.ok and r2.ok, (r1, r2)
    assert s.connections == 2 and stats == (2, 1)
    assert [t.connection for t in s.transactions] == [1, 2]
    assert [t.rcpts for t in s.transactions] == [["RCPT TO:<a@example.test>"],
                                                 ["RCPT TO:<b@example.test>"]]


def test_per_destination_concurrency_limit(tmp_path, dns, port):
    s = Sink("127.0.0.2", port, delay=0.2)
    msgs = [make_message(tmp_path, ("a@example.test",), queue_id=f"C{i}") for i in range(6)]

    async def main():
        await s.start()
        a = agent(fast_settings(port, per_destination_concurrency=2), resolver(dns))
        results = await asyncio.gather(*(a.deliver(m, p, tasks_for(m)) for m, p in msgs))
        await stop(a, s)
        return results, a.limiter.peak
    results, peak = run(main())
    assert all(r[0].ok for r in results)
    assert s.peak <= 2 and peak == {"example.test": 2} and len(s.transactions) == 6


def test_destinations_in_one_message_are_separate_transactions(tmp_path, dns, port):
    mx1 = Sink("127.0.0.2", port)
    imp = Sink("127.0.0.4", port)
    results = deliver(tmp_path, dns, port, [mx1, imp],
                      rcpts=("a@example.test", "b@implicit.test", "c@example.test"))
    assert all(r.ok for r in results)
    assert len(mx1.transactions) == 1 and len(mx1.transactions[0].rcpts) == 2
    assert len(imp.transactions) == 1


# ------------------------------------------------------------------ TLS and smarthosts

def test_opportunistic_starttls(tmp_path, dns, port):
    tls = TLSFiles(tmp_path)
    s = Sink("127.0.0.2", port, starttls=tls.server_context())
    [r] = deliver(tmp_path, dns, port, [s])
    assert r.ok and "TLSv1.3" in r.reply and s.transactions[0].tls
    ehlos = [c for c in s.commands if c.startswith("EHLO")]
    assert len(ehlos) == 2                                # EHLO again after TLS


def test_require_tls_without_starttls_never_sends_mail(tmp_path, dns, port):
    s = Sink("127.0.0.2", port)
    settings = fast_settings(port, routes=[{"domain": "example.test", "tls": "require"}])
    [r] = deliver(tmp_path, dns, port, [s], settings=settings)
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.7.10")
    assert not any(c.startswith("MAIL") for c in s.commands)


def test_fixed_next_hop_skips_mx(tmp_path, dns, port):
    s = Sink("127.0.0.6", port)
    settings = fast_settings(port, routes=[{"domain": "example.test",
                                            "next_hop": f"[127.0.0.6]:{port}"}])
    [r] = deliver(tmp_path, dns, port, [s], settings=settings)
    assert r.ok and "[127.0.0.6]" in r.reply
    settings = fast_settings(port, routes=[{"domain": "example.test",
                                            "next_hop": f"b.equal.test:{port}"}])
    s = Sink("127.0.0.6", port)
    [r] = deliver(tmp_path, dns, port, [s], settings=settings)
    assert r.ok and "b.equal.test[127.0.0.6]" in r.reply


@pytest.mark.parametrize("verify", [False, True])
def test_smarthost_auth_plain_over_starttls(tmp_path, dns, verify):
    tls = TLSFiles(tmp_path)
    s = Sink("127.0.0.1", 0, starttls=tls.server_context(), auth={"relay": "s3cret"})
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    msg, path = make_message(tmp_path, ("x@far.test", "y@other.test"))

    async def main():
        await s.start()
        route = {"domain": "*", "next_hop": f"[127.0.0.1]:{s.port}", "auth_user": "relay",
                 "auth_password_file": str(pw), "tls": "require"}
        if verify:
            route.update(tls_verify=True, tls_ca_file=str(tls.cert))
        a = agent(fast_settings(25, routes=[route]), resolver(dns))
        out = await a.deliver(msg, path, tasks_for(msg, next_hop="far.test"))
        await stop(a, s)
        return out
    results = run(main())
    assert all(r.ok for r in results), results
    assert s.transactions[0].auth_user == "relay" and s.transactions[0].tls
    assert len(s.transactions) == 1 and len(s.transactions[0].rcpts) == 2
    assert not any(c.startswith("AUTH") for c in s.commands[:2])


def test_smarthost_verification_failure_never_falls_back(tmp_path, dns):
    tls = TLSFiles(tmp_path)
    other = TLSFiles(tmp_path, "other.test")
    s = Sink("127.0.0.1", 0, starttls=tls.server_context(), auth={"relay": "pw"})
    pw = tmp_path / "pw"
    pw.write_text("pw")
    msg, path = make_message(tmp_path)

    async def main():
        await s.start()
        route = {"domain": "*", "next_hop": f"[127.0.0.1]:{s.port}", "auth_user": "relay",
                 "auth_password_file": str(pw), "tls": "require", "tls_verify": True,
                 "tls_ca_file": str(other.cert)}
        a = agent(fast_settings(25, routes=[route]), resolver(dns))
        out = await a.deliver(msg, path, tasks_for(msg))
        await stop(a, s)
        return out
    [r] = run(main())
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.7.5")
    assert not any(c.startswith(("MAIL", "AUTH")) for c in s.commands)


def test_auth_refused_is_temporary(tmp_path, dns):
    tls = TLSFiles(tmp_path)
    s = Sink("127.0.0.1", 0, starttls=tls.server_context(), auth={"relay": "right"})
    pw = tmp_path / "pw"
    pw.write_text("wrong")
    msg, path = make_message(tmp_path)

    async def main():
        await s.start()
        route = {"domain": "*", "next_hop": f"[127.0.0.1]:{s.port}", "auth_user": "relay",
                 "auth_password_file": str(pw), "tls": "require"}
        a = agent(fast_settings(25, routes=[route]), resolver(dns))
        out = await a.deliver(msg, path, tasks_for(msg))
        await stop(a, s)
        return out
    [r] = run(main())
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.7.8")
    assert "535 5.7.8" in r.reply


def test_greeting_timeout_is_temporary(tmp_path, dns, port):
    async def silent(reader, writer):
        await asyncio.sleep(5)

    msg, path = make_message(tmp_path)

    async def main():
        server = await asyncio.start_server(silent, "127.0.0.2", port)
        a = agent(fast_settings(port, greeting_timeout=0.3), resolver(dns))
        out = await a.deliver(msg, path, tasks_for(msg))
        server.close()
        await a.close()
        return out
    [r] = run(main())
    assert not r.ok and not r.permanent and r.reply.startswith("451 4.4.2")


def test_ipv6_next_hop(tmp_path, dns):
    from dnsserver import ipv6_loopback_available
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    s = Sink("::1", 0)
    msg, path = make_message(tmp_path)

    async def main():
        await s.start()
        settings = fast_settings(25, routes=[{"domain": "example.test",
                                              "next_hop": f"[::1]:{s.port}"}])
        a = agent(settings, resolver(dns))
        out = await a.deliver(msg, path, tasks_for(msg))
        await stop(a, s)
        return out
    [r] = run(main())
    assert r.ok and "[::1]" in r.reply and len(s.transactions) == 1
