"""The server process: wiring from settings to running listeners, workers and queue manager.

Process model: the primary process binds every listening socket and runs the queue
manager. With ``workers = 1`` it also accepts and serves the SMTP sessions itself (one
process). With ``workers = N > 1`` it leaves intake to N workers started as fresh
interpreters (``python -m mailwright.app --worker``) that inherit the listening sockets
(the kernel spreads connections), so delivery never shares an event loop or a GIL with
sessions waiting for their 250. Workers commit to the same store and wake the primary's
queue manager through a pipe after each commit. A worker that dies is restarted (in the
same slot, ``--slot``); workers exit when the primary goes away. Each process counts its
own metrics; the primary serves them all (``[metrics]``, metrics/runtime.py).

Local submission (``mailwright sendmail``) commits into the store directly and then pokes
the primary through a unix datagram socket, ``data_dir/run/wake.sock`` (``WAKE_SOCKET``):
any datagram wakes the queue manager.  A missing or dead socket only delays delivery until
the manager's next idle pass.

Start-up order: data directory, TLS material (self-signed on first start), store migration
and crash recovery (half-written bodies removed, committed messages resume), local domains
and the postmaster mailbox seeded, then the queue manager (queued mail starts leaving at
once), then the policy checks and the listeners.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from . import logs
from .config.settings import Settings, load_settings
from .metrics.runtime import MetricsRuntime
from .net.dns import resolver_from_settings
from .net.intake import IntakeServer, Limits, ListenerSpec, bind_listener
from .net.tls import ensure_self_signed, server_context
from .policy.registry import build_checks
from .routing.directory import Directory
from .routing.router import Router

log = logging.getLogger("mailwright.server")

#: The primary's wake-up socket, relative to data_dir (see the module docstring).
WAKE_SOCKET = "run/wake.sock"


def wake_socket_path(settings: Settings) -> str:
    return str(settings.resolve(WAKE_SOCKET))


def _bind_wake_socket(path: str) -> socket.socket | None:
    """A non-blocking unix datagram socket at ``path`` (a stale file is replaced)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        return sock
    except OSError as exc:   # e.g. a path longer than sun_path allows
        log.warning("wake socket %s unavailable (%s); local submissions wait for the "
                    "next queue pass", path, exc)
        return None


def _batv_hook(settings: Settings, name: str, is_local=None):
    """A BATV hook (policy/backscatter.py) when ``[antiabuse] batv`` is on, else None."""
    from .policy.backscatter import build_batv
    batv = build_batv(settings, is_local)
    return getattr(batv, name) if batv is not None else None


def _listener_specs(settings: Settings) -> list[ListenerSpec]:
    return [ListenerSpec(name=l.name, address=l.address, port=l.port, role=l.role, tls=l.tls)
            for l in settings.listeners]


def _limits(settings: Settings) -> Limits:
    l = settings.limits
    return Limits(max_message_size=l.max_message_size, max_recipients=l.max_recipients,
                  max_line_length=l.max_line_length, max_errors=l.max_errors,
                  max_connections=l.max_connections,
                  max_connections_per_ip=l.max_connections_per_ip,
                  command_timeout=float(l.command_timeout), data_timeout=float(l.data_timeout))


def _open_store(settings: Settings):
    from .cluster.node import open_settings_store
    return open_settings_store(settings, sync_method(settings))


def sync_method(settings: Settings) -> str:
    """[store] sync_method with "auto" resolved: syncfs(2) where Linux has it."""
    method = settings.store.sync_method
    if method == "auto":
        from .store.blobs import BlobDir
        method = "syncfs" if BlobDir.syncfs_available() else "fsync"
    return method


def primary_domain(settings: Settings) -> str:
    domains = settings.local_domains or ("localhost",)
    return settings.hostname if settings.hostname in domains else domains[0]


