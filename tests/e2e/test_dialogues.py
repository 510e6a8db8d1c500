"""Conformance dialogues of chasquid, OpenSMTPD and Apache James, replayed against Mailwright.

The scripts are read in place from ``../shared/conformance/smtp-dialogues/`` (never copied
into this repository). One server, configured like the scripts' own test setups (see
docs/conformance.md "Test configuration"), serves every dialogue; each script or
smtpscript test-case gets its own connection(s) to the listener the script names (MX,
"submission" with STARTTLS, or "submissions" with implicit TLS). Reply codes are compared,
not texts; documented differences live in ``dialogues.OVERRIDES``, suspected server bugs
in ``SUSPECTED_BUGS``.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from e2e import dialogues as dlg
from support import CONFORMANCE, MailServer

ROOT = dlg.dialogue_root(CONFORMANCE)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"

# The conformance data is part of the workplace (../shared/conformance): missing, it is a
# failure at collection, never a silent skip.
SCRIPTS = dlg.load_all(ROOT)


def test_the_conformance_dialogues_are_present():
    assert ROOT.is_dir(), f"{ROOT} not present"
    assert len(SCRIPTS) > 50, f"only {len(SCRIPTS)} dialogue scripts under {ROOT}"

#: Local domains and mailboxes the scripts send to (and expect to be accepted):
#: chasquid's test config (hostname "testserver", user@testserver), OpenSMTPD's regress
#: recipients, James MPT's bob@mydomain.tld. The OpenSMTPD regress server relayed for
#: localhost; Mailwright relays for nobody by default (and these tests stay on loopback),
#: so the remote-looking domains the scripts expect to be accepted are local here.
DOMAINS = ("testserver", "localhost", "a", "domain", "foo.bar", "mydomain.tld")
MAILBOXES = ("user@testserver", "test@localhost", "gilles@localhost", "root@localhost",
             "a@a", "user@domain", "test@foo.bar", "bob@mydomain.tld")

#: Limits of the scripts' own test setups: chasquid max_data_size_mb = 1; OpenSMTPD's
#: smtpd limits of the time (1000 recipients per message, 4 bad commands tolerated).
EXTRA_TOML = """
[limits]
max_message_size = 1048576
max_recipients = 1000
max_errors = 4

