"""[outbound] settings: defaults, conversions, and errors that name the key."""
from __future__ import annotations

import pytest

from mailwright.config.outbound import (
    NextHop, OutboundSettings, parse_next_hop, parse_outbound,
)
from mailwright.config.settings import ConfigError


def test_defaults():
    s = parse_outbound({})
    assert s == OutboundSettings()
    assert (s.port, s.helo_name, s.connect_timeout) == (25, "", 30.0)
    assert (s.greeting_timeout, s.mail_timeout, s.rcpt_timeout, s.data_init_timeout,
            s.data_block_timeout, s.data_done_timeout) == (300, 300, 300, 120, 180, 600)
    assert (s.per_destination_concurrency, s.max_messages_per_connection,
            s.idle_connection_timeout, s.nameservers, s.dns_timeout, s.routes) == \
        (20, 100, 10.0, (), 5.0, ())


@pytest.mark.parametrize("text, hop", [
    ("relay.example.net", NextHop("relay.example.net")),
    ("Relay.Example.NET:587", NextHop("relay.example.net", 587)),
    ("[192.0.2.1]", NextHop("192.0.2.1", 0, True)),
    ("[192.0.2.1]:2525", NextHop("192.0.2.1", 2525, True)),
    ("[2001:db8::1]:25", NextHop("2001:db8::1", 25, True)),
    ("[IPv6:2001:db8::1]", NextHop("2001:db8::1", 0, True)),
    ("127.0.0.1:10025", NextHop("127.0.0.1", 10025, True)),
])
def test_next_hop(text, hop):
    assert parse_next_hop(text) == hop


@pytest.mark.parametrize("text", ["", "[nope]", "[1.2.3.4", "host:0", "host:x", "bad_host!"])
def test_bad_next_hop(text):
    with pytest.raises(ValueError):
        parse_next_hop(text)


def test_routes_and_lookup():
    s = parse_outbound({"routes": [
        {"domain": "*", "next_hop": "[192.0.2.1]:587", "auth_user": "u",
         "auth_password_file": "/etc/pw", "tls": "require"},
        {"domain": "Example.COM", "tls": "none"}],
        "nameservers": ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"]})
    assert s.route_for("example.com.").tls == "none"
    assert s.route_for("other.org").hop == NextHop("192.0.2.1", 587, True)
    assert s.nameservers == ("127.0.0.1:5353", "[::1]:53", "192.0.2.53")
    assert parse_outbound({}).route_for("x.org") is None


@pytest.mark.parametrize("table, where", [
    ({"port": 70000}, "outbound.port"),
    ({"connect_timeout": 0}, "outbound.connect_timeout"),
    ({"mail_timeout": "5"}, "outbound.mail_timeout"),
    ({"per_destination_concurrency": 0}, "outbound.per_destination_concurrency"),
    ({"nameservers": ["dns.example"]}, "outbound.nameservers"),
    ({"routes": {"domain": "x"}}, "outbound.routes"),
    ({"routes": [{"next_hop": "x"}]}, "item 0: domain: required key is missing"),
    ({"routes": [{"domain": "x.org", "tls": "maybe"}]}, "item 0: tls"),
    ({"routes": [{"domain": "x.org", "next_hop": "[x]"}]}, "item 0: next_hop"),
    ({"routes": [{"domain": "x.org", "bogus": 1}]}, "item 0: bogus: unknown key"),
    ({"routes": [{"domain": "x.org"}, {"domain": "X.org"}]}, "item 1: domain: duplicate"),
    ({"routes": [{"domain": "x.org", "auth_user": "u"}]}, "auth_password_file: required"),
    ({"routes": [{"domain": "x.org", "auth_user": "u", "auth_password_file": "p",
                  "tls": "none"}]}, "AUTH is only sent over TLS"),
    ({"unknown": 1}, "outbound.unknown: unknown key"),
])
def test_errors_name_the_key(table, where):
    with pytest.raises(ConfigError) as e:
        parse_outbound(table, "mw.toml")
    assert e.value.errors[0].startswith("mw.toml: outbound.")
    assert where in str(e.value)
