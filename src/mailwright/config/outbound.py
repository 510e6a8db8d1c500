"""Typed settings for outbound SMTP delivery: the ``[outbound]`` table.

What: ``OutboundSettings`` (frozen dataclass) holds the knobs of the "smtp" delivery agent
(delivery/smtp.py) and its connection layer (net/outbound.py): port, HELO name, RFC 5321
§4.5.3.2 client timeouts, connection pool and concurrency limits, the DNS resolver, and
``routes``: per-domain overrides (a fixed next hop, a smarthost with AUTH, a TLS policy).

How: the same ``_key`` schema as config/settings.py (each field carries its converter and a
one-line meaning), so the generic walker there builds this table too once it is registered
as a section.  ``routes`` is an array of tables checked by one converter (``_routes``) whose
errors name the item and key (``item 0: next_hop: ...``).  ``parse_outbound(table)`` builds
the table on its own (tests, tools).

Invariants:
* A built ``OutboundSettings`` is fully valid: ``next_hop`` is parsed (``OutboundRoute.hop``),
  route domains are unique lower-case A-labels (or ``"*"``, the default route), a route with
  ``auth_user`` has an ``auth_password_file`` and is TLS-only (``tls`` is not ``"none"``).
* Timeouts are positive numbers of seconds (fractions allowed, for tests).
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, Mapping

from . import settings as _settings
from .settings import (
    DEFAULT_SOURCE, ConfigError, _bool, _Bad, _choice, _domain, _key, _pos_int, _port, _show,
    _str,
)
# settings.py imports this module half-way through (to register the [outbound] section),
# so its loader helpers (_Collector, _build, defined further down) are looked up at call time.

__all__ = ["OutboundSettings", "OutboundRoute", "NextHop", "parse_next_hop", "parse_outbound",
           "TLS_POLICIES"]

TLS_POLICIES = ("opportunistic", "require", "none")


def _pos_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise _Bad(f"expected a positive number of seconds, got {_show(value)}")
    return float(value)


@dataclass(frozen=True, slots=True)
class NextHop:
    """A parsed ``next_hop``: ``host`` is a name (resolved with A/AAAA, never MX) or, when
    ``literal``, an IP address used as is.  ``port`` 0 = ``OutboundSettings.port``."""
    host: str
    port: int = 0
    literal: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.literal else self.host
        return f"{host}:{self.port}" if self.port else host


def parse_next_hop(text: str) -> NextHop:
    """``host``, ``host:port``, ``[ip]``, ``[ip]:port`` (IPv6 only in brackets).
    Raises ValueError with a short reason."""
    text = text.strip()
    if not text:
        raise ValueError("empty next hop")
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, rest = text[1:end], text[end + 1:]
        try:
            host = str(ipaddress.ip_address(host.removeprefix("IPv6:").removeprefix("ipv6:")))
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
        literal = True
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port = _parse_port(rest[1:])
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host = text
        else:
            port = _parse_port(port_text)
        literal = False
        try:
            host = str(ipaddress.ip_address(host))
            literal = True
        except ValueError:
            try:
                host = _domain(host)
            except _Bad:
                raise ValueError(f"{host!r} is not a host name") from None
    return NextHop(host, port, literal)


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _next_hop(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected 'host', 'host:port' or '[ip]:port', got {_show(value)}")
    if not value:
        return ""
    try:
        parse_next_hop(value)
    except ValueError as e:
        raise _Bad(f"expected 'host', 'host:port' or '[ip]:port': {e}") from None
    return value.strip()


def _route_domain(value: Any) -> str:
    if value == "*":
        return "*"
    return _domain(value)


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """One ``[[outbound.routes]]`` entry: how mail for ``domain`` leaves."""
    domain: str = _key(conv=_route_domain,
                       doc="Recipient domain this route applies to; '*' = every domain "
                           "without a route of its own (a default smarthost).")
    next_hop: str = _key("", conv=_next_hop,
                         doc="Fixed next hop 'host[:port]' or '[ip][:port]' (no MX lookup); "
                             "empty = MX lookup of the domain.")
    auth_user: str = _key("", conv=_str,
                          doc="SMTP AUTH user for a smarthost (PLAIN or LOGIN, only over TLS).")
    auth_password_file: str = _key("", conv=_str,
                                   doc="File whose first line is the AUTH password.")
    tls: str = _key("opportunistic", conv=_choice(*TLS_POLICIES),
                    doc="'opportunistic' (STARTTLS when offered, certificate not checked), "
                        "'require' (no TLS = temporary failure) or 'none'.")
    tls_verify: bool = _key(False, conv=_bool,
                            doc="Verify the server certificate and name (smarthosts).")
    tls_ca_file: str = _key("", conv=_str,
                            doc="PEM CA bundle for tls_verify; empty = the system store.")

    @property
    def hop(self) -> NextHop | None:
        return parse_next_hop(self.next_hop) if self.next_hop else None


def _routes(value: Any) -> tuple[OutboundRoute, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _Bad(f"expected an array of tables ([[outbound.routes]]), got {_show(value)}")
    out: list[OutboundRoute] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(value):
        collector = _settings._Collector("", {})
        route = _settings._build(OutboundRoute, table, "", collector)
        if route is None:
            # "<file>: outbound.routes: item 0: next_hop: <problem>"
            problems = "; ".join(e.split(": ", 1)[1] for e in collector.errors)
            raise _Bad(f"item {i}: {problems}")
        if route.domain in seen:
            raise _Bad(f"item {i}: domain: duplicate route for {route.domain!r} "
                       f"(also item {seen[route.domain]})")
        seen[route.domain] = i
        if route.auth_user and not route.auth_password_file:
            raise _Bad(f"item {i}: auth_password_file: required with auth_user")
        if route.auth_user and route.tls == "none":
            raise _Bad(f"item {i}: tls: AUTH is only sent over TLS; use 'require'")
        out.append(route)
    return tuple(out)


def _nameservers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"expected an array of 'ip' or 'ip:port' strings, got {_show(value)}")
    out = []
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str):
                raise ValueError
            hop = parse_next_hop(item)
            if not hop.literal:
                raise ValueError
        except ValueError:
            raise _Bad(f"item {i}: expected 'ip', 'ip:port' or '[ipv6]:port', "
                       f"got {_show(item)}") from None
        out.append(item.strip())
    return tuple(out)


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    port: int = _key(25, conv=_port, doc="TCP port of remote SMTP servers (25; tests use others).")
    helo_name: str = _key("", conv=_str, doc="Name sent in EHLO/HELO; empty = hostname.")
    connect_timeout: float = _key(30.0, conv=_pos_seconds,
                                  doc="Seconds to wait for a TCP connection (and TLS handshake).")
    greeting_timeout: float = _key(300.0, conv=_pos_seconds,
                                   doc="Seconds to wait for the 220 greeting (RFC 5321 §4.5.3.2.1).")
    command_timeout: float = _key(300.0, conv=_pos_seconds,
                                  doc="Seconds to wait for replies to EHLO, STARTTLS, AUTH, RSET.")
    mail_timeout: float = _key(300.0, conv=_pos_seconds,
                               doc="Seconds to wait for the MAIL reply (RFC 5321 §4.5.3.2.2).")
    rcpt_timeout: float = _key(300.0, conv=_pos_seconds,
                               doc="Seconds to wait for each RCPT reply (RFC 5321 §4.5.3.2.3).")
    data_init_timeout: float = _key(120.0, conv=_pos_seconds,
                                    doc="Seconds to wait for the 354 to DATA (RFC 5321 §4.5.3.2.4).")
    data_block_timeout: float = _key(180.0, conv=_pos_seconds,
                                     doc="Seconds one block of message data may take to send "
                                         "(RFC 5321 §4.5.3.2.5).")
    data_done_timeout: float = _key(600.0, conv=_pos_seconds,
                                    doc="Seconds to wait for the reply to the final '.' or "
                                        "BDAT LAST (RFC 5321 §4.5.3.2.6).")
    per_destination_concurrency: int = _key(20, conv=_pos_int,
                                            doc="Deliveries in progress at once per "
                                                "destination domain (cluster-wide on "
                                                "PostgreSQL).")
    max_messages_per_connection: int = _key(100, conv=_pos_int,
                                            doc="Messages sent over one connection before "
                                                "it is closed.")
    idle_connection_timeout: float = _key(10.0, conv=_pos_seconds,
                                          doc="Seconds an idle connection is kept for reuse.")
    nameservers: tuple[str, ...] = _key(conv=_nameservers, factory=tuple,
                                        doc="DNS servers 'ip[:port]' for MX lookups; empty = "
                                            "the system's /etc/resolv.conf.")
    dns_timeout: float = _key(5.0, conv=_pos_seconds, doc="Seconds per DNS query attempt.")
    routes: tuple[OutboundRoute, ...] = _key(
        conv=_routes, factory=tuple,
        doc="Per-domain overrides: [[outbound.routes]] with domain, next_hop, auth_user, "
            "auth_password_file, tls, tls_verify, tls_ca_file.")

    def route_for(self, domain: str) -> OutboundRoute | None:
        """The route of ``domain`` (exact, lower-case), else the ``"*"`` route, else None."""
        domain = domain.lower().rstrip(".")
        default = None
        for r in self.routes:
            if r.domain == domain:
                return r
            if r.domain == "*":
                default = r
        return default


def parse_outbound(table: Mapping[str, Any], source: str = DEFAULT_SOURCE) -> OutboundSettings:
    """Build the ``[outbound]`` table alone; raises ConfigError listing every problem."""
    collector = _settings._Collector(source, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: outbound: expected a table, got {_show(table)}")
    built = _settings._build(OutboundSettings, table, "outbound.", collector)
    if built is None:
        raise ConfigError(collector.errors)
    return built
