"""Settings: defaults, every error path names file and key, env overrides, round trip."""
from __future__ import annotations

import dataclasses
import socket
import tomllib
from pathlib import Path

import pytest

from mailwright.config import (
    ConfigError, ListenerSettings, Settings, default_hostname, load_settings, parse_settings,
    settings_to_dict, settings_to_toml,
)
from mailwright.config import settings as settings_mod


def load_text(tmp_path: Path, text: str, env: dict | None = None) -> Settings:
    path = tmp_path / "mailwright.toml"
    path.write_text(text)
    return load_settings(path, env or {})


def errors_of(tmp_path: Path, text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return info.value.errors


# ---------------------------------------------------------------- defaults

def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {})
    assert s.source == "<defaults>"
    assert s.data_dir == str(tmp_path / "mailwright-data")
    assert s.workers == 1
    assert s.listeners == (
        ListenerSettings(name="smtp", port=2525, address="127.0.0.1", role="mx",
                         tls="starttls"),
        ListenerSettings(name="submission", port=2587, address="127.0.0.1",
                         role="submission", tls="starttls"),
        ListenerSettings(name="submissions", port=2465, address="127.0.0.1",
                         role="submissions", tls="implicit"))
    assert s.tls.cert_file == "" and s.tls.key_file == "" and s.tls.self_signed
    assert s.tls.min_version == "TLSv1.2"
    lim = s.limits
    assert (lim.max_message_size, lim.max_recipients, lim.max_line_length, lim.max_errors,
            lim.max_connections, lim.max_connections_per_ip, lim.command_timeout,
            lim.data_timeout) == (26214400, 100, 2048, 10, 1000, 50, 300, 300)
    q = s.queue
    assert (q.retry_first, q.retry_factor, q.retry_max_interval, q.max_age,
            q.delivery_concurrency, q.lease_seconds) == (300, 2.0, 14400, 432000, 20, 300)
    assert s.delivery.maildir_root == "mail" and s.delivery.fsync is True
    assert (s.store.backend, s.store.path, s.store.blob_dir) == ("sqlite", "mailwright.db", "queue")
    assert s.relay.trusted_networks == ()
    assert not s.relay.is_trusted("127.0.0.1")        # loopback is NOT trusted by default
    assert (s.log.level, s.log.format, s.log.file) == ("info", "human", "")
    assert "localhost" in s.local_domains
    assert s.hostname == default_hostname()


def test_paths_resolve_against_data_dir(tmp_path):
    s = load_text(tmp_path, f'data_dir = "{tmp_path}/d"\n[store]\npath = "db/x.db"\n'
                            '[log]\nfile = "/var/log/mw.log"\n')
    p = s.paths
    assert p.data_dir == tmp_path / "d"
    assert p.store_db == tmp_path / "d/db/x.db"
    assert p.blob_dir == tmp_path / "d/queue"
    assert p.maildir_root == tmp_path / "d/mail"
    assert p.tls_cert == tmp_path / "d/tls/cert.pem"
    assert p.tls_key == tmp_path / "d/tls/key.pem"
    assert p.log_file == Path("/var/log/mw.log")
    assert s.resolve("x") == tmp_path / "d/x"


def test_relative_data_dir_resolves_against_cwd_at_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_text(tmp_path, 'data_dir = "state"\n')
    assert s.data_dir == str(tmp_path / "state")
    monkeypatch.chdir("/")
    assert s.paths.data_dir == tmp_path / "state"


def test_local_domains_default_includes_hostname(tmp_path):
    s = load_text(tmp_path, 'hostname = "MX.Example.ORG."\n')
    assert s.hostname == "mx.example.org"
    assert s.local_domains == ("localhost", "mx.example.org")
    s = load_text(tmp_path, 'hostname = "mx.example.org"\nlocal_domains = ["Example.org", "example.org"]\n')
    assert s.local_domains == ("example.org",)


