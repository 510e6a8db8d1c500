"""Typed settings for Mailwright, loaded from one TOML file (or from nothing at all).

What: ``Settings`` is a tree of frozen dataclasses, one per TOML table (``[tls]``,
``[limits]``, ``[queue]``, ...) plus the ``[[listeners]]`` array. ``load_settings(path, env)``
reads the file with the stdlib ``tomllib``, overlays ``MAILWRIGHT__SECTION__KEY`` environment
variables, checks every value and returns the tree. With no file the embedded defaults
apply: ``mailwright serve`` works on a fresh machine without any configuration.

How: every config key is a dataclass field whose ``metadata`` carries its converter (which
checks type and range) and a one-line meaning. One generic walker applies the converters, so
the schema lives in one place; ``docs/configuration.md`` documents each field and a test keeps
the two in step.

Invariants:
* Every unknown key and every bad type or value is reported as a ``ConfigError`` whose lines
  each read ``<file>: <dotted.key>: <what is wrong>``; all problems are reported at once.
* A loaded ``Settings`` is fully valid: consumers never re-check values.
* Relative paths in the file resolve against ``data_dir``; ``data_dir`` resolves against the
  working directory at load time (``load_settings`` stores it absolute). ``Settings.paths``
  gives every resolved path.
* The default hostname is computed once per process, only when the file does not set one
  (``socket.getfqdn`` can be slow).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

__all__ = [
    "ConfigError", "Settings", "ListenerSettings", "TLSSettings", "LimitsSettings",
    "QueueSettings", "DeliverySettings", "StoreSettings", "RelaySettings", "LogSettings",
    "Paths", "load_settings", "parse_settings", "settings_to_dict", "settings_to_toml",
    "default_hostname", "iter_keys", "DEFAULT_SOURCE", "ENV_CONFIG", "ENV_PREFIX",
]

DEFAULT_SOURCE = "<defaults>"
ENV_CONFIG = "MAILWRIGHT_CONFIG"      # config file used when no path is given
ENV_PREFIX = "MAILWRIGHT__"           # MAILWRIGHT__LIMITS__MAX_RECIPIENTS=50 overrides one key


class ConfigError(Exception):
    """Invalid configuration. ``errors`` holds one ``file: key: problem`` line per problem."""

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class _Bad(Exception):
    """Raised by converters; the walker adds the file and the dotted key."""


# --------------------------------------------------------------------------- converters

def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(minimum: int, what: str) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if not _is_int(value) or value < minimum:
            raise _Bad(f"expected {what}, got {_show(value)}")
        return value
    return conv


_pos_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "a non-negative integer")


def _line_length(value: Any) -> int:
    return _int_at_least(1000, "an integer >= 1000 (RFC 5321 minimum line length)")(value)


def _port(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= 65535:
        raise _Bad(f"expected a port number 0-65535, got {_show(value)}")
    return value


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 1.0:
        raise _Bad(f"expected a number >= 1.0, got {_show(value)}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {_show(value)}")
    return value


def _nonempty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_show(value)}")
    return value


def _choice(*options: str) -> Callable[[Any], str]:
    listed = ", ".join(repr(o) for o in options)

    def conv(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise _Bad(f"expected one of {listed}, got {_show(value)}")
        return value.lower()
    conv.options = options  # type: ignore[attr-defined]
    return conv


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _domain(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a domain name, got {_show(value)}")
    name = value.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise _Bad(f"expected a domain name, got {value!r}") from None
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise _Bad(f"expected a domain name, got {value!r}")
    return name


def _domain_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"expected an array of domain names, got {_show(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        try:
            name = _domain(item)
        except _Bad as e:
            raise _Bad(f"item {i}: {e}") from None
        if name not in out:
            out.append(name)
    return tuple(out)


def _cidr_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"expected an array of CIDR networks, got {_show(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        try:
            net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else None
        except ValueError:
            net = None
        if net is None:
            raise _Bad(f"item {i}: expected a CIDR network like '192.0.2.0/24', got {_show(item)}")
        if str(net) not in out:
            out.append(str(net))
    return tuple(out)


def _ip_address(value: Any) -> str:
    try:
        if isinstance(value, str):
            return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    raise _Bad(f"expected an IP address like '127.0.0.1' or '::', got {_show(value)}")


_TLS_VERSIONS = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}


def _tls_version(value: Any) -> str:
    if isinstance(value, str) and value.lower() in _TLS_VERSIONS:
        return _TLS_VERSIONS[value.lower()]
    raise _Bad(f"expected 'TLSv1.2' or 'TLSv1.3', got {_show(value)}")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _listener_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _Bad(f"expected a name of letters, digits, '-', '_' or '.', got {_show(value)}")
    return value


def _key(default: Any = dataclasses.MISSING, *, conv: Callable[[Any], Any], doc: str,
         factory: Callable[[], Any] | None = None) -> Any:
    meta = {"conv": conv, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- the schema

@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One ``[[listeners]]`` entry: a socket the server accepts SMTP on."""
    name: str = _key(conv=_listener_name, doc="Unique name, shown in logs and trace headers.")
    port: int = _key(conv=_port, doc="TCP port (0 = an ephemeral port, for tests).")
    address: str = _key("127.0.0.1", conv=_ip_address,
                        doc="IP address to bind; '0.0.0.0' or '::' for all interfaces.")
    role: str = _key("mx", conv=_choice("mx", "submission", "submissions"),
                     doc="'mx' receives mail for local domains; 'submission' (587) and "
                         "'submissions' (465) take authenticated mail from users.")
    tls: str = _key("starttls", conv=_choice("starttls", "implicit", "none"),
                    doc="'starttls' offers STARTTLS, 'implicit' speaks TLS from the first byte, "
                        "'none' offers no TLS. Default 'implicit' for role 'submissions'.")


