#!/usr/bin/env python3
"""Intake benchmark: Mailwright against Postfix, driven by Postfix's smtp-source.

What it does, in one run:

1. Installs Postfix from Debian's packages when /usr/sbin/postfix is missing
   (apt-get; debconf preseeded to "No configuration") and stops any system
   Postfix instance, so that nothing else holds a port or competes for CPU.
2. Starts a private Postfix instance from a temporary config_directory
   (main.cf written here, master.cf copied from /etc/postfix with every
   service unchrooted and smtpd bound to 127.0.0.1:PORT). Postfix keeps its
   durability default: cleanup fsyncs each queue file before smtpd replies
   "250 queued as". Local delivery goes to the discard transport.
3. Starts Mailwright (`.venv/bin/mailwright -c FILE serve`) on loopback with
   a generated TOML config; its intake is durable by design (250 only after
   a committed, fsynced store write) and it delivers to a Maildir.
4. For each server, each session count (default 1 and 20) and each mode
   (a new connection per message; connections reused, smtp-source -d) it
   sends N messages of 5 KB (default 5,000) and measures
   - messages/s: N / wall time of smtp-source;
   - server CPU ms per message: user+system CPU of the server's whole
     process tree, from a cgroup made for that server (v2 cpu.stat or v1
     cpuacct), falling back to /proc sampling; reported for the intake
     window (while smtp-source runs) and including the drain that follows
     (queue manager and delivery finishing the backlog);
   - peak RSS: the highest sum of VmRSS over the server's processes,
     sampled every 50 ms during the run (PSS beside it, which does not
     count shared pages twice).
5. Prints a table, the Mailwright/Postfix ratios and the targets, and names
   the Python interpreter that ran Mailwright.

Loopback only; every load is bounded and every wait has a timeout. Run as
root (Postfix needs it): `sudo python3 bench/intake.py`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopback_dns  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DOMAIN = "bench.test"
SENDER = f"from@{DOMAIN}"
RECIPIENT = f"to@{DOMAIN}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Targets from the issue.
TARGET_RATIO = 1.5
TARGET_REUSE_RATE = 1300.0


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], *, timeout: float = 120, env: dict | None = None,
        check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env=env, input=input,
                            stdin=subprocess.DEVNULL if input is None else None)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(cmd)}: timed out after {timeout}s") from exc
    if check and cp.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {cp.returncode}\n{cp.stdout}{cp.stderr}")
    return cp


# --------------------------------------------------------------------------
# Postfix installation

def ensure_postfix() -> None:
    if not (os.path.exists(POSTFIX) and os.path.exists(SMTP_SOURCE)):
        if os.geteuid() != 0:
            raise BenchError("Postfix is not installed and installing it needs root")
        log("installing postfix from Debian's packages (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["debconf-set-selections"],
            input="postfix postfix/main_mailer_type select No configuration\n")
        run(["apt-get", "update", "-q"], timeout=600, env=env)
        run(["apt-get", "install", "-y", "-q", "postfix"], timeout=900, env=env)
        if not os.path.exists(SMTP_SOURCE):
            raise BenchError(f"apt-get installed postfix but {SMTP_SOURCE} is missing")
    stop_system_postfix()


def stop_system_postfix() -> None:
    """Stop the package's own instance (it may have been started by the install)."""
    env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
    st = run([POSTFIX, "status"], check=False, env=env, timeout=30)
    if st.returncode == 0:
        log("stopping the system postfix instance")
        run([POSTFIX, "stop"], check=False, env=env, timeout=60)
    if shutil.which("service"):
        run(["service", "postfix", "stop"], check=False, timeout=60)


def postfix_version() -> str:
    cp = run(["/usr/sbin/postconf", "-d", "-h", "mail_version"], check=False)
    return cp.stdout.strip() or "?"


# --------------------------------------------------------------------------
# Process-tree accounting: a cgroup per server, or /proc sampling

def _read(path: str | Path) -> str:
    with open(path) as f:
        return f.read()


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    f = stat[stat.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])  # utime + stime


