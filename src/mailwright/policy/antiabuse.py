"""Wiring of the anti-abuse checks from ``[antiabuse]`` (GUIDE idea 11: explicit, no discovery).

What: ``build_antiabuse(settings, *, resolver, state, hostname) -> PolicySet`` builds the
checks that the settings switch on, in the order they run:

=========  ===================================================================
connect    connection rate; pregreet (greeting delay, DNSBL and rDNS lookups
           started meanwhile); DNSBL score; rDNS rules; early talker again
helo       HELO rules; RHSBL of the HELO name
mail       message rates; RHSBL of the sender domain
rcpt       directory-harvest guard and BATV backscatter check (``early``:
           before the recipient check); recipient rate; greylisting
data       content rules and attachments; RHSBL of links; rspamd; spam score
=========  ===================================================================

Cheap, decisive checks come first in each step; the spam score is the last anti-abuse data
stage so that it sees every contribution.  ``policy_state(settings)`` opens the shared
counter/greylist store: with ``[store] backend = "postgres"`` tables in the store's
schema (store/pg_policystate.py: cluster-wide), else store/policystate.py at
``data_dir/policystate.db``; the file or the connection is only opened when a check
needs it.

Invariants: ``enabled = false`` gives an empty set; nothing here does I/O.
"""
from __future__ import annotations

from typing import Any

from ..store.policystate import PolicyState, SqlitePolicyState
from .backscatter import BatvCheck, build_batv
from .content import ContentCheck, links
from .dnsbl import DnsblCheck, ListLookup, RhsblCheck
from .greylist import GreylistCheck
from .helo_checks import HeloCheck, RdnsCheck
from .pregreet import LateTalkerCheck, PregreetCheck
from .ratelimit import ConnectionRate, HarvestGuard, MessageRate, RecipientRate
from .registry import PolicySet
from .rspamd import RspamdCheck
from .spamscore import SpamScoreStage, spam_header_filter

__all__ = ["build_antiabuse", "policy_state", "POLICY_STATE_FILE"]

POLICY_STATE_FILE = "policystate.db"


def policy_state(settings: Any) -> PolicyState:
    """The counter/greylist store of the configured store backend: PostgreSQL
    (store/pg_policystate.py, shared by every node) or the SQLite file."""
    store = settings.store
    if store.backend == "postgres":
        from ..store.pg_policystate import PostgresPolicyState
        return PostgresPolicyState(store.dsn, store.schema, node=store.node,
                                   pool_size=max(1, store.pool_size // 2))
    return SqlitePolicyState(str(settings.resolve(POLICY_STATE_FILE)))


def build_antiabuse(settings: Any, *, resolver: Any, state: Any, hostname: str) -> PolicySet:
    a = settings.antiabuse
    out = PolicySet()
    if not a.enabled:
        return out
    c = out.checks
    lookup = ListLookup(resolver, a.dns_timeout)

    # -- connect
    if a.connection_rate > 0:
        c["connect"].append(ConnectionRate(state, a.connection_rate, a.rate_window))
    dnsbl = DnsblCheck(lookup, a.dnsbl_specs, a.dnsbl_threshold, a.dnsbl_allow_threshold) \
        if a.dnsbl_sites else None
    rdns = RdnsCheck(resolver, missing=a.rdns_missing, mismatch=a.rdns_mismatch,
                     timeout=a.dns_timeout) \
        if (a.rdns_missing != "off" or a.rdns_mismatch != "off") else None
    dns_checks = [x for x in (dnsbl, rdns) if x is not None]
    if a.greet_delay > 0 or dns_checks:
        # The early-talker rule needs a window before the banner: the delay or the DNS
        # wait (postscreen likewise only judges pregreet traffic during its delay).
        pregreet = PregreetCheck(a.greet_delay, a.early_talker,
                                 prefetch=[x.prefetch for x in dns_checks])
        c["connect"].append(pregreet)
        c["connect"].extend(dns_checks)
        if dns_checks and a.early_talker != "off":
            c["connect"].append(LateTalkerCheck(pregreet))

    # -- helo
    if any(r != "off" for r in (a.helo_ours, a.helo_non_fqdn, a.helo_unresolvable)):
        addresses = [l.address for l in settings.listeners]
        c["helo"].append(HeloCheck(resolver, ours=a.helo_ours, non_fqdn=a.helo_non_fqdn,
                                   unresolvable=a.helo_unresolvable,
                                   our_names=[n for n in (hostname, *(settings.local_domains
                                                                      or ())) if n != "localhost"],
                                   our_addresses=addresses, timeout=a.dns_timeout))
    rhsbl = RhsblCheck(lookup, a.rhsbl_specs, targets=a.rhsbl_targets,
                       threshold=a.rhsbl_threshold, max_links=a.max_links, links=links) \
        if a.rhsbl_sites else None
    if rhsbl is not None and "helo" in a.rhsbl_targets:
        c["helo"].append(rhsbl)

    # -- mail
    if a.message_rate_ip or a.message_rate_sender or a.message_rate_user:
        c["mail"].append(MessageRate(state, per_ip=a.message_rate_ip,
                                     per_sender=a.message_rate_sender,
                                     per_user=a.message_rate_user, window=a.rate_window))
    if rhsbl is not None and "sender" in a.rhsbl_targets:
        c["mail"].append(rhsbl)

    # -- rcpt
    if a.max_unknown_recipients > 0:
        c["rcpt"].append(HarvestGuard(a.max_unknown_recipients))
    batv = build_batv(settings)
    if batv is not None:
        c["rcpt"].append(BatvCheck(batv))        # early: tags before the recipient check
    if a.recipient_rate > 0:
        c["rcpt"].append(RecipientRate(state, a.recipient_rate))
    if a.greylist:
        c["rcpt"].append(GreylistCheck(
            state, delay=a.greylist_delay, retry_window=a.greylist_retry_window,
            max_age=a.greylist_max_age, auto_allow=a.greylist_auto_allow,
            v4_prefix=a.greylist_prefixes[0], v6_prefix=a.greylist_prefixes[1],
            spf_domains=a.greylist_spf_domains))

    # -- data
    if a.content_rules or (a.attachment_action != "off"
                           and (a.blocked_extensions or a.blocked_mime_types)):
        c["data"].append(ContentCheck(a.content_rules, extensions=a.blocked_extensions,
                                      mime_types=a.blocked_mime_types,
                                      attachment_action=a.attachment_action))
    if rhsbl is not None and "links" in a.rhsbl_targets:
        c["data"].append(rhsbl)
    if a.rspamd_url:
        c["data"].append(RspamdCheck(a.rspamd_url, timeout=a.rspamd_timeout,
                                     failure=a.rspamd_failure))
    c["data"].append(SpamScoreStage(tag=a.tag_threshold, quarantine=a.quarantine_threshold,
                                    reject=a.reject_threshold, junk=a.junk_threshold))
    out.header_filters.append(spam_header_filter)
    return out