def _default_listeners() -> tuple[ListenerSettings, ...]:
    return (ListenerSettings(name="smtp", port=2525),
            ListenerSettings(name="submission", port=2587, role="submission", tls="starttls"),
            ListenerSettings(name="submissions", port=2465, role="submissions", tls="implicit"))


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: str = _key("", conv=_str,
                          doc="PEM certificate chain. Empty (with key_file empty): a self-signed "
                              "certificate is generated on first start at data_dir/tls/cert.pem.")
    key_file: str = _key("", conv=_str,
                         doc="PEM private key for cert_file. Empty: data_dir/tls/key.pem.")
    min_version: str = _key("TLSv1.2", conv=_tls_version,
                            doc="Lowest TLS version accepted: 'TLSv1.2' or 'TLSv1.3'.")

    @property
    def self_signed(self) -> bool:
        return not self.cert_file and not self.key_file


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_message_size: int = _key(26214400, conv=_pos_int,
                                 doc="Largest message accepted, in octets (advertised in EHLO SIZE).")
    max_recipients: int = _key(100, conv=_pos_int, doc="Most RCPT TO accepted per transaction.")
    max_line_length: int = _key(2048, conv=_line_length,
                                doc="Longest command or body line accepted, in octets "
                                    "including CRLF (at least 1000).")
    max_errors: int = _key(10, conv=_pos_int,
                           doc="Bad commands tolerated per session before it is closed.")
    max_connections: int = _key(1000, conv=_pos_int, doc="Concurrent SMTP sessions in total.")
    max_connections_per_ip: int = _key(50, conv=_pos_int,
                                       doc="Concurrent SMTP sessions from one client address.")
    command_timeout: int = _key(300, conv=_pos_int,
                                doc="Seconds to wait for the next command before closing.")
    data_timeout: int = _key(300, conv=_pos_int,
                             doc="Seconds to wait for the next chunk of message data.")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    retry_first: int = _key(300, conv=_pos_int,
                            doc="Seconds before the first retry of a temporary failure.")
    retry_factor: float = _key(2.0, conv=_factor,
                               doc="Each later retry interval is the previous one times this.")
    retry_max_interval: int = _key(14400, conv=_pos_int,
                                   doc="Upper bound on a retry interval, in seconds.")
    max_age: int = _key(432000, conv=_pos_int,
                        doc="Seconds after which an undelivered recipient fails "
                            "(and a bounce is sent); default 5 days.")
    delivery_concurrency: int = _key(20, conv=_pos_int,
                                     doc="Deliveries in progress at once.")
    lease_seconds: int = _key(300, conv=_pos_int,
                              doc="How long a claimed message is reserved for one delivery "
                                  "worker before another may claim it.")
    delay_warning_after: int = _key(14400, conv=_nonneg_int,
                                    doc="Seconds after arrival before a still undelivered "
                                        "recipient's sender gets one delay DSN (0 = never).")
    dsn_max_original_size: int = _key(1048576, conv=_nonneg_int,
                                      doc="A failure DSN returns the original message up to "
                                          "this many bytes, only its headers above it.")
    completed_retention_days: int = _key(30, conv=_nonneg_int,
                                         doc="Days a completed message (every recipient "
                                             "delivered or failed) keeps its envelope, "
                                             "recipients and delivery attempts for "
                                             "'mailwright trace' and 'queue list'; then "
                                             "pruned hourly. 0 = keep them forever.")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    maildir_root: str = _key("mail", conv=_nonempty_str,
                             doc="Directory holding one Maildir per mailbox "
                                 "(<root>/<domain>/<user>/); relative to data_dir.")
    fsync: bool = _key(True, conv=_bool,
                       doc="fsync delivered files and directories before reporting success.")
    discard_domains: tuple[str, ...] = _key(
        (), conv=_domain_list,
        doc="Local domains whose accepted mail is discarded instead of delivered "
            "(Postfix's discard transport): sinks and load tests.")
    mailbox_store: str = _key("maildir", conv=_choice("maildir", "postgres"),
                              doc="Where local mailboxes live: 'maildir' (files under "
                                  "maildir_root) or 'postgres' (the store's database, "
                                  "shared by every node; needs store.backend = 'postgres').")