async def prepare(settings: Settings) -> None:
    """Everything that must happen once before any listener accepts mail."""
    paths = settings.paths
    for d in (paths.data_dir, paths.blob_dir, paths.maildir_root):
        os.makedirs(d, exist_ok=True)
    if not settings.tls.cert_file and ensure_self_signed(str(paths.tls_cert), str(paths.tls_key),
                                                         settings.hostname):
        log.info("created a self-signed certificate for %s in %s", settings.hostname,
                 paths.tls_dir)
    store = _open_store(settings)
    await store.open()
    try:
        removed = await store.recover()
        if removed:
            log.warning("crash recovery removed %s half-written item(s)", removed)
        for problem in await store.maintenance_problems():
            log.warning("store: %s", problem)
        existing = set(await store.list_domains())
        for domain in settings.local_domains or ():
            if domain.lower() not in existing:
                await store.add_domain(domain)
        postmaster = f"postmaster@{primary_domain(settings)}"
        if await store.get_mailbox(postmaster) is None:
            aliases = {a.source for a in await store.list_aliases()}
            if postmaster not in aliases:
                # RFC 5321 §4.5.1: postmaster must always be deliverable.
                await store.add_mailbox(postmaster, "")
                log.info("created mailbox %s (RFC 5321 §4.5.1)", postmaster)
    finally:
        await store.close()


def dmarc_report_identity(settings: Settings) -> dict[str, str]:
    """Who sends our DMARC aggregate reports (RFC 7489 §7.2.1: org_name, email)."""
    domain = primary_domain(settings)
    return {"org_name": domain, "receiver_domain": domain,
            "org_email": settings.auth.dmarc_report_from or f"dmarc-noreply@{domain}"}


