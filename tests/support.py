"""Test support: a real Mailwright server in a subprocess on loopback, and a raw SMTP client.

No fixed ports: each server gets a free ephemeral port on 127.0.0.1.
"""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT.parent / "shared" / "conformance"


_EMPTY_DNS = None
ROOT_SOA = ". 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n"


def empty_dns():
    """A loopback DNS server, shared by the test process, that is authoritative for the
    root and so answers NXDOMAIN for every name: SPF, DKIM and DMARC find nothing."""
    global _EMPTY_DNS
    if _EMPTY_DNS is None:
        from dnsserver import DNSServer
        _EMPTY_DNS = DNSServer(ROOT_SOA).start()
    return _EMPTY_DNS


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.recv(1024)   # the banner: the server is really serving
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not listening after {timeout}s")


class MailServer:
    """A server process with its own config file and data directory."""

    def __init__(self, tmp: Path, domains=("example.test",), extra_toml: str = "",
                 workers: int = 1, hostname: str = "mx.example.test",
                 submission: bool = False, extra_sections: str = "") -> None:
        """``submission=True`` adds listeners "submission" (STARTTLS, ``self.sub_port``)
        and "submissions" (implicit TLS, ``self.subs_port``).  ``extra_toml`` goes before
        the listeners (top-level keys), ``extra_sections`` after them ([tables])."""
        self.tmp = Path(tmp)
        self.data_dir = self.tmp / "data"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.hostname = hostname
        self.config = self.tmp / "mailwright.toml"
        doms = ", ".join(f'"{d}"' for d in domains)
        self.config.write_text(
            f'hostname = "{hostname}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f"workers = {workers}\n"
            f"local_domains = [{doms}]\n"
            f"{extra_toml}\n"
            f"[[listeners]]\n"
            f'name = "smtp"\naddress = "127.0.0.1"\nport = {self.port}\n'
            f'role = "mx"\ntls = "starttls"\n'
        )
        self.sub_port = self.subs_port = None
        if submission:
            self.sub_port, self.subs_port = free_port(), free_port()
            with open(self.config, "a") as f:
                f.write(f'[[listeners]]\nname = "submission"\naddress = "127.0.0.1"\n'
                        f'port = {self.sub_port}\nrole = "submission"\ntls = "starttls"\n'
                        f'[[listeners]]\nname = "submissions"\naddress = "127.0.0.1"\n'
                        f'port = {self.subs_port}\nrole = "submissions"\ntls = "implicit"\n')
        if extra_sections:
            with open(self.config, "a") as f:
                f.write(extra_sections + "\n")
        self.proc: subprocess.Popen | None = None
        self.log_path = self.tmp / "server.log"
        self.env = dict(os.environ)
        if "skip_networks" not in self.config.read_text():
            # Test clients are on loopback, which production skips by default: check
            # them like the remote clients they stand for.
            self.env["MAILWRIGHT__AUTH__SKIP_NETWORKS"] = "[]"
        if "nameservers" not in self.config.read_text():
            # Every lookup goes to a DNS server on loopback, never to the system resolver:
            # without test zones, one that answers NXDOMAIN for every name.
            self.env["MAILWRIGHT__OUTBOUND__NAMESERVERS"] = f'["{empty_dns().nameserver}"]'

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "mailwright.cli.main", "-c", str(self.config),
                               *args], input=input, capture_output=True, text=True, timeout=60,
                              env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"mailwright {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self) -> "MailServer":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailwright.cli.main", "-c", str(self.config), "serve"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        try:
            wait_port(self.host, self.port, proc=self.proc)
        except Exception:
            self.stop()
            raise AssertionError("server did not start:\n" + self.log_path.read_text()[-4000:])
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- mailboxes

    def maildir(self, address: str) -> Path:
        local, domain = address.lower().rsplit("@", 1)
        return self.data_dir / "mail" / domain / local

    def delivered(self, address: str, folder: str = "") -> list[bytes]:
        box = self.maildir(address)
        if folder:
            box = box / f".{folder}"
        out = []
        for sub in ("new", "cur"):
            d = box / sub
            if d.is_dir():
                for f in sorted(d.iterdir()):
                    out.append(f.read_bytes())
        return out

    def wait_delivered(self, address: str, count: int, timeout: float = 20.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.delivered(address)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


class RawClient:
    """A byte-exact SMTP client for edge cases smtplib cannot express."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply; returns (code, lines)."""
        lines = []
        while True:
            line = self.line().decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), lines

    def cmd(self, text: str) -> tuple[int, list[str]]:
        self.send(text + "\r\n")
        return self.reply()

    def closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (after any pending bytes)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def starttls(self, hostname: str = "localhost") -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert not self.buf, f"unexpected plaintext after 220: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=hostname)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
