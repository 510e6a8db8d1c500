"""DMARC aggregate reports end to end (RFC 7489 §7.2): results recorded by a running
server, `mailwright dmarc report --dry-run` shows the plan, the real run queues the report,
and the server delivers it to the rua address's MX (a loopback peer), where its gzip'd XML
parses with the counts and results of the mail we received. An external rua address that
did not authorise the reports (§7.1) is skipped."""
from __future__ import annotations

import email
import gzip
import json
import smtplib
import subprocess
import sys
import time

from dnsserver import DNSServer
from e2e.test_outbound import ThreadedSink, wait_for
from mailwright.mailauth.dkim import SigningKey, sign_message
from mailwright.mailauth.dkim_keys import dns_txt_record, generate_key
from mailwright.mailauth.dmarc_report import parse_aggregate_xml
from outbound.sink import free_port
from support import MailServer

KEY = generate_key("ed25519")
ZONES = {
    ".": "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n",
    "bank.test": ('@ MX 10 mx\nmx A 127.0.0.2\n'
                  '@ TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'
                  f'k1._domainkey TXT "{dns_txt_record(KEY)}"\n'
                  '_dmarc TXT "v=DMARC1; p=reject; '
                  'rua=mailto:dmarc@bank.test,mailto:agg@reports.example"\n'),
}


def cli(srv, *args, interval=1):
    env = dict(srv.env, MAILWRIGHT__AUTH__DMARC_REPORT_INTERVAL=str(interval))
    r = subprocess.run([sys.executable, "-m", "mailwright.cli.main", "-c", str(srv.config),
                        *args], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_aggregate_report_is_recorded_planned_queued_and_delivered(tmp_path):
    port = free_port(["127.0.0.2"])
    with DNSServer(ZONES) as dns, ThreadedSink(host="127.0.0.2", port=port,
                                               name="mx.bank.test") as sink:
        srv = MailServer(tmp_path, extra_sections=(
            "[auth]\ndmarc_reports = true\ndmarc_report_interval = 3600\n"
            f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
            "dns_timeout = 1\n"))
        srv.cli("user", "add", "alice@example.test")
        srv.start()
        try:
            # Two genuine messages (SPF and DKIM aligned) and one forgery (no signature,
            # envelope from another domain): DMARC rejects it, and reports it.
            for i in range(2):
                body = (f"From: pay@bank.test\r\nTo: alice@example.test\r\n"
                        f"Subject: statement {i}\r\n\r\nbalance\r\n").encode()
                sig = sign_message(body, [SigningKey("bank.test", "k1", "ed25519-sha256", KEY)])
                with smtplib.SMTP(srv.host, srv.port, timeout=10,
                                  local_hostname="mx.bank.test") as s:
                    s.sendmail("pay@bank.test", ["alice@example.test"], sig + body)
            with smtplib.SMTP(srv.host, srv.port, timeout=10,
                              local_hostname="evil.example") as s:
                s.ehlo()
                s.mail("x@evil.example")
                s.rcpt("alice@example.test")
                code, _ = s.data(b"From: ceo@bank.test\r\nSubject: urgent\r\n\r\nwire it\r\n")
                assert code == 550
            srv.wait_delivered("alice@example.test", 2)
            time.sleep(1.1)                 # the 1-second reporting period has ended

            plan = json.loads(cli(srv, "dmarc", "report", "--dry-run", "--json"))
            [report] = plan["reports"]
            assert plan["dry_run"] and plan["queued"] == []
            assert report["policy_domain"] == "bank.test" and report["messages"] == 3
            assert report["send_to"] == ["dmarc@bank.test"]
            [skipped] = report["skipped"]
            assert skipped["uri"] == "mailto:agg@reports.example"
            assert "not authorised" in skipped["reason"]
            xml = parse_aggregate_xml(report["xml"].encode())
            assert xml["policy_published"]["domain"] == "bank.test"
            assert xml["policy_published"]["p"] == "reject"
            records = {r["disposition"]: r for r in xml["records"]}
            assert records["none"]["count"] == 2 and records["none"]["dkim"] == "pass"
            assert records["none"]["dkim_results"][0]["domain"] == "bank.test"
            assert records["reject"]["count"] == 1 and records["reject"]["spf"] == "fail"
            assert records["reject"]["envelope_from"] == "evil.example"

            # A dry run changes nothing; the real run queues the report and it leaves.
            assert json.loads(cli(srv, "dmarc", "report", "--dry-run", "--json")
                              )["reports"][0]["messages"] == 3
            done = json.loads(cli(srv, "dmarc", "report", "--json"))
            assert len(done["queued"]) == 1
            assert wait_for(lambda: any(t.body for t in sink.transactions), timeout=30)
            txn = [t for t in sink.transactions if t.body][0]
            assert "dmarc@bank.test" in txn.rcpts[0]
            msg = email.message_from_bytes(txn.body)
            assert msg["Subject"].startswith("Report Domain: bank.test Submitter: example.test")
            [part] = [p for p in msg.walk() if p.get_filename()]
            assert part.get_filename().startswith("example.test!bank.test!")
            sent = parse_aggregate_xml(gzip.decompress(part.get_payload(decode=True)))
            assert sum(r["count"] for r in sent["records"]) == 3
            # The rows are gone: nothing left to report.
            assert json.loads(cli(srv, "dmarc", "report", "--dry-run", "--json")
                              )["reports"] == []
        finally:
            srv.stop()