def test_configured_hostname_never_asks_dns(tmp_path, monkeypatch):
    default_hostname.cache_clear()

    def boom(*a):
        raise AssertionError("DNS lookup")
    monkeypatch.setattr(socket, "getfqdn", boom)
    monkeypatch.setattr(socket, "gethostname", boom)
    try:
        assert load_text(tmp_path, 'hostname = "mx.example.org"\n').hostname == "mx.example.org"
    finally:
        default_hostname.cache_clear()


@pytest.mark.parametrize("hostname, fqdn, expected", [
    ("mail.example.com", "ignored", "mail.example.com"),
    ("vm", "vm.corp.example", "vm.corp.example"),
    ("vm", "localhost", "localhost"),
    ("vm", "", "localhost"),
    ("", OSError, "localhost"),
    ("box", "box.localdomain", "localhost"),
])
def test_default_hostname(monkeypatch, hostname, fqdn, expected):
    def getfqdn(*a):
        if fqdn is OSError:
            raise OSError("no")
        return fqdn
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    default_hostname.cache_clear()
    try:
        assert default_hostname() == expected
    finally:
        default_hostname.cache_clear()


def test_settings_are_frozen():
    s = parse_settings({"hostname": "a.example"}, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.limits.max_recipients = 3  # type: ignore[misc]


def test_submissions_defaults_to_implicit_tls(tmp_path):
    s = load_text(tmp_path, '[[listeners]]\nname = "s"\nport = 465\nrole = "submissions"\n'
                            '[[listeners]]\nname = "m"\nport = 25\naddress = "::"\n')
    assert [(x.name, x.role, x.tls, x.address) for x in s.listeners] == [
        ("s", "submissions", "implicit", "127.0.0.1"), ("m", "mx", "starttls", "::")]


def test_values_normalised(tmp_path):
    s = load_text(tmp_path, 'workers = 0\n[tls]\nmin_version = "tlsv1.3"\n'
                            '[relay]\ntrusted_networks = ["10.1.2.3/8", "10.0.0.0/8", "::1/128"]\n'
                            '[log]\nlevel = "DEBUG"\n[queue]\nretry_factor = 3\n')
    assert s.tls.min_version == "TLSv1.3"
    assert s.relay.trusted_networks == ("10.0.0.0/8", "::1/128")
    assert s.relay.is_trusted("10.9.9.9") and s.relay.is_trusted("::ffff:10.0.0.1")
    assert not s.relay.is_trusted("11.0.0.1") and not s.relay.is_trusted("junk")
    assert s.log.level == "debug"
    assert s.queue.retry_factor == 3.0 and isinstance(s.queue.retry_factor, float)
    assert s.effective_workers >= 1


def test_effective_config_round_trips():
    s = parse_settings({"hostname": "mx.example.org", "listeners": [
        {"name": "a", "port": 25}, {"name": "b", "port": 465, "role": "submissions"}],
        "relay": {"trusted_networks": ["192.0.2.0/24"]}, "log": {"file": "x.log"}}, env={})
    text = settings_to_toml(s)
    again = parse_settings(tomllib.loads(text), env={})
    assert again == s
    assert settings_to_dict(again) == settings_to_dict(s)


# ---------------------------------------------------------------- errors

def test_error_message_names_file_and_key(tmp_path):
    errs = errors_of(tmp_path, '[limits]\nmax_message_size = "big"\n')
    assert errs == ["mailwright.toml: limits.max_message_size: expected a positive integer, "
                    "got 'big'".replace("mailwright.toml", str(tmp_path / "mailwright.toml"))]


BAD = [
    # (toml, dotted key, fragment of the problem)
    ('bogus = 1', "bogus", "unknown key"),
    ('[limits]\nmax_msg_size = 5', "limits.max_msg_size", "did you mean 'max_message_size'"),
    ('[limits]\nmax_message_size = 0', "limits.max_message_size", "positive integer"),
    ('[limits]\nmax_recipients = true', "limits.max_recipients", "got True"),
    ('[limits]\nmax_errors = 1.5', "limits.max_errors", "positive integer"),
    ('[limits]\nmax_connections = -1', "limits.max_connections", "positive integer"),
    ('[limits]\nmax_connections_per_ip = "9"', "limits.max_connections_per_ip", "got '9'"),
    ('[limits]\ncommand_timeout = 0', "limits.command_timeout", "positive"),
    ('[limits]\ndata_timeout = []', "limits.data_timeout", "got an array"),
    ('[limits]\nmax_line_length = 500', "limits.max_line_length", ">= 1000"),
    ('limits = 5', "limits", "expected a table"),
    ('[queue]\nretry_first = 0', "queue.retry_first", "positive"),
    ('[queue]\nretry_factor = 0.5', "queue.retry_factor", ">= 1.0"),
    ('[queue]\nretry_factor = "x"', "queue.retry_factor", ">= 1.0"),
    ('[queue]\nretry_first = 600\nretry_max_interval = 60', "queue.retry_max_interval",
     ">= queue.retry_first"),
    ('[queue]\nmax_age = 0', "queue.max_age", "positive"),
    ('[queue]\ndelivery_concurrency = 0', "queue.delivery_concurrency", "positive"),
    ('[queue]\nlease_seconds = "5m"', "queue.lease_seconds", "positive"),
    ('[delivery]\nfsync = "yes"', "delivery.fsync", "true or false"),
    ('[delivery]\nmaildir_root = ""', "delivery.maildir_root", "non-empty"),
    ('[store]\nbackend = "mysql"', "store.backend", "'sqlite'"),
    ('[store]\npath = 3', "store.path", "non-empty string"),
    ('[store]\nblob_dir = ""', "store.blob_dir", "non-empty"),
    ('[relay]\ntrusted_networks = ["10.0.0.0/33"]', "relay.trusted_networks", "item 0"),
    ('[relay]\ntrusted_networks = "10.0.0.0/8"', "relay.trusted_networks", "array"),
    ('[log]\nlevel = "loud"', "log.level", "'debug'"),
    ('[log]\nformat = "xml"', "log.format", "'json'"),
    ('[log]\nfile = 1', "log.file", "string"),
    ('[tls]\ncert_file = "c.pem"', "tls.key_file", "together with tls.cert_file"),
    ('[tls]\nkey_file = "k.pem"', "tls.cert_file", "together with tls.key_file"),
    ('[tls]\nmin_version = "SSLv3"', "tls.min_version", "TLSv1.2"),
    ('[tls]\nciphers = "x"', "tls.ciphers", "unknown key"),
    ('hostname = "bad..name"', "hostname", "domain name"),
    ('hostname = 5', "hostname", "domain name"),
    ('data_dir = ""', "data_dir", "non-empty"),
    ('workers = -1', "workers", "non-negative"),
    ('local_domains = "example.org"', "local_domains", "array"),
    ('local_domains = ["ok.example", "-bad-"]', "local_domains", "item 1"),
    ('listeners = 5', "listeners", "array of tables"),
    ('listeners = []', "listeners", "at least one"),
    ('[[listeners]]\nport = 25', "listeners[0].name", "required"),
    ('[[listeners]]\nname = "a"', "listeners[0].port", "required"),
    ('[[listeners]]\nname = "a"\nport = 70000', "listeners[0].port", "0-65535"),
    ('[[listeners]]\nname = "a b"\nport = 25', "listeners[0].name", "expected a name"),
    ('[[listeners]]\nname = "a"\nport = 25\naddress = "localhost"', "listeners[0].address",
     "IP address"),
    ('[[listeners]]\nname = "a"\nport = 25\nrole = "relay"', "listeners[0].role", "'mx'"),
    ('[[listeners]]\nname = "a"\nport = 25\ntls = "ssl"', "listeners[0].tls", "'starttls'"),
    ('[[listeners]]\nname = "a"\nport = 25\ncolor = 1', "listeners[0].color", "unknown key"),
    ('[[listeners]]\nname = "a"\nport = 465\nrole = "submissions"\ntls = "starttls"',
     "listeners[0].tls", "requires tls = 'implicit'"),
    ('[[listeners]]\nname = "a"\nport = 25\n[[listeners]]\nname = "a"\nport = 26',
     "listeners[1].name", "duplicate listener name 'a'"),
    ('[[listeners]]\nname = "a"\nport = 25\n[[listeners]]\nname = "b"\nport = 25',
     "listeners[1].port", "127.0.0.1:25 is already used by listeners[0]"),
]


@pytest.mark.parametrize("text, key, fragment", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_every_error_names_the_key(tmp_path, text, key, fragment):
    errs = errors_of(tmp_path, text + "\n")
    prefix = f"{tmp_path / 'mailwright.toml'}: {key}: "
    assert any(e.startswith(prefix) and fragment in e for e in errs), errs


def test_all_errors_reported_at_once(tmp_path):
    errs = errors_of(tmp_path, 'workers = -1\n[limits]\nmax_errors = 0\n[log]\nlevel = "x"\n')
    keys = [e.split(": ")[1] for e in errs]
    assert keys == ["workers", "limits.max_errors", "log.level"]


def test_ephemeral_ports_may_repeat(tmp_path):
    s = load_text(tmp_path, '[[listeners]]\nname = "a"\nport = 0\n[[listeners]]\nname = "b"\nport = 0\n')
    assert [x.port for x in s.listeners] == [0, 0]


def test_syntax_error_names_file(tmp_path):
    errs = errors_of(tmp_path, "[limits\n")
    assert errs[0].startswith(f"{tmp_path / 'mailwright.toml'}: invalid TOML")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: cannot read"):
        load_settings(tmp_path / "nope.toml", {})


# ---------------------------------------------------------------- environment

def test_env_overrides(tmp_path):
    s = load_text(tmp_path, "[limits]\nmax_recipients = 10\n", env={
        "MAILWRIGHT__LIMITS__MAX_RECIPIENTS": "50",
        "MAILWRIGHT__DATA_DIR": str(tmp_path / "elsewhere"),
        "mailwright__relay__trusted_networks": '["10.0.0.0/8"]',
        "MAILWRIGHT__DELIVERY__FSYNC": "false",
        "MAILWRIGHT_UNRELATED": "ignored",
    })
    assert s.limits.max_recipients == 50
    assert s.data_dir == str(tmp_path / "elsewhere")
    assert s.relay.trusted_networks == ("10.0.0.0/8",)
    assert s.delivery.fsync is False


def test_env_errors_name_the_variable(tmp_path):
    errs = errors_of(tmp_path, "", env={"MAILWRIGHT__LIMITS__MAX_RECIPIENTS": "many",
                                        "MAILWRIGHT__LIMITS__NOPE": "1",
                                        "MAILWRIGHT__LISTENERS__PORT": "25"})
    assert "$MAILWRIGHT__LIMITS__MAX_RECIPIENTS: limits.max_recipients: expected a positive " \
           "integer, got 'many'" in errs
    assert "$MAILWRIGHT__LIMITS__NOPE: limits.nope: unknown key" in errs
    assert any(e.startswith("$MAILWRIGHT__LISTENERS__PORT: listeners.port: unknown key")
               for e in errs)


def test_config_file_from_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("workers = 4\n")
    assert load_settings(None, {"MAILWRIGHT_CONFIG": str(path)}).workers == 4
    assert load_settings(None, {}).workers == 1


def test_iter_keys_covers_every_field():
    keys = {k for k, _ in settings_mod.iter_keys()}
    assert "limits.max_message_size" in keys and "listeners.tls" in keys and "hostname" in keys
    assert "source" not in keys
    for section in ("tls", "limits", "queue", "delivery", "store", "relay", "log"):
        cls = type(getattr(Settings(hostname="x.example"), section))
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name}" in keys
