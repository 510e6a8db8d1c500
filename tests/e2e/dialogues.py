"""Conformance dialogues: parsers and a runner for three SMTP transcript formats.

What: the SMTP dialogue scripts of three other servers, read in place from
``../shared/conformance/smtp-dialogues/`` (GUIDE idea 14, "External test material"), turned
into one neutral form (``Script`` = a list of ``Step``) and replayed against a running
Mailwright server over loopback:

* chasquid chamuyero ``*.cmy`` (``c -> text``, ``c ~> 'python expr'``, ``c <- CODE text``,
  ``c <~ regex``, ``c <... text``, ``c tcp_connect``/``tls_connect``/``close``) with optional
  ``*.cmy.verify`` files holding the body expected in the mailbox; chasquid's ports map to
  Mailwright's listeners (1025 MX, 1587 "submission", ``tls_connect`` 1465 "submissions"
  with implicit TLS);
* OpenSMTPD ``smtpscript`` (``proc``/``test-case`` blocks, ``writeln``, ``expect smtp
  [ok|helo|tempfail|permfail]``, ``expect disconnect``, ``repeat``, ``call``, ``starttls``),
  with the lexing rules of OpenSMTPD's ``regress/bin/parse.y``: a newline inside a quoted
  string is dropped, a backslash only escapes the quote character (no C escapes), and each
  test-case runs on a fresh connection;
* Apache James MPT ``*.test`` (``S: regex`` expects a reply line, ``C: text`` sends a line;
  a ``\\r\\n`` escape inside ``C:`` sends the decoded segment as-is); a script runs against
  the MX listener unless ``MPT_LISTENERS`` names another (a script that authenticates).

How: reply CODES are compared, never texts: an exact code where the script names one, the
class where it only says ok (2xx/3xx, as smtpscript defines it), permfail (5xx) or tempfail
(4xx). A step whose code differs fails the test unless ``OVERRIDES`` lists it; an override
names Mailwright's code, which is then asserted instead, and a documented policy
(``POLICIES``) that justifies it. ``docs/conformance.md`` carries the same table
(``render_overrides_markdown()``; a test keeps the two in step).

Invariants:
* Scripts are data: nothing in them is executed. The chasquid ``~>`` argument is evaluated by
  ``safe_eval`` (string/int literals, ``+``, ``*``, parentheses; result size capped).
* An override must be needed: if Mailwright gives the script's own answer, the stale override
  fails the test, so the table never lists differences that no longer exist.
* After the last step of a script the runner sends HELP and NOOP and requires their own
  214 and 250 (or the connection closed): a reply the script did not expect, e.g. from a
  command smuggled inside DATA, fails the test.
"""
from __future__ import annotations

import ast
import codecs
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

DIALOGUES_DIR = "smtp-dialogues"
CHASQUID = "chasquid-cmy"
OPENSMTPD = "opensmtpd-smtpscript"
JAMES = "james-mpt-smtp"


class ScriptError(ValueError):
    """A script that this parser cannot read (names the file and line)."""


# ================================================================== neutral form

@dataclass(frozen=True)
class Expect:
    """What a script expects of one reply: an exact code, or a set of classes ("2", "5")."""
    code: int | None = None
    classes: frozenset[str] = frozenset()
    label: str = ""          # as the script says it: "250", "ok", "permfail", ...
    multiline: bool = True   # smtpscript "ok"/"tempfail"/"permfail": single-line (not enforced)

    def matches(self, code: int) -> bool:
        if self.code is not None:
            return code == self.code
        if self.classes:
            return str(code)[0] in self.classes
        return True

    def __str__(self) -> str:
        return self.label or (str(self.code) if self.code is not None else
                              "/".join(f"{c}xx" for c in sorted(self.classes)) or "any")


ANY = Expect(label="any")
OK = Expect(classes=frozenset("23"), label="ok (2xx/3xx)", multiline=False)
HELO = Expect(classes=frozenset("23"), label="helo (2xx/3xx, multi-line)")
TEMPFAIL = Expect(classes=frozenset("4"), label="tempfail (4xx)", multiline=False)
PERMFAIL = Expect(classes=frozenset("5"), label="permfail (5xx)", multiline=False)


def exact(code: int) -> Expect:
    return Expect(code=code, label=str(code))


@dataclass(frozen=True)
class Step:
    """One action. ``line`` is the 1-based line of the script that produced it."""
    kind: str   # connect close send expect expect_disconnect expect_silence starttls sleep
    line: int
    data: bytes = b""         # send
    expect: Expect | None = None
    seconds: float = 0.0      # sleep
    port: str = "smtp"        # connect: "smtp" (our MX listener) or what the script named

    def __repr__(self) -> str:  # compact, for assertion messages
        extra = {"send": lambda: _show(self.data), "expect": lambda: str(self.expect),
                 "connect": lambda: self.port, "sleep": lambda: str(self.seconds)}
        return f"{self.kind}@{self.line}({extra.get(self.kind, lambda: '')()})"


@dataclass
class Script:
    """One runnable dialogue: a whole .cmy/.test file, or one smtpscript test-case."""
    file: str                 # path relative to smtp-dialogues/, e.g. "chasquid-cmy/helo.cmy"
    name: str                 # test id
    steps: list[Step]
    skip: str | None = None   # reason, if this script cannot run against Mailwright (yet)
    expect_fail: bool = False  # smtpscript "expect fail"
    verify: bytes | None = None   # chasquid .cmy.verify: body expected in the mailbox
    case: int | None = None   # smtpscript test-case index (0-based) within the file

    @property
    def basename(self) -> str:
        return self.file.rsplit("/", 1)[-1]


