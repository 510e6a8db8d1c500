#!/usr/bin/env python3
"""Outbound benchmark: queue -> loopback smtp-sink, Mailwright against Postfix.

What it does, in one run:

1. Installs Postfix from Debian's packages when it (or /usr/sbin/smtp-sink) is
   missing, as bench/intake.py does, and stops any system Postfix instance.
2. Starts one smtp-sink (Postfix's test SMTP server, C, single process, throws
   mail away) on 127.0.0.1:SINK_PORT with a listen backlog of 1000 and
   running counters (-c); both servers deliver to this same sink, and the
   bench reads its "mesg=N" counter to know how many messages arrived.
3. Postfix: a private instance (intake.py's, with main.cf changed by
   `postconf -e`) relays remote.bench through a transport map to
   smtp:[127.0.0.1]:SINK_PORT with 20 destination connections, no DNS, no
   TLS. Its queue is filled with N messages by smtp-source while smtpd puts
   every message on hold (check_client_access static:HOLD); the clock starts
   at the release (`postsuper -H ALL` then `postqueue -f`).
4. Mailwright: a generated config routes remote.bench to [127.0.0.1]:SINK_PORT
   (tls = "none"), per_destination_concurrency = delivery_concurrency = 20.
   The queue is filled with the server stopped, in one process through
   Mailwright's own store API (open_store, commit_message, as
   `mailwright sendmail` does), after its bytecode is compiled into the bench's
   own cache as an installed package has it; the clock starts when
   `mailwright -c CFG serve` is launched (its start-up is part of the figure).
5. For each: messages/s until the sink has N (end to end), also from the
   first to the last message at the sink (steady state), server CPU ms per
   message (its whole process tree, a cgroup), peak RSS and PSS. Prints a
   table, the Mailwright/Postfix ratio against the target (>= 1.0) and the
   Python interpreter that ran Mailwright.

Loopback only; every wait has a time limit. Run as root (Postfix needs it):
`sudo python3 bench/outbound.py`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intake  # noqa: E402  (the sibling benchmark; its helpers are reused as they are)
from intake import (  # noqa: E402
    BenchError, MailwrightServer, PostfixServer, Sampler, _read, fs_type,
    loadavg, log, machine_info, port_free, python_version_of, run, wait_for_banner,
)

REPO = intake.REPO
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = intake.SMTP_SOURCE
POSTSUPER = "/usr/sbin/postsuper"
POSTQUEUE = "/usr/sbin/postqueue"
DOMAIN = intake.DOMAIN                 # the servers' own domain (senders)
REMOTE = "remote.bench"                # the destination domain, routed to the sink
SENDER = f"from@{DOMAIN}"
RECIPIENT = f"to@{REMOTE}"
TARGET_RATIO = 1.0                     # from the issue: Mailwright >= Postfix
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# The sink

class Sink:
    """One smtp-sink process; a thread follows its running counter ("mesg=N").

    smtp-sink -c rewrites one status line ("sess=S quit=Q mesg=M", ended by CR)
    whenever a session ends, a QUIT arrives or a message's final "." is received.
    """

    _MESG = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")

    def __init__(self, port: int, backlog: int = 1000, max_conns: int = 256):
        self.port, self.backlog, self.max_conns = port, backlog, max_conns
        self.proc: subprocess.Popen | None = None
        self.messages = 0
        self.sessions = 0
        self.changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not os.path.exists(SMTP_SINK):
            raise BenchError(f"{SMTP_SINK} is missing (Debian's postfix package has it)")
        if not port_free(self.port):
            raise BenchError(f"port 127.0.0.1:{self.port} is in use")
        # -u: required when started as root; -m: simultaneous connections handled;
        # the last argument is listen(2)'s backlog.
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-c", "-u", "nobody", "-m", str(self.max_conns), "-h", "sink.remote.bench",
             f"127.0.0.1:{self.port}", str(self.backlog)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        wait_for_banner(self.port, 10, alive=lambda: self.proc.poll() is None)
        with self.changed:  # the banner probe itself is a session; forget it
            self.changed.wait_for(lambda: self.sessions >= 1, timeout=2)

    def _follow(self) -> None:
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *records, pending = re.split(rb"[\r\n]", pending)
            last = None
            for rec in records:
                m = self._MESG.search(rec)
                if m:
                    last = m
            if last is not None:
                with self.changed:
                    self.sessions = int(last.group(1))
                    self.messages = int(last.group(3))
                    self.changed.notify_all()

    def count(self) -> int:
        with self.changed:
            return self.messages

    def cpu_ns(self) -> int:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = _read(f"/proc/{self.proc.pid}/stat")
            f = stat[stat.rindex(")") + 2:].split()
            return int((int(f[11]) + int(f[12])) * 1e9 / CLK_TCK)
        return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# --------------------------------------------------------------------------
# Servers

class RelayPostfix(PostfixServer):
    """intake.py's private Postfix, relaying remote.bench to the sink."""

    key = "postfix-out"

    def __init__(self, port: int, work: Path, acct_mode: str, *, sink_port: int,
                 concurrency: int):
        super().__init__(port, work, acct_mode, "discard")
        self.sink_port, self.concurrency = sink_port, concurrency

    def configure(self) -> None:
        super().configure()
        nexthop = f"smtp:[127.0.0.1]:{self.sink_port}"
        settings = {
            # Route the bench domain, and only it, to the sink; local mail still discarded.
            "transport_maps": f"inline:{{ {REMOTE}={nexthop} }}",
            "relay_domains": REMOTE,
            # 20 connections to the destination from the first delivery on (the default
            # starts at 5 and grows with each success).
            "default_destination_concurrency_limit": str(self.concurrency),
            "smtp_destination_concurrency_limit": str(self.concurrency),
            "initial_destination_concurrency": str(self.concurrency),
            # No DNS, no TLS (the sink does neither).
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "none",
            # Fill with delivery held: every message smtpd accepts goes on hold;
            # the measured run starts at `postsuper -H ALL`.
            "smtpd_recipient_restrictions":
                "check_client_access static:HOLD, permit_mynetworks, reject_unauth_destination",
        }
        run(["/usr/sbin/postconf", "-c", str(self.conf), "-e"]
            + [f"{k}={v}" for k, v in settings.items()], env=self._env())

    def fill(self, messages: int, size: int, timeout: float) -> None:
        cmd = [SMTP_SOURCE, "-s", "20", "-m", str(messages), "-l", str(size), "-d",
               "-M", f"client.{DOMAIN}", "-f", SENDER, "-t", RECIPIENT,
               f"127.0.0.1:{self.port}"]
        cp = run(cmd, timeout=timeout, check=False)
        noise = [l for l in (cp.stdout + cp.stderr).splitlines() if l.strip()]
        if cp.returncode != 0 or noise:
            raise BenchError(f"smtp-source (fill) exit {cp.returncode}: {' | '.join(noise[:5])}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.count_dir("hold")
            if held >= messages and self.count_dir("incoming") == 0 \
                    and self.count_dir("active") == 0 and self.count_dir("maildrop") == 0:
                break
            time.sleep(0.2)
        held = self.count_dir("hold")
        if held != messages:
            raise BenchError(f"Postfix holds {held} messages, expected {messages} "
                             f"(deferred {self.count_dir('deferred')}, "
                             f"active {self.count_dir('active')})")

    def count_dir(self, sub: str) -> int:
        return sum(len(files) for _, _, files in os.walk(self.queue / sub))

    def release(self) -> None:
        """Hold -> deferred (postsuper -H), then tell qmgr to take the deferred queue now."""
        env = self._env()
        run([POSTSUPER, "-c", str(self.conf), "-H", "ALL"], env=env, timeout=120)
        run([POSTQUEUE, "-c", str(self.conf), "-f"], env=env, timeout=60)

    _SMTP_SENT = re.compile(rb"postfix/smtp\[\d+\]: .* status=sent")
    _SMTP_DEFER = re.compile(rb"postfix/smtp\[\d+\]: .* status=(?:deferred|bounced)")

    def log_counts(self) -> tuple[int, int]:
        """(status=sent, status=deferred|bounced) lines of the smtp client in the log."""
        try:
            data = self.maillog.read_bytes()
        except OSError:
            return 0, 0
        return len(self._SMTP_SENT.findall(data)), len(self._SMTP_DEFER.findall(data))

    def describe(self) -> dict:
        return {"server": self.label,
                "route": f"transport_maps {REMOTE} -> smtp:[127.0.0.1]:{self.sink_port}",
                "concurrency": f"{self.concurrency} (initial, default and smtp limits)",
                "fill": "smtp-source into smtpd, every message on hold; release = "
                        "postsuper -H ALL + postqueue -f",
                "config": str(self.conf)}


MAILWRIGHT_CONFIG = """\
# Generated by bench/outbound.py (keys: docs/configuration.md)
hostname = "mx.{domain}"
data_dir = "{data_dir}"
workers = {workers}
local_domains = ["{domain}"]

[[listeners]]
name = "bench"
address = "127.0.0.1"
port = {port}
role = "mx"
tls = "none"

[queue]
delivery_concurrency = {concurrency}

[outbound]
port = {sink_port}
per_destination_concurrency = {concurrency}
nameservers = ["{nameserver}"]   # bench/loopback_dns.py: no lookup leaves loopback

[[outbound.routes]]
domain = "{remote}"
next_hop = "[127.0.0.1]:{sink_port}"
tls = "none"

[log]
level = "info"
file = "mailwright.log"   # under data_dir
"""


_DNS = None


def _loopback_dns():
    """One loopback DNS server for this benchmark process (bench/loopback_dns.py)."""
    global _DNS
    if _DNS is None:
        import loopback_dns
        _DNS = loopback_dns.start()
    return _DNS


class OutboundMailwright(MailwrightServer):
    key = "mailwright-out"

    def __init__(self, port: int, work: Path, acct_mode: str, *, exe: Path, workers: int,
                 sink_port: int, concurrency: int, config_template: Path | None):
        super().__init__(port, work, acct_mode, exe=exe, workers=workers,
                         config_template=config_template)
        self.sink_port, self.concurrency = sink_port, concurrency

    def configure(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        values = {"data_dir": str(self.data), "port": self.port, "workers": self.workers,
                  "domain": DOMAIN, "remote": REMOTE, "sink_port": self.sink_port,
                  "concurrency": self.concurrency, "work": str(self.work),
                  "nameserver": _loopback_dns().nameserver}
        template = self.template.read_text() if self.template else MAILWRIGHT_CONFIG
        self.config.write_text(template.format(**values))

    def server_env(self) -> dict:
        """The server's environment: bytecode in a cache of the bench's own
        (``PYTHONPYCACHEPREFIX``), compiled by ``fill`` before the clock starts, as an
        installed package has it (pip compiles at install). Without it, an editable
        install run with PYTHONDONTWRITEBYTECODE=1 compiles every module from source at
        each start (~0.15 s here), which no deployed server does."""
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.work.parent / "pycache")
        return env

    def fill(self, messages: int, size: int, timeout: float) -> None:
        """Commit `messages` messages into the stopped server's store, in one process
        run by Mailwright's own interpreter (this file's `_mw_fill` helper); compile
        Mailwright's bytecode first (``server_env``)."""
        if not self.exe.exists():
            raise BenchError(f"{self.exe} not found (run `make install` first)")
        self.configure()
        cp = run([self.python, "-c", "import compileall, os, mailwright; "
                  "compileall.compile_dir(os.path.dirname(mailwright.__file__), quiet=2)"],
                 timeout=timeout, check=False, env=self.server_env())
        if cp.returncode != 0:
            raise BenchError(f"compiling Mailwright's bytecode failed:\n{cp.stderr[-2000:]}")
        cp = run([self.python, __file__, "_mw_fill", str(self.config), str(messages),
                  str(size)], timeout=timeout, check=False, env=self.server_env())
        if cp.returncode != 0:
            raise BenchError(f"filling Mailwright's queue failed (exit {cp.returncode}):\n"
                             f"{(cp.stderr or cp.stdout)[-3000:]}")
        log(f"  {cp.stdout.strip()}")

    def start(self) -> None:
        """Launch `serve` (the clock is already running); the banner is not awaited here."""
        if not port_free(self.port):
            raise BenchError(f"port 127.0.0.1:{self.port} is in use")
        logf = open(self.logfile, "wb")
        self.proc = subprocess.Popen([str(self.exe), "-c", str(self.config), "serve"],
                                     env=self.server_env(),
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=self.acct.preexec,
                                     cwd=self.work)
        logf.close()
        self.acct.root_pid = self.proc.pid

    def check_started(self) -> None:
        """After the run: the interpreter that actually ran the server, from /proc."""
        with contextlib.suppress(OSError):
            real = os.readlink(f"/proc/{self.proc.pid}/exe")
            if os.path.realpath(real) != os.path.realpath(self.python):
                self.python, short, self.python_version = python_version_of(real)
                self.label = f"Mailwright/{short.replace('CPython ', 'py')}"
                self.interpreter = f"{short} at {self.python} ({self.python_version})"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        text = ""
        for f in (self.logfile, self.data / "mailwright.log"):
            with contextlib.suppress(OSError):
                text += f"--- {f} ---\n" + f.read_text(errors="replace")[-n:]
        return text

    def queue_status(self) -> dict:
        cp = run([self.python, __file__, "_mw_status", str(self.config)], check=False,
                 timeout=120)
        try:
            return json.loads(cp.stdout)
        except ValueError:
            return {"error": (cp.stderr or cp.stdout)[-500:]}

    def describe(self) -> dict:
        return {"server": self.label, "interpreter": self.interpreter,
                "route": f"[[outbound.routes]] {REMOTE} -> [127.0.0.1]:{self.sink_port}, "
                         "tls none",
                "concurrency": f"{self.concurrency} (per_destination_concurrency, "
                               "queue.delivery_concurrency)",
                "workers": self.workers,
                "fill": "store API (commit_message) with the server stopped; "
                        "release = start of `serve`",
                "config": str(self.config)}


# --------------------------------------------------------------------------
# Helpers run by Mailwright's interpreter (python bench/outbound.py _mw_fill ...)

def _message(i: int, size: int) -> bytes:
    """A message like smtp-source's: a few header fields, then `size` bytes of body lines."""
    head = (f"Received: from client.{DOMAIN} (localhost [127.0.0.1])\r\n"
            f"\tby mx.{DOMAIN} (bench) with ESMTP id B{i:08d}\r\n"
            f"\tfor <{RECIPIENT}>; Fri, 27 Nov 2026 05:00:00 +0000\r\n"
            f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
            f"Date: Fri, 27 Nov 2026 05:00:00 +0000\r\n"
            f"Message-Id: <{i}.bench@client.{DOMAIN}>\r\nSubject: outbound bench {i}\r\n"
            "\r\n").encode()
    line = b"X" * 78 + b"\r\n"
    body = line * (size // len(line))
    body += b"X" * max(0, size - len(body) - 2) + b"\r\n"
    return head + body[:max(size, 2)]


def _mw_fill(config: str, messages: int, size: int) -> int:
    from mailwright.admin.service import AdminService
    from mailwright.cli.main import open_settings_store
    from mailwright.config import load_settings
    from mailwright.queue.model import Envelope, RecipientRequest

    async def fill() -> None:
        settings = load_settings(config)
        store = open_settings_store(settings)
        await store.open()
        try:
            await AdminService(store).ensure_domains(settings.local_domains)
            t0 = time.perf_counter()
            nxt = 0

            async def committer() -> None:
                nonlocal nxt
                while nxt < messages:
                    i = nxt
                    nxt += 1
                    msg = _message(i, size)
                    blob = store.new_blob()
                    try:
                        blob.write(msg)
                    except BaseException:
                        blob.abort()
                        raise
                    env = Envelope(sender=SENDER, recipients=[RecipientRequest(RECIPIENT)],
                                   received_at=time.time(), helo=f"client.{DOMAIN}",
                                   client_ip="127.0.0.1", protocol="ESMTP",
                                   body_type="7BIT", size=blob.size, listener="bench")
                    await store.commit_message(env, blob)

            await asyncio.gather(*(committer() for _ in range(50)))
            dt = time.perf_counter() - t0
            print(f"Mailwright queue filled: {messages} messages of {len(_message(0, size))} "
                  f"bytes in {dt:.1f} s ({messages / dt:.0f} commits/s)")
        finally:
            await store.close()

    asyncio.run(fill())
    return 0


def _mw_status(config: str) -> int:
    from mailwright.cli.main import open_settings_store
    from mailwright.config import load_settings
    from mailwright.queue.model import RecipientState

    async def status() -> dict:
        store = open_settings_store(load_settings(config))
        await store.open()
        try:
            out = {"in_queue": len(await store.list_messages(None, limit=10 ** 7))}
            for st in RecipientState:
                out[st.value] = len(await store.list_messages(st, limit=10 ** 7))
            return out
        finally:
            await store.close()

    print(json.dumps(asyncio.run(status())))
    return 0


# --------------------------------------------------------------------------
# Profiling (optional): py-spy on the Mailwright primary during the drain

class Profiler:
    def __init__(self, pyspy: Path, out: Path, rate: int = 100, native: bool = False):
        self.pyspy, self.out, self.rate, self.native = pyspy, out, rate, native
        self.proc: subprocess.Popen | None = None

    def start(self, pid: int) -> None:
        self.proc = subprocess.Popen(
            # --threads: stacks name their thread; --idle: keep samples of threads
            # waiting in a system call (fsync, epoll), so each thread's samples add up
            # to the wall time and show what it waits on.
            [str(self.pyspy), "record", "--pid", str(pid), "--format", "raw", "--rate",
             str(self.rate), "--threads", "--idle", "--output", str(self.out)]
            # --native needs to stop the process for each sample; otherwise sample
            # without pausing it.
            + (["--native"] if self.native else ["--nonblocking"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        return out.decode(errors="replace")


def summarize_profile(path: Path, top: int = 12) -> str:
    """Per thread: its share of the samples and its top leaf frames (idle included, so a
    thread's samples are its wall time), then the top functions by inclusive samples of
    the busiest thread. Input: py-spy's raw (collapsed) output, one stack per line, frames
    ';'-separated from the root, then a count; with --threads the first frame names the
    thread."""
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no profile: {exc})"
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread "):
            thread = frames.pop(0)
        frames = [re.sub(r" \((?:[^()]*/)?([^()/]+)\)$", r" (\1)", f) for f in frames
                  if not f.startswith("process ")]
        if not frames:
            continue
        # Name a thread by its outermost recognisable frame.
        names = [f for f in frames if not f.startswith(("Thread.", "<module>", "_bootstrap"))]
        key = f"{thread} [{names[0] if names else frames[0]}]"
        per_thread[key][frames[-1]] += int(n)
        for f in set(frames):
            incl[key][f] += int(n)
    if not per_thread:
        return "(empty profile)"
    merged: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for key, c in per_thread.items():  # a thread whose root frame changed: merge by id
        merged[key.split(" [")[0]].update(c)
    label = {key.split(" [")[0]: key for key in sorted(per_thread, key=lambda k: -sum(
        per_thread[k].values()))[::-1]}
    ticks = max(sum(c.values()) for c in merged.values())
    out = [f"samples per thread (idle included; {ticks} = the whole drain):"]
    for tid, c in sorted(merged.items(), key=lambda kv: -sum(kv[1].values())):
        tot = sum(c.values())
        out.append(f"  {label[tid]}: {tot} samples")
        for f, n in c.most_common(top):
            out.append(f"      {100 * n / tot:5.1f}%  {f}")
    # Inclusive tops for the threads that do varied work (not parked pool threads,
    # whose samples are > 90 % one waiting frame).
    for key in sorted(per_thread, key=lambda k: -sum(per_thread[k].values())):
        tot = sum(per_thread[key].values())
        if tot < ticks / 4 or per_thread[key].most_common(1)[0][1] > 0.9 * tot:
            continue
        out += ["", f"inclusive, {key}:"]
        out += [f"  {100 * n / tot:5.1f}%  {f}" for f, n in incl[key].most_common(2 * top)
                if not f.startswith(("Thread.", "_bootstrap"))]
    return "\n".join(out)


# --------------------------------------------------------------------------
# One measured drain

@dataclass
class Result:
    server: str
    messages: int
    size: int
    drain_s: float          # release -> the sink has all messages
    rate: float             # messages / drain_s (end to end)
    first_s: float          # release -> first message at the sink
    steady_rate: float      # (messages - 1) / (last - first message at the sink)
    cpu_ms: float           # server CPU (whole tree) per message, release -> last
    cpu_ms_steady: float    # ... first -> last message at the sink
    sink_cpu_ms: float      # smtp-sink's CPU per message
    peak_rss_kb: int
    peak_pss_kb: int
    sink_sessions: int      # SMTP sessions the sink saw end during the run (+1 s)
    accounting: str
    loadavg: float
    interpreter: str = ""
    errors: list[str] = field(default_factory=list)


def measure(server, sink: Sink, messages: int, size: int, timeout: float,
            profiler: Profiler | None = None) -> Result:
    """Release a filled server (already configured) and time its drain into the sink."""
    errors: list[str] = []
    base, base_sess, sink_cpu0 = sink.count(), sink.sessions, sink.cpu_ns()
    load = loadavg()
    sampler = Sampler(server.acct)
    sampler.start()
    cpu0 = server.acct.cpu_ns()
    t0 = time.monotonic()
    if isinstance(server, RelayPostfix):
        server.release()
        alive = lambda: True  # noqa: E731
    else:
        server.start()
        alive = server.alive
        if profiler is not None:
            time.sleep(0.3)  # let the interpreter come up before py-spy attaches
            profiler.start(server.proc.pid)
    t_first = cpu_first = None
    deadline = t0 + timeout
    got = 0
    with sink.changed:
        while True:
            got = sink.messages - base
            now = time.monotonic()
            if got >= 1 and t_first is None:
                t_first, cpu_first = now, server.acct.cpu_ns()
            if got >= messages or now >= deadline:
                break
            if not alive():
                errors.append(f"server exited (status {server.proc.returncode}) "
                              f"after {got} messages")
                break
            if not sink.alive():
                errors.append("smtp-sink exited")
                break
            sink.changed.wait(timeout=0.05)
    t_last = time.monotonic()
    cpu1 = server.acct.cpu_ns()
    sink_cpu1 = sink.cpu_ns()
    if got < messages and not errors:
        errors.append(f"timed out after {timeout:.0f} s: {got} of {messages} at the sink")
    if profiler is not None:
        said = profiler.stop()
        if not profiler.out.exists():
            log(f"py-spy wrote no profile: {said.strip()[-800:]}")
    # A short look for extra (duplicate) deliveries and for the server's own view.
    time.sleep(1.0)
    sampler.stop()
    extra = sink.count() - base - messages
    if extra > 0:
        errors.append(f"{extra} messages more than queued reached the sink")
    drain = t_last - t0
    steady = (messages - 1) / (t_last - t_first) if t_first and t_last > t_first else 0.0
    return Result(
        server=server.label, messages=messages, size=size, drain_s=drain,
        rate=min(got, messages) / drain if drain > 0 else 0.0,
        first_s=(t_first - t0) if t_first else float("nan"), steady_rate=steady,
        cpu_ms=(cpu1 - cpu0) / 1e6 / messages,
        cpu_ms_steady=((cpu1 - cpu_first) / 1e6 / max(messages - 1, 1)) if cpu_first else 0.0,
        sink_cpu_ms=(sink_cpu1 - sink_cpu0) / 1e6 / messages,
        peak_rss_kb=sampler.peak_rss_kb, peak_pss_kb=sampler.peak_pss_kb,
        sink_sessions=sink.sessions - base_sess, accounting=server.acct.kind, loadavg=load,
        interpreter=getattr(server, "interpreter", ""), errors=errors)


def run_postfix(args, work: Path, sink: Sink, n: int) -> Result:
    pf = RelayPostfix(args.postfix_port, work / f"postfix-{n}", args.accounting,
                      sink_port=args.sink_port, concurrency=args.concurrency)
    log(f"Postfix run {n}: starting {pf.label} (smtpd on 127.0.0.1:{pf.port}, "
        f"accounting {pf.acct.kind})")
    try:
        pf.start()
        t = time.monotonic()
        pf.fill(args.messages, args.size, args.timeout)
        log(f"  queue filled (on hold): {args.messages} messages in "
            f"{time.monotonic() - t:.1f} s")
        time.sleep(args.settle)
        r = measure(pf, sink, args.messages, args.size, args.timeout)
        deadline = time.monotonic() + 15
        while pf.backlog() and time.monotonic() < deadline:
            time.sleep(0.2)
        sent, deferred = pf.log_counts()
        if pf.backlog():
            r.errors.append(f"{pf.backlog()} messages still in Postfix's queue")
        if sent != args.messages:
            r.errors.append(f"log shows {sent} status=sent of {args.messages}")
        if deferred:
            r.errors.append(f"log shows {deferred} deferred/bounced")
        return r
    finally:
        log(f"  stopping {pf.label}")
        pf.stop()
        if not args.keep:
            shutil.rmtree(pf.work, ignore_errors=True)


def run_mailwright(args, work: Path, sink: Sink, n: int) -> Result:
    mw = OutboundMailwright(args.mailwright_port, work / f"mailwright-{n}", args.accounting,
                            exe=args.mailwright, workers=args.workers,
                            sink_port=args.sink_port, concurrency=args.concurrency,
                            config_template=args.mailwright_config)
    log(f"Mailwright run {n}: {mw.interpreter}, accounting {mw.acct.kind}")
    profiler = None
    r: Result | None = None
    if args.profile:
        pyspy = args.mailwright.parent / "py-spy"
        if not pyspy.exists():
            pyspy = Path(shutil.which("py-spy") or pyspy)
        profiler = Profiler(pyspy, work / f"mailwright-{n}.pyspy.txt", args.profile_rate,
                            args.profile_native)
    try:
        mw.fill(args.messages, args.size, args.timeout)
        time.sleep(args.settle)
        r = measure(mw, sink, args.messages, args.size, args.timeout, profiler)
        mw.check_started()
        r.server, r.interpreter = mw.label, mw.interpreter
        if r.errors:
            log(mw.log_tail())
        return r
    finally:
        log(f"  stopping {mw.label}")
        mw.stop()
        if mw.proc is not None:
            st = mw.queue_status()
            if st.get("in_queue") or st.get("failed") or "error" in st:
                log(f"  Mailwright's queue after the run: {st}")
                if r is not None:
                    r.errors.append(f"queue after the run: {st}")
        if profiler is not None:
            summary = summarize_profile(profiler.out)
            dest = args.profile_out or (work / "profile.txt")
            print(f"\npy-spy profile of the Mailwright primary, run {n} "
                  f"(raw stacks: {profiler.out}):\n{summary}\n", flush=True)
            if args.profile_out:
                shutil.copy(profiler.out, str(args.profile_out) + f".run{n}.raw")
                Path(str(args.profile_out) + f".run{n}.txt").write_text(summary + "\n")
        if not args.keep:
            shutil.rmtree(mw.work, ignore_errors=True)


# --------------------------------------------------------------------------
# Report

def fmt_table(results: list[Result]) -> str:
    hdr = (f"{'server':<20} {'msg/s':>7} {'drain s':>8} {'1st msg s':>9} {'steady/s':>8} "
           f"{'CPU ms/msg':>10} {'steady':>7} {'peak RSS':>9} {'peak PSS':>9} "
           f"{'load':>5}  notes")
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        lines.append(
            f"{r.server:<20} {r.rate:>7.1f} {r.drain_s:>8.2f} {r.first_s:>9.2f} "
            f"{r.steady_rate:>8.1f} {r.cpu_ms:>10.2f} {r.cpu_ms_steady:>7.2f} "
            f"{r.peak_rss_kb / 1024:>7.1f}Mi {r.peak_pss_kb / 1024:>7.1f}Mi "
            f"{r.loadavg:>5.1f}  "
            + ("; ".join(r.errors) if r.errors else "ok"))
    return "\n".join(lines)


def median_of(rs: list[Result]) -> Result:
    return sorted(rs, key=lambda r: r.rate)[len(rs) // 2]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    ap.add_argument("--size", type=int, default=5120, help="message body bytes (default 5120)")
    ap.add_argument("--concurrency", type=int, default=20,
                    help="connections to the destination, both servers (default 20)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per server, alternating Postfix and Mailwright; "
                         "the median is reported")
    ap.add_argument("--servers", default="postfix,mailwright", help="which servers to measure")
    ap.add_argument("--sink-port", type=int, default=2800)
    ap.add_argument("--postfix-port", type=int, default=2600, help="Postfix smtpd (for the fill)")
    ap.add_argument("--mailwright-port", type=int, default=2700, help="Mailwright's listener")
    ap.add_argument("--mailwright", type=Path, default=REPO / ".venv/bin/mailwright",
                    help="Mailwright console script (default .venv/bin/mailwright)")
    ap.add_argument("--mailwright-config", type=Path,
                    help="TOML template for Mailwright (placeholders {data_dir} {port} "
                         "{workers} {domain} {remote} {sink_port} {concurrency} {work}; "
                         "double literal braces)")
    ap.add_argument("--workers", type=int, default=1,
                    help="Mailwright workers (default 1: delivery runs in the primary)")
    ap.add_argument("--accounting", choices=("auto", "cgroup", "proc"), default="auto")
    ap.add_argument("--timeout", type=float, default=300,
                    help="limit per fill and per drain, seconds (default 300)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="pause between fill and release, seconds (default 2)")
    ap.add_argument("--profile", action="store_true",
                    help="sample the Mailwright primary with py-spy during the drain and "
                         "print the top functions (slows it a little: do not publish the "
                         "rate of a profiled run)")
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    ap.add_argument("--profile-native", action="store_true",
                    help="py-spy --native: C frames too (shows what the event loop's C code "
                         "does, e.g. epoll_wait; costs more)")
    ap.add_argument("--profile-out", type=Path,
                    help="keep the raw py-spy stacks and the summary as FILE.runN.{raw,txt}")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                    help="parent of the temporary directory; a real disk (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ("postfix", "mailwright"):
            raise SystemExit(f"unknown server {s!r}; use postfix, mailwright")
    if os.geteuid() != 0:
        raise SystemExit("run as root: Postfix's master and smtp-sink need it "
                         "(sudo python3 bench/outbound.py)")
    if not args.no_install:
        # Installs postfix (smtp-source and smtp-sink come in the same Debian package)
        # when it is missing, and stops the system instance.
        intake.ensure_postfix()
    for tool in (SMTP_SINK, SMTP_SOURCE, POSTSUPER):
        if not os.path.exists(tool):
            raise BenchError(f"{tool} is missing" + (" and --no-install was given"
                                                     if args.no_install else
                                                     " (reinstall Debian's postfix package)"))

    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="mwbench-out-", dir=args.workdir))
    os.chmod(work, 0o755)
    info["workdir"] = f"{work} ({fs_type(work)})"
    if loadavg() > (os.cpu_count() or 1) * 0.5:
        log(f"warning: the machine is busy (load average {loadavg():.1f} on "
            f"{os.cpu_count()} CPUs); figures will be low and noisy (see the load column)")
    log(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']}, kernel {info['kernel']}")
    log(f"{args.messages} messages of {args.size} bytes per run, {args.concurrency} "
        f"connections to the sink on 127.0.0.1:{args.sink_port}")

    sink = Sink(args.sink_port)
    results: dict[str, list[Result]] = {s: [] for s in servers}
    failures: dict[str, str] = {}
    descriptions: dict[str, dict] = {}
    interrupted = False
    try:
        sink.start()
        log(f"smtp-sink running, pid {sink.proc.pid}")
        if "mailwright" in servers:
            probe = OutboundMailwright(args.mailwright_port, work / "probe", "proc",
                                       exe=args.mailwright, workers=args.workers,
                                       sink_port=args.sink_port, concurrency=args.concurrency,
                                       config_template=args.mailwright_config)
            descriptions["mailwright"] = probe.describe()
        if "postfix" in servers:
            probe = RelayPostfix(args.postfix_port, work / "probe", "proc",
                                 sink_port=args.sink_port, concurrency=args.concurrency)
            descriptions["postfix"] = probe.describe()
        for n in range(1, args.repeat + 1):
            for s in servers:
                if s in failures:
                    continue
                try:
                    r = (run_postfix if s == "postfix" else run_mailwright)(args, work, sink, n)
                except BenchError as exc:
                    failures[s] = str(exc)
                    log(f"{s}: FAILED: {exc}")
                    continue
                results[s].append(r)
                if s == "mailwright":
                    descriptions["mailwright"]["interpreter"] = r.interpreter
                log(f"  {r.server}: {r.rate:.1f} msg/s end to end ({r.drain_s:.2f} s; first "
                    f"message after {r.first_s:.2f} s; steady {r.steady_rate:.1f} msg/s), "
                    f"{r.cpu_ms:.2f} ms CPU/msg, peak RSS {r.peak_rss_kb / 1024:.1f} MiB, "
                    f"PSS {r.peak_pss_kb / 1024:.1f} MiB, "
                    f"load {r.loadavg:.1f}"
                    + (f"  PROBLEMS: {'; '.join(r.errors)}" if r.errors else ""))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted")
    except BenchError as exc:
        failures["bench"] = str(exc)
        log(f"FAILED: {exc}")
    finally:
        sink.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    all_runs = [r for rs in results.values() for r in rs]
    med = {s: median_of(rs) for s, rs in results.items() if rs}
    print()
    print(f"Outbound benchmark, {info['date']}: {info['nproc']} x {info['cpu']}, "
          f"{info['memory']}, load average now {loadavg():.1f}")
    print(f"Queue -> smtp-sink on 127.0.0.1:{args.sink_port}: {args.messages} messages x "
          f"{args.size}-byte body, 1 recipient ({RECIPIENT}), {args.concurrency} destination "
          f"connections; {args.repeat} run(s) per server")
    for key, d in descriptions.items():
        print(f"  {key}: " + "; ".join(f"{k}={v}" for k, v in d.items() if k != "config"))
    print("  msg/s = messages / (release -> last message at the sink); steady = from the first "
          "to the last message at the sink. CPU = the server's whole process tree "
          f"({all_runs[0].accounting if all_runs else '?'}), not the sink's.")
    print()
    if args.repeat > 1 and all_runs:
        print("All runs:")
        print(fmt_table(all_runs))
        print()
        print("Median run per server:")
    if med:
        print(fmt_table(list(med.values())))
        print()
        sink_cpu = ", ".join(f"{r.server}: {r.sink_cpu_ms:.2f}" for r in med.values())
        print(f"smtp-sink CPU ms/msg (shares the machine): {sink_cpu}")
    if "postfix" in med and "mailwright" in med:
        p, m = med["postfix"], med["mailwright"]
        ratio = m.rate / p.rate if p.rate else float("nan")
        print(f"Mailwright / Postfix: rate {ratio:.2f}x (target >= {TARGET_RATIO:.1f}x: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}), steady rate "
              f"{m.steady_rate / p.steady_rate if p.steady_rate else float('nan'):.2f}x, "
              f"CPU/msg {m.cpu_ms / p.cpu_ms if p.cpu_ms else float('nan'):.2f}x, "
              f"peak RSS {m.peak_rss_kb / p.peak_rss_kb if p.peak_rss_kb else float('nan'):.2f}x, "
              f"peak PSS {m.peak_pss_kb / p.peak_pss_kb if p.peak_pss_kb else float('nan'):.2f}x")
    if "mailwright" in descriptions:
        print(f"Mailwright's figures were produced by Python "
              f"{descriptions['mailwright']['interpreter']}")
    print(f"The bench itself ran on {sys.version.split()[0]} ({sys.executable})")
    for k, v in failures.items():
        print(f"{k}: FAILED: {v.splitlines()[0]}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "servers": descriptions, "failures": failures,
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in all_runs]}, indent=2))
    if interrupted:
        return 130
    return 1 if failures or any(r.errors for r in all_runs) else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_mw_fill":
        sys.exit(_mw_fill(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    if len(sys.argv) > 1 and sys.argv[1] == "_mw_status":
        sys.exit(_mw_status(sys.argv[2]))
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"outbound.py: {exc}", file=sys.stderr)
        sys.exit(1)
