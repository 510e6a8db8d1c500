"""Typed settings for the Prometheus endpoint: the ``[metrics]`` table.

What: ``MetricsSettings`` (frozen dataclass) says whether the primary process serves
``GET <path>`` on ``address:port`` in the Prometheus text format (metrics/http.py).

How: the same ``_key`` schema as config/settings.py; settings.py registers the class as the
``[metrics]`` section, so the generic walker builds and checks it and docs/configuration.md
documents every key.

Invariants: off by default; when on, it binds loopback unless told otherwise (the page
shows traffic volumes and rejection reasons, nothing secret, but nothing for the world
either). ``path`` starts with "/".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .settings import _Bad, _bool, _ip_address, _key, _port, _show

__all__ = ["MetricsSettings"]


def _url_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 200 \
            or any(c.isspace() or c in "?#" for c in value):
        raise _Bad(f"expected a URL path starting with '/', got {_show(value)}")
    return value


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = _key(False, conv=_bool,
                         doc="Serve Prometheus metrics over HTTP from the primary process.")
    address: str = _key("127.0.0.1", conv=_ip_address,
                        doc="IP address the metrics endpoint binds.")
    port: int = _key(9425, conv=_port, doc="TCP port of the metrics endpoint (0 = ephemeral).")
    path: str = _key("/metrics", conv=_url_path,
                     doc="URL path answering with the metrics; every other path is 404.")
