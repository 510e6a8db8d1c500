"""The metrics endpoint of a real server: SMTP traffic over loopback, then real HTTP
scrapes of [metrics] port, parsed strictly (expo.py). workers = 1 and workers = 2 (each
intake worker counts its own sessions; the primary adds them up), including a killed
worker whose counters must not go backwards."""
import json
import os
import signal
import smtplib
import ssl
import time
import urllib.error
import urllib.request

import pytest

from metrics.expo import parse
from support import MailServer, RawClient, free_port

ALICE = "alice@example.test"


def metrics_sections(port: int) -> str:
    return f'[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\npath = "/metrics"\n'


def scrape(port: int):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(resp.read().decode("utf-8"))


def scrape_until(port: int, condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        out = scrape(port)
        if condition(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def send(srv, n=1, tls=False, rcpt=ALICE):
    for i in range(n):
        with smtplib.SMTP(srv.host, srv.port, timeout=15) as s:
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s.starttls(context=ctx)
            s.sendmail("someone@sender.example", [rcpt],
                       f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())


def accepted(out) -> float:
    return out.get("mailwright_smtp_transactions_total", listener="smtp", result="accepted",
                   reason="queued")


@pytest.fixture
def single(tmp_path):
    mport = free_port()
    srv = MailServer(tmp_path, extra_sections=metrics_sections(mport))
    srv.cli("user", "add", ALICE)
    srv.cli("user", "add", "carol@example.test")
    srv.start()
    srv.metrics_port = mport
    yield srv
    srv.stop()


def test_single_process_counts_sessions_refusals_deliveries_and_the_queue(single):
    srv, mport = single, single.metrics_port
    before = scrape(mport)
    # Carol's Maildir cannot be created (a file stands in its place): her delivery fails
    # temporarily and she stays queued.
    carol_dir = srv.maildir("carol@example.test")
    carol_dir.parent.mkdir(parents=True, exist_ok=True)
    carol_dir.write_text("not a directory")

    send(srv, 2)
    send(srv, 1, tls=True)
    send(srv, 1, rcpt="carol@example.test")
    c = RawClient(srv.host, srv.port)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO client.example")[0] == 250
    assert c.cmd("MAIL FROM:<someone@sender.example>")[0] == 250
    assert c.cmd("RCPT TO:<victim@elsewhere.example>")[0] == 554     # relay denied
    assert c.cmd("RCPT TO:<nobody@example.test>")[0] == 550          # unknown user
    assert c.cmd("QUIT")[0] == 221
    c.close()
    assert len(srv.wait_delivered(ALICE, 3)) == 3

    def d(out, name, **labels):
        return out.get(name, **labels) - before.get(name, **labels)

    after = scrape_until(mport, lambda o: (
        d(o, "mailwright_smtp_sessions_total", listener="smtp", tls="no") >= 4
        and d(o, "mailwright_delivery_attempts_total", result="ok", destination="local") >= 3
        and d(o, "mailwright_delivery_attempts_total", result="temporary",
              destination="local") >= 1
        and o.get("mailwright_queue_recipients", state="queued") == 1))
    assert d(after, "mailwright_smtp_connections_total", listener="smtp") == 5
    assert d(after, "mailwright_smtp_sessions_total", listener="smtp", tls="no") == 4
    assert d(after, "mailwright_smtp_sessions_total", listener="smtp", tls="yes") == 1
    assert after.get("mailwright_smtp_sessions_active", listener="smtp") == 0
    assert d(after, "mailwright_smtp_transactions_total", listener="smtp",
             result="accepted", reason="queued") == 4
    assert d(after, "mailwright_smtp_transactions_total", listener="smtp",
             result="rejected", reason="relay") == 1
    assert d(after, "mailwright_smtp_transactions_total", listener="smtp",
             result="rejected", reason="recipient") == 1
    assert d(after, "mailwright_store_commit_seconds_count") == 4
    assert after.get("mailwright_store_commit_seconds_sum") > 0
    assert d(after, "mailwright_delivery_attempts_total", result="ok",
             destination="local") == 3
    assert d(after, "mailwright_delivery_attempts_total", result="temporary",
             destination="local") == 1
    assert d(after, "mailwright_delivery_latency_seconds_count", destination="local") == 3
    assert after.get("mailwright_queue_recipients", state="queued") == 1
    assert after.get("mailwright_queue_recipients", state="held") == 0
    # SPF for MAIL FROM asks the (test) DNS server: TXT lookups answered NXDOMAIN.
    assert after.total("mailwright_dns_lookup_seconds_count", type="TXT") > 0
    assert set(after.types) >= {
        "mailwright_smtp_connections_total", "mailwright_smtp_connections_refused_total",
        "mailwright_smtp_sessions_active", "mailwright_smtp_sessions_total",
        "mailwright_smtp_transactions_total", "mailwright_store_commit_seconds",
        "mailwright_delivery_attempts_total", "mailwright_delivery_latency_seconds",
        "mailwright_dns_lookup_seconds", "mailwright_queue_recipients"}

    # Anything but the metrics path is 404.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{mport}/", timeout=5)
    assert err.value.code == 404


def test_metrics_are_off_by_default(tmp_path):
    mport = free_port()
    srv = MailServer(tmp_path, extra_sections=f"[metrics]\nport = {mport}\n")
    srv.start()
    try:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2)
    finally:
        srv.stop()


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def _publishers(srv) -> set[int]:
    """The pids that last wrote the worker metrics files."""
    pids = set()
    for p in (srv.data_dir / "run" / "metrics").glob("worker-*.json"):
        pids.add(json.loads(p.read_text())["pid"])
    return pids


def test_two_workers_are_added_up_and_stay_monotonic_across_a_worker_restart(tmp_path):
    mport = free_port()
    srv = MailServer(tmp_path, workers=2, extra_sections=metrics_sections(mport))
    srv.cli("user", "add", ALICE)
    srv.start()
    try:
        send(srv, 8)
        out = scrape_until(mport, lambda o: accepted(o) >= 8)
        assert accepted(out) == 8
        workers = _children(srv.proc.pid)
        assert len(workers) == 2
        files = sorted(p.name for p in (srv.data_dir / "run" / "metrics").iterdir())
        assert files == ["worker-0.json", "worker-1.json"]
        # Both workers served sessions (the kernel spreads connections), or at least the
        # sum is right whichever did; connections include the start-up probe.
        connections = out.get("mailwright_smtp_connections_total", listener="smtp")
        assert connections >= 8

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            o = scrape(mport)
            seen.append((accepted(o), o.get("mailwright_smtp_connections_total",
                                            listener="smtp")))
            now = _children(srv.proc.pid)
            if len(now) == 2 and victim not in now and _publishers(srv) == now:
                break           # the replacement has published its (restored) counters
            time.sleep(0.2)
        assert len(now) == 2 and victim not in now, "worker was not restarted"
        assert _publishers(srv) == now
        o = scrape(mport)
        seen.append((accepted(o), o.get("mailwright_smtp_connections_total", listener="smtp")))
        assert all(a == 8 for a, _ in seen), seen
        assert all(c >= connections for _, c in seen), seen

        send(srv, 4)
        out = scrape_until(mport, lambda o: accepted(o) >= 12)
        assert accepted(out) == 12
        assert out.get("mailwright_smtp_connections_total", listener="smtp") >= connections + 4
        out = scrape_until(mport, lambda o: o.get("mailwright_delivery_attempts_total",
                                                  result="ok", destination="local") >= 12)
        assert out.get("mailwright_delivery_attempts_total", result="ok",
                       destination="local") == 12
        assert "worker slot" in srv.log() and "continues its predecessor" in srv.log()
    finally:
        srv.stop()
