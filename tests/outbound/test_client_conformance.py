"""Client conformance: our outbound agent against the fake-mail-server SMTP test cases.

Data (read in place): ../shared/conformance/starttls/fake-mail-server-smtp-testcases/**/*.ron
(Email-Analysis-Toolkit/fake-mail-server, MIT OR Apache-2.0: server-behaviour specs for
testing SMTP *clients*) and the ``client_cases`` of
smtp-security/starttls-injection-cases.yaml.

How: ``parse_ron`` reads the subset of RON those files use (named structs, lists, maps,
strings, booleans, enum variants with arguments, ``//`` comments).  ``FakeServer`` is a
loopback SMTP server that behaves as one spec says (greeting, capabilities before and after
TLS, override_response, hide_commands, stls_response / stls_make_transition,
ignore_commands_tls).  Each spec runs against the agent twice, with TLS policy
"opportunistic" (MX delivery) and "require", and the outcome must match ``expected()``:
* no MAIL ever leaves in plaintext under "require" (starttls-stripping);
* injected lines after the 220 to STARTTLS are never read as post-TLS replies
  (response-injection, Buffering/B_1 step 2, added as variants below);
* 4xx -> temporary, 5xx -> permanent, anything unexpected -> temporary (weird-greetings);
* never a crash or a hang (every run is bounded; every task gets one result).
"""
from __future__ import annotations

import asyncio
import logging
import re
import pytest
import yaml

from outbound.helpers import TLSFiles, agent, fast_settings, make_message, run, tasks_for
from support import CONFORMANCE

CASES_DIR = CONFORMANCE / "starttls" / "fake-mail-server-smtp-testcases"
INJECTION_YAML = CONFORMANCE / "smtp-security" / "starttls-injection-cases.yaml"


# ------------------------------------------------------------------ a RON subset parser

class Variant(tuple):
    """An enum variant with arguments: ``Auth([Plain])`` -> Variant(("Auth", [...]))."""

    @property
    def name(self) -> str:
        return self[0]

    @property
    def args(self) -> list:
        return self[1]


