"""Typed settings for email authentication: the ``[auth]`` table.

What: ``AuthSettings`` (frozen dataclass) says which checks run on mail arriving on ``mx``
listeners (SPF, DKIM, ARC, DMARC), what each result does, the authserv-id written in
``Authentication-Results`` (RFC 8601), DKIM signing of outgoing mail, and DMARC aggregate
reports.

How: the same ``_key`` schema as config/settings.py; settings.py registers the class as the
``[auth]`` section, so the generic walker builds and checks it and docs/configuration.md
documents every key.

Defaults are the ones large receivers use: SPF and DKIM results alone refuse nothing (a
forwarded message legitimately fails SPF); DMARC decides, applying the domain owner's
published policy: ``p=reject`` → 550 5.7.1, ``p=quarantine`` → the Junk folder. A DNS
failure is never a pass: a temperror that decides the outcome answers 451 (the sender
retries).
"""
from __future__ import annotations

from dataclasses import dataclass

from .settings import _bool, _choice, _cidr_list, _domain_list, _key, _pos_int, _str

__all__ = ["AuthSettings"]

_TEMP = _choice("tempfail", "accept")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    enabled: bool = _key(
        True, conv=_bool,
        doc="Check SPF, DKIM, ARC and DMARC on mail arriving on 'mx' listeners and record "
            "the results in one Authentication-Results field.")
    authserv_id: str = _key(
        "", conv=_str,
        doc="The authserv-id of our Authentication-Results fields (RFC 8601 §2.5); empty = "
            "the server's hostname. Arriving fields that claim it are removed.")
    skip_networks: tuple[str, ...] = _key(
        conv=_cidr_list, factory=lambda: ("127.0.0.0/8", "::1/128"),
        doc="Clients whose mail is not checked (as policyd-spf's skip_addresses): local "
            "programs and the host itself. Empty = check every client.")
    spf_fail: str = _key(
        "accept", conv=_choice("accept", "reject"),
        doc="SPF 'fail' for MAIL FROM: 'accept' (DMARC decides; forwarding breaks SPF) or "
            "'reject' (550 5.7.23 at MAIL).")
    spf_temperror: str = _key(
        "tempfail", conv=_TEMP,
        doc="SPF DNS failure: 'tempfail' (451 4.7.24 at end of data, or at MAIL when "
            "spf_fail = 'reject'; the sender retries) or 'accept' (recorded as temperror; "
            "DMARC may still decide).")
    dmarc: bool = _key(True, conv=_bool, doc="Evaluate DMARC (RFC 7489) and apply the policy.")
    dmarc_reject: str = _key(
        "reject", conv=_choice("reject", "quarantine", "accept"),
        doc="What a DMARC failure under p=reject does: 'reject' (550 5.7.1 at end of "
            "data), 'quarantine' (Junk folder) or 'accept' (recorded only).")
    dmarc_quarantine: str = _key(
        "quarantine", conv=_choice("quarantine", "accept"),
        doc="What a DMARC failure under p=quarantine does.")
    dmarc_temperror: str = _key(
        "tempfail", conv=_TEMP,
        doc="A DMARC result that cannot be settled because of DNS: 'tempfail' (451 4.7.5) "
            "or 'accept'.")
    arc: bool = _key(True, conv=_bool, doc="Verify ARC chains (RFC 8617) and report arc=.")
    arc_trusted_sealers: tuple[str, ...] = _key(
        conv=_domain_list, factory=tuple,
        doc="Sealers (ARC-Seal d= domains) whose passing chain overrides a DMARC failure "
            "(RFC 8617 §7.2: e.g. a mailing list you trust). Empty = never override.")
    dkim_max_signatures: int = _key(
        5, conv=_pos_int, doc="DKIM signatures verified per message; later ones are ignored.")
    dkim_sign: bool = _key(
        True, conv=_bool,
        doc="Sign outgoing mail with the active DKIM keys of the header From domain "
            "(`mailwright dkim keygen`): one RSA and one Ed25519 signature when both exist.")
    arc_seal: bool = _key(
        True, conv=_bool,
        doc="Add an ARC set (RFC 8617) when forwarding mail to external addresses through "
            "an alias, signed with the primary domain's active RSA key.")
    dmarc_reports: bool = _key(
        False, conv=_bool,
        doc="Record DMARC results and send daily aggregate reports (RFC 7489 §7.2) to the "
            "rua addresses of the domains we received mail from.")
    dmarc_report_from: str = _key(
        "", conv=_str,
        doc="Sender address of aggregate reports; empty = 'dmarc-noreply@' the primary "
            "domain.")
    dmarc_report_interval: int = _key(
        86400, conv=_pos_int, doc="Seconds each aggregate report covers (RFC 7489 ri).")
