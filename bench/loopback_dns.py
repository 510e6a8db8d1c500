"""A DNS server on loopback for the benchmarks: authoritative for the root, so every
lookup the server under test makes (SPF, DMARC, DKIM keys of the senders) gets a real
NXDOMAIN answer over a real socket, and nothing goes to the system resolver or beyond
loopback. It is the test suite's server (tests/dnsserver.py)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dnsserver import DNSServer  # noqa: E402

ROOT_ZONE = ". 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"


def start() -> DNSServer:
    """Started server; ``.nameserver`` is "127.0.0.1:PORT"; ``.stop()`` when done."""
    return DNSServer(ROOT_ZONE).start()
