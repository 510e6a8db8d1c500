"""The mail server's metrics: every ``mailwright_*`` family and the hooks that update them.

What: ``MailMetrics`` owns one ``Registry`` with the families below and offers one method
per event the server reports (a connection, a refusal, a commit, a delivery result, a DNS
lookup). Sessions (net/session.py), the queue manager (queue/manager.py) and the resolver
(net/dns.py ``on_lookup``) call these methods; they never touch the families directly, so
names, labels and their meanings live in this one file. docs/operations.md ("Metrics")
lists them for operators.

How: every process has its own ``MailMetrics`` (counting is a dict look-up and an add, so it
is always on; ``[metrics] enabled`` only decides whether anything is served). With intake
workers the primary adds up every process's values (metrics/runtime.py).

Invariants:
* Label values come from a closed set (listener names, check names, transports, DNS types,
  outcomes): never an address, a host name from a peer, or any other peer-chosen text.
* A hook never raises into its caller for an unexpected value: unknowns map to "other".
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from .registry import Registry

__all__ = ["MailMetrics", "DESTINATIONS"]

#: Route.transport -> destination class label.
DESTINATIONS = {"maildir": "local", "smtp": "remote", "discard": "discard"}

_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
_DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                     3600.0, 14400.0, 86400.0, 432000.0)
_QUEUE_STATES = ("queued", "held")


def _check_label(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-.:" for c in name):
        return "other"
    return name


class MailMetrics:
    """The families of one process (see the module docstring and docs/operations.md)."""

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry or Registry()
        self.connections = r.counter(
            "mailwright_smtp_connections_total",
            "SMTP connections accepted on a listener, including those refused over the "
            "connection limits.", ["listener"])
        self.connections_refused = r.counter(
            "mailwright_smtp_connections_refused_total",
            "Connections answered 421 and closed because of max_connections or "
            "max_connections_per_ip.", ["listener"])
        self.sessions_active = r.gauge(
            "mailwright_smtp_sessions_active", "SMTP sessions open now.", ["listener"])
        self.sessions = r.counter(
            "mailwright_smtp_sessions_total",
            "Finished SMTP sessions, by whether TLS was active when they ended "
            "(tls=\"yes\" / \"no\"): the TLS share.", ["listener", "tls"])
        self.transactions = r.counter(
            "mailwright_smtp_transactions_total",
            "Outcomes at the SMTP door: result=\"accepted\" (reason=\"queued\") once per "
            "committed message; result=\"rejected\" (5xx) or \"tempfailed\" (4xx) once per "
            "refusal, with the deciding check as reason.", ["listener", "result", "reason"])
        self.commit_seconds = r.histogram(
            "mailwright_store_commit_seconds",
            "Time from end of data to the durable commit of a message (what a client waits "
            "for before its 250), group commit included.", buckets=_COMMIT_BUCKETS)
        self.delivery_attempts = r.counter(
            "mailwright_delivery_attempts_total",
            "Delivery results recorded per recipient: result ok / temporary / permanent; "
            "destination local / remote / discard, or none when routing failed.",
            ["result", "destination"])
        self.delivery_latency = r.histogram(
            "mailwright_delivery_latency_seconds",
            "Time from acceptance (the 250) to successful final delivery of a recipient.",
            ["destination"], buckets=_DELIVERY_BUCKETS)
        self.dns_seconds = r.histogram(
            "mailwright_dns_lookup_seconds",
            "DNS lookups sent to the network (cache hits excluded), by record type and "
            "outcome (ok, nodata, nxdomain, temporary).", ["type", "outcome"],
            buckets=_DNS_BUCKETS)
        self.queue_recipients = r.gauge(
            "mailwright_queue_recipients",
            "Recipients in the queue by state (queued: waiting for an attempt; held: by "
            "the operator), read from the store at scrape time.", ["state"])

    # ------------------------------------------------------------ intake

    def listeners(self, names: Iterable[str]) -> None:
        """Create the per-listener series at zero, so they exist before the first event."""
        for name in names:
            self.connections.labels(name)
            self.connections_refused.labels(name)
            self.sessions_active.labels(name)
            for tls in ("yes", "no"):
                self.sessions.labels(name, tls)
            self.transactions.labels(name, "accepted", "queued")

    def connection_opened(self, listener: str, refused: bool) -> None:
        self.connections.labels(listener).inc()
        if refused:
            self.connections_refused.labels(listener).inc()
        else:
            self.sessions_active.labels(listener).inc()

    def session_closed(self, listener: str, tls: bool) -> None:
        self.sessions_active.labels(listener).dec()
        self.sessions.labels(listener, "yes" if tls else "no").inc()

    def accepted(self, listener: str, commit_seconds: float) -> None:
        self.transactions.labels(listener, "accepted", "queued").inc()
        self.commit_seconds.observe(commit_seconds)

    def refused(self, listener: str, reason: str, *, temporary: bool) -> None:
        """One refusal: ``reason`` is the deciding check's name (or the session's own:
        loop, framing, storage, store)."""
        self.transactions.labels(listener, "tempfailed" if temporary else "rejected",
                                 _check_label(reason)).inc()

    def verdict(self, listener: str, verdict, reply=None) -> None:
        """A policy verdict that refused (REJECT or TEMPFAIL)."""
        reply = reply if reply is not None else verdict.reply
        temporary = (verdict.action.value == "tempfail" if reply is None
                     else 400 <= reply.code < 500)
        self.refused(listener, verdict.check, temporary=temporary)

    # ------------------------------------------------------------ delivery

    def delivery_results(self, results: Sequence, transports: Mapping[int, str],
                         received_at: float, now: float) -> None:
        """The results recorded for one message's recipients (``DeliveryResult``s);
        ``transports`` maps recipient id -> Route.transport (absent: routing failed)."""
        for r in results:
            transport = transports.get(r.recipient_id)
            destination = DESTINATIONS.get(transport, "other") if transport else "none"
            result = "ok" if r.ok else ("permanent" if r.permanent else "temporary")
            self.delivery_attempts.labels(result, destination).inc()
            if r.ok:
                self.delivery_latency.labels(destination).observe(max(0.0, now - received_at))

    # ------------------------------------------------------------ DNS and the queue

    def dns_lookup(self, rtype: str, seconds: float, outcome: str) -> None:
        """``Resolver.on_lookup`` hook."""
        self.dns_seconds.labels(_check_label(rtype), _check_label(outcome)).observe(seconds)

    def queue_depth(self, counts: Mapping[str, int]) -> None:
        for state in _QUEUE_STATES:
            self.queue_recipients.labels(state).set(counts.get(state, 0))