def _show(data: bytes, limit: int = 60) -> str:
    text = repr(data)[2:-1]
    return text if len(text) <= limit else f"{text[:limit]}...[{len(data)} octets]"


def _code_prefix(text: str) -> Expect:
    """The expectation carried by a reply pattern: its leading 3-digit code, if any."""
    m = re.match(r"\s*([2-5][0-9][0-9])(?![0-9])", text)
    return exact(int(m.group(1))) if m else ANY


# ================================================================== chasquid .cmy

MAX_EVAL_OCTETS = 16 * 1024 * 1024


def safe_eval(expr: str) -> str:
    """Evaluate a chamuyero ``~>`` argument: str/int literals, ``+``, ``*`` and parentheses
    only (``('a' * 899 + '\\r\\n') * 1166``). Anything else raises ``ScriptError``."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ScriptError(f"not an expression: {expr!r}") from exc

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (str, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                if type(left) is not type(right):
                    raise ScriptError(f"cannot add {type(left).__name__} and "
                                      f"{type(right).__name__} in {expr!r}")
                result = left + right
            else:
                if isinstance(left, int) and isinstance(right, int):
                    result = left * right
                elif isinstance(left, str) and isinstance(right, int) or \
                        isinstance(left, int) and isinstance(right, str):
                    text, count = (left, right) if isinstance(left, str) else (right, left)
                    if len(text) * max(count, 0) > MAX_EVAL_OCTETS:
                        raise ScriptError(f"expression too large: {expr!r}")
                    result = text * count
                else:
                    raise ScriptError(f"cannot multiply two strings in {expr!r}")
            if isinstance(result, str) and len(result) > MAX_EVAL_OCTETS:
                raise ScriptError(f"expression too large: {expr!r}")
            return result
        raise ScriptError(f"unsupported syntax {type(node).__name__} in {expr!r}")

    value = ev(tree)
    if not isinstance(value, str):
        raise ScriptError(f"expression is not a string: {expr!r}")
    return value


# Ports of chasquid's test configuration (t-12-chasquid.conf) -> Mailwright listener roles:
# smtp_address ":1025" is the MX listener, submission_address ":1587" the STARTTLS
# submission listener, submission_over_tls_address ":1465" the implicit-TLS one (RFC 8314).
_CHASQUID_PORTS = {"1025": "smtp", "1587": "submission", "1465": "submissions"}

#: Listener roles the runner can connect to. "submissions" is implicit TLS: the TLS
#: handshake comes first, then the greeting (RFC 8314 §3.3).
LISTENERS = ("smtp", "submission", "submissions")


def parse_cmy(text: str, file: str, verify: bytes | None = None) -> Script:
    steps: list[Step] = []
    skip: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^(\S+) (\S+)(?: (.*))?$", line)
        if not m:
            raise ScriptError(f"{file}:{n}: cannot parse {line!r}")
        _client, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if op in ("tcp_connect", "tls_connect"):
            port = _CHASQUID_PORTS.get(arg.rsplit(":", 1)[-1])
            # tcp_connect needs a plaintext listener, tls_connect the implicit-TLS one.
            fits = port in ("smtp", "submission") if op == "tcp_connect" \
                else port == "submissions"
            if not fits and skip is None:
                skip = f"{op} {arg}: no Mailwright listener matches that port of chasquid's"
            steps.append(Step("connect", n, port=port if fits else arg))
        elif op == "close":
            steps.append(Step("close", n))
        elif op == "->":
            steps.append(Step("send", n, data=arg.encode("utf-8") + b"\r\n"))
        elif op == "~>":
            steps.append(Step("send", n, data=safe_eval(arg).encode("utf-8")))
        elif op in ("<-", "<~", "<..."):
            steps.append(Step("expect", n, expect=_code_prefix(arg)))
        else:
            raise ScriptError(f"{file}:{n}: unknown chamuyero operation {op!r}")
    return Script(file=file, name=file.rsplit("/", 1)[-1], steps=steps, skip=skip, verify=verify)


# ================================================================== OpenSMTPD smtpscript

@dataclass(frozen=True)
class _Tok:
    kind: str    # word | string | number | nl | { | }
    value: str
    line: int


_WORD_START = re.compile(r"[A-Za-z0-9:_]")


def _word_char(c: str) -> bool:
    # parse.y allowed_in_string(): alnum, or punctuation other than ( ) { } < > ! = # ,
    return c.isalnum() or (c in "\"$%&'*+-./:;?@[\\]^_`|~")


def tokenize_smtpscript(text: str, file: str = "<script>") -> list[_Tok]:
    toks: list[_Tok] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r":
            i += 1
        elif c == "\\" and i + 1 < n and text[i + 1] == "\n":   # line continuation
            i += 2
            line += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "\n":
            toks.append(_Tok("nl", "\n", line))
            line += 1
            i += 1
        elif c in "{}":
            toks.append(_Tok(c, c, line))
            i += 1
        elif c in "\"'":
            quote, start_line, out = c, line, []
            i += 1
            while True:
                if i >= n:
                    raise ScriptError(f"{file}:{start_line}: unterminated string")
                c = text[i]
                if c == "\n":                 # dropped, as parse.y does
                    line += 1
                    i += 1
                    continue
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if nxt == quote:
                        out.append(quote)
                        i += 2
                        continue
                    if nxt == "\n":
                        line += 1
                        i += 2
                        continue
                    out.append("\\")          # any other backslash stays literal
                    i += 1
                    continue
                if c == quote:
                    i += 1
                    break
                out.append(c)
                i += 1
            toks.append(_Tok("string", "".join(out), start_line))
        elif c.isdigit() or c == "-" and i + 1 < n and text[i + 1].isdigit():
            j = i + 1
            while j < n and text[j].isdigit():
                j += 1
            if j >= n or text[j].isspace() or text[j] in "){},/=":
                toks.append(_Tok("number", text[i:j], line))
                i = j
            else:
                j = i
                while j < n and _word_char(text[j]):
                    j += 1
                toks.append(_Tok("word", text[i:j], line))
                i = j
        elif _WORD_START.match(c):
            j = i
            while j < n and _word_char(text[j]):
                j += 1
            toks.append(_Tok("word", text[i:j], line))
            i = j
        else:
            raise ScriptError(f"{file}:{line}: unexpected character {c!r}")
    return toks


@dataclass
class _Proc:
    name: str
    body: list           # list of statement nodes
    testcase: bool = False
    autoconnect: bool = True
    expect_fail: bool = False
    skip: bool = False
    line: int = 0


class _SmtpscriptParser:
    """Recursive descent over parse.y's grammar. Statement nodes are tuples:
    ("op", Step) | ("repeat", n, node) | ("call", name, line) | ("block", [nodes])
    | ("fail", reason, line)."""

    def __init__(self, toks: list[_Tok], file: str) -> None:
        self.toks, self.i, self.file = toks, 0, file
        self.procs: dict[str, _Proc] = {}
        self.order: list[_Proc] = []

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None or (kind and tok.kind != kind) or (value and tok.value != value):
            where = tok.line if tok else "EOF"
            raise ScriptError(f"{self.file}:{where}: expected {value or kind}, "
                              f"got {tok.value if tok else 'end of file'!r}")
        self.i += 1
        return tok

    def skip_nl(self) -> None:
        while (t := self.peek()) is not None and t.kind == "nl":
            self.i += 1

    def parse(self) -> list[_Proc]:
        while True:
            self.skip_nl()
            tok = self.peek()
            if tok is None:
                return self.order
            if tok.kind == "word" and tok.value == "proc":
                self.i += 1
                name = self.take().value
                proc = _Proc(name, [], line=tok.line)
                self._register(proc)
                proc.body = self.block()
            elif tok.kind == "word" and tok.value == "test-case":
                self.i += 1
                proc = _Proc(f"<{self.file}:{tok.line}>", [], testcase=True, line=tok.line)
                while (t := self.peek()) and t.kind == "word":
                    if t.value == "name":
                        self.i += 1
                        proc.name = self.take().value
                    elif t.value == "no-autoconnect":
                        self.i += 1
                        proc.autoconnect = False
                    elif t.value == "expect":
                        self.i += 1
                        self.take("word", "fail")
                        proc.expect_fail = True
                    elif t.value == "skip":
                        self.i += 1
                        proc.skip = True
                    else:
                        raise ScriptError(f"{self.file}:{t.line}: bad test-case option {t.value!r}")
                self._register(proc)
                proc.body = self.block()
            else:
                raise ScriptError(f"{self.file}:{tok.line}: expected proc or test-case, "
                                  f"got {tok.value!r}")

    def _register(self, proc: _Proc) -> None:
        if proc.name in self.procs:
            raise ScriptError(f"{self.file}:{proc.line}: procedure {proc.name!r} already exists")
        self.procs[proc.name] = proc
        self.order.append(proc)

    def block(self) -> list:
        self.take("{")
        body: list = []
        self.skip_nl()
        while (t := self.peek()) is not None and t.kind != "}":
            body.append(self.statement())
            t = self.peek()
            if t is not None and t.kind not in ("nl", "}"):
                raise ScriptError(f"{self.file}:{t.line}: expected end of line, got {t.value!r}")
            self.skip_nl()
        self.take("}")
        return body

    def statement(self):
        tok = self.peek()
        if tok is None:
            raise ScriptError(f"{self.file}: unexpected end of file")
        if tok.kind == "{":
            return ("block", self.block())
        word = self.take("word").value
        line = tok.line
        if word == "repeat":
            count = int(self.take("number").value)
            return ("repeat", count, self.statement())
        if word == "call":
            name = self.take().value
            if name not in self.procs:
                raise ScriptError(f"{self.file}:{line}: call to undefined proc {name!r}")
            return ("call", name, line)
        if word == "noop":
            return ("block", [])
        if word == "sleep":
            amount = int(self.take("number").value)
            unit = {"": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
            nxt = self.peek()
            mult = 0.001
            if nxt is not None and nxt.kind == "word" and nxt.value in unit:
                self.i += 1
                mult = unit[nxt.value]
            return ("op", Step("sleep", line, seconds=amount * mult))
        if word == "fail":
            return ("fail", self.take("string").value, line)
        if word == "connect":
            self.take()
            port = "smtp"
            if (t := self.peek()) is not None and t.kind == "word" and t.value == "port":
                self.i += 1
                port = self.take().value
            return ("op", Step("connect", line, port="smtp" if port in ("25", "smtp") else port))
        if word == "disconnect":
            return ("op", Step("close", line))
        if word == "starttls":
            return ("op", Step("starttls", line))
        if word in ("write", "writeln"):
            data = self.take("string").value.encode("utf-8")
            return ("op", Step("send", line, data=data + (b"\r\n" if word == "writeln" else b"")))
        if word == "expect":
            what = self.take("word").value
            if what == "disconnect":
                return ("op", Step("expect_disconnect", line))
            if what != "smtp":
                raise ScriptError(f"{self.file}:{line}: expect {what!r}?")
            nxt = self.peek()
            kinds = {"ok": OK, "helo": HELO, "tempfail": TEMPFAIL, "permfail": PERMFAIL}
            if nxt is not None and nxt.kind == "word" and nxt.value in kinds:
                self.i += 1
                return ("op", Step("expect", line, expect=kinds[nxt.value]))
            return ("op", Step("expect", line, expect=ANY))
        if word == "random":
            raise ScriptError(f"{self.file}:{line}: 'random' is not supported (non-deterministic)")
        raise ScriptError(f"{self.file}:{line}: unknown statement {word!r}")


def _expand(node, procs: dict[str, _Proc], out: list[Step], file: str, depth: int = 0) -> None:
    if depth > 50:
        raise ScriptError(f"{file}: procedures nested too deeply")
    tag = node[0]
    if tag == "op":
        out.append(node[1])
    elif tag == "block":
        for child in node[1]:
            _expand(child, procs, out, file, depth + 1)
    elif tag == "repeat":
        for _ in range(node[1]):
            _expand(node[2], procs, out, file, depth + 1)
    elif tag == "call":
        _expand(("block", procs[node[1]].body), procs, out, file, depth + 1)
    elif tag == "fail":
        raise ScriptError(f"{file}:{node[2]}: 'fail' statements are not supported")
    else:  # pragma: no cover - parser produces only the tags above
        raise ScriptError(f"{file}: bad node {tag!r}")


def parse_smtpscript(text: str, file: str) -> list[Script]:
    """One ``Script`` per test-case, in file order, each starting with its own connect."""
    parser = _SmtpscriptParser(tokenize_smtpscript(text, file), file)
    procs = parser.parse()
    scripts = []
    for proc in procs:
        if not proc.testcase:
            continue
        steps: list[Step] = []
        if proc.autoconnect:
            steps.append(Step("connect", proc.line))
        _expand(("block", proc.body), parser.procs, steps, file)
        idx = len(scripts)
        base = file.rsplit("/", 1)[-1]
        label = proc.name if not proc.name.startswith("<") else ""
        scripts.append(Script(file=file, name=f"{base}#{idx:02d}" + (f"-{label}" if label else ""),
                              steps=steps, case=idx, expect_fail=proc.expect_fail,
                              skip="marked skip in the script" if proc.skip else None))
    return scripts


# ================================================================== Apache James MPT

def _mpt_unescape(text: str) -> bytes:
    return codecs.decode(text.encode("utf-8"), "unicode_escape").encode("latin-1")


def parse_mpt(text: str, file: str) -> Script:
    """``S:`` lines are grouped into replies: a pattern ``NNN-...`` continues a reply, as
    does an open pattern such as ``250.*`` when the next ``S:`` line continues it; anything
    else ends it. Each grouped reply expects the code of its first pattern."""
    raw: list[tuple[str, int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([SC]):(?: ?(.*))?$", line)
        if not m:
            raise ScriptError(f"{file}:{n}: unsupported MPT line {line!r}")
        raw.append((m.group(1), n, m.group(2) or ""))
    steps: list[Step] = [Step("connect", 1, port=MPT_LISTENERS.get(file.rsplit("/", 1)[-1],
                                                                   "smtp"))]
    group_start: tuple[int, str] | None = None
    for k, (kind, n, arg) in enumerate(raw):
        if kind == "C":
            if group_start is not None:
                raise ScriptError(f"{file}:{n}: send inside an unfinished multi-line reply")
            if "\\r\\n" in arg:
                data = _mpt_unescape(arg)
                if not data.endswith(b"\r\n"):
                    data += b"\r\n"
            else:
                data = arg.encode("utf-8") + b"\r\n"
            steps.append(Step("send", n, data=data))
            continue
        continues = bool(re.match(r"^[2-5][0-9][0-9]-", arg))
        if not continues and not re.match(r"^[2-5][0-9][0-9]( |$)", arg):
            nxt = raw[k + 1] if k + 1 < len(raw) else None
            continues = nxt is not None and nxt[0] == "S" and \
                bool(re.match(rf"^{re.escape(arg[:3])}-", nxt[2]))
        if group_start is None:
            group_start = (n, arg)
        if not continues:
            steps.append(Step("expect", group_start[0], expect=_code_prefix(group_start[1])))
            group_start = None
    if group_start is not None:
        raise ScriptError(f"{file}: script ends inside a multi-line reply")
    return Script(file=file, name=file.rsplit("/", 1)[-1], steps=steps)


# ================================================================== loading the corpus

def load_all(root: Path) -> list[Script]:
    """Every script of the three folders under ``root`` (= conformance/smtp-dialogues)."""
    scripts: list[Script] = []
    for path in sorted((root / CHASQUID).glob("*.cmy")):
        verify = path.with_name(path.name + ".verify")
        scripts.append(parse_cmy(path.read_text(encoding="utf-8"), f"{CHASQUID}/{path.name}",
                                 verify.read_bytes() if verify.exists() else None))
    for path in sorted((root / OPENSMTPD).glob("test.*")):
        scripts.extend(parse_smtpscript(path.read_text(encoding="utf-8"),
                                        f"{OPENSMTPD}/{path.name}"))
    for path in sorted((root / JAMES).glob("*.test")):
        scripts.append(parse_mpt(path.read_text(encoding="utf-8"), f"{JAMES}/{path.name}"))
    return scripts


#: James MPT scripts that run against a listener other than the MX one. James' SMTP
#: server offers AUTH on its plaintext port (the script's EHLO lists "AUTH LOGIN PLAIN"
#: before STARTTLS); Mailwright offers AUTH only on submission listeners (RFC 6409), never
#: on the MX port, so a script that authenticates runs against the STARTTLS submission
#: listener (587), where AUTH needs TLS first (see POLICIES["auth-needs-tls"]).
MPT_LISTENERS: dict[str, str] = {
    "starttls_session_fixation.test": "submission",
}


# ================================================================== overrides

@dataclass(frozen=True)
class Override:
    theirs: str               # the script's expectation, as written
    ours: int | tuple[int, ...]   # Mailwright's reply code(s), asserted instead
    policy: str               # key into POLICIES
    command: str              # the step, for the documentation
    followup: tuple[Step, ...] = ()   # replaces the rest of the script (see POLICIES)


POLICIES: dict[str, str] = {
    "syntax-501": (
        "A recognised verb with a malformed argument (`MAIL LALA:`, `MAIL FROM:` with no "
        "path) gets 501, \"syntax error in parameters or arguments\"; 500 is kept for "
        "unrecognised commands and over-long lines (RFC 5321 §4.2.2, §4.3.2)."),
    "strict-path": (
        "MAIL/RCPT paths follow the RFC 5321 §4.1.2 grammar: `<@>` is not the null path "
        "(only `<>` is), and `whatever:` is not a source route (an A-d-l is `@domain` "
        "items, §4.1.2 and Appendix C). Both get 501 5.1.7 (MAIL) / 501 5.1.3 (RCPT). "
        "Real source routes (`<@a,@b:u@c>`) are accepted and stripped (§4.1.1.3)."),
    "params-need-ehlo": (
        "After HELO no service extension is in effect (RFC 5321 §2.2.1, §4.1.1.1), so "
        "MAIL parameters such as SIZE=, BODY=, AUTH= are unrecognised: 555 5.5.4 "
        "(RFC 5321 §4.1.1.11). After EHLO the same commands are accepted."),
    "auth-mx": (
        "AUTH is offered only on submission listeners (RFC 6409); the MX listener does not "
        "advertise it in EHLO and answers the command with 502 5.5.1 \"command not "
        "implemented\" (RFC 5321 §4.2.4), not chasquid's 503 5.7.10."),
    "non-ascii-needs-smtputf8": (
        "A non-ASCII address in a transaction that did not ask for SMTPUTF8 gets "
        "553 5.6.7 (RFC 6531 §3.5, RFC 6533 §3), whether or not such a mailbox exists; "
        "chasquid answers 550 5.1.3."),
    "http-as-unknown": (
        "HTTP request lines (`GET`, `POST`, `CONNECT`) are unknown SMTP commands: 500 5.5.2 "
        "(RFC 5321 §4.2.4), counted towards limits.max_errors like any other. chasquid's "
        "502 5.7.0 is its own choice; no RFC asks for it."),
    "content-not-judged": (
        "The body is not parsed at intake: a header block with a malformed line is "
        "accepted and delivered as received (RFC 5321 §2.3.1 and §6.4: an MTA transports "
        "the content; GUIDE idea 10: record defects, let policy decide). chasquid "
        "rejects it with 554 5.6.0."),
    "bare-lf-data": (
        "A bare LF (or CR) inside DATA makes the message be rejected with 554 5.5.2 when the "
        "real <CRLF>.<CRLF> arrives, and the session goes on (RFC 5321 §2.3.8, §4.1.1.4; "
        "SMTP smuggling defence). chasquid answers 521 and closes; 521 (RFC 7504) says the "
        "host accepts no mail at all, which is not the case. A message that is also over "
        "limits.max_message_size gets the same 554: bad octets take precedence over size, so "
        "the reply never depends on how the octets were segmented. In every case nothing after the bare LF is executed as a command: "
        "the runner's end-of-script check (HELP, NOOP) proves it."),
    "helo-syntax": (
        "The HELO/EHLO argument must be a domain or an address literal (RFC 5321 §4.1.1.1, "
        "§4.1.2); a 1000-octet label exceeds the 63-octet label limit (RFC 1035 §2.3.4) and "
        "gets 501 5.5.4. The line itself (1007 octets) is within limits.max_line_length "
        "(2048, documented; RFC 5321 §4.5.3.1.4 allows servers larger limits). chasquid "
        "answers 554 for its 1000-octet line limit."),
    "no-session-message-limit": (
        "Mailwright sets no limit on mail transactions per session (RFC 5321 sets none); "
        "abuse is bounded by limits.max_connections_per_ip, command_timeout and max_errors. "
        "OpenSMTPD's 100-messages limit (4xx on the 101st MAIL) has no equivalent."),
    "starttls-injection": (
        "Commands pipelined after STARTTLS in the same packet are discarded, never executed "
        "(RFC 3207 §4.2 and §6; CVE-2011-0411): the server answers 220 and performs the "
        "handshake, where James answers 451 and refuses TLS. The runner then checks our "
        "behaviour instead: no plaintext reply follows the 220, the TLS handshake succeeds, "
        "EHLO gets 250 and RCPT gets 503 (the injected MAIL FROM was not executed)."),
    "unknown-mechanism-504": (
        "AUTH with a SASL mechanism the server does not offer gets 504 5.5.4 (RFC 4954 §4: "
        "an invalid or unsupported mechanism is rejected with a 504 reply, enhanced code "
        "5.5.4). chasquid answers 534, which RFC 4954 §6 defines as \"authentication "
        "mechanism is too weak\" (5.7.9): not the case for a mechanism that does not exist."),
    "session-error-limit": (
        "The error replies a session may collect are set by limits.max_errors (default 10; "
        "4 in this test setup, OpenSMTPD's limit): the reply that reaches it is followed by "
        "421 and the close (RFC 5321 §3.8; no RFC fixes a number). chasquid closes at the 3rd "
        "error of any kind, so its third undecodable `AUTH PLAIN something` gets 421 where "
        "Mailwright answers 501 5.5.2 (RFC 4954 §4: a response that cannot be base64-decoded "
        "gets 501). Password guessing is bounded separately by "
        "submission.max_auth_failures_per_ip / _per_account and the growing failure delay; "
        "an undecodable response checks no password and is not counted there."),
    "auth-needs-tls": (
        "Mailwright never allows AUTH before TLS (submission.require_tls, default true; "
        "RFC 8314 §3 and RFC 4954 §4: no password mechanisms without TLS): on the STARTTLS "
        "submission listener EHLO does not list AUTH before STARTTLS, and AUTH gets 530 5.7.0 "
        "\"Must issue a STARTTLS command first\" (RFC 3207 §4). James' script authenticates "
        "in plaintext (`334` to AUTH LOGIN). The runner then checks our behaviour instead, "
        "with the script's own commands: MAIL before TLS gets 530; STARTTLS 220 and the TLS "
        "handshake; EHLO 250; AUTH LOGIN with the script's credentials 334, 334, 235; the "
        "script's MAIL and RCPT 250; the script's final STARTTLS 503 5.5.1 (TLS already "
        "active; James answers 501 to a STARTTLS after AUTH). Nothing said before TLS "
        "survives it (RFC 3207 §4.2), so no plaintext authentication can be carried into "
        "the TLS session."),
}

#: (file relative to smtp-dialogues/, line of the expectation) -> Override
OVERRIDES: dict[tuple[str, int], Override] = {}


def _ov(file: str, line: int, theirs: str, ours: int, policy: str, command: str,
        followup: tuple[Step, ...] = ()) -> None:
    OVERRIDES[(file, line)] = Override(theirs, ours, policy, command, followup)


_C, _O, _J = CHASQUID + "/", OPENSMTPD + "/", JAMES + "/"
_ov(_C + "auth_not_tls.cmy", 8, "503", 502, "auth-mx", "AUTH PLAIN")
_ov(_C + "auth_multi_dialog.cmy", 9, "534", 504, "unknown-mechanism-504", "AUTH SOMETHINGELSE")
_ov(_C + "auth_too_many_failures.cmy", 13, "421", 501, "session-error-limit",
    "AUTH PLAIN something (3rd undecodable AUTH)")
_ov(_C + "bad_data.cmy", 35, "554", 250, "content-not-judged", ". (header block with a bad line)")
_ov(_C + "bad_data_dot.cmy", 28, "521", 554, "bare-lf-data", "'.\\n' ... 'xxx\\r\\n.\\r\\n'")
_ov(_C + "bad_data_dot_2.cmy", 28, "521", 554, "bare-lf-data", "'xxx\\n.\\n' ... '\\r\\n.\\r\\n'")
# Bad octets take precedence over size, whatever the segmentation: always 554.
_ov(_C + "bad_data_dot_on_message_too_big.cmy", 36, "521", 554, "bare-lf-data",
    "1 MiB + '.\\n' ... '.'")
_ov(_C + "line_too_long.cmy", 5, "554", 501, "helo-syntax", "HELO " + "a" * 10 + "...")
_ov(_C + "bad_mail_from.cmy", 8, "500", 501, "syntax-501", "MAIL LALA: <>")
_ov(_C + "bad_mail_from.cmy", 11, "500", 501, "syntax-501", "MAIL FROM:")
_ov(_C + "bad_rcpt_to.cmy", 11, "500", 501, "syntax-501", "RCPT LALA: <>")
_ov(_C + "bad_rcpt_to.cmy", 14, "500", 501, "syntax-501", "RCPT TO:")
_ov(_C + "bad_rcpt_to.cmy", 41, "550", 553, "non-ascii-needs-smtputf8",
    "RCPT TO:<henry\u2163@testserver>")
_ov(_C + "wrong_proto.cmy", 5, "502", 500, "http-as-unknown", "GET /evil HTTP/1.1")
_ov(_C + "wrong_proto.cmy", 10, "502", 500, "http-as-unknown", "POST /evil HTTP/1.1")
_ov(_C + "wrong_proto.cmy", 15, "502", 500, "http-as-unknown", "CONNECT www.evil.com:80 HTTP/1.1")
_ov(_O + "test.mailfrom", 18, "ok", 501, "strict-path", "MAIL FROM: <@>")
_ov(_O + "test.mailfrom", 46, "ok", 501, "strict-path", "MAIL FROM: <whatever:a@a>")
_ov(_O + "test.rcptto", 48, "ok", 501, "strict-path", "RCPT TO: <whatever:a@a>")
for _line, _params in ((81, "SIZE=3005"), (88, "BODY=7BIT"), (95, "BODY=8BITMIME"),
                       (102, "BODY=8BITMIME SIZE=100"), (109, "AUTH=WHATEVER")):
    _ov(_O + "test.mailfrom", _line, "ok", 555, "params-need-ehlo",
        f"HELO regress / MAIL FROM: <user@domain> {_params}")
_ov(_O + "test.smtp4", 154, "ok", 555, "params-need-ehlo",
    "HELO l / MAIL FROM:<opensmtpd@opensmtpd.org> SIZE=1000")
_ov(_O + "test.smtp2", 49, "tempfail", 250, "no-session-message-limit",
    "MAIL FROM (101st transaction of the session)")
_ov(_J + "starttls_with_injection.test", 14, "451", 220, "starttls-injection",
    "starttls\\r\\nmail from:<...>\\r\\n (one packet)",
    followup=(Step("expect_silence", 14, seconds=0.3),
              Step("starttls", 14),
              Step("send", 14, data=b"EHLO mpt.example\r\n"),
              Step("expect", 14, expect=exact(250)),
              Step("send", 14, data=b"RCPT TO:<bob@mydomain.tld>\r\n"),
              Step("expect", 14, expect=exact(503))))
_FIX = b"mail from:<bob@mydomain.tld>\r\n"
_ov(_J + "starttls_session_fixation.test", 12, "334", 530, "auth-needs-tls",
    "AUTH LOGIN (before STARTTLS, port 587)",
    followup=(Step("send", 19, data=_FIX),
              Step("expect", 21, expect=exact(530)),
              Step("send", 24, data=b"starttls\r\n"),
              Step("expect", 25, expect=exact(220)),
              Step("starttls", 25),
              Step("send", 3, data=b"ehlo yopmail.com\r\n"),
              Step("expect", 4, expect=exact(250)),
              Step("send", 11, data=b"AUTH LOGIN\r\n"),
              Step("expect", 12, expect=exact(334)),
              Step("send", 13, data=b"Ym9iQG15ZG9tYWluLnRsZA==\r\n"),
              Step("expect", 14, expect=exact(334)),
              Step("send", 15, data=b"c2VjcmV0\r\n"),
              Step("expect", 16, expect=exact(235)),
              Step("send", 19, data=_FIX),
              Step("send", 20, data=b"rcpt to:<matthieu@yopmail.com>\r\n"),
              Step("expect", 21, expect=exact(250)),
              Step("expect", 22, expect=exact(250)),
              Step("send", 24, data=b"starttls\r\n"),
              Step("expect", 25, expect=exact(503))))


def _codes(ours: int | tuple[int, ...]) -> tuple[int, ...]:
    return ours if isinstance(ours, tuple) else (ours,)


def render_overrides_markdown() -> str:
    """The override table of docs/conformance.md."""
    rows = ["| script | line | step | their code | our code | policy |",
            "|---|---|---|---|---|---|"]
    for (file, line), ov in sorted(OVERRIDES.items()):
        cmd = ov.command.replace("|", "\\|")
        ours = " or ".join(map(str, _codes(ov.ours)))
        rows.append(f"| `{file}` | {line} | `{cmd}` | {ov.theirs} | {ours} | "
                    f"[{ov.policy}](#{ov.policy}) |")
    return "\n".join(rows) + "\n"


# ================================================================== the runner

class Disconnected(Exception):
    pass


def _tls_context() -> ssl.SSLContext:
    """The test server's certificate is self-signed: encrypt, do not verify."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Conn:
    """A small SMTP client connection (the runner's own: it needs EOF detection and raw
    line reads that RawClient's asserting starttls() does not give)."""

    def __init__(self, host: str, port: int, timeout: float, implicit_tls: bool = False) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout
        if implicit_tls:                  # RFC 8314 §3.3: TLS first, then the greeting
            self.sock = _tls_context().wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Disconnected(f"send failed: {exc}") from exc

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            raise Disconnected("connection closed by server")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise AssertionError("reply line longer than 1 MiB")
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            text = self.line().decode("utf-8", "replace")
            lines.append(text)
            if not re.match(r"^[2-5][0-9][0-9]([ -]|$)", text):
                raise AssertionError(f"malformed reply line {text!r}")
            if len(text) < 4 or text[3] != "-":
                codes = {ln[:3] for ln in lines}
                if len(codes) != 1:
                    raise AssertionError(f"multi-line reply mixes codes: {lines}")
                return int(text[:3]), lines

    def wait_closed(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            self._fill()
            return False
        except Disconnected:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def starttls(self) -> None:
        if self.buf:
            raise AssertionError(f"server sent plaintext after its 220 to STARTTLS: {self.buf!r}")
        self.sock = _tls_context().wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Outcome:
    script: Script
    mismatches: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    replies: list[tuple[int, int]] = field(default_factory=list)   # (line, code)
    transcript: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def run_script(script: Script, host: str, port: int | dict[str, int], *,
               timeout: float = 15.0,
               overrides: dict[tuple[str, int], Override] | None = None) -> Outcome:
    """Replay ``script`` against ``host``. ``port`` is the MX listener's port, or a dict
    from listener role (``LISTENERS``: "smtp", "submission", "submissions") to port; a
    connect step to a role with no port fails the script. Never raises for a protocol
    difference: every difference is an entry of ``Outcome.mismatches``."""
    overrides = OVERRIDES if overrides is None else overrides
    ports = dict(port) if isinstance(port, dict) else {"smtp": port}
    out = Outcome(script)
    conn: _Conn | None = None
    last_sent = b""
    last: tuple[str, int | None] = ("", None)   # (kind of last step, last reply code)
    steps = list(script.steps)
    i = 0
    in_followup = False     # an override replaced the rest of the script

    def log(text: str) -> None:
        out.transcript.append(text)

    try:
        while i < len(steps):
            step = steps[i]
            i += 1
            where = f"{script.file}:{step.line}"
            if step.kind == "connect":
                if conn is not None:
                    conn.close()
                if ports.get(step.port) is None:
                    raise AssertionError(f"{where}: no listener for {step.port}")
                conn = _Conn(host, ports[step.port], timeout,
                             implicit_tls=step.port == "submissions")
                log(f"-- connect {step.port} ({where})")
            elif step.kind == "close":
                if conn is not None:
                    conn.close()
                conn = None
                log("-- close")
            elif step.kind == "sleep":
                time.sleep(step.seconds)
            elif step.kind == "send":
                assert conn is not None, f"{where}: send without a connection"
                last_sent = step.data
                log(f"C: {_show(step.data, 200)}")
                try:
                    conn.send(step.data)
                except Disconnected:
                    log("-- send failed: connection closed (the next expectation decides)")
            elif step.kind == "starttls":
                assert conn is not None
                conn.starttls()
                log("-- TLS handshake done")
            elif step.kind == "expect_silence":
                assert conn is not None
                closed = conn.wait_closed(step.seconds)
                if conn.buf:
                    out.mismatches.append(f"{where}: expected no reply yet, got "
                                          f"{_show(conn.buf)}")
                elif closed:
                    out.mismatches.append(f"{where}: connection closed")
            elif step.kind == "expect_disconnect":
                assert conn is not None
                # RFC 5321 §3.8: a server closing a session SHOULD first send 421.
                try:
                    while True:
                        code, lines = conn.reply()
                        log(f"S: {lines[-1]}")
                        if code != 421:
                            out.mismatches.append(f"{where}: expected disconnect, got reply {lines}")
                            break
                except Disconnected:
                    log("-- server closed")
                    conn.close()
                    conn = None
                except socket.timeout:
                    out.mismatches.append(f"{where}: expected disconnect, server kept the "
                                          "connection open")
            elif step.kind == "expect":
                assert conn is not None, f"{where}: expect without a connection"
                assert step.expect is not None
                try:
                    code, lines = conn.reply()
                except Disconnected:
                    out.mismatches.append(f"{where}: expected {step.expect} after "
                                          f"{_show(last_sent)}, connection closed")
                    conn.close()
                    conn = None
                    break
                log("S: " + "\\n".join(lines) if len(lines) < 4 else
                    f"S: {lines[0]} ... {lines[-1]}")
                out.replies.append((step.line, code))
                ov = None if in_followup else overrides.get((script.file, step.line))
                if ov is None:
                    if not step.expect.matches(code):
                        out.mismatches.append(f"{where}: after {_show(last_sent)}: expected "
                                              f"{step.expect}, got {code} {lines[-1]!r}")
                elif step.expect.matches(code):
                    out.mismatches.append(f"{where}: stale override: the script's {step.expect} "
                                          f"was answered ({code}); remove the override")
                elif code not in _codes(ov.ours):
                    out.mismatches.append(f"{where}: after {_show(last_sent)}: override expects "
                                          f"our {ov.ours}, got {code} {lines[-1]!r} "
                                          f"(script: {step.expect})")
                else:
                    out.overridden.append(f"{where}: {step.expect} -> {code} ({ov.policy})")
                    if ov.followup:
                        steps = steps[:i] + list(ov.followup)
                        in_followup = True
                last = ("expect", code)
                continue
            else:  # pragma: no cover
                raise AssertionError(f"unknown step {step!r}")
            last = (step.kind, last[1])
        # Synchronisation check: nothing the script did not expect may be pending.
        if conn is not None and last[0] == "expect" and last[1] not in (221, 354, 421) \
                and not out.mismatches:
            # HELP then NOOP: two replies with different codes (214, 250), so a pending
            # reply cannot pass for either even when it has the same code as one of them.
            try:
                for command, want in ((b"HELP\r\n", 214), (b"NOOP\r\n", 250)):
                    conn.send(command)
                    code, lines = conn.reply()
                    log(f"C: {command.decode().strip()} (sync check)")
                    log(f"S: {lines[-1]}")
                    if code != want:
                        out.mismatches.append(
                            f"{script.file}: end of script: {command.decode().strip()} got "
                            f"{code} {lines!r}: a reply the script did not expect was pending "
                            "(was a command executed that the script never sent as one?)")
                        break
            except Disconnected:
                log("-- server closed before the sync check")
    except socket.timeout:
        out.mismatches.append(f"{script.file}: timed out waiting for the server "
                              f"(last sent {_show(last_sent)})")
    finally:
        if conn is not None:
            conn.close()
    return out


# ================================================================== delivered-message check

# What Mailwright puts above a delivered message: trace fields and, on mx listeners, its
# Authentication-Results (RFC 8601; the dialogues' senders have no DNS records).
TRACE_HEADERS = ("return-path:", "delivered-to:", "received:", "authentication-results:")


def strip_trace_headers(message: bytes) -> bytes:
    """Drop the trace fields Mailwright prepends at delivery (and their folded lines)."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    k = 0
    while k < len(lines):
        low = lines[k].lower()
        if low.startswith(tuple(h.encode() for h in TRACE_HEADERS)):
            k += 1
            while k < len(lines) and lines[k][:1] in (b" ", b"\t"):
                k += 1
        else:
            break
    return b"\n".join(lines[k:])


def normalize_body(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def dialogue_root(conformance: Path) -> Path:
    return conformance / DIALOGUES_DIR


def iter_ids(scripts: Iterable[Script]) -> list[str]:
    return [s.name for s in scripts]


if __name__ == "__main__":  # print the override table for docs/conformance.md
    print(render_overrides_markdown())