_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>-?\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{}:,])
""", re.X)

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "0": "\0"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"RON: unexpected {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def parse_ron(text: str):
    toks = _tokens(text)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else ("eof", "")

    def take(value=None):
        nonlocal pos
        tok = peek()
        if value is not None and tok[1] != value:
            raise ValueError(f"RON: expected {value!r}, got {tok[1]!r}")
        pos += 1
        return tok

    def seq(close):
        items = []
        while peek()[1] != close:
            items.append(value())
            if peek()[1] == ",":
                take(",")
        take(close)
        return items

    def struct_body():
        # "(" already taken: either named fields "k: v," or positional arguments
        if peek()[0] == "ident" and pos + 1 < len(toks) and toks[pos + 1][1] == ":":
            fields = {}
            while peek()[1] != ")":
                key = take()[1]
                take(":")
                fields[key] = value()
                if peek()[1] == ",":
                    take(",")
            take(")")
            return fields
        return seq(")")

    def value():
        kind, tok = take()
        if kind == "str":
            return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), tok[1:-1])
        if kind == "num":
            return int(tok)
        if tok == "[":
            return seq("]")
        if tok == "{":
            out = {}
            while peek()[1] != "}":
                k = value()
                take(":")
                out[k] = value()
                if peek()[1] == ",":
                    take(",")
            take("}")
            return out
        if tok == "(":
            return struct_body()
        if kind == "ident":
            if tok in ("true", "false"):
                return tok == "true"
            if peek()[1] == "(":
                take("(")
                body = struct_body()
                return body if isinstance(body, dict) else Variant((tok, body))
            return tok
        raise ValueError(f"RON: unexpected token {tok!r}")

    result = value()
    if peek()[0] != "eof":
        raise ValueError("RON: trailing data")
    return result


def test_ron_parser():
    spec = parse_ron('''( // comment
        capabilities: [StartTLS, Auth([Plain, Other("X-1")])],
        override_response: { "ehlo": "500 no\\r\\n", },
        cert: Cert(crt_path: "a", key_path: ""), implicit_tls: false, n: 3,
    )''')
    assert spec["capabilities"][0] == "StartTLS"
    auth = spec["capabilities"][1]
    assert auth.name == "Auth" and auth.args[0][0] == "Plain"
    assert auth.args[0][1].name == "Other" and auth.args[0][1].args == ["X-1"]
    assert spec["override_response"] == {"ehlo": "500 no\r\n"}
    assert spec["cert"] == {"crt_path": "a", "key_path": ""} and spec["implicit_tls"] is False


# ------------------------------------------------------------------ the fake server

def capability_lines(caps: list) -> list[str]:
    out = []
    for cap in caps:
        if cap == "StartTLS":
            out.append("STARTTLS")
        elif isinstance(cap, Variant) and cap.name == "Auth":
            mechs = [m.args[0] if isinstance(m, Variant) else str(m).upper()
                     for m in cap.args[0]]
            out.append("AUTH " + " ".join(mechs) if mechs else "AUTH")
        elif isinstance(cap, str):
            out.append(cap.upper())
    return out


class FakeServer:
    """Behaves as one fake-mail-server spec says; records (tls?, command) pairs."""

    def __init__(self, spec: dict, tls_ctx) -> None:
        self.spec = spec
        self.tls_ctx = tls_ctx
        self.overrides = {k.lower(): v for k, v in spec.get("override_response", {}).items()}
        self.hidden = {c.lower() for c in spec.get("hide_commands", [])}
        self.ignored_tls = {c.lower() for c in spec.get("ignore_commands_tls", [])}
        self.log: list[tuple[bool, str]] = []
        self.messages: list[tuple[bool, bytes]] = []
        self.port = 0
        self._server = None
        self._tasks: set = set()

    async def start(self) -> "FakeServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _session(self, reader, writer) -> None:
        spec = self.spec
        tls = False

        async def send(raw: str) -> None:
            writer.write(raw.encode())
            await writer.drain()

        await send(spec.get("greeting", "220 example.org ESMTP fake\r\n"))
        while True:
            line = await reader.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = text.split(" ", 1)[0].lower()
            self.log.append((tls, verb))
            if tls and verb in self.ignored_tls:
                continue
            if verb in self.hidden:
                await send("500 Syntax error, command unrecognized\r\n")
                continue
            if verb == "starttls":
                reply = spec.get("stls_response") or self.overrides.get(
                    "starttls", "220 Ready to start TLS\r\n")
                await send(reply)
                if reply.startswith("220") and spec.get("stls_make_transition", True) \
                        and not tls:
                    await writer.start_tls(self.tls_ctx)
                    tls = True
                continue
            if verb in self.overrides:
                await send(self.overrides[verb])
                if verb == "quit":
                    return
                continue
            if verb == "ehlo":
                caps = capability_lines(spec.get("capabilities_tls" if tls else "capabilities",
                                                 []))
                lines = ["example.org", *caps]
                await send("".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n")
            elif verb == "helo":
                await send("250 example.org\r\n")
            elif verb in ("mail", "rcpt", "rset", "noop"):
                await send("250 OK\r\n")
            elif verb == "data":
                await send("354 Start mail input; end with <CRLF>.<CRLF>\r\n")
                body = await reader.readuntil(b"\r\n.\r\n")
                self.messages.append((tls, body))
                await send("250 OK\r\n")
            elif verb == "quit":
                await send("221 Bye\r\n")
                return
            else:
                await send("500 Syntax error, command unrecognized\r\n")


# ------------------------------------------------------------------ expectations

def _code(reply: str) -> int:
    return int(reply[:3])


def expected(spec: dict, policy: str) -> str:
    """"tls" / "plain" (delivered), "temp" or "perm" — from the spec, per RFC 5321 §4.2.1
    (4xx temporary, 5xx permanent, anything unexpected temporary), RFC 3207 and the
    policy (no plaintext under "require")."""
    g = _code(spec.get("greeting", "220"))
    if g != 220:
        return "perm" if 500 <= g < 600 else "temp"
    ov = {k.lower(): v for k, v in spec.get("override_response", {}).items()}
    hidden = {c.lower() for c in spec.get("hide_commands", [])}
    ehlo = 500 if "ehlo" in hidden else _code(ov.get("ehlo", "250"))
    esmtp = True
    if ehlo != 250:
        if not 500 <= ehlo < 600:
            return "temp"
        helo = 500 if "helo" in hidden else _code(ov.get("helo", "250"))
        if helo != 250:
            return "perm" if 500 <= helo < 600 else "temp"
        esmtp = False
    offered = esmtp and "StartTLS" in spec.get("capabilities", [])
    if not offered:
        return "temp" if policy == "require" else "plain"
    if "starttls" in hidden:
        st = 500
    else:
        st = _code(spec.get("stls_response") or ov.get("starttls", "220"))
    if st == 220:
        if not spec.get("stls_make_transition", True):
            return "temp" if policy == "require" else "plain"   # handshake fails; retry
        if "ehlo" in {c.lower() for c in spec.get("ignore_commands_tls", [])}:
            return "temp"                                       # no EHLO reply: timeout
        return "tls"
    if 400 <= st < 600 and st != 421:
        return "temp" if policy == "require" else "plain"
    return "temp"


def load_cases() -> list[tuple[str, dict]]:
    cases = []
    for path in sorted(CASES_DIR.rglob("*.ron")):
        spec = parse_ron(path.read_text())
        cases.append((str(path.relative_to(CASES_DIR)), spec))
    b1 = dict(parse_ron((CASES_DIR / "Buffering" / "B_1.ron").read_text()))
    injection = "220 Ready to start TLS\r\n250-example.org\r\n250 AUTH LOGIN\r\n"
    cases.append(("Buffering/B_1.ron#step2-injection", {**b1, "stls_response": injection}))
    cases.append(("Buffering/B_1.ron#step1+2-injection-ehlo-ignored",
                  {**b1, "stls_response": injection, "ignore_commands_tls": ["ehlo"]}))
    return cases


CASES = load_cases()


def test_all_specs_loaded():
    assert len([c for c in CASES if "#" not in c[0]]) == 59
    data = yaml.safe_load(INJECTION_YAML.read_text())
    assert {c["id"] for c in data["client_cases"]} == {
        "response-injection", "starttls-stripping", "weird-greetings"}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return TLSFiles(tmp_path_factory.mktemp("tls"), "example.org")


@pytest.mark.parametrize("policy", ["opportunistic", "require"])
@pytest.mark.parametrize("name, spec", CASES, ids=[c[0] for c in CASES])
def test_client_against_fake_server(tmp_path, tls_files, name, spec, policy, caplog):
    caplog.set_level(logging.INFO, logger="mailwright.outbound")
    msg, path = make_message(tmp_path, ("user@remote.test",))

    async def main():
        server = await FakeServer(spec, tls_files.server_context()).start()
        settings = fast_settings(25, command_timeout=1.5, routes=[{
            "domain": "remote.test", "next_hop": f"[127.0.0.1]:{server.port}",
            "tls": policy}])
        a = agent(settings)
        try:
            return await asyncio.wait_for(a.deliver(msg, path, tasks_for(msg)), 15), server
        finally:
            await a.close()
            await server.stop()

    results, server = run(main(), timeout=20)
    assert len(results) == 1                                  # never a crash
    [r] = results
    outcome = ("tls" if server.messages and server.messages[-1][0] else "plain") if r.ok \
        else ("perm" if r.permanent else "temp")
    want = expected(spec, policy)
    assert outcome == want, f"{name} [{policy}]: got {outcome} ({r.reply}), want {want}"
    if policy == "require":                                   # starttls-stripping
        assert not any(v in ("mail", "rcpt", "data") for tls, v in server.log if not tls)
        assert not any(not tls for tls, _ in server.messages)
    if r.ok:
        assert r.reply.startswith("250") and len(server.messages) == 1
        if outcome == "tls":
            assert "TLSv1" in r.reply
            # RFC 3207 §4.2: a fresh EHLO inside TLS before MAIL (response injection)
            tls_verbs = [v for tls, v in server.log if tls]
            assert tls_verbs[:2] == ["ehlo", "mail"]
        elif policy == "opportunistic" and want == "plain" and "StartTLS" in spec.get(
                "capabilities", []):
            assert any("TLS" in rec.getMessage() for rec in caplog.records)  # logged
    if "injection" in name:
        assert not r.ok or outcome == "tls"


RSET_CASES = [c for c in CASES if c[0].startswith("others/rset/")]


@pytest.mark.parametrize("name, spec", RSET_CASES, ids=[c[0] for c in RSET_CASES])
def test_pooled_connection_with_odd_rset_reply_is_replaced(tmp_path, tls_files, name, spec):
    """The second message reuses the pooled connection, whose RSET gets the spec's odd
    reply: the session is dropped and a new one delivers (no crash, no hang, no loss)."""
    m1, p1 = make_message(tmp_path, ("user@remote.test",), queue_id="R1")
    m2, p2 = make_message(tmp_path, ("user@remote.test",), queue_id="R2")

    async def main():
        server = await FakeServer(spec, tls_files.server_context()).start()
        settings = fast_settings(25, command_timeout=1.5, routes=[{
            "domain": "remote.test", "next_hop": f"[127.0.0.1]:{server.port}"}])
        a = agent(settings)
        try:
            [r1] = await a.deliver(m1, p1, tasks_for(m1))
            [r2] = await a.deliver(m2, p2, tasks_for(m2))
            return r1, r2, server, a.pool
        finally:
            await a.close()
            await server.stop()

    r1, r2, server, pool = run(main(), timeout=20)
    assert r1.ok and r2.ok, (r1, r2)
    assert len(server.messages) == 2 and ("rset" in [v for _, v in server.log])
    assert pool.opened == 2 and pool.reused == 0