def _mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) in kB; zeros if the process is gone."""
    rss = pss = 0
    try:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
        for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except (OSError, ValueError):
        pass
    return rss, pss


class Accounting:
    """CPU and memory of one server's process tree.

    A cgroup holds the server's processes when one can be made (v2 with the
    cpu controller, else v1 cpuacct): its counters include processes that
    have exited, which matters because Postfix recycles smtpd processes.
    Without a cgroup, processes descending from `root_pid` are sampled from
    /proc, which misses at most one sampling interval of each exited one.
    """

    def __init__(self, name: str, mode: str = "auto"):
        self.name = f"mwbench-{os.getpid()}-{name}"
        self.kind = "proc"
        self.dir: Path | None = None
        self.root_pid: int | None = None
        self._seen: dict[int, int] = {}  # proc mode: pid -> last cpu ticks
        self._lock = threading.Lock()
        if mode in ("auto", "cgroup"):
            self._make_cgroup()
            if mode == "cgroup" and self.dir is None:
                raise BenchError("no writable cgroup hierarchy with CPU accounting")

    def _make_cgroup(self) -> None:
        root = Path("/sys/fs/cgroup")
        candidates = []
        if (root / "cgroup.controllers").exists():  # unified (v2) hierarchy
            if "cpu" in _read(root / "cgroup.controllers").split():
                candidates.append(("v2", root))
        for v1 in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
            if (root / v1 / "cpuacct.usage").exists():
                candidates.append(("v1", root / v1))
                break
        for kind, base in candidates:
            d = base / self.name
            try:
                d.mkdir()
                if kind == "v2":
                    with contextlib.suppress(OSError):
                        (base / "cgroup.subtree_control").write_text("+cpu +memory")
                    if not (d / "cpu.stat").exists():
                        d.rmdir()
                        continue
            except OSError:
                continue
            self.kind, self.dir = f"cgroup-{kind}", d
            return

    def preexec(self) -> None:
        """Runs in the child before exec: join the cgroup."""
        if self.dir is not None:
            with open(self.dir / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def pids(self) -> list[int]:
        if self.dir is not None:
            try:
                return [int(x) for x in _read(self.dir / "cgroup.procs").split()]
            except OSError:
                return []
        if self.root_pid is None:
            return []
        parent = {p: _ppid(p) for p in _all_pids()}
        tree, frontier = {self.root_pid}, [self.root_pid]
        while frontier:
            cur = frontier.pop()
            for p, pp in parent.items():
                if pp == cur and p not in tree:
                    tree.add(p)
                    frontier.append(p)
        return [p for p in tree if p in parent]

    def cpu_ns(self) -> int:
        if self.kind == "cgroup-v2":
            for line in _read(self.dir / "cpu.stat").splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) * 1000
        if self.kind == "cgroup-v1":
            return int(_read(self.dir / "cpuacct.usage"))
        with self._lock:  # proc mode: refresh, keep the last value of exited pids
            for p in self.pids():
                t = _cpu_ticks(p)
                if t is not None:
                    self._seen[p] = t
            return int(sum(self._seen.values()) * 1e9 / CLK_TCK)

    def memory_kb(self) -> tuple[int, int]:
        rss = pss = 0
        for p in self.pids():
            r, s = _mem_kb(p)
            rss += r
            pss += s
        return rss, pss

    def kill_all(self) -> None:
        for p in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)

    def close(self) -> None:
        if self.dir is None:
            return
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


class Sampler(threading.Thread):
    """Samples the tree's memory (and, without a cgroup, CPU) every interval."""

    def __init__(self, acct: Accounting, interval: float = 0.05):
        super().__init__(daemon=True)
        self.acct, self.interval = acct, interval
        self.peak_rss_kb = self.peak_pss_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss, pss = self.acct.memory_kb()
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            if self.acct.kind == "proc":
                self.acct.cpu_ns()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------
# Servers

