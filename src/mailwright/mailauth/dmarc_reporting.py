"""DMARC aggregate reporting: from recorded results to report messages in our own queue.

What: ``DmarcRecorder`` (called by the DMARC policy stage) records each evaluation of a
domain that asks for aggregate reports (``rua``); ``plan_reports`` groups the results of the
past reporting period per policy domain into ``ReportRow`` values (RFC 7489 §7.2, Appendix
C) and builds one report message per ``rua`` destination (mailauth/dmarc_report.py);
``queue_reports`` commits them to the queue like any other mail and deletes the rows they
cover. ``mailwright dmarc report --dry-run`` prints the plan; the server runs
``queue_reports`` once per ``[auth] dmarc_report_interval``.

Rules followed:
* §7.1: a rua address outside the policy domain's organisation is used only when its
  domain publishes ``<policy-domain>._report._dmarc.<rua-domain>``; others are skipped
  (and said so in the plan).
* §6.2 / §7.2.1.1: the rua ``!size`` limit is honoured (an oversize report is not sent).
* Only mailto: destinations; one report per destination and period.
* The period is aligned to ``interval`` (UTC): results are reported once the period they
  fall into has ended, so a report never covers a half-finished period twice.
* Rows are deleted only after the report messages are durably queued, so a crash between
  the two sends a report twice rather than never (duplicates are harmless: the report id
  is the same).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..queue.model import Envelope, RecipientRequest
from .dmarc import DMARCRecordError, parse_record
from .dmarc_report import (
    DKIMAuthResult, ReportRow, SPFAuthResult, build_aggregate_xml, build_report_message,
    external_destination_allowed,
)

log = logging.getLogger("mailwright.dmarc.reports")


class DmarcRecorder:
    """Records a DMARC evaluation for the aggregate report (fire and forget)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __call__(self, session: Any, txn: Any, result: Any, disposition: str) -> None:
        record = result.record
        if record is None or not record.rua or not result.policy_domain:
            return                      # nobody asked for reports
        spf = txn.facts.get("spf")
        reasons = []
        if result.override:
            reasons.append((result.override, ""))
        if disposition != result.disposition:
            reasons.append(("local_policy", "trusted ARC sealer"))
        data = {
            "source_ip": session.client_ip,
            "header_from": result.from_domain,
            "envelope_from": txn.sender.rpartition("@")[2].lower() if txn.sender else "",
            "disposition": disposition,
            "dkim_aligned": "pass" if result.dkim_aligned else "fail",
            "spf_aligned": "pass" if result.spf_aligned else "fail",
            "record": record.raw,
            "dkim": [{"domain": r.domain, "selector": r.selector, "result": r.result}
                     for r in txn.facts.get("dkim", ())],
            "spf": {"domain": spf.domain, "result": spf.result} if spf is not None else None,
            "reasons": reasons,
        }
        task = asyncio.get_running_loop().create_task(
            self.store.record_dmarc([(time.time(), result.policy_domain, data)]))
        task.add_done_callback(_logged)


def _logged(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("DMARC result not recorded: %r", task.exception())


_DKIM_RESULTS = {"pass", "fail", "neutral", "temperror", "permerror", "policy", "none"}
_SPF_RESULTS = {"pass", "fail", "softfail", "neutral", "temperror", "permerror", "none"}


def _rows(results: Sequence[dict]) -> list[ReportRow]:
    counts: Counter = Counter()
    for d in results:
        dkim = tuple((x["domain"], x.get("selector") or None,
                      x["result"] if x["result"] in _DKIM_RESULTS else "permerror")
                     for x in d.get("dkim") or ())
        spf = d.get("spf")
        spf_t = ((spf["domain"], spf["result"] if spf["result"] in _SPF_RESULTS
                  else "permerror"),) if spf and spf.get("domain") else ()
        key = (d["source_ip"], d["disposition"], d["dkim_aligned"], d["spf_aligned"],
               d["header_from"], d.get("envelope_from", ""), dkim, spf_t,
               tuple(tuple(r) for r in d.get("reasons") or ()))
        counts[key] += 1
    rows = []
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0])):
        ip, disp, dkim_a, spf_a, hfrom, efrom, dkim, spf_t, reasons = key
        rows.append(ReportRow(
            source_ip=ip, count=n, disposition=disp, dkim=dkim_a, spf=spf_a,
            header_from=hfrom, envelope_from=efrom, reasons=reasons,
            dkim_results=[DKIMAuthResult(dom, res, sel) for dom, sel, res in dkim],
            spf_results=[SPFAuthResult(dom, res) for dom, res in spf_t]))
    return rows


