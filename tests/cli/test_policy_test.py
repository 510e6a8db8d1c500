"""``mailwright policy test``: a saved message replayed through the live policy checks, with
SPF and DMARC records served by a real DNS server on loopback."""
from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from pathlib import Path

import pytest

from dnsserver import DNSServer
from mailwright.cli.main import main
from mailwright.store.policystate import SqlitePolicyState
from support import ROOT_SOA

ZONES = {
    "bank.test": '@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n_dmarc TXT "v=DMARC1; p=reject"\n',
    ".": ROOT_SOA,
}
MESSAGE = ("From: CEO <ceo@bank.test>\nTo: alice@example.test\nSubject: wire transfer\n"
           "Message-ID: <wire-1@bank.test>\n\nPlease pay the attached invoice today.\n")
GOOD_IP, SPOOF_IP = "192.0.2.10", "203.0.113.5"


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as srv:
        yield srv


@pytest.fixture
def setup(tmp_path: Path, dns):
    config = tmp_path / "mailwright.toml"
    data = tmp_path / "data"

    def write(extra: str = "") -> None:
        config.write_text(f'hostname = "mx.example.test"\ndata_dir = "{data}"\n'
                          f'local_domains = ["example.test"]\n'
                          f'[outbound]\nnameservers = ["{dns.nameserver}"]\ndns_timeout = 2\n'
                          f"{extra}")
    write()
    msg = tmp_path / "wire.eml"
    msg.write_text(MESSAGE)

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = main(["-c", str(config), *args], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    assert run("user", "add", "alice@example.test")[0] == 0

    def replay(ip: str, *extra: str, to: str = "alice@example.test") -> tuple[int, dict]:
        rc, out, err = run("policy", "test", "--ip", ip, "--helo", "mail.bank.test",
                           "--from", "ceo@bank.test", "--to", to, *extra, str(msg), "--json")
        assert rc in (0, 1), err
        return rc, json.loads(out)

    return type("Setup", (), {"run": staticmethod(run), "replay": staticmethod(replay),
                              "write": staticmethod(write), "data": data})


def step(result: dict, name: str) -> dict:
    [s] = [s for s in result["steps"] if s["step"] == name]
    return s


def verdict(s: dict, check: str) -> dict:
    [v] = [v for v in s["verdicts"] if v["check"] == check]
    return v


def test_spoofed_bank_is_rejected_by_dmarc(setup):
    rc, r = setup.replay(SPOOF_IP)
    assert rc == 1 and r["outcome"] == "refused" and not r["accepted"]
    assert [s["step"] for s in r["steps"]] == ["connect", "helo", "mail", "rcpt", "data"]
    # SPF starts at MAIL and is settled at end of data (its result is in the data step)
    spf = verdict(step(r, "data"), "spf")
    assert spf["action"] == "continue" and "fail" in spf["reason"]   # SPF alone refuses nothing
    data = step(r, "data")
    assert data["action"] == "reject" and data["reply"].startswith("550 5.7.1")
    dmarc = verdict(data, "dmarc")
    assert dmarc["action"] == "reject" and "bank.test" in dmarc["reply"]
    assert "dmarc=fail" in dmarc["reason"] and "p=reject" in dmarc["reason"]
    assert r["added_headers"] == []
    rc, out, _ = setup.run("policy", "test", "--ip", SPOOF_IP, "--helo", "mail.bank.test",
                           "--from", "ceo@bank.test", "--to", "alice@example.test",
                           str(setup.data.parent / "wire.eml"))
    assert rc == 1 and "dmarc: reject [550 5.7.1" in out and "outcome: refused" in out


def test_legitimate_bank_mail_passes_with_its_header_fields(setup):
    rc, r = setup.replay(GOOD_IP)
    assert rc == 0 and r["outcome"] == "accepted"
    assert r["accepted_recipients"] == ["alice@example.test"]
    assert step(r, "data")["reply"].startswith("250 2.0.0")
    assert "pass" in verdict(step(r, "data"), "spf")["reason"]
    assert verdict(step(r, "data"), "dmarc")["action"] == "continue"
    [ar] = [h for h in r["added_headers"] if h.startswith("Authentication-Results:")]
    assert "mx.example.test" in ar and "spf=pass" in ar and "dmarc=pass" in ar
    # nothing was queued or delivered
    assert json.loads(setup.run("queue", "list", "--json")[1]) == []
    assert not list((setup.data / "mail").rglob("*.mx.example.test*")) \
        if (setup.data / "mail").exists() else True


def test_relay_and_unknown_recipients_refused_at_rcpt(setup):
    rc, r = setup.replay(GOOD_IP, to="someone@elsewhere.test")
    assert rc == 1 and r["outcome"] == "refused"
    rcpt = step(r, "rcpt")
    assert rcpt["action"] == "reject" and verdict(rcpt, "relay")["reply"].startswith("554 5.7.1")
    assert [s["step"] for s in r["steps"]][-1] == "rcpt"          # no DATA without recipients
    rc, r = setup.replay(GOOD_IP, to="nobody@example.test")
    assert rc == 1 and step(r, "rcpt")["reply"].startswith("550 5.1.1")
    rc, out, err = setup.run("policy", "test", "--ip", "not-an-ip", "--helo", "x", "--from",
                             "a@b.test", "--to", "alice@example.test", "/dev/null")
    assert rc == 2 and "not an IP address" in err


def test_replay_reads_live_greylist_state_but_never_writes_it(setup):
    setup.write("[antiabuse]\ngreylist = true\ngreylist_delay = 0\n")
    live = setup.data / "policystate.db"
    for _ in range(2):      # the live store would let the second one pass ("retried")
        rc, r = setup.replay(GOOD_IP)
        assert rc == 1 and r["outcome"] == "deferred", json.dumps(r, indent=1)
        grey = verdict(step(r, "rcpt"), "greylist")
        assert grey["action"] == "tempfail" and "greylisted (new)" in grey["reason"]
    if live.exists():
        rows = sqlite3.connect(live).execute("SELECT COUNT(*) FROM policy_greylist").fetchone()
        assert rows == (0,)
    # a triplet the live server has already passed is honoured by the replay
    state = SqlitePolicyState(str(live))
    triplet = "192.0.2.0/24|ceo@bank.test|alice@example.test"

    async def pass_triplet():
        now = time.time()
        assert await state.greylist(triplet, now, 0, 3600, 86400) == "new"
        assert await state.greylist(triplet, now + 1, 0, 3600, 86400) == "retried"
        await state.close()
    asyncio.run(pass_triplet())
    rc, r = setup.replay(GOOD_IP)
    assert rc == 0 and r["outcome"] == "accepted"