def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_banner(port: int, timeout: float, alive=lambda: True) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError("the server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                banner = s.recv(512).decode(errors="replace").strip()
                if banner.startswith("220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    return banner
                last = banner
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"no 220 banner on 127.0.0.1:{port} within {timeout}s ({last})")


class Server:
    label = "?"
    interpreter = ""

    def __init__(self, port: int, work: Path, acct_mode: str):
        self.port, self.work = port, work
        self.acct = Accounting(self.key, acct_mode)

    key = "server"

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def backlog(self) -> int:
        """Messages accepted but not yet delivered (0 when drained)."""
        return 0

    def delivered(self) -> int | None:
        """Messages delivered so far (to discard or a Maildir), if known."""
        return None

    def describe(self) -> dict:
        return {}


class PostfixServer(Server):
    key = "postfix"

    def __init__(self, port: int, work: Path, acct_mode: str, delivery: str = "discard"):
        super().__init__(port, work, acct_mode)
        self.delivery = delivery
        self.mail = work / "mail"
        self.conf = work / "etc"
        self.queue = work / "queue"
        self.data = work / "data"
        self.maillog = work / "maillog"
        self.label = f"Postfix {postfix_version()}"

    def _env(self) -> dict:
        return dict(os.environ, MAIL_CONFIG=str(self.conf))

    def configure(self) -> None:
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        for name in ("dynamicmaps.cf",):
            if os.path.exists(f"/etc/postfix/{name}"):
                shutil.copy(f"/etc/postfix/{name}", self.conf / name)
        if os.path.isdir("/etc/postfix/dynamicmaps.cf.d"):
            shutil.copytree("/etc/postfix/dynamicmaps.cf.d", self.conf / "dynamicmaps.cf.d",
                            dirs_exist_ok=True)
        out = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if not line or line[0] in "# \t" or len(f) < 8:
                out.append(line)
                continue
            if f[0] == "smtp" and f[1] == "inet":
                f[0] = f"127.0.0.1:{self.port}"
            elif f[1] == "inet":  # other inet services (submission etc.) stay off
                out.append("#" + line)
                continue
            f[4] = "n"  # no chroot: the private queue has no /etc, /lib copies
            out.append("  ".join(f[:8]) + (" " + " ".join(f[8:]) if f[8:] else ""))
        (self.conf / "master.cf").write_text("\n".join(out) + "\n")
        (self.conf / "main.cf").write_text(f"""\
# Private Postfix instance for bench/intake.py; defaults otherwise.
compatibility_level = 3.6
config_directory = {self.conf}
queue_directory = {self.queue}
data_directory = {self.data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.maillog}

myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination = {"" if self.delivery == "maildir" else DOMAIN}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# Local mail is accepted into the queue (fsynced, as always) and then discarded.
local_transport = discard
default_transport = discard
local_recipient_maps =
alias_maps =
alias_database =
biff = no

# No DNS and no client checks beyond relay control.
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = none
""" + (self._maildir_conf() if self.delivery == "maildir" else ""))

    def _maildir_conf(self) -> str:
        """Deliver to one Maildir through the virtual(8) agent, as Mailwright does."""
        import pwd
        nobody = pwd.getpwnam("nobody")
        self.mail.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        return f"""
# --postfix-delivery maildir: bench.test is a virtual mailbox domain instead.
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = static:{DOMAIN}/to/
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_transport = virtual
"""

    def start(self) -> None:
        if not port_free(self.port):
            raise BenchError(f"port 127.0.0.1:{self.port} is in use")
        self.configure()
        env = self._env()
        check = run([POSTFIX, "-c", str(self.conf), "check"], env=env, check=False)
        if check.returncode != 0:
            raise BenchError(f"postfix check failed:\n{check.stdout}{check.stderr}")
        cp = subprocess.run([POSTFIX, "-c", str(self.conf), "start"], env=env,
                            capture_output=True, text=True, timeout=60,
                            preexec_fn=self.acct.preexec)
        if cp.returncode != 0:
            raise BenchError(f"postfix start failed:\n{cp.stdout}{cp.stderr}")
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not pidfile.exists():
            time.sleep(0.1)
        if pidfile.exists():
            self.acct.root_pid = int(pidfile.read_text().split()[0])
        wait_for_banner(self.port, 30)

    def stop(self) -> None:
        run([POSTFIX, "-c", str(self.conf), "stop"], env=self._env(), check=False, timeout=60)
        deadline = time.monotonic() + 15
        while self.acct.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.acct.kill_all()
        self.acct.close()

    def backlog(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.queue / sub):
                n += len(files)
        return n

    _SENT = re.compile(rb"postfix/(?:discard|virtual)\[\d+\]: .* status=sent")

    def delivered(self) -> int | None:
        """Deliveries logged so far; reads only what the log gained since the last call."""
        if not hasattr(self, "_log_pos"):
            self._log_pos, self._sent, self._partial = 0, 0, b""
        try:
            with open(self.maillog, "rb") as f:
                f.seek(self._log_pos)
                chunk = f.read()
        except OSError:
            return None
        self._log_pos += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        self._sent += sum(1 for line in lines if self._SENT.search(line))
        return self._sent

    def describe(self) -> dict:
        return {"server": self.label, "durability": "queue file fsynced before 250 (default)",
                "delivery": ("Maildir via virtual(8)" if self.delivery == "maildir"
                             else "discard transport"), "config": str(self.conf)}


class MailwrightServer(Server):
    key = "mailwright"

    def __init__(self, port: int, work: Path, acct_mode: str, *, exe: Path,
                 workers: int, config_template: Path | None, delivery: str = "discard",
                 sync_method: str = "auto", nameserver: str = "",
                 check_loopback: bool = False, python_tag: str = ""):
        super().__init__(port, work, acct_mode)
        # False: Mailwright's defaults, which (like policyd-spf) skip SPF/DKIM/DMARC for
        # loopback clients, as the Postfix here runs no such checks. True: smtp-source's
        # loopback mail is checked like a remote MX's (the "+auth" rows).
        self.check_loopback = check_loopback
        self.exe = exe
        self.delivery = delivery            # same choice as Postfix's, for a fair comparison
        self.sync_method = sync_method
        self.workers = workers
        self.nameserver = nameserver
        self.template = config_template
        self.config = work / "mailwright.toml"
        self.data = work / "data"
        self.logfile = work / "mailwright.log"
        self.proc: subprocess.Popen | None = None
        self.python_tag = python_tag        # "system" (the distribution's build), "venv"
        self.python, short, self.python_version = interpreter_of(exe)
        self._name(short)

    def _name(self, short: str) -> None:
        tag = f"{self.python_tag}-" if self.python_tag else ""
        self.label = f"Mailwright/{tag}{short.replace('CPython ', 'py')}" + \
            ("+auth" if self.check_loopback else "")
        self.interpreter = f"{short} at {self.python} ({self.python_version})"

    def configure(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        values = {"data_dir": str(self.data), "port": self.port,
                  "workers": self.workers, "domain": DOMAIN, "work": str(self.work),
                  "discard": f'["{DOMAIN}"]' if self.delivery == "discard" else "[]",
                  "sync_method": self.sync_method, "nameserver": self.nameserver,
                  "auth_section": AUTH_ALL if self.check_loopback else ""}
        if self.template is not None:
            text = self.template.read_text().format(**values)
        else:
            text = DEFAULT_MAILWRIGHT_CONFIG.format(**values)
        self.config.write_text(text)

    def start(self) -> None:
        if not self.exe.exists():
            raise BenchError(f"{self.exe} not found (run `make install` first)")
        if not port_free(self.port):
            raise BenchError(f"port 127.0.0.1:{self.port} is in use")
        self.configure()
        add = run([str(self.exe), "-c", str(self.config), "user", "add", RECIPIENT],
                  check=False, timeout=60)
        if add.returncode != 0:
            log(f"warning: `mailwright user add {RECIPIENT}` failed "
                f"(exit {add.returncode}): {(add.stderr or add.stdout).strip()[-500:]}")
        logf = open(self.logfile, "wb")
        self.proc = subprocess.Popen([str(self.exe), "-c", str(self.config), "serve"],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=self.acct.preexec,
                                     cwd=self.work)
        logf.close()
        self.acct.root_pid = self.proc.pid
        try:
            wait_for_banner(self.port, 60, alive=lambda: self.proc.poll() is None)
        except BenchError as exc:
            tail = self.logfile.read_text(errors="replace")[-3000:]
            self.stop()
            raise BenchError(f"Mailwright did not start: {exc}\n--- {self.logfile} ---\n{tail}")
        # The interpreter actually running the server, from /proc (trumps the #! line).
        with contextlib.suppress(OSError):
            real = os.readlink(f"/proc/{self.proc.pid}/exe")
            if os.path.realpath(real) != os.path.realpath(self.python):
                self.python, short, self.python_version = python_version_of(real)
                self._name(short)
                log(f"Mailwright runs on {self.interpreter}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("Mailwright did not exit 30 s after SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.acct.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.acct.kill_all()
        self.acct.close()

    def _maildir_new_dirs(self) -> list[Path]:
        found = []
        top = self.data / "mail" if (self.data / "mail").is_dir() else self.data
        for root, dirs, _ in os.walk(top):
            if {"new", "cur", "tmp"} <= set(dirs):
                found.append(Path(root) / "new")
        return found

    _DISCARDED = re.compile(rb"rcpt=\d+ ok: 250 2\.0\.0 Discarded")

    def delivered(self) -> int | None:
        if self.delivery == "discard":
            # like Postfix's "status=sent" lines: one log line per discarded recipient
            try:
                return len(self._DISCARDED.findall((self.data / "mailwright.log").read_bytes()))
            except OSError:
                return 0
        # 0 before the first delivery creates the Maildir
        return sum(len(os.listdir(d)) for d in self._maildir_new_dirs())

    def describe(self) -> dict:
        return {"server": self.label, "interpreter": self.interpreter,
                "python": self.python_tag or "given",
                "durability": "store commit fsynced before 250 (always on)",
                "delivery": ("discarded after intake ([delivery] discard_domains)"
                             if self.delivery == "discard"
                             else "local Maildir (data_dir/mail), fsync on"),
                "sync_method": self.sync_method, "config": str(self.config),
                "workers": self.workers,
                "checks": ("SPF, DKIM, ARC, DMARC and Authentication-Results on every message "
                           "([auth] skip_networks = [])" if self.check_loopback else
                           "defaults ([auth] skip_networks = loopback: no SPF/DKIM/DMARC "
                           "for smtp-source's loopback mail; anti-abuse defaults on)")}


# For the "mailwright+auth" server: check loopback mail like a remote MX's.
AUTH_ALL = """[auth]
skip_networks = []     # check smtp-source's loopback mail like a remote MX's (SPF, DKIM,
                       # ARC, DMARC, Authentication-Results)
"""

# Placeholders: {data_dir} {port} {workers} {domain} {work} {nameserver} {auth_section}.
# Override the whole file with --mailwright-config (same placeholders; double any literal
# braces).
DEFAULT_MAILWRIGHT_CONFIG = """\
# Generated by bench/intake.py (keys: docs/configuration.md)
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

[store]
sync_method = "{sync_method}"

[outbound]
nameservers = ["{nameserver}"]   # bench/loopback_dns.py: SPF/DMARC lookups stay on loopback

{auth_section}
[delivery]
fsync = true          # full durability for delivery too (the default, stated)
discard_domains = {discard}   # mirrors --postfix-delivery: discard after intake, or Maildir

[log]
level = "info"
file = "mailwright.log"   # under data_dir, like Postfix's maillog_file here
"""


def interpreter_of(exe: Path) -> tuple[str, str, str]:
    """The Python that runs a console script, from its #! line: (path, short, sys.version)."""
    python = sys.executable
    with contextlib.suppress(OSError, IndexError):
        first = exe.read_text(errors="replace").splitlines()[0]
        if first.startswith("#!"):
            words = first[2:].split()
            if os.path.basename(words[0]) == "env":
                words = [w for w in words[1:] if not w.startswith("-")]
                python = shutil.which(words[0]) or words[0]
            else:
                python = words[0]
    return python_version_of(python)


def python_version_of(python: str) -> tuple[str, str, str]:
    cp = run([python, "-c", "import sys, platform; print(sys.executable); "
              "print(platform.python_implementation(), platform.python_version()); "
              "print(sys.version)"], check=False, timeout=30)
    lines = cp.stdout.strip().splitlines()
    if cp.returncode != 0 or len(lines) < 3:
        return python, "unknown", "unknown"
    return lines[0], lines[1], " ".join(lines[2:])


def mailwright_installs(args) -> list[tuple[str, Path]]:
    """(tag, console script) for each interpreter in --python, in order.

    "venv": the project's own install (--mailwright, default .venv/bin/mailwright).
    "system": the distribution's /usr/bin/python3 (Debian builds it with profile-guided
    optimisation and LTO; a plain ./configure build, as pyenv makes, ran Mailwright about
    a tenth slower here), in a venv this script makes under --workdir. Any other value is
    the path of a Python >= 3.11 to do the same with."""
    out = []
    for choice in [c.strip() for c in args.python.split(",") if c.strip()]:
        if choice == "venv":
            out.append(("venv", args.mailwright))
            continue
        python = "/usr/bin/python3" if choice == "system" else choice
        tag = "system" if choice == "system" else Path(choice).name
        try:
            out.append((tag, venv_for(python, args)))
        except BenchError as exc:
            log(f"warning: no Mailwright on {python}: {exc}; skipping it")
    if not out:
        raise BenchError(f"no usable interpreter in --python {args.python!r}")
    return out


def venv_for(python: str, args) -> Path:
    """A venv of `python` with Mailwright installed (editable, pinned by constraints.txt),
    kept under --workdir and brought up to date on every run."""
    if not os.path.exists(python):
        raise BenchError(f"{python} not found")

    def probe() -> subprocess.CompletedProcess:   # >= 3.11 with venv + ensurepip: version
        return run([python, "-c", "import sys; assert sys.version_info >= (3, 11); "
                    "import venv, ensurepip; print(sys.version.split()[0])"], check=False)

    ok = probe()
    if ok.returncode != 0:
        if python.startswith("/usr/bin/") and not args.no_install and os.geteuid() == 0:
            log(f"installing python3-venv from Debian's packages for {python}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            run(["apt-get", "install", "-y", "-q", "python3-venv"], timeout=900, env=env,
                check=False)
            ok = probe()
        if ok.returncode != 0:
            raise BenchError(f"{python} is older than 3.11 or has no venv module")
    version = ok.stdout.strip()
    venv = args.workdir / f"mailwright-bench-{Path(python).name}-{version}"
    if not (venv / "bin" / "python").exists():
        log(f"making {venv} ({python} {version})")
        run([python, "-m", "venv", str(venv)], timeout=300)
    log(f"installing Mailwright into {venv}")
    run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"),
         "-e", str(REPO)], timeout=900)
    # Byte-compile now: the workers would otherwise compile on every start when the
    # environment sets PYTHONDONTWRITEBYTECODE.
    run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(REPO / "src")],
        timeout=300, check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    exe = venv / "bin" / "mailwright"
    if not exe.exists():
        raise BenchError(f"{exe} missing after pip install")
    return exe