@dataclass(slots=True)
class PlannedReport:
    policy_domain: str
    report_id: str
    begin: int
    end: int
    messages_counted: int
    rows: int
    row_ids: list[int]
    xml: bytes
    sends: list[tuple[str, bytes]] = field(default_factory=list)     # (address, message)
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (uri, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"policy_domain": self.policy_domain, "report_id": self.report_id,
                "begin": self.begin, "end": self.end, "messages": self.messages_counted,
                "rows": self.rows, "send_to": [a for a, _ in self.sends],
                "skipped": [{"uri": u, "reason": r} for u, r in self.skipped],
                "xml": self.xml.decode("utf-8")}


async def plan_reports(store: Any, resolver: Any, *, org_name: str, org_email: str,
                       receiver_domain: str, interval: int, now: float | None = None
                       ) -> list[PlannedReport]:
    now = time.time() if now is None else now
    end = int(now // interval * interval)
    results = await store.dmarc_results(end)
    by_domain: dict[str, list[tuple[int, float, dict]]] = {}
    for rid, at, domain, data in results:
        by_domain.setdefault(domain, []).append((rid, at, data))
    plans: list[PlannedReport] = []
    for domain, items in sorted(by_domain.items()):
        begin = int(min(at for _, at, _ in items) // interval * interval)
        try:
            policy = parse_record(items[-1][2]["record"])     # as published most recently
        except (DMARCRecordError, KeyError) as exc:
            log.warning("DMARC report for %s skipped: bad stored record: %s", domain, exc)
            continue
        rows = _rows([d for _, _, d in items])
        report_id = hashlib.sha256(
            f"{receiver_domain}!{domain}!{begin}!{end}".encode()).hexdigest()[:24]
        xml = build_aggregate_xml(org_name, org_email, report_id, begin, end, policy,
                                  domain, rows)
        plan = PlannedReport(domain, report_id, begin, end, len(items), len(rows),
                             [rid for rid, _, _ in items], xml)
        for rua in policy.rua:
            if rua.scheme != "mailto" or not rua.domain:
                plan.skipped.append((rua.uri, "only mailto: destinations are used"))
                continue
            try:
                allowed = await external_destination_allowed(resolver, domain, rua.domain)
            except Exception as exc:  # noqa: BLE001 - DNS trouble: try next period
                plan.skipped.append((rua.uri, f"authorisation lookup failed: {exc}"))
                continue
            if not allowed:
                plan.skipped.append((rua.uri, f"{rua.domain} has not authorised reports for "
                                              f"{domain} (RFC 7489 §7.1)"))
                continue
            message, reason = build_report_message(
                xml, rua=rua, report_from=org_email, receiver_domain=receiver_domain,
                policy_domain=domain, begin=begin, end=end, report_id=report_id)
            if message is None:
                plan.skipped.append((rua.uri, reason))
            else:
                plan.sends.append((rua.address, message))
        plans.append(plan)
    return plans


async def queue_reports(store: Any, plans: Sequence[PlannedReport], report_from: str,
                        now: float | None = None) -> list[str]:
    """Commit every planned report message to the queue, then forget the rows."""
    now = time.time() if now is None else now
    queued: list[str] = []
    for plan in plans:
        for address, message in plan.sends:
            blob = store.new_blob()
            blob.write(message)
            env = Envelope(sender=report_from, recipients=[RecipientRequest(address)],
                           received_at=now, protocol="LOCAL", size=blob.size,
                           listener="dmarc-report")
            queued.append(await store.commit_message(env, blob))
        await store.delete_dmarc_results(plan.row_ids)
        log.info("DMARC report %s for %s: %d message(s), %d row(s), queued to %s%s",
                 plan.report_id, plan.policy_domain, plan.messages_counted, plan.rows,
                 ", ".join(a for a, _ in plan.sends) or "nobody",
                 "".join(f"; skipped {u}: {r}" for u, r in plan.skipped))
    return queued
