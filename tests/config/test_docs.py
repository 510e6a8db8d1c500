"""docs/configuration.md cannot drift from the schema: every key documented with its
default, and the complete example parses and sets every key."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from mailwright.config import iter_keys, parse_settings
from mailwright.config.settings import _toml_value

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def doc_text() -> str:
    return DOC.read_text()


def example_toml() -> str:
    text = doc_text()
    section = text.split("## Complete example", 1)[1]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_example_parses():
    data = tomllib.loads(example_toml())
    s = parse_settings(data, "docs/configuration.md", env={})
    assert s.hostname == "mx.example.org"
    assert [x.role for x in s.listeners] == ["mx", "submission", "submissions"]


def test_example_sets_every_key():
    data = tomllib.loads(example_toml())
    for dotted, _ in iter_keys():
        head, _, rest = dotted.partition(".")
        if not rest:
            assert head in data, dotted
        elif head == "listeners":
            assert any(rest in lst for lst in data["listeners"]), dotted
        else:
            assert rest in data.get(head, {}), dotted


def test_every_key_documented_with_its_default():
    rows = {}
    for line in doc_text().splitlines():
        m = re.match(r"\| `([a-z_.]+)` \|", line)
        if m:
            rows[m.group(1)] = line
    documented = set(rows)
    keys = {k for k, _ in iter_keys()}
    assert keys - documented == set(), "undocumented keys"
    assert documented - keys == set(), "documented keys that do not exist"
    for dotted, f in iter_keys():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert "required" in rows[dotted], dotted
            continue
        if dotted in ("hostname", "local_domains"):      # computed defaults, described
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = _toml_value(list(default) if isinstance(default, tuple) else default)
        assert f"`{shown}`" in rows[dotted], (dotted, shown)