# --------------------------------------------------------------------------
# Runs

@dataclass
class Result:
    server: str
    mode: str            # "new" (a connection per message) or "reuse" (smtp-source -d)
    sessions: int
    messages: int
    wall_s: float
    rate: float          # messages/s
    cpu_ms_intake: float  # server CPU per message while smtp-source ran
    cpu_ms_total: float   # ... including the drain afterwards
    peak_rss_kb: int
    peak_pss_kb: int
    drain_s: float
    delivered: int | None
    accounting: str
    loadavg: float = 0.0  # 1-minute load average when the run started (other work)
    steal: float = 0.0    # % of the machine's CPU time taken by the hypervisor during the run
    interpreter: str = ""
    errors: list[str] = field(default_factory=list)


MODE_NAMES = {"new": "new connection per message", "reuse": "connection reused (-d)"}


def smtp_source_cmd(port: int, sessions: int, messages: int, size: int, mode: str) -> list[str]:
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-M", f"client.{DOMAIN}", "-f", SENDER, "-t", RECIPIENT]
    if mode == "reuse":
        cmd.append("-d")  # "Don't disconnect after sending a message" (smtp-source(1))
    return cmd + [f"127.0.0.1:{port}"]


def wait_drained(server: Server, expect: int | None, timeout: float) -> float:
    """Wait until the backlog is empty and `expect` messages were delivered.

    When deliveries cannot be counted, or stop arriving short of `expect`, the wait ends
    once the server's CPU has been quiet (< 1% of a CPU) for a second.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    quiet_cpu, quiet_since = server.acct.cpu_ns(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)  # counting deliveries lists a Maildir: keep it cheap
        done = server.delivered()
        if server.backlog() == 0 and done is not None and expect is not None and done >= expect:
            break
        cpu, now = server.acct.cpu_ns(), time.monotonic()
        if cpu - quiet_cpu > 10e6:  # busy: restart the quiet window
            quiet_cpu, quiet_since = cpu, now
        elif now - quiet_since >= 1.0:
            if expect is not None and done is not None and done < expect:
                log(f"warning: {server.label} went idle with {expect - done} "
                    f"deliveries missing")
            break
    else:
        log(f"warning: {server.label} not drained after {timeout}s "
            f"(backlog {server.backlog()}, delivered {server.delivered()})")
    return time.monotonic() - t0


def one_run(server: Server, sessions: int, messages: int, size: int, mode: str,
            timeout: float, drain_timeout: float) -> Result:
    before_delivered = server.delivered()
    load = loadavg()
    steal0 = cpu_times()
    sampler = Sampler(server.acct)
    cpu0 = server.acct.cpu_ns()
    sampler.start()
    cmd = smtp_source_cmd(server.port, sessions, messages, size, mode)
    t0 = time.perf_counter()
    errors: list[str] = []
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if cp.returncode != 0:
            errors.append(f"smtp-source exit {cp.returncode}")
        noise = [l for l in (cp.stdout + cp.stderr).splitlines() if l.strip()]
        errors += noise[:5]
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        errors.append(f"smtp-source timed out after {timeout}s")
    cpu1 = server.acct.cpu_ns()
    steal1 = cpu_times()
    steal = (100.0 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
             if steal1[1] > steal0[1] else 0.0)
    expect = None if before_delivered is None else before_delivered + messages
    drain = wait_drained(server, expect, drain_timeout)
    cpu2 = server.acct.cpu_ns()
    sampler.stop()
    after = server.delivered()
    delivered = None if after is None or before_delivered is None else after - before_delivered
    if delivered is not None and delivered != messages:
        errors.append(f"delivered {delivered} of {messages}")
    return Result(server=server.label, mode=mode, sessions=sessions, messages=messages,
                  wall_s=wall, rate=messages / wall if wall > 0 else 0.0,
                  cpu_ms_intake=(cpu1 - cpu0) / 1e6 / messages,
                  cpu_ms_total=(cpu2 - cpu0) / 1e6 / messages,
                  peak_rss_kb=sampler.peak_rss_kb, peak_pss_kb=sampler.peak_pss_kb,
                  drain_s=drain, delivered=delivered, accounting=server.acct.kind,
                  loadavg=load, steal=steal,
                  interpreter=server.interpreter, errors=errors)


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine, from /proc/stat."""
    try:
        f = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    return (f[7] if len(f) > 7 else 0), sum(f[:8])


