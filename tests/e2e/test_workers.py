"""workers = 2: two intake processes share the listening socket; the primary delivers."""
import re
import smtplib
import time

from support import MailServer


def test_two_intake_workers_accept_and_the_primary_delivers(tmp_path):
    srv = MailServer(tmp_path, workers=2)
    srv.cli("user", "add", "alice@example.test")
    srv.start()
    try:
        for i in range(30):
            with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
                s.sendmail("x@sender.example", ["alice@example.test"],
                           f"Subject: w{i}\r\n\r\nbody {i}\r\n".encode())
        got = srv.wait_delivered("alice@example.test", 30)
        assert sorted(int(re.search(rb"Subject: w(\d+)", m).group(1)) for m in got) == \
            list(range(30))
        time.sleep(0.3)
        log = srv.log()
        acceptors = set(re.findall(r"mailwright\.smtpd\[(\d+)\]: accepted", log))
        deliverers = set(re.findall(r"mailwright\.queue\.manager\[(\d+)\]", log))
        assert len(deliverers) == 1
        assert acceptors and not (acceptors & deliverers), (acceptors, deliverers)
        assert "served by 2 intake workers" in log
    finally:
        srv.stop()


def test_a_burst_of_long_sessions_is_spread_over_both_workers(tmp_path):
    """Each worker has its own listening socket (SO_REUSEPORT): 20 clients that connect at
    once and stay connected are not all accepted by the worker that woke first."""
    srv = MailServer(tmp_path, workers=2)
    srv.cli("user", "add", "alice@example.test")
    srv.start()
    clients = []
    try:
        for _ in range(20):                     # connected together, kept open
            clients.append(smtplib.SMTP(srv.host, srv.port, timeout=10))
        for i, s in enumerate(clients):
            s.sendmail("x@sender.example", ["alice@example.test"],
                       f"Subject: b{i}\r\n\r\nbody {i}\r\n".encode())
        for s in clients:
            s.quit()
        srv.wait_delivered("alice@example.test", 20)
        time.sleep(0.3)
        acceptors = set(re.findall(r"mailwright\.smtpd\[(\d+)\]: accepted", srv.log()))
        assert len(acceptors) == 2, acceptors   # 2 x 0.5**20 that one socket gets all
    finally:
        for s in clients:
            s.close()
        srv.stop()
