"""Prometheus metrics: definitions, exposition, the scrape endpoint, several processes.

``registry.py`` (families and the text format), ``mail.py`` (every ``mailwright_*`` metric
and the hooks that update it), ``http.py`` (the endpoint), ``runtime.py`` (per-process
wiring and how intake workers' values reach the primary). Configured by ``[metrics]``
(config/metrics.py); documented for operators in docs/operations.md.
"""
from .mail import MailMetrics
from .registry import Counter, Gauge, Histogram, Registry

__all__ = ["MailMetrics", "Registry", "Counter", "Gauge", "Histogram"]