[delivery]
fsync = false
"""


#: Passwords the AUTH scripts send: chasquid's user@testserver / "secretpassword"
#: (auth_multi_dialog.cmy, AUTH PLAIN "user@testserver\0user@testserver\0secretpassword"),
#: James' bob@mydomain.tld / "secret" (starttls_session_fixation.test, AUTH LOGIN).
PASSWORDS = {"user@testserver": "secretpassword", "bob@mydomain.tld": "secret"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # submission=True: listeners "submission" (STARTTLS, chasquid's 1587) and
    # "submissions" (implicit TLS, chasquid's 1465) with the default [submission] settings.
    srv = MailServer(tmp_path_factory.mktemp("dialogues"), domains=DOMAINS,
                     hostname="testserver", extra_toml=EXTRA_TOML, submission=True)
    for box in MAILBOXES:
        if box in PASSWORDS:
            srv.cli("user", "add", box, "--password-stdin", input=PASSWORDS[box] + "\n")
        else:
            srv.cli("user", "add", box)
    srv.start()
    yield srv
    srv.stop()


def _ports(server: MailServer) -> dict[str, int]:
    return {"smtp": server.port, "submission": server.sub_port,
            "submissions": server.subs_port}


# ------------------------------------------------------------------ the dialogues

#: Differences that look like Mailwright bugs, not policy: reported, not overridden.
#: strict: once fixed, the XPASS fails and the entry must go.
SUSPECTED_BUGS: dict[str, tuple[set[int], str]] = {
}


def _param(script: dlg.Script):
    marks = [pytest.mark.timeout(300)] if len(script.steps) > 500 else []
    return pytest.param(script, id=script.name, marks=marks)


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_dialogue(server, script: dlg.Script):
    if script.skip:
        pytest.skip(script.skip)
    before = set(_delivered(server, "user@testserver")) if script.verify is not None else set()
    outcome = dlg.run_script(script, server.host, _ports(server))
    failed = bool(outcome.mismatches)
    if script.expect_fail:
        assert failed, f"{script.name}: marked 'expect fail' but every step matched"
        return
    report = (f"{script.name}: {len(outcome.mismatches)} mismatch(es):\n  "
              + "\n  ".join(outcome.mismatches)
              + "\ntranscript:\n  " + "\n  ".join(outcome.transcript[-40:]))
    if script.name in SUSPECTED_BUGS:
        lines, why = SUSPECTED_BUGS[script.name]
        assert failed, f"{script.name} passes now: remove it from SUSPECTED_BUGS"
        got = {int(m.group(1)) for x in outcome.mismatches
               if (m := re.match(rf"{re.escape(script.file)}:(\d+):", x))}
        assert got == lines and len(got) == len(outcome.mismatches), report
        pytest.xfail("suspected server bug: " + why)
    assert not failed, report
    if script.verify is not None:
        _check_delivered(server, before, script.verify)


def _delivered(server: MailServer, address: str) -> dict[str, bytes]:
    box = server.maildir(address)
    out = {}
    for sub in ("new", "cur"):
        d = box / sub
        if d.is_dir():
            for f in d.iterdir():
                out[f"{sub}/{f.name}"] = f.read_bytes()
    return out


def _check_delivered(server: MailServer, before: set[str], verify: bytes) -> None:
    deadline = time.monotonic() + 20
    while True:
        new = {k: v for k, v in _delivered(server, "user@testserver").items() if k not in before}
        if new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(new) == 1, f"expected one new message in user@testserver, found {len(new)}"
    body = dlg.strip_trace_headers(next(iter(new.values())))
    assert dlg.normalize_body(body) == dlg.normalize_body(verify)


# ------------------------------------------------------------------ the override table

def test_overrides_are_documented():
    text = DOCS.read_text(encoding="utf-8")
    assert dlg.render_overrides_markdown() in text, \
        "docs/conformance.md is out of step: paste `python tests/e2e/dialogues.py` output"
    for policy in {ov.policy for ov in dlg.OVERRIDES.values()}:
        assert f'<a id="{policy}"></a>' in text, f"policy {policy} has no section in the docs"


def test_overrides_point_at_expectations():
    by_key = {}
    for s in SCRIPTS:
        for step in s.steps:
            if step.kind == "expect":
                by_key[(s.file, step.line)] = step
    for key, ov in dlg.OVERRIDES.items():
        assert key in by_key, f"override {key} names no expectation of a script"
        assert ov.policy in dlg.POLICIES, f"override {key}: unknown policy {ov.policy}"
        for code in dlg._codes(ov.ours):
            assert not by_key[key].expect.matches(code), f"override {key} is not a difference"


# ------------------------------------------------------------------ parser unit tests

def _by_name(name: str) -> dlg.Script:
    return next(s for s in SCRIPTS if s.name == name)


def test_corpus_counts():
    per_file: dict[str, int] = {}
    for s in SCRIPTS:
        per_file[s.basename if s.case is None else s.file.rsplit("/", 1)[-1]] = \
            per_file.get(s.basename if s.case is None else s.file.rsplit("/", 1)[-1], 0) + 1
    smtpscript = {k: v for k, v in per_file.items() if k.startswith("test.")}
    assert smtpscript == {"test.mailfrom": 15, "test.rcptto": 15, "test.smtp0": 9,
                          "test.smtp1": 9, "test.smtp2": 3, "test.smtp4": 17, "test.tls": 1}
    assert sum(smtpscript.values()) == 69        # the README's count
    assert sum(1 for s in SCRIPTS if s.file.startswith(dlg.CHASQUID)) == 18
    assert sum(1 for s in SCRIPTS if s.file.startswith(dlg.JAMES)) == 3


def test_smtpscript_source_file_counts_match_raw_text():
    for path in sorted((ROOT / dlg.OPENSMTPD).glob("test.*")):
        raw = len(re.findall(r"^test-case\b", path.read_text(), re.M))
        parsed = sum(1 for s in SCRIPTS if s.file.endswith("/" + path.name))
        assert parsed == raw, path.name


def test_smtpscript_structure():
    # proc init-helo expanded; autoconnect first; names kept.
    s = _by_name("test.mailfrom#01-mailfrom.at-sign")
    kinds = [(st.kind, str(st.expect) if st.expect else st.data) for st in s.steps]
    assert kinds == [("connect", b""), ("expect", "ok (2xx/3xx)"), ("send", b"HELO regress\r\n"),
                     ("expect", "helo (2xx/3xx, multi-line)"), ("send", b"MAIL FROM: <@>\r\n"),
                     ("expect", "ok (2xx/3xx)")]
    # a newline inside a quoted string is dropped, as parse.y does
    s = _by_name("test.smtp0#07")
    assert dlg.Step("send", 61, data=b"RCPT TO: <gilles@localhost>\r\n") in s.steps
    # repeat N { ... } and repeat N statement
    s = _by_name("test.smtp2#01")
    rcpts = [st for st in s.steps if st.data == b"RCPT TO: <test@localhost>\r\n"]
    assert len(rcpts) == 1001
    assert s.steps[-1].expect is dlg.TEMPFAIL
    s = _by_name("test.smtp2#00")
    assert [st.kind for st in s.steps][-2:] == ["send", "expect_disconnect"]
    s = _by_name("test.smtp0#08")
    assert [str(st.expect) for st in s.steps if st.kind == "expect"][2:5] == ["ok (2xx/3xx)"] * 3


def test_smtpscript_classes():
    assert dlg.OK.matches(250) and dlg.OK.matches(354) and not dlg.OK.matches(550)
    assert dlg.PERMFAIL.matches(555) and not dlg.PERMFAIL.matches(452)
    assert dlg.TEMPFAIL.matches(421) and not dlg.TEMPFAIL.matches(250)
    assert dlg.ANY.matches(220)


def test_smtpscript_lexer_rules():
    toks = dlg.tokenize_smtpscript('test-case name "a\\"b" {\n\twriteln "x\\y"\n}\n')
    assert [(t.kind, t.value) for t in toks] == [
        ("word", "test-case"), ("word", "name"), ("string", 'a"b'), ("{", "{"), ("nl", "\n"),
        ("word", "writeln"), ("string", "x\\y"), ("nl", "\n"), ("}", "}"), ("nl", "\n")]
    with pytest.raises(dlg.ScriptError):
        dlg.parse_smtpscript("test-case {\n\tcall nowhere\n}\n", "x")
    with pytest.raises(dlg.ScriptError):
        dlg.parse_smtpscript('test-case {\n\twriteln "unterminated\n}\n', "x")


def test_cmy_structure():
    s = _by_name("bad_data_dot_on_message_too_big.cmy")
    sends = [st for st in s.steps if st.kind == "send"]
    assert len(sends[6].data) == 901 * 1165           # ('a' * 899 + '\r\n') * 1165
    assert sends[7].data == b"b" * 55 + b"\r\n"
    assert sends[8].data == b".\n"
    assert [str(st.expect) for st in s.steps if st.kind == "expect"] == \
        ["220", "250", "250", "250", "354", "521"]
    s = _by_name("data_dot_stuffing.cmy")
    assert dlg.Step("send", 21, data=b"\r\n") in s.steps       # "c ->" with no text
    assert s.verify is not None and s.verify.startswith(b"From: Mailer daemon")
    s = _by_name("wrong_proto.cmy")
    assert [st.kind for st in s.steps].count("connect") == 3
    for name in ("auth_multi_dialog.cmy", "auth_too_many_failures.cmy"):
        s = _by_name(name)
        assert s.skip is None
        assert {st.port for st in s.steps if st.kind == "connect"} == {"submissions"}
    assert [st.port for st in _by_name("auth_multi_dialog.cmy").steps
            if st.kind == "connect"] == ["submissions"] * 2
    s = _by_name("auth_not_tls.cmy")
    assert s.skip is None and s.steps[0].port == "smtp"
    s = dlg.parse_cmy("c tcp_connect localhost:1587\nc <~ 220\n", "p.cmy")
    assert s.skip is None and s.steps[0].port == "submission"
    s = dlg.parse_cmy("c tls_connect localhost:1025\nc <~ 220\n", "q.cmy")
    assert s.skip and "no Mailwright listener" in s.skip
    assert all(s.skip is None for s in SCRIPTS)


def test_safe_eval():
    assert dlg.safe_eval("'.\\n'") == ".\n"
    assert dlg.safe_eval("('ab' + '\\r\\n') * 3") == "ab\r\nab\r\nab\r\n"
    assert dlg.safe_eval("2 * 'x' + 'y'") == "xxy"
    for bad in ("__import__('os')", "'a'.upper()", "x", "'a' - 'b'", "'a' * 'b'",
                "'a' * 10**9", "[1]", "1 + 2"):
        with pytest.raises(dlg.ScriptError):
            dlg.safe_eval(bad)


def test_mpt_structure():
    s = _by_name("data_with_starttls.test")
    expects = [(st.line, st.expect.code) for st in s.steps if st.kind == "expect"]
    # 250.* + 250-... + 250 STARTTLS is ONE reply (the EHLO), then MAIL, RCPT, DATA, end.
    assert expects == [(1, 220), (6, 250), (12, 250), (13, 250), (14, 354), (19, 250)]
    assert s.steps[0] == dlg.Step("connect", 1, port="smtp")
    s = _by_name("starttls_with_injection.test")
    sends = [st.data for st in s.steps if st.kind == "send"]
    assert sends[1] == b"starttls\r\nmail from:<matthieu@yopmail.com>\r\n"
    s = _by_name("starttls_session_fixation.test")
    assert s.steps[0] == dlg.Step("connect", 1, port="submission")
    assert s.skip is None


def test_strip_trace_headers():
    msg = (b"Return-Path: <>\r\nDelivered-To: user@testserver\r\nReceived: from x\r\n"
           b"\tby y; date\r\nFrom: a\r\nReceived: kept\r\n\r\nbody\r\n")
    assert dlg.strip_trace_headers(msg) == b"From: a\nReceived: kept\n\nbody\n"


# ------------------------------------------------------------------ runner unit tests

class _FakeServer:
    """A loopback server that answers each received line from a fixed list of replies
    (several replies per line allowed) — to test the runner's judgement, not Mailwright."""

    def __init__(self, greeting: bytes, answers: dict[bytes, bytes]) -> None:
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.greeting, self.answers = greeting, answers
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.greeting)
                buf = b""
                while True:
                    try:
                        chunk = conn.recv(4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    buf += chunk
                    while b"\r\n" in buf:
                        line, _, buf = buf.partition(b"\r\n")
                        if line == b"QUIT":
                            conn.sendall(b"221 bye\r\n")
                            break
                        conn.sendall(self.answers.get(line, b"500 what\r\n"))
                    else:
                        continue
                    break

    def close(self) -> None:
        self.sock.close()


def _fake(answers: dict[bytes, bytes]) -> _FakeServer:
    return _FakeServer(b"220 fake\r\n", {b"NOOP": b"250 ok\r\n", b"HELP": b"214 help\r\n",
                                           **answers})


def test_runner_judges_codes_and_overrides():
    fake = _fake({b"EHLO x": b"250-fake\r\n250 PIPELINING\r\n", b"MAIL FROM:<>": b"550 no\r\n"})
    try:
        script = dlg.parse_cmy("c tcp_connect localhost:1025\nc <~ 220\nc -> EHLO x\n"
                               "c <... 250 PIPELINING\nc -> MAIL FROM:<>\nc <~ 250\n", "f.cmy")
        out = dlg.run_script(script, "127.0.0.1", fake.port, overrides={})
        assert len(out.mismatches) == 1 and "expected 250, got 550" in out.mismatches[0]
        ov = {("f.cmy", 6): dlg.Override("250", 550, "syntax-501", "MAIL")}
        out = dlg.run_script(script, "127.0.0.1", fake.port, overrides=ov)
        assert out.ok and out.overridden
        ov = {("f.cmy", 6): dlg.Override("250", 551, "syntax-501", "MAIL")}
        out = dlg.run_script(script, "127.0.0.1", fake.port, overrides=ov)
        assert "override expects our 551" in out.mismatches[0]
        ov = {("f.cmy", 4): dlg.Override("250", 500, "syntax-501", "EHLO")}
        out = dlg.run_script(script, "127.0.0.1", fake.port, overrides=ov)
        assert any("stale override" in m for m in out.mismatches)
    finally:
        fake.close()


def test_runner_sync_check_catches_unexpected_replies():
    # The "server" answers one line with two replies: the second is one no step expected.
    fake = _fake({b"HELO x": b"250 hi\r\n250 smuggled\r\n"})
    try:
        script = dlg.parse_cmy("c tcp_connect localhost:1025\nc <~ 220\nc -> HELO x\n"
                               "c <~ 250\n", "g.cmy")
        out = dlg.run_script(script, "127.0.0.1", fake.port, overrides={})
        assert any("end of script" in m for m in out.mismatches)
    finally:
        fake.close()


def test_runner_expect_disconnect():
    fake = _fake({})
    try:
        [case] = dlg.parse_smtpscript('test-case {\n\texpect smtp ok\n\twriteln "QUIT"\n'
                                      '\texpect smtp ok\n\texpect disconnect\n}\n', "h")
        assert dlg.run_script(case, "127.0.0.1", fake.port, overrides={}).ok
        [case] = dlg.parse_smtpscript('test-case {\n\texpect smtp ok\n\twriteln "FOO"\n'
                                      '\texpect disconnect\n}\n', "h")
        out = dlg.run_script(case, "127.0.0.1", fake.port, overrides={}, timeout=2)
        assert not out.ok and "expected disconnect" in out.mismatches[0]
    finally:
        fake.close()