def loadavg() -> float:
    try:
        return float(_read("/proc/loadavg").split()[0])
    except (OSError, ValueError):
        return 0.0


def median_result(rs: list[Result]) -> Result:
    """The run with the median rate (whole run, so figures stay consistent)."""
    rs = sorted(rs, key=lambda r: r.rate)
    return rs[len(rs) // 2]


def bench_servers(makers: dict, args, plan, failures: dict[str, str]) -> dict[str, list[Result]]:
    """Run the plan on every server, interleaved: round r runs each server's cells before
    round r+1 starts, so a slow spell of the machine (another tenant's load, hypervisor
    steal, disk writeback) falls on all servers alike instead of on whichever ran then.
    Each cell's figure is the median of its rounds. `makers[key](tag)` makes a server; with
    --fresh (the default) every cell of every round gets a fresh instance (empty queue and
    store), with --no-fresh one instance per server per round runs all cells. A server that
    fails is reported in `failures` and left out of later rounds."""
    groups = [[cell] for cell in plan] if args.fresh else [plan]
    reps: dict[str, dict[tuple, list[Result]]] = {key: {} for key in makers}
    for rnd in range(args.repeat):
        if args.repeat > 1:
            log(f"round {rnd + 1} of {args.repeat}")
        for key, make_server in makers.items():
            if key in failures:
                continue
            try:
                for n, cells in enumerate(groups):
                    run_cells(make_server(f"r{rnd}c{n}"), args, cells, reps[key])
            except BenchError as exc:
                failures[key] = str(exc)
                log(f"{key}: FAILED: {exc}")
    return {key: [median_result(reps[key][cell]) for cell in plan if reps[key].get(cell)]
            for key in makers if reps[key]}


def run_cells(server: "Server", args, cells, out: dict[tuple, list[Result]]) -> None:
    log(f"starting {server.label} on 127.0.0.1:{server.port} (accounting: {server.acct.kind})")
    server.start()
    try:
        if args.warmup:
            w = one_run(server, min(20, args.warmup), args.warmup, args.size, "new",
                        args.timeout, args.drain_timeout)
            log(f"  warm-up: {args.warmup} messages, 20 sessions: {w.rate:.0f} msg/s"
                + (f"; problems: {'; '.join(w.errors)}" if w.errors else ""))
        for sessions, mode in cells:
            r = one_run(server, sessions, args.messages, args.size, mode,
                        args.timeout, args.drain_timeout)
            out.setdefault((sessions, mode), []).append(r)
            log(f"  {sessions:>2} sessions, {MODE_NAMES[mode]:<27} "
                f"{r.rate:8.1f} msg/s  {r.cpu_ms_intake:6.2f} ms CPU/msg "
                f"({r.cpu_ms_total:.2f} with drain)  "
                f"peak RSS {r.peak_rss_kb / 1024:.1f} MiB  load {r.loadavg:.1f}  "
                f"steal {r.steal:.0f}%"
                + (f"  PROBLEMS: {'; '.join(r.errors)}" if r.errors else ""))
    finally:
        log(f"stopping {server.label}")
        server.stop()
        if not args.keep:
            shutil.rmtree(server.work, ignore_errors=True)


# --------------------------------------------------------------------------
# Report

def machine_info() -> dict:
    model = "?"
    with contextlib.suppress(OSError):
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(_read("/proc/meminfo").split()[1])
        mem = f"{kb / 1048576:.1f} GiB"
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu": model, "memory": mem,
            "kernel": platform.release(), "bench_python": f"{sys.executable} ({sys.version})"}


