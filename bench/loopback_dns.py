"""A DNS server on loopback for the benchmarks: authoritative for the root, so every
lookup the server under test makes (SPF, DMARC, DKIM keys of the senders) gets a real
NXDOMAIN answer over a real socket, and nothing goes to the system resolver or beyond
loopback. It is the test suite's server (tests/dnsserver.py).

``start()`` runs it in this process when dnspython is importable (bench scripts run by the
project's interpreter), else in a child process of Mailwright's interpreter (``.venv``),
as bench/intake.py does (it runs under the system Python, as root, for Postfix).
``python bench/loopback_dns.py --serve`` is that child: it prints "127.0.0.1:PORT" and
serves until its standard input closes.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOT_ZONE = ". 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


class _Child:
    """The server in a child process; same ``nameserver`` / ``load`` / ``stop`` surface."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(VENV_PYTHON), __file__, "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the loopback DNS server did not start")
        self.nameserver = line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start():
    """Started server; ``.nameserver`` is "127.0.0.1:PORT"; ``.stop()`` when done."""
    try:
        import dns.message  # noqa: F401
    except ImportError:
        return _Child()
    sys.path.insert(0, str(ROOT / "tests"))
    from dnsserver import DNSServer
    return DNSServer(ROOT_ZONE).start()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    server = start()
    print(server.nameserver, flush=True)
    sys.stdin.read()                    # until the parent closes our standard input
    server.stop()
