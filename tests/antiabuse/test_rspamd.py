"""rspamd over its HTTP protocol (/checkv2), against a real rspamd (Debian package
``rspamd``, installed here with apt-get when missing; skipped if that is impossible).

rspamd runs with a temporary local configuration: loopback ports of our own, its DNS
pointed at a loopback DNS server that answers NXDOMAIN for everything (never the
internet).  It takes 20-40 s to start (it compiles its TLD list and regexps).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dnsserver import DNSServer
from mailwright.policy.context import MessageView, SessionInfo, TransactionInfo
from mailwright.policy.rspamd import RspamdCheck
from mailwright.policy.spamscore import SCORE_FACT
from mailwright.policy.verdict import Action
from support import ROOT_SOA, free_port

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _ensure_rspamd() -> str:
    exe = shutil.which("rspamd")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "rspamd"],
                       capture_output=True, timeout=600)
        exe = shutil.which("rspamd")
    if exe is None:
        pytest.skip("rspamd is not installed and could not be installed")
    return exe


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    exe = _ensure_rspamd()
    conf: Path = tmp_path_factory.mktemp("rspamd")
    for sub in ("override.d", "db", "run", "log"):
        (conf / sub).mkdir()
    normal, controller, proxy = free_port(), free_port(), free_port()
    dns = DNSServer(ROOT_SOA).start()
    od = conf / "override.d"
    od.joinpath("worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal}";\ncount = 1;\n')
    od.joinpath("worker-controller.inc").write_text(
        f'bind_socket = "127.0.0.1:{controller}";\ncount = 1;\n')
    od.joinpath("worker-proxy.inc").write_text(f'bind_socket = "127.0.0.1:{proxy}";\ncount = 1;\n')
    od.joinpath("worker-fuzzy.inc").write_text("count = -1;\n")
    od.joinpath("logging.inc").write_text(
        f'type = "file";\nfilename = "{conf}/log/rspamd.log";\nlevel = "warning";\n')
    od.joinpath("options.inc").write_text(
        f'dns {{ nameserver = ["{dns.nameserver}"]; timeout = 0.5s; retransmits = 1; }}\n')
    proc = subprocess.Popen(
        [exe, "-f", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
         f"--var=LOCAL_CONFDIR={conf}", f"--var=DBDIR={conf}/db", f"--var=RUNDIR={conf}/run",
         f"--var=LOGDIR={conf}/log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{normal}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                    if r.read().strip() == b"pong":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("rspamd did not start")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        dns.stop()


def scan(url: str, body: bytes, **kw):
    check = RspamdCheck(url, timeout=20, **kw)
    s = SessionInfo(client_ip="192.0.2.1", client_port=1, listener="smtp", role="mx",
                    helo="client.example.org")
    t = TransactionInfo(sender="alice@sender.test", recipients=["bob@example.test"])
    m = MessageView(b"", len(body), lambda: body)
    return asyncio.run(check.check_data(s, t, m)), t


def test_gtube_is_rejected(rspamd):
    verdict, _ = scan(rspamd, b"Subject: test\r\nFrom: alice@sender.test\r\n\r\n" + GTUBE + b"\r\n")
    assert verdict.action is Action.REJECT
    assert (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    assert "GTUBE" in verdict.reason


def test_score_is_added_to_the_spam_score(rspamd):
    verdict, txn = scan(rspamd, b"Subject: hello\r\nFrom: alice@sender.test\r\n"
                                b"To: bob@example.test\r\n\r\nHello Bob, lunch?\r\n")
    assert verdict.action is not Action.REJECT
    assert verdict.reason.startswith("rspamd ")
    assert txn.facts[SCORE_FACT]["rspamd"] == txn.facts["rspamd"].score


def test_unreachable_rspamd_never_loses_mail():
    url = f"http://127.0.0.1:{free_port()}"
    verdict, _ = scan(url, b"Subject: x\r\n\r\nx\r\n")
    assert verdict.action is Action.CONTINUE and "unavailable" in verdict.reason
    verdict, _ = scan(url, b"Subject: x\r\n\r\nx\r\n", failure="tempfail")
    assert (verdict.reply.code, verdict.reply.enhanced) == (451, "4.7.0")
