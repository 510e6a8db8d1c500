#!/usr/bin/env python3
"""Cost of the inbound authentication stages per message (issue 4: "signing and checks
must not dominate the per-message cost").

Runs the live policy stages (policy/registry.py with the default ``[auth]`` settings: SPF
at MAIL, DKIM, ARC, DMARC and the Authentication-Results writer at end of data) on one
event loop, against a DNS server on loopback (bench/loopback_dns.py serving the sender's
SPF, DKIM key and DMARC records; the resolver's cache is warm after the first message, as
it is for a busy sender), for messages of 5 KB:

* unsigned, from a domain without records (the common case for a small MX);
* signed with RSA-2048 (DKIM pass, DMARC pass);
* signed with RSA-2048 and Ed25519 (two signatures to verify).

Prints messages per CPU-second and CPU microseconds per message for each (process CPU
time, so other load on the machine does not distort it). Compare with the
intake benchmark's per-message budget (docs/performance.md).

    .venv/bin/python bench/auth_checks.py [--messages 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopback_dns  # noqa: E402

from mailwright.config import parse_settings  # noqa: E402
from mailwright.mailauth.dkim import SigningKey, sign_message  # noqa: E402
from mailwright.mailauth.dkim_keys import dns_txt_record, generate_key  # noqa: E402
from mailwright.net.dns import Resolver  # noqa: E402
from mailwright.policy.context import MessageView, SessionInfo, TransactionInfo  # noqa: E402
from mailwright.policy.registry import build_checks  # noqa: E402


def txt(value: str) -> str:
    return " ".join('"' + value[i:i + 250] + '"' for i in range(0, len(value), 250))


async def run_case(stages, resolver, body: bytes, sender: str, n: int) -> float:
    mail, data = stages["mail"], stages["data"]

    async def one() -> None:
        session = SessionInfo("192.0.2.10", 40000, "mx", "mx", helo="mx.sender.test")
        txn = TransactionInfo(sender=sender)
        for check in mail:
            result = check.check_mail(session, txn)
            if asyncio.iscoroutine(result):
                await result
        end = body.find(b"\r\n\r\n") + 4
        view = MessageView(body[:end], len(body), lambda: body)
        for check in data:
            result = check.check_data(session, txn, view)
            if asyncio.iscoroutine(result):
                await result
    await one()                       # warm the resolver cache
    start = time.process_time()       # CPU time: the figure that matters, and steady on a
    for _ in range(n):                # shared machine
        await one()
    return time.process_time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    rsa, ed = generate_key("rsa", 2048), generate_key("ed25519")
    dns = loopback_dns.start()
    dns.load({"sender.test": ('@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
                              f"r1._domainkey TXT {txt(dns_txt_record(rsa))}\n"
                              f"e1._domainkey TXT {txt(dns_txt_record(ed))}\n"
                              '_dmarc TXT "v=DMARC1; p=reject"\n')})
    try:
        settings = parse_settings({"hostname": "mx.example.test",
                                   "local_domains": ["example.test"]}, "bench", env={})
        resolver = Resolver([dns.nameserver], timeout=2)
        policy = build_checks(settings, resolver=resolver, store=None,
                              hostname="mx.example.test")
        base = (b"From: news@sender.test\r\nTo: alice@example.test\r\nSubject: bench\r\n"
                b"Message-ID: <bench@sender.test>\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
                b"\r\n" + b"x" * 76 + b"\r\n") * 1
        base += (b"y" * 76 + b"\r\n") * 64            # ~5 KB
        unsigned = base.replace(b"news@sender.test", b"news@nowhere.test")
        one_sig = sign_message(base, [SigningKey("sender.test", "r1", "rsa-sha256", rsa)]) + base
        two_sig = sign_message(base, [SigningKey("sender.test", "r1", "rsa-sha256", rsa),
                                      SigningKey("sender.test", "e1", "ed25519-sha256", ed)]
                               ) + base
        cases = [("unsigned, no records", unsigned, "news@nowhere.test"),
                 ("DKIM rsa-sha256, SPF+DMARC pass", one_sig, "news@sender.test"),
                 ("DKIM rsa + ed25519, SPF+DMARC pass", two_sig, "news@sender.test")]
        print(f"{args.messages} messages of ~{len(base)} bytes each, one core, "
              f"warm DNS cache (loopback)")
        print(f"{'case':<38} {'msg/cpu-s':>9} {'cpu-us/msg':>10}")
        for name, body, sender in cases:
            secs = asyncio.run(run_case(policy.checks, resolver, body, sender, args.messages))
            print(f"{name:<38} {args.messages / secs:>9.0f} "
                  f"{secs / args.messages * 1e6:>10.0f}")
    finally:
        dns.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
