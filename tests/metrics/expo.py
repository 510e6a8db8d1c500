"""A strict reader of the Prometheus text format (0.0.4) for the tests: it parses what
registry.render() writes, independently of it, and checks the rules a scraper relies on.

``parse(text)`` returns ``Exposition``: ``types[name]`` and ``samples[(name, labels)]``
where labels is a sorted tuple of (name, unescaped value)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')


def _unescape(v: str) -> str:
    out, i = [], 0
    while i < len(v):
        if v[i] == "\\":
            out.append({"\\": "\\", '"': '"', "n": "\n"}[v[i + 1]])
            i += 2
        else:
            out.append(v[i])
            i += 1
    return "".join(out)


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple, float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))


def parse(text: str) -> Exposition:
    assert text.endswith("\n")
    out = Exposition()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in out.helps, f"second HELP for {name}"
            out.helps[name] = help_
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in out.types, f"second TYPE for {name}"
            out.types[name] = kind
            current = name
            continue
        assert line and not line.startswith("#"), repr(line)
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name, body, value = m.group(1), m.group(3), m.group(4)
        labels = []
        if body:
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
        base = current
        assert base is not None and (name == base or (
            out.types[base] == "histogram" and name in (base + "_bucket", base + "_sum",
                                                        base + "_count"))), \
            f"{name} outside its family ({base})"
        key = (name, tuple(sorted(labels)))
        assert key not in out.samples, f"duplicate series {key}"
        out.samples[key] = _value(value)
    _check_histograms(out)
    return out


def _check_histograms(out: Exposition) -> None:
    for name, kind in out.types.items():
        if kind != "histogram":
            continue
        series: dict[tuple, list[tuple[float, float]]] = {}
        for (n, labels), v in out.samples.items():
            if n == name + "_bucket":
                le = dict(labels)["le"]
                rest = tuple(l for l in labels if l[0] != "le")
                series.setdefault(rest, []).append((_value(le), v))
        for rest, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf, f"{name}{rest}: no +Inf bucket"
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), f"{name}{rest}: buckets not cumulative"
            assert out.samples[(name + "_count", rest)] == counts[-1]
            assert (name + "_sum", rest) in out.samples
