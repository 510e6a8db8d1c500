"""The [metrics] table: defaults, and bad values reported with file and key."""
import pytest

from mailwright.config import parse_settings
from mailwright.config.settings import ConfigError


def test_defaults_and_values():
    s = parse_settings({}, env={})
    assert (s.metrics.enabled, s.metrics.address, s.metrics.port, s.metrics.path) == \
        (False, "127.0.0.1", 9425, "/metrics")
    s = parse_settings({"metrics": {"enabled": True, "address": "::1", "port": 0,
                                    "path": "/m"}}, env={})
    assert (s.metrics.enabled, s.metrics.address, s.metrics.port, s.metrics.path) == \
        (True, "::1", 0, "/m")
    s = parse_settings({}, env={"MAILWRIGHT__METRICS__ENABLED": "true"})
    assert s.metrics.enabled is True


@pytest.mark.parametrize("key, value", [
    ("path", "metrics"), ("path", "/a b"), ("path", "/m?x"), ("port", 70000),
    ("address", "localhost"), ("enabled", "yes"), ("unknown", 1)])
def test_bad_values(key, value):
    with pytest.raises(ConfigError) as err:
        parse_settings({"metrics": {key: value}}, "f.toml", env={})
    assert f"f.toml: metrics.{key}:" in str(err.value)
