"""Metric families and the Prometheus text exposition format (version 0.0.4), no dependencies.

What: a ``Registry`` of ``Counter``, ``Gauge`` and ``Histogram`` families, each with fixed
label names; ``family.labels(*values)`` gives the child that is updated (``inc``, ``set``,
``observe``). ``Registry.render()`` writes the text format
(https://prometheus.io/docs/instrumenting/exposition_formats/); ``snapshot()`` /
``restore()`` / ``render(extra=...)`` let several processes add up their values (see
metrics/runtime.py).

How: a family keeps a dict from label values to a child; one lock per family guards child
creation and every update, so the event loop and helper threads (DNS, the store's writer)
may update the same family. Rendering copies the values under the lock, formats outside.

Invariants:
* Label names are fixed at definition; a call with the wrong number of label values raises
  ``ValueError`` (a programming error, caught by tests).
* Counters only go up (``inc`` refuses a negative amount); ``restore`` sets counters and
  histograms, never gauges (a gauge describes the current process only).
* Label values are escaped (backslash, double quote, newline); HELP text too. Histogram
  buckets are cumulative in the output and always end with ``le="+Inf"``, equal to
  ``_count``.
"""
from __future__ import annotations

import bisect
import math
import re
import threading
from typing import Any, Iterable, Sequence

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "CONTENT_TYPE", "escape_label",
           "format_value"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

#: Buckets suited to sub-second latencies (seconds).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"bad label name {label!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], Any] = {}

    def _key(self, values: Sequence[Any]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
        return tuple(str(v) for v in values)

    def labels(self, *values: Any):
        child = self._children.get(values)       # the common case: known str labels
        if child is not None:
            return child
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def _values(self) -> dict[tuple[str, ...], Any]:
        with self._lock:
            return {k: c.value() for k, c in self._children.items()}


class _Value:
    __slots__ = ("_v", "_lock")

    def __init__(self, lock: threading.Lock) -> None:
        self._v = 0.0
        self._lock = lock

    def value(self) -> float:
        return self._v


class _CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._v += amount


class _GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        with self._lock:
            self._v = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._v += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._v -= amount


class Counter(_Family):
    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild(self._lock)

    def inc(self, amount: float = 1.0) -> None:
        """For a family without labels."""
        self.labels().inc(amount)


class Gauge(_Family):
    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild(self._lock)

    def set(self, value: float) -> None:
        self.labels().set(value)


class _HistogramChild:
    __slots__ = ("_bounds", "_counts", "_sum", "_lock")

    def __init__(self, bounds: tuple[float, ...], lock: threading.Lock) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)     # per bucket (not cumulative); last = +Inf
        self._sum = 0.0
        self._lock = lock

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self._bounds, value)    # the first bound >= value
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def value(self) -> tuple[list[int], float]:
        return list(self._counts), self._sum


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labelnames)
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers")
        self.buckets = bounds

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets, self._lock)

    def observe(self, value: float) -> None:
        self.labels().observe(value)


class Registry:
    """The families of one process, in definition order."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, family: _Family) -> Any:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} defined twice")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets))

    def families(self) -> list[_Family]:
        return list(self._families.values())

    # ------------------------------------------------------------ several processes

    def snapshot(self) -> dict[str, list]:
        """Every value as JSON-able data: ``{name: [[label values], value]}``, a histogram's
        value being ``[[count per bucket, last = +Inf], sum]``."""
        out: dict[str, list] = {}
        for fam in self._families.values():
            out[fam.name] = [[list(k), list(v) if isinstance(v, tuple) else v]
                             for k, v in fam._values().items()]
        return out

    def restore(self, snapshot: dict[str, list]) -> None:
        """Continue counters and histograms from an earlier ``snapshot`` of this process's
        predecessor (a restarted worker): values only grow. Malformed parts are skipped."""
        for name, samples in snapshot.items():
            fam = self._families.get(name)
            if fam is None or isinstance(fam, Gauge):
                continue
            for sample in samples:
                try:
                    key, value = fam._key(sample[0]), sample[1]
                    child = fam.labels(*key)
                    with fam._lock:
                        if isinstance(fam, Histogram):
                            counts, total = [int(c) for c in value[0]], float(value[1])
                            if len(counts) == len(child._counts):
                                child._counts = [a + b for a, b in zip(child._counts, counts)]
                                child._sum += total
                        else:
                            child._v += max(0.0, float(value))
                except (ValueError, TypeError, IndexError):
                    continue

    def _merged(self, fam: _Family, extra: Iterable[dict[str, list]]) -> dict[tuple, Any]:
        values = fam._values()
        for snap in extra:
            for sample in snap.get(fam.name, ()):
                try:
                    key = fam._key(sample[0])
                    value = sample[1]
                    if isinstance(fam, Histogram):
                        counts, total = [int(c) for c in value[0]], float(value[1])
                        if len(counts) != len(fam.buckets) + 1:
                            continue
                        old = values.get(key, ([0] * len(counts), 0.0))
                        values[key] = ([a + b for a, b in zip(old[0], counts)], old[1] + total)
                    else:
                        values[key] = values.get(key, 0.0) + float(value)
                except (ValueError, TypeError, IndexError):
                    continue
        return values

    # ------------------------------------------------------------ exposition

    def render(self, extra: Iterable[dict[str, list]] = ()) -> str:
        """The text exposition of every family, adding up ``extra`` snapshots (other
        processes') sample by sample."""
        extra = list(extra)
        lines: list[str] = []
        for fam in self._families.values():
            lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            values = self._merged(fam, extra)
            if not values and not fam.labelnames:
                values[()] = ([0] * (len(fam.buckets) + 1), 0.0) \
                    if isinstance(fam, Histogram) else 0.0
            for key in sorted(values):
                value = values[key]
                if isinstance(fam, Histogram):
                    counts, total = value
                    running = 0
                    for bound, count in zip((*fam.buckets, math.inf), counts):
                        running += count
                        le = 'le="' + format_value(bound) + '"' if math.isinf(bound) \
                            else f'le="{bound!r}"'
                        lines.append(f"{fam.name}_bucket"
                                     f"{_labels_text(fam.labelnames, key, le)} {running}")
                    labels = _labels_text(fam.labelnames, key)
                    lines.append(f"{fam.name}_sum{labels} {format_value(total)}")
                    lines.append(f"{fam.name}_count{labels} {running}")
                else:
                    lines.append(f"{fam.name}{_labels_text(fam.labelnames, key)} "
                                 f"{format_value(value)}")
        return "\n".join(lines) + "\n"