shared_resolver = resolver_from_settings    # the one DNS resolver of the process


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on POSIX
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Worker:
    """One event loop: intake on the given sockets, plus the queue manager when primary."""

    def __init__(self, settings: Settings, sockets: list[tuple[ListenerSpec, socket.socket]],
                 *, primary: bool, wake_fd: int | None, config_path: str | None,
                 wake_write_fd: int | None = None, slot: int = 0,
                 slot_sockets: list[list[tuple[ListenerSpec, socket.socket]]] | None = None
                 ) -> None:
        self.settings = settings
        #: primary: the listening sockets of each worker slot (_listening_sockets)
        self.slot_sockets = slot_sockets or [sockets]
        self.slot = slot                     # a worker's place; a restart keeps it (metrics)
        self.wake_write_fd = wake_write_fd   # primary: handed to the workers it spawns
        self.sockets = sockets
        self.primary = primary
        self.wake_fd = wake_fd
        self.config_path = config_path
        self.stopping = asyncio.Event()
        self.children: dict[int, subprocess.Popen] = {}

    async def run(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        paths = settings.paths
        store = _open_store(settings)
        await store.open()
        snapshot = await store.directory_snapshot()
        directory = Directory(snapshot, primary_domain(settings))
        ssl_context = server_context(str(paths.tls_cert), str(paths.tls_key),
                                     settings.tls.min_version)
        resolver = shared_resolver(settings)
        metrics = MetricsRuntime(settings, primary=self.primary, slot=self.slot)
        resolver.on_lookup = metrics.mail.dns_lookup
        manager = None
        intake: IntakeServer | None = None
        tasks = []
        if self.primary:
            # The router reads the live directory that intake keeps fresh (the snapshot
            # until intake exists). The manager starts delivering now, before the slower
            # set-up below (policy checks, listeners): queued mail need not wait for it.
            manager = self._queue_manager(
                store, lambda: intake.directory if intake is not None else directory,
                resolver, metrics=metrics.mail)
            tasks.append(loop.create_task(manager.run()))
            await asyncio.sleep(0)          # let it submit its first claim
        policy = build_checks(settings, resolver=resolver, store=store,
                              hostname=settings.hostname)
        intake = IntakeServer(hostname=settings.hostname, store=store, directory=directory,
                              limits=_limits(settings), ssl_context=ssl_context,
                              trusted_networks=settings.relay.trusted_networks,
                              on_commit=self._on_commit(manager),
                              submission=settings.submission,
                              checks=policy.checks, header_filters=policy.header_filters,
                              trace=settings.trace.enabled, metrics=metrics.mail,
                              resolver=resolver,
                              recipient_rewriter=_batv_hook(settings, "rewrite_recipient"))
        # With intake workers, the primary only delivers (its intake object still keeps the
        # directory snapshot fresh for routing).
        accepting = not self.primary or settings.effective_workers <= 1
        await metrics.start(store)          # before intake: scrapable once mail is served
        await intake.start(self.sockets if accepting else [])
        wake_sock = None
        if manager is not None:
            if self.wake_fd is not None:
                loop.add_reader(self.wake_fd, self._drain, manager)
            wake_sock = _bind_wake_socket(wake_socket_path(settings))
            if wake_sock is not None:
                loop.add_reader(wake_sock.fileno(), self._drain_socket, wake_sock, manager)
            tasks.append(loop.create_task(self._supervise_workers()))
            tasks.append(loop.create_task(self._prune_history(store)))
            if settings.antiabuse.quarantine_retention_days:
                tasks.append(loop.create_task(self._expire_quarantine(store)))
            if hasattr(store, "heartbeat"):         # cluster store: cluster/heartbeat.py
                tasks.append(loop.create_task(self._heartbeat(store, manager)))
            if settings.auth.dmarc_reports:
                tasks.append(loop.create_task(self._dmarc_reports(store, resolver, manager)))
        else:
            tasks.append(loop.create_task(self._watch_parent()))
        log.info("%s ready: %s", "server" if self.primary else "worker",
                 ", ".join(f"{s.name}={s.address}:{sock.getsockname()[1]}/{s.tls}"
                           for s, sock in self.sockets)
                 + ("" if accepting else
                    f" (served by {settings.effective_workers} intake workers)"))
        await self.stopping.wait()
        log.info("shutting down")
        if wake_sock is not None:
            loop.remove_reader(wake_sock.fileno())
            wake_sock.close()
            try:
                os.unlink(wake_socket_path(settings))
            except OSError:
                pass
        await intake.stop()
        await metrics.stop()
        if manager is not None:
            manager.stop()
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if manager is not None:
            for agent in manager.agents.values():
                close = getattr(agent, "close", None)
                if close is not None:
                    await close()       # e.g. pooled outbound connections: QUIT
        for child in self.children.values():
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        await store.close()

    def _queue_manager(self, store, directory_getter, resolver=None, metrics=None):
        from .delivery.discard import DiscardAgent
        from .delivery.maildir import MaildirAgent
        from .delivery.signing import OutboundSigner
        from .delivery.smtp import build_smtp_agent
        from .queue.manager import QueueManager
        from .queue.retry import RetrySchedule
        s = self.settings
        agents = {
            "maildir": MaildirAgent(str(s.paths.maildir_root), s.hostname, s.delivery.fsync,
                                    directory=store),
            "discard": DiscardAgent(),
            # Local domains never leave over SMTP (the router never sends them there;
            # the agent refuses them as a second guard).
            "smtp": build_smtp_agent(s.outbound, hostname=s.hostname, resolver=resolver,
                                     signer=OutboundSigner(
                                         store, s.auth, primary_domain=primary_domain(s),
                                         authserv_id=s.auth.authserv_id or s.hostname),
                                     local_domains=lambda d: directory_getter()
                                     .is_local_domain(d),
                                     sender_rewriter=_batv_hook(
                                         s, "tag_sender",
                                         lambda d: directory_getter().is_local_domain(d))),
        }
        if s.delivery.mailbox_store == "postgres":
            # Mailboxes every node shares (the router's local routes say "maildir").
            from .delivery.pgmailbox import PgMailboxAgent
            agents["maildir"] = PgMailboxAgent(store, s.hostname)
        if hasattr(store, "acquire_slot"):
            # Cluster store: per_destination_concurrency holds across all nodes.
            from .cluster.limits import ClusterDestinationLimiter
            agents["smtp"].limiter = ClusterDestinationLimiter(
                store, s.outbound.per_destination_concurrency,
                owner=f"{store.node}:{os.getpid()}")
        retry = RetrySchedule(first=s.queue.retry_first, factor=s.queue.retry_factor,
                              max_interval=s.queue.retry_max_interval, max_age=s.queue.max_age)
        return QueueManager(store, Router(directory_getter, s.delivery.discard_domains), agents, retry,
                            owner=f"{getattr(store, 'node', None) or socket.gethostname()}"
                                  f":{os.getpid()}",
                            concurrency=s.queue.delivery_concurrency,
                            # messages in flight (claimed, delivering or recording): enough
                            # that a slow commit (an fsync) never leaves a connection idle
                            # (Postfix's qmgr keeps up to 20,000 in its active queue)
                            batch=max(50, min(1000, 4 * s.queue.delivery_concurrency)),
                            lease_seconds=s.queue.lease_seconds, hostname=s.hostname,
                            delay_warning_after=float(s.queue.delay_warning_after),
                            dsn_max_original_size=s.queue.dsn_max_original_size,
                            metrics=metrics)

    def _on_commit(self, manager):
        if manager is not None:
            return lambda queue_id: manager.mail_arrived()
        fd = self.wake_fd
        if fd is None:
            return None

        def notify(queue_id: str) -> None:
            try:
                os.write(fd, b"\x01")
            except BlockingIOError:
                pass  # the pipe is full: the primary is already woken
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    self.stopping.set()
        return notify

    @staticmethod
    def _drain_socket(sock: socket.socket, manager) -> None:
        try:
            while sock.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        manager.wake()

    def _drain(self, manager) -> None:
        try:
            os.read(self.wake_fd, 4096)   # one byte per wake-up: one read empties it
        except BlockingIOError:
            pass
        manager.mail_arrived()          # intake workers' commits

    async def _heartbeat(self, store, manager) -> None:
        from . import __version__
        from .cluster.heartbeat import run_heartbeat
        s = self.settings

        def info() -> dict:
            return {"version": __version__, "pid": os.getpid(), "hostname": s.hostname,
                    "workers": s.effective_workers, "delivering": len(manager.leased),
                    "listeners": [f"{spec.name}={spec.address}:{sock.getsockname()[1]}"
                                  for spec, sock in self.sockets]}
        await run_heartbeat(store, store.node, float(s.store.heartbeat_interval), info)

    async def _prune_history(self, store, interval: float = 3600.0) -> None:
        """Hourly: drop message-trace records older than ``[trace] retention_days``, and
        the rows of messages completed longer ago than ``[queue]
        completed_retention_days`` (without it the database grew by every message ever
        delivered: history, recipients and attempts, forever)."""
        keep = self.settings.trace.retention_days * 86400
        keep_days = self.settings.queue.completed_retention_days
        while True:
            try:
                removed = await store.prune_trace(time.time() - keep)
                if removed:
                    log.info("trace: pruned %d record(s) older than %d days", removed,
                             self.settings.trace.retention_days)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - housekeeping never stops the server
                log.exception("trace pruning failed")
            if keep_days:
                try:
                    removed = await store.prune_completed(time.time() - keep_days * 86400)
                    if removed:
                        log.info("queue: pruned %d message(s) completed more than %d days "
                                 "ago", removed, keep_days)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - housekeeping never stops the server
                    log.exception("pruning completed messages failed")
            await asyncio.sleep(interval)

    async def _expire_quarantine(self, store, interval: float = 3600.0) -> None:
        """Delete messages held in quarantine longer than ``[antiabuse]
        quarantine_retention_days``, hourly (admin/quarantine.py ``expire``)."""
        from .admin.quarantine import QuarantineOps
        ops = QuarantineOps(store, user="mailwright")
        while True:
            try:
                await ops.expire(self.settings.antiabuse.quarantine_retention_days)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - housekeeping never stops the server
                log.exception("quarantine expiry failed")
            await asyncio.sleep(interval)

    async def _dmarc_reports(self, store, resolver, manager) -> None:
        """Queue the DMARC aggregate reports of each ended period (RFC 7489 §7.2)."""
        from .mailauth.dmarc_reporting import plan_reports, queue_reports
        s = self.settings
        interval = s.auth.dmarc_report_interval
        while True:
            # a little after each period boundary, so late commits of the period are in
            now = time.time()
            await asyncio.sleep(interval - now % interval + min(60.0, interval / 10))
            try:
                plans = await plan_reports(store, resolver, **dmarc_report_identity(s),
                                           interval=interval)
                if await queue_reports(store, plans, dmarc_report_identity(s)["org_email"]):
                    manager.wake()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reports never stop the server
                log.exception("DMARC aggregate reports failed; retrying next period")

    async def _watch_parent(self) -> None:
        parent = os.getppid()
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("primary process went away; worker exits")
                self.stopping.set()
                return

    async def _supervise_workers(self) -> None:
        n = self.settings.effective_workers
        slots = range(n) if n > 1 else range(0)
        while not self.stopping.is_set():
            for slot in slots:
                child = self.children.get(slot)
                if child is None or child.poll() is not None:
                    if child is not None:
                        log.error("worker %s exited with %s; restarting", slot, child.returncode)
                    self.children[slot] = self._spawn_worker(slot)
            await asyncio.sleep(1.0)

    def _spawn_worker(self, slot: int = 0) -> subprocess.Popen:
        fds = [sock.fileno() for _, sock in self.slot_sockets[slot % len(self.slot_sockets)]]
        args = [sys.executable, "-m", "mailwright.app", "--worker",
                "--fds", ",".join(map(str, fds)), "--wake-fd", str(self.wake_write_fd),
                "--slot", str(slot)]
        if self.config_path:
            args += ["--config", self.config_path]
        return subprocess.Popen(args, pass_fds=fds + [self.wake_write_fd])


def _listening_sockets(specs: list[ListenerSpec], workers: int
                       ) -> list[list[tuple[ListenerSpec, socket.socket]]]:
    """The listening sockets of each worker slot.

    With several intake workers, each gets sockets of its own on the same addresses
    (SO_REUSEPORT), and the kernel spreads new connections evenly over them. Sharing one
    socket let whichever worker woke first accept a whole burst of connections: 20
    long-lived sessions could all land in one process, leaving the other core idle. A
    worker that exits leaves its sockets' new connections waiting in their backlog for
    its replacement (the primary restarts it within a second or so), never refused."""
    first = [(spec, bind_listener(spec, reuse_port=workers > 1 and _HAS_REUSEPORT))
             for spec in specs]
    if workers <= 1 or not _HAS_REUSEPORT:
        return [first]
    slots = [first]
    for _ in range(1, workers):
        # the same port as the first socket (which may have been an ephemeral one)
        slots.append([(spec, bind_listener(spec, reuse_port=True, port=sock.getsockname()[1]))
                      for spec, sock in first])
    return slots


_HAS_REUSEPORT = hasattr(socket, "SO_REUSEPORT")


def serve(settings: Settings, config_path: str | None = None) -> int:
    """Run the server until SIGTERM/SIGINT. Returns the exit status."""
    logs.setup(settings.log.level, settings.log.format, settings.paths.log_file)
    _install_uvloop()
    asyncio.run(prepare(settings))
    specs = _listener_specs(settings)
    slot_sockets = _listening_sockets(specs, settings.effective_workers)
    sockets = slot_sockets[0]
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    worker = Worker(settings, sockets, primary=True, wake_fd=wake_r, config_path=config_path,
                    wake_write_fd=wake_w, slot_sockets=slot_sockets)
    asyncio.run(worker.run())
    return 0


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailwright-worker")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--config")
    parser.add_argument("--fds", required=True)
    parser.add_argument("--wake-fd", type=int)
    parser.add_argument("--slot", type=int, default=0)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    logs.setup(settings.log.level, settings.log.format, settings.paths.log_file)
    _install_uvloop()
    specs = _listener_specs(settings)
    fds = [int(x) for x in args.fds.split(",")]
    sockets = []
    for spec, fd in zip(specs, fds):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append((spec, sock))
    worker = Worker(settings, sockets, primary=False, wake_fd=args.wake_fd,
                    config_path=args.config, slot=args.slot)
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