def fmt_table(results: list[Result]) -> str:
    hdr = (f"{'server':<30} {'sessions':>8}  {'mode':<27} {'msg/s':>8} {'CPU ms/msg':>10} "
           f"{'+drain':>7} {'peak RSS':>9} {'peak PSS':>9} {'load':>5} {'steal':>5}  notes")
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        notes = "; ".join(r.errors) if r.errors else "ok"
        lines.append(f"{r.server:<30} {r.sessions:>8}  {MODE_NAMES[r.mode]:<27} {r.rate:>8.1f} "
                     f"{r.cpu_ms_intake:>10.2f} {r.cpu_ms_total:>7.2f} "
                     f"{r.peak_rss_kb / 1024:>7.1f}Mi {r.peak_pss_kb / 1024:>7.1f}Mi "
                     f"{r.loadavg:>5.1f} {r.steal:>4.0f}%  {notes}")
    return "\n".join(lines)


def fmt_ratios(pf: list[Result], mw: list[Result]) -> str:
    by = {(r.sessions, r.mode): r for r in pf}
    lines = [f"{'sessions':>8}  {'mode':<27} {'rate ratio':>10} {'CPU/msg ratio':>13} "
             f"{'RSS ratio':>9} {'PSS ratio':>9}  target"]
    for m in mw:
        p = by.get((m.sessions, m.mode))
        if p is None or p.rate == 0:
            continue
        ratio = m.rate / p.rate
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        if m.mode == "reuse":
            verdict += (f"; {m.rate:.0f} msg/s vs {TARGET_REUSE_RATE:.0f}: "
                        + ("met" if m.rate >= TARGET_REUSE_RATE else "NOT met"))
        cpu_ratio = m.cpu_ms_intake / p.cpu_ms_intake if p.cpu_ms_intake else float("nan")
        rss_ratio = m.peak_rss_kb / p.peak_rss_kb if p.peak_rss_kb else float("nan")
        pss_ratio = m.peak_pss_kb / p.peak_pss_kb if p.peak_pss_kb else float("nan")
        lines.append(f"{m.sessions:>8}  {MODE_NAMES[m.mode]:<27} {ratio:>9.2f}x "
                     f"{cpu_ratio:>12.2f}x {rss_ratio:>8.2f}x {pss_ratio:>8.2f}x  "
                     f">= {TARGET_RATIO}x: {verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    ap.add_argument("--sessions", default="1,20", help="comma-separated session counts (default 1,20)")
    ap.add_argument("--modes", default="new,reuse",
                    help="new (a connection per message), reuse (smtp-source -d); default both")
    ap.add_argument("--size", type=int, default=5120, help="message body bytes (default 5120)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is reported")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="a fresh server instance (empty queue and store) for every "
                         "sessions x mode cell (default); --no-fresh: one instance for all")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up messages per server (0: none)")
    ap.add_argument("--servers", default="postfix,mailwright,mailwright+auth",
                    help="which servers to measure: postfix, mailwright (its defaults), "
                         "mailwright+auth (SPF/DKIM/ARC/DMARC on smtp-source's loopback "
                         "mail too)")
    ap.add_argument("--postfix-port", type=int, default=2600)
    ap.add_argument("--mailwright-port", type=int, default=2700)
    ap.add_argument("--postfix-delivery", choices=("discard", "maildir"), default="discard",
                    help="after intake, both servers discard (default) or deliver to a Maildir")
    ap.add_argument("--mailwright-sync", choices=("auto", "fsync", "syncfs"), default="auto",
                    help="Mailwright's [store] sync_method (default: auto, its default)")
    ap.add_argument("--mailwright", type=Path, default=REPO / ".venv/bin/mailwright",
                    help="Mailwright console script for --python venv "
                         "(default .venv/bin/mailwright)")
    ap.add_argument("--python", default="system,venv",
                    help="interpreters to run Mailwright on, one set of rows each: system "
                         "(the distribution's /usr/bin/python3, in a venv made under "
                         "--workdir), venv (--mailwright), or a path to a python; "
                         "default system,venv")
    ap.add_argument("--mailwright-config", type=Path,
                    help="TOML template for Mailwright (placeholders {data_dir} {port} "
                         "{workers} {domain} {work}); default: a generated one")
    ap.add_argument("--workers", type=int, default=2, help="Mailwright workers (default 2)")
    ap.add_argument("--accounting", choices=("auto", "cgroup", "proc"), default="auto")
    ap.add_argument("--timeout", type=float, default=600, help="limit per smtp-source run, s")
    ap.add_argument("--drain-timeout", type=float, default=180, help="limit per drain wait, s")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                    help="parent of the temporary directory; must be a real disk, not tmpfs, "
                         "or fsync means nothing (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    return ap.parse_args(argv)