def _pg_schema(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise _Bad(f"expected a lower-case SQL identifier, got {_show(value)}")
    return value


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: str = _key("sqlite", conv=_choice("sqlite", "postgres"),
                        doc="Storage backend: 'sqlite' (embedded, one node) or 'postgres' "
                            "(several nodes sharing one database).")
    path: str = _key("mailwright.db", conv=_nonempty_str,
                     doc="SQLite database file; relative to data_dir.")
    blob_dir: str = _key("queue", conv=_nonempty_str,
                         doc="Directory holding queued message bodies; relative to data_dir.")
    sync_method: str = _key("auto", conv=_choice("auto", "fsync", "syncfs"),
                            doc="How a commit is made durable: 'fsync' each body, directory "
                                "and the WAL, or one 'syncfs' of the file system per batch; "
                                "'auto' = syncfs on Linux, else fsync.")
    inline_body_max: int = _key(65536, conv=_nonneg_int,
                                doc="sqlite: bodies up to this many octets are kept in the "
                                    "database, written in the envelope's transaction, instead "
                                    "of one file each under blob_dir; 0 = every body in a file.")
    # -- backend "postgres" (the cluster; store/postgres.py)
    dsn: str = _key("postgresql://localhost:5432/mailwright", conv=_nonempty_str,
                    doc="postgres: libpq connection URI of the shared database.")
    schema: str = _key("mailwright", conv=_pg_schema,
                       doc="postgres: schema holding Mailwright's tables (created if missing).")
    node: str = _key("", conv=_str,
                     doc="postgres: this node's name in leases and heartbeats; empty = the "
                         "machine's host name. Unique per node.")
    cache_dir: str = _key("body-cache", conv=_nonempty_str,
                          doc="postgres: this node's local copies of message bodies; "
                              "relative to data_dir.")
    pool_size: int = _key(10, conv=_pos_int, doc="postgres: connections per process.")
    heartbeat_interval: int = _key(10, conv=_pos_int,
                                   doc="postgres: seconds between a node's heartbeats "
                                       "(`mailwright cluster status`).")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    trusted_networks: tuple[str, ...] = _key(
        conv=_cidr_list, factory=tuple,
        doc="CIDR networks whose clients may relay without authenticating. Empty by "
            "default: not even loopback is trusted.")

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n) for n in self.trusted_networks)

    def is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks())


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = _key("info", conv=_choice("debug", "info", "warning", "error"),
                      doc="Least severe level written: 'debug', 'info', 'warning' or 'error'.")
    format: str = _key("human", conv=_choice("human", "json"),
                       doc="'human' (one readable line per event) or 'json' (one object per line).")
    file: str = _key("", conv=_str, doc="Log file, relative to data_dir; empty = standard output.")


from .submission import SubmissionSettings  # noqa: E402  (it imports the helpers above)
from .outbound import OutboundSettings  # noqa: E402  (same)
from .mailauth import AuthSettings  # noqa: E402  (same)
from .trace import TraceSettings  # noqa: E402  (same)
from .antiabuse import AntiAbuseSettings  # noqa: E402  (same)
from .metrics import MetricsSettings  # noqa: E402  (same)


