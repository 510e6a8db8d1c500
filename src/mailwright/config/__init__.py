"""Typed, documented settings loaded from TOML; errors name the file and the key.

See ``settings.py`` for the schema and ``docs/configuration.md`` for every key.
"""
from .settings import (
    DEFAULT_SOURCE,
    ENV_CONFIG,
    ENV_PREFIX,
    ConfigError,
    DeliverySettings,
    LimitsSettings,
    ListenerSettings,
    LogSettings,
    Paths,
    QueueSettings,
    RelaySettings,
    Settings,
    StoreSettings,
    TLSSettings,
    default_hostname,
    iter_keys,
    load_settings,
    parse_settings,
    settings_to_dict,
    settings_to_toml,
)

__all__ = [
    "DEFAULT_SOURCE", "ENV_CONFIG", "ENV_PREFIX", "ConfigError", "DeliverySettings",
    "LimitsSettings", "ListenerSettings", "LogSettings", "Paths", "QueueSettings",
    "RelaySettings", "Settings", "StoreSettings", "TLSSettings", "default_hostname",
    "iter_keys", "load_settings", "parse_settings", "settings_to_dict", "settings_to_toml",
]
