"""``mailwright diag smtp`` (``admin/diag.py``, ``cli/diag.py``) against a real Mailwright
server (``support.MailServer``: STARTTLS with its first-start self-signed certificate,
submission with AUTH), against loopback peers that misbehave, with MX lookups through the
loopback DNS server (``dnsserver.DNSServer``).

The CLI is run through ``cli/diag.register`` on a parser built like main's (``run_diag``);
``test_wired_*`` runs ``main([...])`` and is skipped until the lead adds the ``diag`` group
to ``cli/main.build_parser``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from dnsserver import DNSServer
from mailwright.admin import diag
from mailwright.cli import diag as diag_cli
from mailwright.cli.main import _run_admin, main
from mailwright.config import load_settings
from mailwright.net.tls import make_self_signed
from support import MailServer

PASSWORD = "s3cret pw"
ZONES = {
    "mail.test": "@ MX 20 backup\n@ MX 10 mx\nmx A 127.0.0.1\nbackup A 127.0.0.1\n"
                 "wrongname A 127.0.0.1\n",
    "nullmx.test": "@ MX 0 .\n",
    "slow.test": "@ MX 10 mx\nmx A 127.0.0.1\n",
}


# ---------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONES) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MailServer(tmp_path_factory.mktemp("diag-server"), hostname="mx.mail.test",
                     submission=True)
    srv.cli("user", "add", "alice@example.test", "--password-stdin", input=PASSWORD + "\n")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def cert(server) -> str:
    return str(server.data_dir / "tls" / "cert.pem")


def make_config(tmp_path: Path, dns: DNSServer, port: int = 25) -> Path:
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'hostname = "diag.client.test"\ndata_dir = "{tmp_path / "data"}"\n'
                   f'local_domains = ["client.test"]\n'
                   f'[outbound]\nport = {port}\nnameservers = ["{dns.nameserver}"]\n'
                   f'dns_timeout = 0.5\n')
    return cfg


@pytest.fixture
def cfg(tmp_path, dns, server) -> Path:
    """Client config: MX targets use the test server's port (as [outbound] port)."""
    return make_config(tmp_path, dns, server.port)