@functools.lru_cache(maxsize=1)
def default_hostname() -> str:
    """This machine's fully qualified name, or "localhost" if it has no dotted name."""
    candidates: list[str] = []
    try:
        candidates.append(socket.gethostname())
    except OSError:
        pass
    try:
        candidates.append(socket.getfqdn())
    except OSError:
        pass
    for name in candidates:
        try:
            name = _domain(name)
        except _Bad:
            continue
        if "." in name and not name.endswith(".localdomain") and name != "localhost.localdomain":
            return name
    return "localhost"


@dataclass(frozen=True, slots=True)
class Paths:
    """Absolute paths derived from ``Settings``."""
    data_dir: Path
    tls_dir: Path
    tls_cert: Path
    tls_key: Path
    store_db: Path
    blob_dir: Path
    maildir_root: Path
    log_file: Path | None     # None = standard output


@dataclass(frozen=True, slots=True)
class Settings:
    hostname: str = _key("", conv=_domain,
                         doc="Name this server uses in its greeting, EHLO and trace headers. "
                             "Default: the machine's fully qualified name, or 'localhost'.")
    data_dir: str = _key("mailwright-data", conv=_nonempty_str,
                         doc="Directory for all state; relative to the working directory.")
    workers: int = _key(1, conv=_nonneg_int,
                        doc="Intake worker processes; 0 = one per CPU core.")
    local_domains: tuple[str, ...] | None = _key(
        None, conv=_domain_list,
        doc="Domains seeded into the store at start (the store is the source of truth; "
            "`mailwright domain add` adds more). Default: 'localhost' plus hostname.")
    listeners: tuple[ListenerSettings, ...] = field(default_factory=_default_listeners)
    tls: TLSSettings = field(default_factory=TLSSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    log: LogSettings = field(default_factory=LogSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    trace: TraceSettings = field(default_factory=TraceSettings)
    antiabuse: AntiAbuseSettings = field(default_factory=AntiAbuseSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: str = field(default=DEFAULT_SOURCE, compare=False)  # file loaded (not a key)

    def __post_init__(self) -> None:
        # Fill the computed defaults so every consumer sees concrete values.
        if not self.hostname:
            object.__setattr__(self, "hostname", default_hostname())
        if self.local_domains is None:
            domains = ("localhost",) if self.hostname == "localhost" \
                else ("localhost", self.hostname)
            object.__setattr__(self, "local_domains", domains)

    @property
    def effective_workers(self) -> int:
        """``workers`` with 0 replaced by the number of CPU cores."""
        return self.workers or (os.cpu_count() or 1)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """An absolute path: ``path`` itself if absolute, else under ``data_dir``."""
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        return Path(self.data_dir).expanduser().absolute() / p

    @property
    def paths(self) -> Paths:
        tls_dir = self.resolve("tls")
        return Paths(
            data_dir=Path(self.data_dir).expanduser().absolute(),
            tls_dir=tls_dir,
            tls_cert=self.resolve(self.tls.cert_file) if self.tls.cert_file else tls_dir / "cert.pem",
            tls_key=self.resolve(self.tls.key_file) if self.tls.key_file else tls_dir / "key.pem",
            store_db=self.resolve(self.store.path),
            blob_dir=self.resolve(self.store.blob_dir),
            maildir_root=self.resolve(self.delivery.maildir_root),
            log_file=self.resolve(self.log.file) if self.log.file else None,
        )


_SECTIONS: dict[str, type] = {
    "tls": TLSSettings, "limits": LimitsSettings, "queue": QueueSettings,
    "delivery": DeliverySettings, "store": StoreSettings, "relay": RelaySettings,
    "log": LogSettings, "submission": SubmissionSettings, "outbound": OutboundSettings,
    "auth": AuthSettings, "trace": TraceSettings,
    "antiabuse": AntiAbuseSettings,
    "metrics": MetricsSettings,
}
_TOP_SCALARS = ("hostname", "data_dir", "workers", "local_domains")


def _key_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if "conv" in f.metadata]


def iter_keys() -> Iterator[tuple[str, dataclasses.Field]]:
    """Every config key as (dotted name, field): ``hostname``, ``listeners.port``,
    ``limits.max_message_size``... Docs and tests use this to stay in step with the schema."""
    for f in _key_fields(Settings):
        yield f.name, f
    for f in _key_fields(ListenerSettings):
        yield f"listeners.{f.name}", f
    for section, cls in _SECTIONS.items():
        for f in _key_fields(cls):
            yield f"{section}.{f.name}", f


# --------------------------------------------------------------------------- loading

class _Collector:
    def __init__(self, source: str, env_sources: Mapping[str, str]):
        self.source = source
        self.env_sources = env_sources   # dotted key -> environment variable it came from
        self.errors: list[str] = []

    def error(self, dotted: str, problem: str) -> None:
        origin = self.env_sources.get(dotted, self.source)
        self.errors.append(f"{origin}: {dotted}: {problem}")


def _unknown(known: list[str], key: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


def _build(cls: type, table: Mapping[str, Any], prefix: str, out: _Collector) -> Any | None:
    known = {f.name: f for f in _key_fields(cls)}
    ok = True
    for k in table:
        if k not in known:
            out.error(prefix + k, _unknown(list(known), k))
            ok = False
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name in table:
            try:
                kwargs[name] = f.metadata["conv"](table[name])
            except _Bad as e:
                out.error(prefix + name, str(e))
                ok = False
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            out.error(prefix + name, "required key is missing")
            ok = False
    return cls(**kwargs) if ok else None


def _build_listeners(value: Any, out: _Collector) -> tuple[ListenerSettings, ...] | None:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        out.error("listeners", "expected an array of tables ([[listeners]]), got " + _show(value))
        return None
    if not value:
        out.error("listeners", "expected at least one [[listeners]] table")
        return None
    result: list[ListenerSettings] = []
    names: dict[str, int] = {}
    binds: dict[tuple[str, int], int] = {}
    for i, table in enumerate(value):
        prefix = f"listeners[{i}]."
        if "tls" not in table and table.get("role") == "submissions":
            table = {**table, "tls": "implicit"}
        lst = _build(ListenerSettings, table, prefix, out)
        if lst is None:
            continue
        if lst.role == "submissions" and lst.tls != "implicit":
            out.error(prefix + "tls", "role 'submissions' requires tls = 'implicit' (RFC 8314)")
        if lst.name in names:
            out.error(prefix + "name",
                      f"duplicate listener name {lst.name!r} (also listeners[{names[lst.name]}])")
        names.setdefault(lst.name, i)
        bind = (lst.address, lst.port)
        if lst.port and bind in binds:
            out.error(prefix + "port", f"{lst.address}:{lst.port} is already used by "
                                       f"listeners[{binds[bind]}]")
        binds.setdefault(bind, i)
        result.append(lst)
    return tuple(result)


def _env_overrides(env: Mapping[str, str], data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Overlay ``MAILWRIGHT__SECTION__KEY=value`` variables onto the file's data.

    Values are read as TOML values when they parse as one (``50``, ``true``, ``["a"]``),
    otherwise as plain strings. Returns the merged data, dotted key -> variable name, and
    errors for variables naming no key."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    sources: dict[str, str] = {}
    errors: list[str] = []
    valid = {dotted for dotted, _ in iter_keys() if not dotted.startswith("listeners.")}
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX):].split("__")]
        dotted = ".".join(parts)
        if dotted not in valid:
            errors.append(f"${var}: {dotted or '(empty)'}: unknown key"
                          + (" (listeners cannot be set from the environment)"
                             if parts[0] == "listeners" else ""))
            continue
        raw = env[var]
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        sources[dotted] = f"${var}"
        if len(parts) == 1:
            merged[parts[0]] = value
        else:
            section = merged.get(parts[0])
            if not isinstance(section, dict):
                section = {}
            section[parts[1]] = value
            merged[parts[0]] = section
    return merged, sources, errors


def parse_settings(data: Mapping[str, Any], source: str = DEFAULT_SOURCE,
                   env: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-parsed TOML document (a dict) into ``Settings``.

    ``source`` names the origin in error messages. ``env`` overrides (see module doc);
    pass ``{}`` to ignore the environment. Raises ``ConfigError`` listing every problem."""
    merged, env_sources, env_errors = _env_overrides(env or {}, dict(data))
    out = _Collector(source, env_sources)
    out.errors.extend(env_errors)
    top_known = list(_TOP_SCALARS) + ["listeners"] + list(_SECTIONS)
    for k in merged:
        if k not in top_known:
            out.error(k, _unknown(top_known, k))
    kwargs: dict[str, Any] = {}
    top = _build(Settings, {k: merged[k] for k in _TOP_SCALARS if k in merged}, "", out)
    if top is not None:
        for k in _TOP_SCALARS:
            if k in merged:
                kwargs[k] = getattr(top, k)
    if "listeners" in merged:
        listeners = _build_listeners(merged["listeners"], out)
        if listeners is not None:
            kwargs["listeners"] = listeners
    for section, cls in _SECTIONS.items():
        if section not in merged:
            continue
        table = merged[section]
        if not isinstance(table, dict):
            out.error(section, f"expected a table ([{section}]), got {_show(table)}")
            continue
        built = _build(cls, table, f"{section}.", out)
        if built is not None:
            kwargs[section] = built

    # Cross-key rules.
    tls = kwargs.get("tls")
    if tls is not None and bool(tls.cert_file) != bool(tls.key_file):
        missing = "key_file" if tls.cert_file else "cert_file"
        other = "cert_file" if tls.cert_file else "key_file"
        out.error(f"tls.{missing}", f"must be set together with tls.{other} "
                                    "(leave both empty for a self-signed certificate)")
    queue = kwargs.get("queue")
    if queue is not None and queue.retry_max_interval < queue.retry_first:
        out.error("queue.retry_max_interval",
                  f"must be >= queue.retry_first ({queue.retry_first}), "
                  f"got {queue.retry_max_interval}")
    delivery, store = kwargs.get("delivery"), kwargs.get("store")
    if delivery is not None and delivery.mailbox_store == "postgres" \
            and (store.backend if store is not None else "sqlite") != "postgres":
        out.error("delivery.mailbox_store", "'postgres' needs store.backend = 'postgres'")
    submission = kwargs.get("submission")
    for key, problem in submission.check() if submission is not None else ():
        out.error(f"submission.{key}", problem)
    if out.errors:
        raise ConfigError(out.errors)

    data_dir = kwargs.get("data_dir", Settings.__dataclass_fields__["data_dir"].default)
    kwargs["data_dir"] = str(Path(data_dir).expanduser().absolute())
    return Settings(**kwargs, source=source)


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (TOML), or from ``$MAILWRIGHT_CONFIG`` when path is None,
    or the embedded defaults when neither is given. ``env`` defaults to ``os.environ``.
    Raises ``ConfigError``; its message names the file and the dotted key."""
    if env is None:
        env = os.environ
    if path is None and env.get(ENV_CONFIG):
        path = env[ENV_CONFIG]
    if path is None:
        return parse_settings({}, DEFAULT_SOURCE, env)
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{source}: cannot read: no such file") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 text") from None
    return parse_settings(data, source, env)


# --------------------------------------------------------------------------- output

def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain TOML/JSON-able data (every key, no ``source``)."""
    def value(v: Any) -> Any:
        if isinstance(v, tuple):
            return [value(x) for x in v]
        if dataclasses.is_dataclass(v):     # an array-of-tables item, e.g. outbound.routes
            return section(v)
        return v

    def section(obj: Any) -> dict[str, Any]:
        return {f.name: value(getattr(obj, f.name)) for f in _key_fields(type(obj))}
    out = section(settings)
    out["listeners"] = [section(lst) for lst in settings.listeners]
    for name in _SECTIONS:
        out[name] = section(getattr(settings, name))
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def settings_to_toml(settings: Settings) -> str:
    """The effective configuration as a TOML document that ``load_settings`` reads back."""
    data = settings_to_dict(settings)
    lines = [f"# effective configuration (source: {settings.source})"]
    for k in _TOP_SCALARS:
        lines.append(f"{k} = {_toml_value(data[k])}")
    for lst in data["listeners"]:
        lines += ["", "[[listeners]]"] + [f"{k} = {_toml_value(v)}" for k, v in lst.items()]
    for name in _SECTIONS:
        tables = {k: v for k, v in data[name].items()
                  if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in data[name].items()
                                      if k not in tables]
        for k, items in tables.items():     # arrays of tables go after the plain keys
            for item in items:
                lines += ["", f"[[{name}.{k}]]"] + [f"{ik} = {_toml_value(iv)}"
                                                    for ik, iv in item.items()]
    return "\n".join(lines) + "\n"
