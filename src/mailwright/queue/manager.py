"""The queue manager: claim due messages, route, hand them to agents, record per-recipient results.

What: one asyncio task (``await QueueManager.run()`` until ``stop()``) that moves committed
mail to its delivery agents. It never talks SQL (the Store does) and never touches files or
sockets (agents do).

How, per pass (``run_once``):
1. ``store.claim_due(now, batch, owner, lease_seconds)`` leases messages whose QUEUED
   recipients are due.
2. Each due recipient is routed (``router.route(address) -> Route | None``) and grouped by
   ``Route.transport``; each group is one ``agent.deliver(message, body, tasks)`` call, the
   body from ``store.fetch_body`` (in memory when the store keeps it inline, else a file).
   Agent calls across all claimed messages run concurrently, bounded by a semaphore
   (``concurrency``), each under ``delivery_timeout``.
3. Results go to ``store.record_results(queue_id, results, now, next_attempt_at)``, which
   marks ok → DELIVERED, permanent → FAILED, temporary → QUEUED with attempts+1 and
   ``next_attempt_at`` from the ``RetrySchedule``. When the schedule says the message has
   expired, the temporary failures are recorded as permanent instead, with the reply
   ``451 4.4.7 Message expired; last error: <reply>`` (RFC 3463 X.4.7; RFC 3464 reports
   such a recipient with Action: failed and the 4.4.7 status). In the same store call
   the DSNs now owed are flagged per recipient (``record_results(dsn=...)``, below).
4. The DSN step (``send_dsns``, at the end of every pass) reads ``store.pending_dsns``
   and sends what is owed (see "Delivery status notifications").
Between passes the loop sleeps until ``store.next_due_time()`` (capped by ``idle_interval``)
or until ``wake()`` — intake calls it after a commit so local delivery is immediate.

Cluster stores (PostgreSQL; each hook is used only when the store has it): the sleep also
ends when any node commits or releases work (``store.wait_for_work``, LISTEN/NOTIFY);
bodies are read without blocking the loop (``fetch_body``, ``read_body_async``); the leases
of messages in delivery are renewed every third of ``lease_seconds``
(``store.renew_leases``), so only a dead node's work is taken over.

Delivery status notifications (RFC 3461, RFC 3464; the report is built by message/dsn.py):
* Owed, decided with each result by ``dsn.owed_action`` from the recipient's NOTIFY, and
  only when the envelope sender is not null (RFC 5321 §4.5.5; a DSN has the null sender,
  so a failing DSN is just recorded as failed, never answered by another DSN):
  permanent failure or expiry → "failed" (NOTIFY absent or FAILURE); a temporary failure
  once ``delay_warning_after`` seconds (0 = never) have passed since arrival → "delayed"
  (NOTIFY absent or DELAY; at most once per recipient, noticed at the first attempt after
  that time, so up to one retry interval late); success → "delivered", or "relayed" when
  the agent says the next hop lacked DSN (``DeliveryResult.dsn_relayed``; NOTIFY=SUCCESS
  only). NOTIFY=NEVER: nothing. The flag is written in the same transaction as the
  result, so a crash cannot lose an owed DSN.
* Sent by ``send_dsns``: per message, one DSN per kind (failure, delay, success) covering
  every owed recipient, built from the stored body (RET, ``dsn_max_original_size``) and
  committed with ``store.commit_dsn`` as a new queued message (sender "", recipient =
  the original sender), which clears exactly those flags in the same transaction:
  exactly once, even with several workers. The DSN is then delivered like any message
  (local sender → Maildir, remote → the smtp transport). A message stays incomplete
  (body kept) until its owed DSNs are sent.

Routing outcomes (``Route.transport`` values the manager interprets itself):
* router returns ``None``            → temporary ``451 4.4.0 No route to recipient``
* ``Route(transport="reject", ...)`` → permanent ``550 5.1.1 Mailbox unavailable`` (a local
  user removed after acceptance)
* ``Route(transport="defer", ...)``  → temporary ``451 4.4.0 Delivery deferred by routing``
* router raises                      → temporary ``451 4.3.0``
* any other transport goes to ``agents[transport]``; none registered → temporary
  ``451 4.4.0 No outbound transport configured`` ("smtp") or ``451 4.3.5 ...`` (others).

Invariants (GUIDE ideas 4 and 6):
* Every claimed recipient gets exactly one result per pass: an agent that raises, times
  out, or omits a recipient yields a temporary failure for it; mail is retried, never lost.
* The loop never dies of a delivery or store error: it logs, backs off, continues.
* One delivery at a time per message in a process: a message a claim returns while it is
  still being delivered here (its lease ran out while it waited for a slot) is skipped.
* Results are recorded before the lease can expire: ``delivery_timeout`` defaults to
  80 % of ``lease_seconds``. Should an abandoned agent still finish after the timeout
  (a thread cannot be cancelled), agents are idempotent per (queue id, recipient id),
  so the retry reports the earlier copy instead of writing a second one.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections import defaultdict
from typing import Awaitable, Callable, Mapping, Protocol, Sequence

from ..delivery.base import DeliveryAgent, DeliveryTask
from ..message import dsn as dsnlib
from ..queue.body import MessageBody
from ..queue.model import (
    DeliveryResult, Envelope, QueuedMessage, QueuedRecipient, RecipientRequest,
)
from ..metrics.mail import MailMetrics
from ..routing.route import Route
from ..store.base import Store, StoreError
from .retry import HOUR, RetrySchedule

log = logging.getLogger(__name__)

REJECT = "reject"
DEFER = "defer"

DSN_SCAN_INTERVAL = 10.0   # seconds between DSN scans when nothing here flagged one
INTAKE_WAKE_DELAY = 0.02   # seconds new mail waits for more to arrive before a pass
NO_ROUTE_REPLY = "451 4.4.0 No route to recipient"
REJECT_REPLY = "550 5.1.1 Mailbox unavailable"
DEFER_REPLY = "451 4.4.0 Delivery deferred by routing"
ROUTER_ERROR_REPLY = "451 4.3.0 Temporary routing error"
NO_OUTBOUND_REPLY = "451 4.4.0 No outbound transport configured"
NO_AGENT_REPLY = "451 4.3.5 No delivery agent configured for this transport"
AGENT_ERROR_REPLY = "451 4.3.0 Temporary local delivery error"
BODY_ERROR_REPLY = "451 4.3.0 Message body unavailable"
AGENT_TIMEOUT_REPLY = "451 4.4.1 Delivery attempt timed out"
NO_RESULT_REPLY = "451 4.3.0 Delivery agent returned no result"
EXPIRED_PREFIX = "451 4.4.7 Message expired"


class Router(Protocol):
    def route(self, address: str) -> Route | None | Awaitable[Route | None]: ...


def expired_reply(last_reply: str) -> str:
    return f"{EXPIRED_PREFIX}; last error: {last_reply}" if last_reply else EXPIRED_PREFIX


class QueueManager:
    """See the module docstring. ``owner`` names this process in store leases."""

    def __init__(self, store: Store, router: Router, agents: Mapping[str, DeliveryAgent],
                 retry: RetrySchedule, owner: str, clock: Callable[[], float] = time.time,
                 *, batch: int = 50, concurrency: int = 20, lease_seconds: float = 900.0,
                 delivery_timeout: float | None = None, idle_interval: float = 60.0,
                 error_backoff: float = 5.0, min_sleep: float = 0.5,
                 hostname: str = "localhost", delay_warning_after: float = 4 * HOUR,
                 dsn_max_original_size: int = dsnlib.DEFAULT_MAX_ORIGINAL,
                 metrics: MailMetrics | None = None,
                 intake_wake_delay: float = INTAKE_WAKE_DELAY) -> None:
        if batch < 1 or concurrency < 1 or lease_seconds <= 0:
            raise ValueError("batch, concurrency and lease_seconds must be positive")
        self.store = store
        self.router = router
        self.agents = dict(agents)
        self.retry = retry
        self.owner = owner
        self.clock = clock
        self.batch = batch
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.delivery_timeout = (delivery_timeout if delivery_timeout is not None
                                 else lease_seconds * 0.8)
        self.idle_interval = idle_interval
        self.error_backoff = error_backoff
        self.min_sleep = min_sleep
        self.hostname = hostname                  # Reporting-MTA and MAILER-DAEMON@ of DSNs
        self.delay_warning_after = delay_warning_after
        self.dsn_max_original_size = dsn_max_original_size
        self._semaphore = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._stopping = False
        # The DSN step reads the store only when a DSN may be owed: after results that
        # owe one, after a wake that may have set flags (operator commands), when the
        # last scan left work, and every DSN_SCAN_INTERVAL seconds for flags set
        # elsewhere (another node, a process that did not wake us).
        self._dsn_scan_due = True
        self._next_dsn_scan = 0.0
        self.intake_wake_delay = intake_wake_delay
        self._intake_wake: asyncio.TimerHandle | None = None
        self.metrics = metrics if metrics is not None else MailMetrics()
        self._transports: dict[str, dict[int, str]] = {}   # queue id -> rcpt id -> transport
        self.leased: set[str] = set()       # queue ids being delivered (leases to renew)
        self.lease_renewals = 0             # leases extended so far (tests, heartbeat info)

    # ------------------------------------------------------------------ control
    def wake(self, dsns: bool = True) -> None:
        """Ask for a pass now. Safe to call any time. Intake passes ``dsns=False`` after
        a commit (new mail owes no DSN yet); other callers (operator commands that bounce
        or expire) may have flagged DSNs, so the pass also looks for them."""
        if dsns:
            self._dsn_scan_due = True
        self._wake.set()

    def mail_arrived(self) -> None:
        """Intake committed new mail: a pass within ``intake_wake_delay`` seconds.

        Waking at once for every commit made each message, under a lone client, a pass of
        its own: one claim, one result transaction and one flush each, competing with
        intake for the CPU and the disk (one session ran 1.7 x faster with the delivering
        process stopped). Mail that arrives within the delay is claimed, delivered and
        recorded together (Postfix's qmgr likewise takes what arrived as a batch); the
        delay is far below what anyone notices in delivery."""
        if self._intake_wake is not None or self._wake.is_set():
            return
        if self.intake_wake_delay <= 0:
            self._wake.set()
            return
        self._intake_wake = asyncio.get_running_loop().call_later(
            self.intake_wake_delay, self._intake_wake_due)

    def _intake_wake_due(self) -> None:
        self._intake_wake = None
        self._wake.set()

    def stop(self) -> None:
        """Finish the current pass, then return from ``run``."""
        self._stopping = True
        if self._intake_wake is not None:
            self._intake_wake.cancel()
            self._intake_wake = None
        self._wake.set()

    async def run(self) -> None:
        """Deliver until ``stop()``. Never raises for delivery or store errors.

        Deliveries are a pipeline, not waves: up to ``batch`` messages are in flight, and
        when they fall to half of that the next due ones are claimed, so connections and
        agents never sit idle waiting for the slowest message of a wave."""
        self._stopping = False
        in_flight: set[asyncio.Task] = set()
        low_water = max(1, self.batch // 2)

        def finished(task: asyncio.Task) -> None:
            in_flight.discard(task)
            if len(in_flight) <= low_water:
                self._wake.set()

        renewer = (asyncio.get_running_loop().create_task(self._renew_leases())
                   if hasattr(self.store, "renew_leases") else None)
        release_own = False
        while not self._stopping:
            self._wake.clear()  # wakes during the pass below trigger another pass
            free = self.batch - len(in_flight)
            claimed = 0
            if free >= self.batch - low_water:
                try:
                    if release_own:
                        # The failed claim may have committed without its reply reaching
                        # us: leases we hold on messages we are not delivering are ours
                        # to give back, or they would wait for their expiry.
                        n = await self.store.release_leases(self.owner, list(self.leased))
                        release_own = False
                        if n:
                            log.warning("released %d lease(s) left by a claim whose reply "
                                        "was lost", n)
                    messages = await self.store.claim_due(self.clock(), free, self.owner,
                                                          self.lease_seconds)
                except Exception:
                    log.exception("claiming due messages failed; retrying in %.1fs",
                                  self.error_backoff)
                    release_own = hasattr(self.store, "release_leases")
                    await self._sleep(self.error_backoff)
                    continue
                for message in messages:
                    if message.queue_id in self.leased:
                        # Still being delivered here (its lease ran out while it waited
                        # for a slot, and this claim took it again): never a second copy.
                        continue
                    task = asyncio.get_running_loop().create_task(self._process(message))
                    in_flight.add(task)
                    task.add_done_callback(finished)
                claimed = len(messages)
            await self._dsns_if_due()
            if self._stopping:
                break
            if claimed and claimed >= free:
                continue  # probably more due work
            if in_flight:
                await self._sleep(self.idle_interval)   # a finishing delivery wakes us
            else:
                await self._sleep(await self._idle_timeout(claimed))
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        if renewer is not None:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _renew_leases(self) -> None:
        """Cluster stores: every third of ``lease_seconds`` extend the leases of the
        messages in delivery, so a long delivery keeps its message while a dead node's
        leases run out (then another node takes its work over)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = list(self.leased)
            if not ids:
                continue
            try:
                held = await self.store.renew_leases(  # type: ignore[attr-defined]
                    self.owner, ids, self.lease_seconds, now=self.clock())
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("renewing %d lease(s) failed: %s", len(ids), exc)
                continue
            self.lease_renewals += held
            if held < len(ids):
                log.warning("%d of %d lease(s) were lost (expired and claimed elsewhere); "
                            "delivery stays idempotent", len(ids) - held, len(ids))

    async def _idle_timeout(self, claimed: int) -> float:
        try:
            due = await self.store.next_due_time()
        except Exception:
            log.exception("next_due_time failed")
            return self.error_backoff
        if due is None:
            return self.idle_interval
        timeout = min(max(due - self.clock(), 0.0), self.idle_interval)
        if timeout <= 0 and claimed == 0:
            # Due but nothing claimable (leased by another owner, or clock skew): do not spin.
            timeout = self.min_sleep
        return timeout

    async def _sleep(self, timeout: float) -> None:
        """Until ``wake()``, ``timeout`` or, with a cluster store, work committed or
        released by any node (``store.wait_for_work``: LISTEN/NOTIFY)."""
        if self._wake.is_set() or timeout <= 0:
            return
        waiters = [asyncio.ensure_future(self._wake.wait())]
        wait_for_work = getattr(self.store, "wait_for_work", None)
        if wait_for_work is not None:
            waiters.append(asyncio.ensure_future(wait_for_work(timeout)))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    # ------------------------------------------------------------------ one pass
    async def run_once(self) -> int:
        """Claim one batch of due messages, deliver and record them. Returns how many
        messages were claimed. Store errors from claim_due propagate (``run`` backs off)."""
        now = self.clock()
        messages = await self.store.claim_due(now, self.batch, self.owner, self.lease_seconds)
        if messages:
            await asyncio.gather(*(self._process(m) for m in messages))
        try:
            await self.send_dsns()
        except Exception:  # flags stay set: the next pass tries again
            log.exception("DSN step failed")
        return len(messages)

    async def _process(self, message: QueuedMessage) -> None:
        self.leased.add(message.queue_id)
        try:
            await self._process_leased(message)
        finally:
            self.leased.discard(message.queue_id)

    async def _process_leased(self, message: QueuedMessage) -> None:
        try:
            results = await self._deliver_message(message)
        except Exception:  # a bug here must not lose the message: defer everything
            log.exception("processing %s failed", message.queue_id)
            results = [self._temp(r, AGENT_ERROR_REPLY) for r in message.recipients]
        try:
            await self._record(message, results)
        except Exception:
            # The lease expires and the message is claimed again; idempotent agents make
            # the repeat harmless.
            log.exception("recording results for %s failed", message.queue_id)

    async def _deliver_message(self, message: QueuedMessage) -> list[DeliveryResult]:
        results: dict[int, DeliveryResult] = {}
        groups: dict[str, list[DeliveryTask]] = defaultdict(list)
        for rcpt in message.recipients:
            route, failure = await self._route(rcpt)
            if failure is not None:
                results[rcpt.id] = failure
            else:
                assert route is not None
                groups[route.transport].append(DeliveryTask(message, rcpt, route))
        if groups:
            body = await self._fetch_body(message)
            if body is None:
                results.update((t.recipient.id, self._temp(t.recipient, BODY_ERROR_REPLY))
                               for tasks in groups.values() for t in tasks)
            elif len(groups) == 1:        # the usual case: no extra task per transport
                [(transport, tasks)] = groups.items()
                results.update(await self._call_agent(message, body, transport, tasks))
            else:
                outcomes = await asyncio.gather(
                    *(self._call_agent(message, body, transport, tasks)
                      for transport, tasks in groups.items()))
                for group_results in outcomes:
                    results.update(group_results)
        self._transports[message.queue_id] = {t.recipient.id: transport
                                              for transport, ts in groups.items() for t in ts}
        return [results[r.id] for r in message.recipients]

    async def _fetch_body(self, message: QueuedMessage) -> MessageBody | None:
        """The body for the agents, or None (logged) when the store cannot give it: its
        recipients then fail temporarily, as for any unknown error."""
        try:
            return await self.store.fetch_body(message)
        except StoreError as exc:         # NotFoundError included
            log.error("%s: body unavailable: %s", message.queue_id, exc)
            return None

    async def _route(self, rcpt: QueuedRecipient
                     ) -> tuple[Route | None, DeliveryResult | None]:
        try:
            route = self.router.route(rcpt.address)
            if inspect.isawaitable(route):
                route = await route
        except Exception:
            log.exception("routing %s failed", rcpt.address)
            return None, self._temp(rcpt, ROUTER_ERROR_REPLY)
        if route is None:
            return None, self._temp(rcpt, NO_ROUTE_REPLY)
        if route.transport == REJECT:
            return None, DeliveryResult(rcpt.id, ok=False, permanent=True, reply=REJECT_REPLY)
        if route.transport == DEFER:
            return None, self._temp(rcpt, DEFER_REPLY)
        return route, None

    async def _call_agent(self, message: QueuedMessage, body: MessageBody, transport: str,
                          tasks: list[DeliveryTask]) -> dict[int, DeliveryResult]:
        agent = self.agents.get(transport)
        if agent is None:
            reply = NO_OUTBOUND_REPLY if transport == "smtp" else NO_AGENT_REPLY
            log.warning("%s: no agent for transport %r", message.queue_id, transport)
            return {t.recipient.id: self._temp(t.recipient, reply) for t in tasks}
        try:
            async with self._semaphore:
                # asyncio.timeout (3.11) rather than wait_for: no task per delivery
                async with asyncio.timeout(self.delivery_timeout):
                    returned = await agent.deliver(message, body, tasks)
        except TimeoutError:
            log.warning("%s: %s agent timed out", message.queue_id, transport)
            return {t.recipient.id: self._temp(t.recipient, AGENT_TIMEOUT_REPLY) for t in tasks}
        except Exception:
            log.exception("%s: %s agent raised", message.queue_id, transport)
            return {t.recipient.id: self._temp(t.recipient, AGENT_ERROR_REPLY) for t in tasks}
        return self._match_results(message, transport, tasks, returned)

    def _match_results(self, message: QueuedMessage, transport: str,
                       tasks: Sequence[DeliveryTask], returned: object
                       ) -> dict[int, DeliveryResult]:
        """Exactly one result per task: unknown ids and duplicates are dropped (logged),
        missing ones become temporary failures."""
        wanted = {t.recipient.id for t in tasks}
        out: dict[int, DeliveryResult] = {}
        for res in returned if isinstance(returned, (list, tuple)) else ():
            if not isinstance(res, DeliveryResult) or res.recipient_id not in wanted:
                log.error("%s: %s agent returned a stray result %r",
                          message.queue_id, transport, res)
            elif res.recipient_id in out:
                log.error("%s: %s agent returned two results for recipient %s",
                          message.queue_id, transport, res.recipient_id)
            else:
                out[res.recipient_id] = res
        for t in tasks:
            if t.recipient.id not in out:
                log.error("%s: %s agent returned no result for recipient %s",
                          message.queue_id, transport, t.recipient.id)
                out[t.recipient.id] = self._temp(t.recipient, NO_RESULT_REPLY)
        return out

    async def _record(self, message: QueuedMessage, results: list[DeliveryResult]) -> None:
        now = self.clock()
        by_id = {r.id: r for r in message.recipients}
        temporary = [r for r in results if not r.ok and not r.permanent]
        next_at: float | None = None
        if temporary:
            attempts = max(by_id[r.recipient_id].attempts for r in temporary) + 1
            next_at = self.retry.next_attempt(now, attempts, message.envelope.received_at)
            if next_at is None:
                log.info("%s expired after %d attempts", message.queue_id, attempts)
                results = [dataclasses.replace(r, permanent=True, reply=expired_reply(r.reply),
                                               status="4.4.7")
                           if (not r.ok and not r.permanent) else r for r in results]
        for r in results:
            log.info("%s rcpt=%s %s: %s", message.queue_id, r.recipient_id,
                     "ok" if r.ok else ("failed" if r.permanent else "deferred"), r.reply,
                     extra={"id": message.queue_id})
        self.metrics.delivery_results(results, self._transports.pop(message.queue_id, {}),
                                      message.envelope.received_at, now)
        owed = self._owed_dsns(message, by_id, results, now)
        await self._store_results(message.queue_id, results, now, next_at, owed)

    async def _store_results(self, queue_id: str, results: list[DeliveryResult], now: float,
                             next_at: float | None, owed: dict[int, str]) -> None:
        """``store.record_results``, tried again while the store is unavailable (e.g. a
        database restart) for up to half the lease, which we still hold: the outcome is
        recorded as soon as the store is back instead of waiting for the lease to
        expire. Other errors, or a longer outage, propagate (the lease then expires)."""
        deadline = time.monotonic() + self.lease_seconds / 2
        pause = 0.25
        while True:
            try:
                if owed:
                    await self.store.record_results(queue_id, results, now, next_at, dsn=owed)
                    self._dsn_scan_due = True
                else:
                    await self.store.record_results(queue_id, results, now, next_at)
                return
            except StoreError as exc:
                if (not getattr(exc, "transient", False) or self._stopping
                        or time.monotonic() + pause > deadline):
                    raise
                log.warning("%s: recording results failed (%s); retrying in %.2fs",
                            queue_id, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    # ------------------------------------------------------------------ DSNs
    def _owed_dsns(self, message: QueuedMessage, by_id: Mapping[int, QueuedRecipient],
                   results: Sequence[DeliveryResult], now: float) -> dict[int, str]:
        """Recipient id → DSN action owed after these results (module docstring)."""
        env = message.envelope
        if not env.sender:       # never a DSN to the null sender (RFC 5321 §4.5.5)
            return {}
        delay_due = (self.delay_warning_after > 0
                     and now - env.received_at >= self.delay_warning_after)
        owed: dict[int, str] = {}
        for r in results:
            rcpt = by_id.get(r.recipient_id)
            if rcpt is None:
                continue
            action = dsnlib.owed_action(rcpt.notify, ok=r.ok, permanent=r.permanent,
                                        relayed=r.dsn_relayed, delay_due=delay_due,
                                        delay_already=rcpt.dsn_delayed)
            if action is not None:
                owed[r.recipient_id] = action
        return owed

    async def _dsns_if_due(self) -> None:
        """The DSN step of a pass in ``run``: skipped unless a DSN may be owed (above)."""
        now = time.monotonic()
        if not self._dsn_scan_due and now < self._next_dsn_scan:
            return
        self._dsn_scan_due = False
        self._next_dsn_scan = now + DSN_SCAN_INTERVAL
        try:
            await self.send_dsns()
        except Exception:  # flags stay set: the next pass tries again
            self._dsn_scan_due = True
            log.exception("DSN step failed")

    async def send_dsns(self) -> int:
        """Send every owed DSN (``store.pending_dsns``); returns how many were committed.
        A failure leaves the flags set for the next pass."""
        pending = await self.store.pending_dsns(self.batch)
        if len(pending) >= self.batch:
            self._dsn_scan_due = True          # more than one batch owed: go on next pass
        sent = 0
        for message in pending:
            try:
                sent += await self._send_message_dsns(message)
            except Exception:
                self._dsn_scan_due = True
                log.exception("%s: sending DSN failed; will retry", message.queue_id)
        if sent:
            self._wake.set()    # deliver the new DSNs promptly
        return sent

    async def _send_message_dsns(self, message: QueuedMessage) -> int:
        now = self.clock()
        env = message.envelope
        owed = {r.id: r.dsn_pending for r in message.recipients if r.dsn_pending}
        if not owed:
            return 0
        if not env.sender:
            await self.store.clear_dsn(message.queue_id, owed, now)
            return 0
        try:
            read_async = getattr(self.store, "read_body_async", None)
            original: bytes | None = (await read_async(message) if read_async is not None
                                      else await asyncio.to_thread(self.store.read_body, message))
        except StoreError as exc:
            log.warning("%s: body unavailable for the DSN (%s); sending without it",
                        message.queue_id, exc)
            original = None
        groups: dict[str, list[QueuedRecipient]] = defaultdict(list)
        for r in message.recipients:
            if r.dsn_pending:
                kind = (r.dsn_pending if r.dsn_pending in (dsnlib.FAILED, dsnlib.DELAYED)
                        else dsnlib.DELIVERED)
                groups[kind].append(r)
        sent = 0
        for kind in (dsnlib.FAILED, dsnlib.DELAYED, dsnlib.DELIVERED):
            rcpts = groups.get(kind)
            if not rcpts:
                continue
            report = dsnlib.Report(
                reporting_mta=self.hostname, sender=env.sender, arrival_date=env.received_at,
                envid=env.envid, ret=env.ret, queue_id=message.queue_id,
                smtputf8=env.smtputf8,
                recipients=[self._recipient_report(env, r) for r in rcpts])
            built = dsnlib.build_dsn(report, original, now=now,
                                     max_original_size=self.dsn_max_original_size)
            blob = self.store.new_blob()
            try:
                blob.write(built.data)
            except BaseException:
                blob.abort()
                raise
            dsn_env = Envelope(sender="", recipients=[RecipientRequest(env.sender)],
                               received_at=now, protocol="local",
                               body_type="8BITMIME" if built.eight_bit else "7BIT",
                               smtputf8=built.smtputf8, size=len(built.data), listener="dsn")
            qid = await self.store.commit_dsn(dsn_env, blob, message.queue_id,
                                              {r.id: r.dsn_pending for r in rcpts}, now)
            if qid is None:
                continue
            sent += 1
            log.info("%s: %s DSN %s to <%s> for %d recipient(s)", message.queue_id, kind,
                     qid, env.sender, len(rcpts))
        return sent

    def _recipient_report(self, env: Envelope, r: QueuedRecipient) -> dsnlib.RecipientReport:
        delayed = r.dsn_pending == dsnlib.DELAYED
        return dsnlib.RecipientReport(
            final_recipient=r.address, action=r.dsn_pending or dsnlib.FAILED,
            status=r.status, original_recipient=r.orcpt, remote_mta=r.remote_mta,
            diagnostic=r.last_reply, last_attempt=r.last_attempt_at,
            will_retry_until=self.retry.deadline(env.received_at) if delayed else None)

    @staticmethod
    def _temp(rcpt: QueuedRecipient, reply: str) -> DeliveryResult:
        return DeliveryResult(rcpt.id, ok=False, permanent=False, reply=reply)
