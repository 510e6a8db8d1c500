"""Explicit wiring of the policy checks from the settings (GUIDE idea 11).

What: ``build_checks(settings, *, resolver, store, hostname)`` returns the checks of every
pipeline step (``{"connect": [...], "helo": [...], "mail": [...], "rcpt": [...],
"data": [...]}``) and the header filters that remove fields only we may set; the intake
server appends them after its built-in relay and recipient checks (net/intake.py).

How: each family of checks has one factory, called here in a fixed order; no discovery,
no plug-in scanning. The order inside a step is the order the checks run in:
anti-abuse checks that are cheap and decisive run before the DNS-heavy authentication
checks, and the Authentication-Results writer is the last data stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

STEP_NAMES = ("connect", "helo", "mail", "rcpt", "data")


@dataclass(slots=True)
class PolicySet:
    checks: dict[str, list[Any]] = field(
        default_factory=lambda: {step: [] for step in STEP_NAMES})
    header_filters: list[Callable[[bytes], bytes]] = field(default_factory=list)

    def extend(self, other: "PolicySet") -> None:
        for step in STEP_NAMES:
            self.checks[step].extend(other.checks.get(step, ()))
        self.header_filters.extend(other.header_filters)


def build_checks(settings: Any, *, resolver: Any, store: Any, hostname: str) -> PolicySet:
    policy = PolicySet()
    # 1. anti-abuse (issue 7): connect/helo/mail/rcpt/data checks.
    from .antiabuse import build_antiabuse, policy_state
    policy.extend(build_antiabuse(settings, resolver=resolver, state=policy_state(settings),
                                  hostname=hostname))
    # 2. email authentication (issue 4): SPF at MAIL, DKIM/ARC/DMARC at end of data, then
    #    the Authentication-Results field.
    auth = settings.auth
    if auth.enabled:
        from .authentication import (
            ArcStage, AuthResultsStage, DkimStage, DmarcStage, Scope, SpfResultStage,
            SpfStage,
        )
        authserv_id = auth.authserv_id or hostname
        scope = Scope(auth.skip_networks)
        spf = SpfStage(auth, resolver, hostname, scope)
        policy.checks["mail"].append(spf)
        policy.checks["data"].append(SpfResultStage(spf))
        policy.checks["data"].append(DkimStage(auth, resolver, scope))
        if auth.arc:
            policy.checks["data"].append(ArcStage(auth, resolver, scope))
        if auth.dmarc:
            recorder = None
            if auth.dmarc_reports:
                from ..mailauth.dmarc_reporting import DmarcRecorder
                recorder = DmarcRecorder(store)
            policy.checks["data"].append(DmarcStage(auth, resolver, recorder, scope))
        writer = AuthResultsStage(authserv_id, scope)
        policy.checks["data"].append(writer)
        policy.header_filters.append(writer.filter_header)
    return policy