def fsync_probe(directory: Path, size: int, n: int = 200) -> float:
    """Median milliseconds to write `size` bytes to a new file and fsync it."""
    times = []
    payload = os.urandom(size)
    for i in range(n):
        p = directory / f"fsync-probe-{i}"
        t0 = time.perf_counter()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - t0)
        os.unlink(p)
    return statistics.median(times) * 1000


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in _read("/proc/mounts").splitlines():
            dev, mnt, typ = line.split()[:3]
            if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, kind = mnt, typ
    return kind


def _terminate(signum, frame):
    # SIGTERM (kill, a CI timeout) ends the run like Ctrl-C: the servers it started are
    # stopped by the `finally`s on the way out, not left holding the ports.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    sessions = [int(s) for s in args.sessions.split(",") if s]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODE_NAMES:
            raise SystemExit(f"unknown mode {m!r}; use new, reuse")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    plan = [(s, m) for m in modes for s in sessions]
    if os.geteuid() != 0:
        raise SystemExit("run as root: Postfix's master needs it (sudo python3 bench/intake.py)")

    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="mwbench-", dir=args.workdir))
    os.chmod(work, 0o755)
    fstype = fs_type(work)
    info["workdir"] = f"{work} ({fstype})"
    if fstype in ("tmpfs", "ramfs", "overlay"):
        log(f"warning: {work} is on {fstype}; fsync may be meaningless there (use --workdir)")
    info["fsync_ms"] = round(fsync_probe(work, args.size), 3)
    if loadavg() > (os.cpu_count() or 1) * 0.5:
        log(f"warning: the machine is busy (load average {loadavg():.1f} on "
            f"{os.cpu_count()} CPUs); figures will be low and noisy (see the load column)")
    log(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']}, kernel {info['kernel']}")
    log(f"work directory {info['workdir']}: write+fsync of a {args.size}-byte file takes "
        f"{info['fsync_ms']} ms (median)")
    log(f"{args.messages} messages of {args.size} bytes per run")

    all_results: dict[str, list[Result]] = {}
    failures: dict[str, str] = {}
    descriptions: dict[str, dict] = {}
    interrupted = False
    dns = loopback_dns.start()     # Mailwright's SPF/DMARC lookups: loopback only
    try:
        if not (os.path.exists(POSTFIX) and os.path.exists(SMTP_SOURCE)):
            if args.no_install:
                raise BenchError(f"{POSTFIX} or {SMTP_SOURCE} missing and --no-install given")
            ensure_postfix()     # smtp-source comes with it
        elif "postfix" in servers:
            stop_system_postfix()
        makers: dict = {}
        if "postfix" in servers:
            def make_pf(tag):
                return PostfixServer(args.postfix_port, work / f"postfix-{tag}",
                                     args.accounting, args.postfix_delivery)
            makers["postfix"] = make_pf
        pythons = mailwright_installs(args) if any(
            s.startswith("mailwright") for s in servers) else []
        for server_key in ("mailwright", "mailwright+auth"):
            if server_key not in servers:
                continue
            # +auth rows run on the first interpreter only: they compare checks, not builds
            for tag, exe in (pythons if server_key == "mailwright" else pythons[:1]):
                key = f"{server_key}:{tag}"

                def make_mw(run_tag, key=key, tag=tag, exe=exe, server_key=server_key):
                    return MailwrightServer(args.mailwright_port, work / f"{key}-{run_tag}",
                                            args.accounting, exe=exe,
                                            workers=args.workers,
                                            config_template=args.mailwright_config,
                                            delivery=args.postfix_delivery,
                                            sync_method=args.mailwright_sync,
                                            nameserver=dns.nameserver,
                                            check_loopback=server_key == "mailwright+auth",
                                            python_tag=tag)
                makers[key] = make_mw
        for key, make in makers.items():
            probe = make("x")
            probe.acct.close()
            descriptions[key] = probe.describe()
            if key != "postfix":
                log(f"{probe.label}: Python {descriptions[key]['interpreter']}")
        all_results = bench_servers(makers, args, plan, failures)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted")
    finally:
        dns.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    results = [r for rs in all_results.values() for r in rs]
    print()
    print(f"Intake benchmark, {info['date']}: {info['nproc']} x {info['cpu']}, {info['memory']}")
    print(f"Disk: {info['workdir']}, write+fsync of a new {args.size}-byte file: "
          f"{info['fsync_ms']} ms (median of 200)")
    print(f"smtp-source: {args.messages} messages x {args.size} bytes per run, 1 recipient, "
          f"loopback; median of {args.repeat} run(s)")
    for key, d in descriptions.items():
        print(f"  {key}: " + "; ".join(f"{k}={v}" for k, v in d.items() if k != "config"))
    print(f"  CPU and memory accounting: {results[0].accounting if results else '?'}; "
          "CPU ms/msg = server CPU while smtp-source ran; +drain includes finishing the queue")
    print()
    if results:
        print(fmt_table(results))
        print()
    for key, rs in all_results.items():
        if key == "postfix" or "postfix" not in all_results or not rs:
            continue
        what = ("SPF/DKIM/ARC/DMARC on every message; Postfix runs no such checks"
                if key.startswith("mailwright+auth") else "defaults")
        print(f"{rs[0].server} ({what}) / Postfix")
        print(fmt_ratios(all_results["postfix"], rs))
        print()
    for key, d in descriptions.items():
        if key != "postfix":
            print(f"{d['server']}: figures produced by Python {d['interpreter']}")
    for k, v in failures.items():
        print(f"{k}: FAILED: {v.splitlines()[0]}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "servers": descriptions,
                                         "failures": failures,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": [asdict(r) for r in results]}, indent=2))
    if interrupted:
        return 130
    return 1 if failures or any(r.errors for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"intake.py: {exc}", file=sys.stderr)
        sys.exit(1)