def run_diag(cfg: Path, *args: str, input: str = "") -> tuple[int, str, str]:
    """``diag`` through register() on a parser built like main's, run like main runs it."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true")
    p = argparse.ArgumentParser(prog="mailwright")
    p.add_argument("-c", "--config", default=None)
    cmds = p.add_subparsers(dest="command", required=True)
    diag_cli.register(cmds, common, as_json)
    args = p.parse_args(["-c", str(cfg), *args])
    out, err = io.StringIO(), io.StringIO()
    rc = asyncio.run(_run_admin(args.func, args, load_settings(args.config), out, err,
                                io.StringIO(input)))
    return rc, out.getvalue(), err.getvalue()


class Peer:
    """A scripted SMTP peer on 127.0.0.1: ``script(sock, peer)`` runs per connection."""

    def __init__(self, script: Callable[[socket.socket, "Peer"], None]) -> None:
        self.script = script
        self.lines: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        try:
            self.script(conn, self)
        except OSError:
            pass
        finally:
            conn.close()

    def readline(self, conn: socket.socket) -> str:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        line = buf.decode().rstrip("\r\n")
        self.lines.append(line)
        return line

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer():
    peers: list[Peer] = []

    def make(script):
        p = Peer(script)
        peers.append(p)
        return p
    yield make
    for p in peers:
        p.close()


def steps(out_json: str) -> list[dict]:
    return json.loads(out_json)["steps"]


# ---------------------------------------------------------------------- a real server

def test_mx_domain_with_self_signed_certificate(cfg, server, dns):
    dns.clear_log()
    rc, out, err = run_diag(cfg, "diag", "smtp", "mail.test")
    assert rc == 1, out + err
    assert ("mail.test", "MX") in dns.queries and ("mx.mail.test", "A") in dns.queries
    assert "MX of mail.test: 10 mx.mail.test, 20 backup.mail.test; testing the preferred " \
           "host mx.mail.test" in out
    assert f"127.0.0.1 port {server.port}: connected in" in out
    assert "S: 220 mx.mail.test ESMTP Mailwright" in out
    assert "C: EHLO diag.client.test" in out
    assert "S: 250-PIPELINING" in out and "S: 250 STARTTLS" in out       # multi-line reply
    assert "C: STARTTLS" in out
    assert "[ok] tls: TLSv1.3" in out
    assert "#0 subject: CN=mx.mail.test" in out and "(self-signed)" in out
    assert "SANs:    DNS:mx.mail.test, DNS:localhost, IP:127.0.0.1" in out
    assert "[PROBLEM] certificate: chain not trusted by the system trust store: " \
           "self-signed certificate; name mx.mail.test matches" in out
    assert "C: QUIT" in out and "S: 221" in out
    assert "Summary: 1 problem(s) found" in out


def test_trusted_with_cafile_and_test_message_is_delivered(cfg, server, cert):
    rc, out, err = run_diag(cfg, "diag", "smtp", "mail.test", "--cafile", cert,
                            "--send", "diag@client.test", "alice@example.test", "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True and report["problems"] == []
    names = [s["step"] for s in report["steps"]]
    assert names == ["mx", "resolve", "connect", "banner", "ehlo", "starttls", "tls",
                     "certificate", "ehlo (after TLS)", "send", "quit"]
    by = {s["step"]: s for s in report["steps"]}
    certificate = by["certificate"]["data"]
    assert certificate["trusted"] is True and certificate["name_matches"] is True
    assert certificate["chain"][0]["days_left"] > 3000
    assert "STARTTLS" not in by["ehlo (after TLS)"]["data"]["extensions"]
    send = by["send"]
    assert send["status"] == "ok" and "queued as" in send["data"]["reply"]
    sent = [ln["line"] for ln in send["dialogue"] if ln["dir"] == "C"]
    assert sent[:3] == ["MAIL FROM:<diag@client.test>", "RCPT TO:<alice@example.test>",
                        "DATA"]
    assert all(ln["ms"] >= 0 for ln in send["dialogue"])
    msgid = send["data"]["message_id"]
    delivered = server.wait_delivered("alice@example.test", 1)
    assert any(f"Message-ID: {msgid}".encode() in m for m in delivered)


def test_submission_auth_never_shows_the_password(cfg, server, cert):
    rc, out, err = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{server.sub_port}",
                            "--starttls", "--auth", "alice@example.test", "--cafile", cert,
                            "--send", "alice@example.test", "alice@example.test",
                            input=PASSWORD + "\n")
    assert rc == 0, out + err
    assert "C: AUTH PLAIN ****" in out
    assert "[ok] auth: authenticated as alice@example.test" in out
    secret = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()
    assert PASSWORD not in out and secret not in out
    rc, out, _ = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{server.sub_port}", "--auth",
                          "alice@example.test", "--json", input=PASSWORD + "\n")
    assert PASSWORD not in out and secret not in out
    auth = next(s for s in steps(out) if s["step"] == "auth")
    assert auth["status"] == "ok"
    assert [ln["line"] for ln in auth["dialogue"]][0] == "AUTH PLAIN ****"


def test_wrong_password_is_a_problem(cfg, server, cert):
    rc, out, _ = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{server.sub_port}", "--auth",
                          "alice@example.test", "--cafile", cert, input="wrong\n")
    assert rc == 1
    assert "[PROBLEM] auth: authentication failed: 535" in out


def test_implicit_tls(cfg, server, cert):
    rc, out, err = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{server.subs_port}", "--tls",
                            "--cafile", cert, "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert [s["step"] for s in report["steps"]] == ["connect", "tls", "certificate",
                                                    "banner", "ehlo", "quit"]
    assert report["steps"][1]["data"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert report["tls_mode"] == "implicit"


def test_name_mismatch_is_reported_apart_from_the_chain(cfg, server, cert):
    rc, out, _ = run_diag(cfg, "diag", "smtp", f"wrongname.mail.test:{server.port}",
                          "--cafile", cert, "--json")
    assert rc == 1
    certificate = next(s for s in steps(out) if s["step"] == "certificate")
    assert certificate["data"]["trusted"] is True
    assert certificate["data"]["name_matches"] is False
    assert "does not name wrongname.mail.test" in certificate["detail"]


def test_untrusted_chain_reconnects_to_inspect(cfg, server):
    rc, out, _ = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{server.port}", "--json")
    assert rc == 1
    names = [s["step"] for s in steps(out)]
    assert names.count("connect") == 2 and names.count("banner") == 2
    tls = [s for s in steps(out) if s["step"] == "tls"]
    assert "self-signed certificate" in tls[0]["detail"] and tls[1]["status"] == "ok"


# ---------------------------------------------------------------------- DNS

def test_null_mx_and_dns_timeout(cfg, dns):
    rc, out, _ = run_diag(cfg, "diag", "smtp", "nullmx.test")
    assert rc == 1 and "nullmx.test accepts no mail (null MX, RFC 7505)" in out
    dns.set_behaviour("slow.test", "timeout")
    try:
        start = time.monotonic()
        rc, out, _ = run_diag(cfg, "diag", "smtp", "slow.test")
    finally:
        dns.clear_behaviour()
    assert rc == 1 and "could not look up the MX of slow.test" in out
    assert "Connecting" not in out and "connect:" not in out
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------------- misbehaving peers

def test_server_closing_after_banner(tmp_path, dns, peer):
    def script(conn, p):
        conn.sendall(b"220 rude.test ESMTP\r\n")
    srv = peer(script)
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp", f"127.0.0.1:{srv.port}")
    assert rc == 1
    assert "S: 220 rude.test ESMTP" in out
    assert "[PROBLEM] ehlo: the server closed the connection while we waited for the reply " \
           "to EHLO" in out
    assert "Traceback" not in out


def test_server_never_answering_ehlo_times_out(tmp_path, dns, peer):
    def script(conn, p):
        conn.sendall(b"220 slow.test ESMTP\r\n")
        p.readline(conn)                            # EHLO, never answered
        conn.recv(100)                              # until the client gives up
    srv = peer(script)
    start = time.monotonic()
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp",
                          f"127.0.0.1:{srv.port}", "--timeout", "1")
    assert rc == 1
    assert "[PROBLEM] ehlo: no reply to EHLO within 1 s (timeout)" in out
    assert time.monotonic() - start < 8
    assert srv.lines == ["EHLO diag.client.test"]


def test_554_banner_multi_line_then_quit(tmp_path, dns, peer):
    def script(conn, p):
        conn.sendall(b"554-nope.test no service for you\r\n554 5.7.1 go away\r\n")
        if p.readline(conn) == "QUIT":
            conn.sendall(b"221 2.0.0 bye\r\n")
    srv = peer(script)
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp", f"127.0.0.1:{srv.port}",
                          "--json")
    assert rc == 1
    [banner] = [s for s in steps(out) if s["step"] == "banner"]
    assert banner["status"] == "problem"
    assert "refuses service: 554 nope.test no service for you / 5.7.1 go away" \
        in banner["detail"]
    assert [ln["line"] for ln in banner["dialogue"]] == [
        "554-nope.test no service for you", "554 5.7.1 go away", "QUIT", "221 2.0.0 bye"]
    assert srv.lines == ["QUIT"]


def _plain_peer(extensions: bytes = b"250-plain.test\r\n250 PIPELINING\r\n"):
    def script(conn, p):
        conn.sendall(b"220 plain.test ESMTP\r\n")
        while True:
            line = p.readline(conn)
            if line.startswith("EHLO"):
                conn.sendall(extensions)
            elif line == "STARTTLS":
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                conn.sendall(b"this is not TLS at all\r\n")
                return
            elif line == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.1 what\r\n")
    return script


def test_tls_peer_that_speaks_garbage(tmp_path, dns, peer):
    """The peer accepts STARTTLS, then answers the ClientHello with plaintext."""
    def script(conn, p):
        conn.sendall(b"220 plain.test ESMTP\r\n")
        p.readline(conn)
        conn.sendall(b"250-plain.test\r\n250 STARTTLS\r\n")
        p.readline(conn)
        conn.sendall(b"220 2.0.0 go ahead\r\n")
        conn.recv(4096)                                 # the ClientHello
        conn.sendall(b"554 5.0.0 surprise, no TLS here\r\n" * 4)
        time.sleep(1)
    srv = peer(script)
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp", f"127.0.0.1:{srv.port}",
                          "--timeout", "5")
    assert rc == 1
    assert "[ok] starttls: 220: ready to start TLS" in out
    assert "[PROBLEM] tls: TLS handshake failed: " in out
    assert "Traceback" not in out


def test_broken_tls_handshake(tmp_path, dns, peer):
    srv = peer(_plain_peer(b"250-plain.test\r\n250 STARTTLS\r\n"))
    start = time.monotonic()
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp", f"127.0.0.1:{srv.port}",
                          "--timeout", "5")
    assert rc == 1
    assert time.monotonic() - start < 4
    # The plaintext after the 220 is discarded, never read as TLS (CVE-2011-0411) ...
    assert "[PROBLEM] starttls: the server sent 24 octets after its 220 to STARTTLS" in out
    # ... and the handshake cannot happen: the peer has closed.
    assert ("[PROBLEM] tls: the server closed the connection before the TLS handshake" in out
            or "[PROBLEM] tls: TLS handshake failed" in out)
    assert "Traceback" not in out


def test_starttls_required_but_not_offered_and_no_password_in_plaintext(tmp_path, dns, peer):
    srv = peer(_plain_peer())
    cfg = make_config(tmp_path, dns)
    rc, out, _ = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{srv.port}", "--starttls")
    assert rc == 1 and "STARTTLS is not offered (required by --starttls)" in out
    rc, out, _ = run_diag(cfg, "diag", "smtp", f"127.0.0.1:{srv.port}", "--auth", "bob",
                          input="hunter2\n")
    assert rc == 1
    assert "[warning] starttls: STARTTLS is not offered" in out
    assert "[PROBLEM] auth: not sending the password without TLS" in out
    assert not any(line.startswith("AUTH") for line in srv.lines)


def test_malformed_banner(tmp_path, dns, peer):
    def script(conn, p):
        conn.sendall(b"hello, I am not SMTP\r\n")
        time.sleep(1)
    srv = peer(script)
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp", f"127.0.0.1:{srv.port}")
    assert rc == 1 and "[PROBLEM] banner: malformed reply" in out
    assert "S: hello, I am not SMTP" in out


def test_connection_refused(tmp_path, dns):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                   # closed again: nothing listens
    rc, out, _ = run_diag(make_config(tmp_path, dns), "diag", "smtp", f"127.0.0.1:{port}")
    assert rc == 1
    assert f"127.0.0.1 port {port}: Connection refused" in out
    assert "could not connect to any address of 127.0.0.1" in out
    assert "port 25 seems blocked" not in out


def test_usage_errors(tmp_path, dns):
    cfg = make_config(tmp_path, dns)
    rc, _, err = run_diag(cfg, "diag", "smtp", "127.0.0.1:99999")
    assert rc == 2 and "invalid port" in err
    rc, _, err = run_diag(cfg, "diag", "smtp", "127.0.0.1:25", "--cafile", "/nonexistent")
    assert rc == 2 and "--cafile" in err
    rc, _, err = run_diag(cfg, "diag", "smtp", "127.0.0.1:25", "--auth", "bob", input="")
    assert rc == 2 and "no password" in err


# ---------------------------------------------------------------------- pure parts

def test_parse_target():
    assert diag.parse_target("Mail.Test.") == ("mail.test", None)
    assert diag.parse_target("mx.test:2525") == ("mx.test", 2525)
    assert diag.parse_target("[2001:db8::1]:25") == ("2001:db8::1", 25)
    assert diag.parse_target("2001:db8::1") == ("2001:db8::1", None)
    for bad in ("mx.test:0", "mx.test:x", "[::1", "a b", "[::1]x"):
        with pytest.raises(ValueError):
            diag.parse_target(bad)


def test_port25_heuristic():
    assert diag.port25_blocked(25, ["timeout", "timeout"], dns_answered=True)
    assert not diag.port25_blocked(25, ["timeout", "refused"], dns_answered=True)
    assert not diag.port25_blocked(25, ["timeout"], dns_answered=False)
    assert not diag.port25_blocked(587, ["timeout"], dns_answered=True)
    assert not diag.port25_blocked(25, [], dns_answered=True)


def test_name_matching_rfc6125():
    from cryptography import x509
    cert_pem, _ = make_self_signed("*.example.test")
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization",
                   fromlist=["Encoding"]).Encoding.DER)
    assert diag.name_matches("mx.example.test", der)
    assert not diag.name_matches("a.mx.example.test", der)   # one label only
    assert not diag.name_matches("example.test", der)
    assert diag.name_matches("localhost", der)
    assert diag.name_matches("127.0.0.1", der) and not diag.name_matches("127.0.0.2", der)
    info = diag.describe_certificate(der)
    assert info["self_signed"] and "DNS:*.example.test" in info["sans"]




def test_wired_main_diag_smtp(cfg, server, cert):
    out, err = io.StringIO(), io.StringIO()
    rc = main(["-c", str(cfg), "diag", "smtp", f"127.0.0.1:{server.port}", "--cafile", cert],
              stdout=out, stderr=err, stdin=io.StringIO())
    assert rc == 0, out.getvalue() + err.getvalue()
    assert "Summary: ok" in out.getvalue()
