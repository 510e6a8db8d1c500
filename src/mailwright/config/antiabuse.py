"""Typed settings for the anti-abuse checks: the ``[antiabuse]`` table.

What: ``AntiAbuseSettings`` (frozen dataclass) configures the checks of policy/antiabuse.py:
DNS block/allow lists for the client address (postscreen style: weights and a threshold),
domain lists (RHSBL) for the HELO name, the sender domain and links in the body, the
greeting delay and early-talker rule, HELO and reverse-DNS rules, rate limits, greylisting,
content rules, attachment types, the spam score thresholds, an optional rspamd and the
BATV backscatter defence (policy/backscatter.py).

How: the same ``_key`` schema as config/settings.py; settings.py registers the class as the
``[antiabuse]`` section.  Lists are written as Postfix postscreen writes them,
``zone[=filter][*weight]`` (``"zen.example=127.0.0.[2..11]*3"``,
``"list.dnswl.example=127.0.[0..255].[1..3]*-2"``), parsed here into ``ListSpec`` values
(``dnsbl_specs``/``rhsbl_specs``).  A rule of the HELO/rDNS/early-talker kind takes
``"reject"``, ``"tempfail"``, ``"off"`` or a number: the points it adds to the spam score.
``content_rules`` is an array of tables checked by one converter (like outbound.routes).

Invariants:
* A built ``AntiAbuseSettings`` is fully valid: list specs parse, regular expressions
  compile, extensions are lower-case without the dot, MIME types lower-case.
* The defaults change nothing for ordinary mail: no lists, no rate limits, no greylisting,
  only claims to be us in HELO are refused; executable attachments are refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from . import settings as _settings
from .settings import _Bad, _bool, _choice, _domain, _domain_list, _key, _nonneg_int, _pos_int, _show

__all__ = ["AntiAbuseSettings", "ContentRule", "ListSpec", "parse_list_spec", "RULE_ACTIONS"]

RULE_ACTIONS = ("reject", "tempfail", "off")

# ---------------------------------------------------------------------------- list specs

_OCTET_PART = re.compile(r"^(\d{1,3})(?:\.\.(\d{1,3}))?$")


@dataclass(frozen=True, slots=True)
class ListSpec:
    """One DNS list: ``zone``, an optional filter on the answer (one set of allowed values
    per octet of the 127.x.y.z answer, None = any), and the weight a listing adds."""
    zone: str
    weight: float = 1.0
    octets: tuple[frozenset[int] | None, ...] | None = None
    text: str = ""

    def matches(self, answer: str) -> bool:
        """True if the A record ``answer`` counts as a listing.  Without a filter: any
        127.0.0.0/8 address (RFC 5782 §2.1) except 127.255.255.0/24, which Spamhaus and
        others use for errors ("query refused")."""
        parts = answer.split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            return False
        values = [int(p) for p in parts]
        if self.octets is None:
            return values[0] == 127 and values[1:3] != [255, 255]
        return all(allowed is None or v in allowed for allowed, v in zip(self.octets, values))


def _octet(text: str) -> frozenset[int] | None:
    if text == "*":
        return None
    if text.startswith("[") and text.endswith("]"):
        items = text[1:-1].split(";")
    else:
        items = [text]
    values: set[int] = set()
    for item in items:
        m = _OCTET_PART.match(item.strip())
        if m is None:
            raise ValueError(f"bad octet {text!r}")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if not 0 <= low <= high <= 255:
            raise ValueError(f"bad range in {text!r}")
        values.update(range(low, high + 1))
    return frozenset(values)


def parse_list_spec(text: str) -> ListSpec:
    """``zone[=filter][*weight]`` as Postfix postscreen_dnsbl_sites. Raises ValueError."""
    spec = text.strip()
    weight = 1.0
    if "*" in spec and not spec.endswith("]") and spec.rpartition("*")[2] \
            .lstrip("-+").replace(".", "", 1).isdigit():
        spec, _, w = spec.rpartition("*")
        weight = float(w)
    zone, sep, filt = spec.partition("=")
    try:
        zone = _domain(zone)
    except _Bad:
        raise ValueError(f"{zone!r} is not a DNS zone") from None
    octets = None
    if sep:
        pieces = re.findall(r"\[[^\]]*\]|[^.\[\]]+", filt)
        if ".".join(pieces) != filt:
            raise ValueError(f"bad filter {filt!r}")
        if len(pieces) != 4:
            raise ValueError(f"filter {filt!r} must have four octets like 127.0.0.[2..11]")
        octets = tuple(_octet(p) for p in pieces)
    if weight == 0 or not math.isfinite(weight):
        raise ValueError("weight must be a non-zero number")
    return ListSpec(zone, weight, octets, text.strip())


def _list_specs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"expected an array of 'zone[=filter][*weight]' strings, got {_show(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Bad(f"item {i}: expected a string, got {_show(item)}")
        try:
            parse_list_spec(item)
        except ValueError as e:
            raise _Bad(f"item {i}: {e}") from None
        out.append(item.strip())
    return tuple(out)


# ---------------------------------------------------------------------------- converters

def _number(minimum: float = 0.0, maximum: float = math.inf, what: str = "a number >= 0"):
    def conv(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not minimum <= value <= maximum:
            raise _Bad(f"expected {what}, got {_show(value)}")
        return float(value)
    return conv


def _number_int(minimum: int, maximum: int, what: str):
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) \
                or not minimum <= value <= maximum:
            raise _Bad(f"expected {what}, got {_show(value)}")
        return value
    return conv


def _any_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"expected a number, got {_show(value)}")
    return float(value)


def _rule(value: Any) -> str | float:
    """'reject', 'tempfail', 'off' or a number of spam-score points."""
    if isinstance(value, str) and value.lower() in RULE_ACTIONS:
        return value.lower()
    if not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    raise _Bad(f"expected 'reject', 'tempfail', 'off' or a number of points, got {_show(value)}")


_TARGETS = ("helo", "sender", "links")


def _targets(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"expected an array of 'helo', 'sender', 'links', got {_show(value)}")
    out = []
    for i, v in enumerate(value):
        if v.lower() not in _TARGETS:
            raise _Bad(f"item {i}: expected 'helo', 'sender' or 'links', got {v!r}")
        if v.lower() not in out:
            out.append(v.lower())
    return tuple(out)


def _extensions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"expected an array of file name extensions, got {_show(value)}")
    out = []
    for i, v in enumerate(value):
        ext = v.strip().lstrip(".").lower()
        if not ext or not re.fullmatch(r"[a-z0-9_~$-]{1,16}", ext):
            raise _Bad(f"item {i}: expected an extension like 'exe', got {v!r}")
        if ext not in out:
            out.append(ext)
    return tuple(out)


def _mime_types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"expected an array of MIME types, got {_show(value)}")
    out = []
    for i, v in enumerate(value):
        t = v.strip().lower()
        if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", t):
            raise _Bad(f"item {i}: expected a type like 'application/x-msdownload', got {v!r}")
        if t not in out:
            out.append(t)
    return tuple(out)


def _prefixes(value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in value) or \
            not 8 <= value[0] <= 32 or not 8 <= value[1] <= 128:
        raise _Bad(f"expected [IPv4 length 8-32, IPv6 length 8-128], got {_show(value)}")
    return (value[0], value[1])


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a URL like 'http://127.0.0.1:11333', got {_show(value)}")
    if value and not re.fullmatch(r"http://[^/\s]+(/\S*)?", value.strip()):
        raise _Bad(f"expected an http:// URL like 'http://127.0.0.1:11333', got {value!r}")
    return value.strip().rstrip("/")


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a regular expression, got {_show(value)}")
    try:
        re.compile(value)
    except re.error as e:
        raise _Bad(f"invalid regular expression: {e}") from None
    return value


@dataclass(frozen=True, slots=True)
class ContentRule:
    """One ``[[antiabuse.content_rules]]`` entry."""
    name: str = _key(conv=_settings._listener_name,
                     doc="Rule name, shown in logs, the trace and X-Spam-Status.")
    part: str = _key(conv=_choice("header", "body"),
                     doc="'header': each header field 'Name: value' (unfolded); 'body': the "
                         "decoded text parts.")
    pattern: str = _key(conv=_pattern, doc="Python regular expression, searched "
                                            "case-insensitively.")
    action: str = _key("tag", conv=_choice("reject", "quarantine", "junk", "tag"),
                       doc="'reject' (554 5.7.1), 'quarantine' (held in the store until an "
                           "operator releases it: mailwright quarantine), 'junk' (delivered "
                           "to the Junk folder) or 'tag' (adds score and marks the message "
                           "as spam).")
    score: float = _key(0.0, conv=_any_number, doc="Points added to the spam score on a match.")

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.I | re.M)


def _content_rules(value: Any) -> tuple[ContentRule, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _Bad(f"expected an array of tables ([[antiabuse.content_rules]]), "
                   f"got {_show(value)}")
    out: list[ContentRule] = []
    for i, table in enumerate(value):
        collector = _settings._Collector("", {})
        rule = _settings._build(ContentRule, table, "", collector)
        if rule is None:
            problems = "; ".join(e.split(": ", 1)[1] for e in collector.errors)
            raise _Bad(f"item {i}: {problems}")
        out.append(rule)
    return tuple(out)


#: Conservative default: file types Windows runs or installs on a double click, which no
#: legitimate sender mails as such (archives are not opened).
DEFAULT_BLOCKED_EXTENSIONS = (
    "exe", "com", "scr", "pif", "bat", "cmd", "cpl", "msi", "msp", "vbs", "vbe", "js",
    "jse", "wsf", "wsh", "hta", "lnk", "reg", "jar", "ps1",
)
DEFAULT_BLOCKED_MIME_TYPES = (
    "application/x-msdownload", "application/x-dosexec", "application/x-msdos-program",
    "application/x-ms-installer", "application/hta",
)


@dataclass(frozen=True, slots=True)
class AntiAbuseSettings:
    enabled: bool = _key(True, conv=_bool, doc="Run the anti-abuse checks at all.")
    # -- DNS lists
    dnsbl_sites: tuple[str, ...] = _key(
        conv=_list_specs, factory=tuple,
        doc="Client address lists 'zone[=filter][*weight]' (postscreen syntax); a negative "
            "weight makes an allowlist.")
    dnsbl_threshold: float = _key(1.0, conv=_number(0.001, what="a number > 0"),
                                  doc="Summed weight at which a client is refused at connect.")
    dnsbl_allow_threshold: float = _key(
        -1.0, conv=_any_number,
        doc="Summed weight at or below which a client skips greylisting, HELO and rDNS rules.")
    rhsbl_sites: tuple[str, ...] = _key(
        conv=_list_specs, factory=tuple,
        doc="Domain lists 'zone[=filter][*weight]'; a listing adds its weight to the spam "
            "score.")
    rhsbl_targets: tuple[str, ...] = _key(
        conv=_targets, factory=lambda: _TARGETS,
        doc="Which domains are looked up in rhsbl_sites: 'helo', 'sender', 'links'.")
    rhsbl_threshold: float = _key(
        0.0, conv=_number(),
        doc="Summed RHSBL weight at which the HELO, MAIL or message is refused at once; "
            "0 = never (the weights only add to the spam score).")
    max_links: int = _key(10, conv=_nonneg_int,
                          doc="Distinct link host names per message looked up in rhsbl_sites.")
    dns_timeout: float = _key(5.0, conv=_number(0.01, 60.0, "seconds between 0.01 and 60"),
                              doc="Seconds the list lookups of one step may take; answers "
                                  "still missing then do not count.")
    # -- before and at the greeting, HELO
    greet_delay: float = _key(0.0, conv=_number(0.0, 60.0, "seconds between 0 and 60"),
                              doc="Seconds to wait before the greeting (postscreen's "
                                  "pregreet test); 0 = greet at once.")
    early_talker: str | float = _key("reject", conv=_rule,
                                     doc="A client that sends before the greeting.")
    helo_ours: str | float = _key("reject", conv=_rule,
                                  doc="HELO claiming our hostname, a local domain or our "
                                      "listener address.")
    helo_non_fqdn: str | float = _key("off", conv=_rule,
                                      doc="HELO name without a dot (not an address literal).")
    helo_unresolvable: str | float = _key("off", conv=_rule,
                                          doc="HELO name with no A or AAAA record.")
    rdns_missing: str | float = _key("off", conv=_rule, doc="Client address without PTR.")
    rdns_mismatch: str | float = _key(
        "off", conv=_rule, doc="No PTR name resolves back to the client address.")
    # -- rates
    rate_window: int = _key(60, conv=_pos_int,
                            doc="Seconds of the connection and message rate windows.")
    connection_rate: int = _key(0, conv=_nonneg_int,
                                doc="Connections per client address per rate_window; 0 = no limit.")
    message_rate_ip: int = _key(0, conv=_nonneg_int,
                                doc="MAIL commands per client address per rate_window.")
    message_rate_sender: int = _key(0, conv=_nonneg_int,
                                    doc="MAIL commands per sender address per rate_window.")
    message_rate_user: int = _key(0, conv=_nonneg_int,
                                  doc="MAIL commands per authenticated user per rate_window.")
    recipient_rate: int = _key(0, conv=_nonneg_int,
                               doc="Accepted recipients per client address (or user) per hour.")
    max_unknown_recipients: int = _key(
        0, conv=_nonneg_int,
        doc="Unknown recipients in one session before 421 and disconnect; 0 = off.")
    # -- greylisting (RFC 6647)
    greylist: bool = _key(False, conv=_bool, doc="Greylist unknown (client, sender, "
                                                 "recipient) triplets on mx listeners.")
    greylist_delay: int = _key(300, conv=_nonneg_int,
                               doc="Seconds before a retry of a new triplet is accepted.")
    greylist_retry_window: int = _key(172800, conv=_pos_int,
                                      doc="Seconds a new triplet waits for its retry.")
    greylist_max_age: int = _key(3024000, conv=_pos_int,
                                 doc="Seconds a passed triplet is remembered after its last use.")
    greylist_auto_allow: int = _key(5, conv=_nonneg_int,
                                    doc="Passed retries after which a client network is no "
                                        "longer greylisted; 0 = never.")
    greylist_prefixes: tuple[int, int] = _key(
        conv=_prefixes, factory=lambda: (24, 64),
        doc="[IPv4, IPv6] network lengths of the client in a triplet.")
    greylist_spf_domains: tuple[str, ...] = _key(
        conv=_domain_list, factory=tuple,
        doc="Sender domains (and their subdomains) not greylisted when SPF passes.")
    # -- content
    content_rules: tuple[ContentRule, ...] = _key(
        conv=_content_rules, factory=tuple,
        doc="Header and body regular expressions: [[antiabuse.content_rules]].")
    blocked_extensions: tuple[str, ...] = _key(
        conv=_extensions, factory=lambda: DEFAULT_BLOCKED_EXTENSIONS,
        doc="Attachment file name extensions acted on with attachment_action.")
    blocked_mime_types: tuple[str, ...] = _key(
        conv=_mime_types, factory=lambda: DEFAULT_BLOCKED_MIME_TYPES,
        doc="Attachment MIME types acted on with attachment_action.")
    attachment_action: str = _key("reject",
                                  conv=_choice("reject", "quarantine", "junk", "tag", "off"),
                                  doc="What a blocked attachment does (actions as for "
                                      "content rules).")
    # -- spam score
    tag_threshold: float = _key(5.0, conv=_any_number,
                                doc="Spam score at which X-Spam-Flag: YES is added.")
    quarantine_threshold: float = _key(0.0, conv=_number(),
                                       doc="Spam score at which mail is held in quarantine "
                                           "(mailwright quarantine); 0 = never.")
    quarantine_retention_days: int = _key(
        30, conv=_nonneg_int,
        doc="Days a message stays in quarantine before the server deletes it (hourly, "
            "audited as quarantine-expire); 0 = until an operator releases or deletes it.")
    junk_threshold: float = _key(0.0, conv=_number(),
                                 doc="Spam score at which mail goes to the Junk folder; "
                                     "0 = never.")
    reject_threshold: float = _key(15.0, conv=_number(),
                                   doc="Spam score at which mail is refused; 0 = never.")
    rspamd_url: str = _key("", conv=_url,
                           doc="rspamd normal worker, e.g. 'http://127.0.0.1:11333'; "
                               "empty = not used.")
    rspamd_timeout: float = _key(15.0, conv=_number(0.1, 300.0, "seconds between 0.1 and 300"),
                                 doc="Seconds to wait for rspamd.")
    rspamd_failure: str = _key("accept", conv=_choice("accept", "tempfail"),
                               doc="rspamd unreachable or failing: accept or 451.")
    # -- backscatter (BATV, policy/backscatter.py)
    batv: bool = _key(False, conv=_bool,
                      doc="Tag outgoing envelope senders (prvs=) and refuse bounces to "
                          "untagged or badly tagged addresses.")
    batv_domains: tuple[str, ...] = _key(conv=_domain_list, factory=tuple,
                                         doc="Local domains with BATV; empty = every local "
                                             "domain.")
    batv_days: int = _key(7, conv=_number_int(1, 365, "days between 1 and 365"),
                          doc="Days a tag stays valid.")

    @property
    def dnsbl_specs(self) -> tuple[ListSpec, ...]:
        return tuple(parse_list_spec(s) for s in self.dnsbl_sites)

    @property
    def rhsbl_specs(self) -> tuple[ListSpec, ...]:
        return tuple(parse_list_spec(s) for s in self.rhsbl_sites)
