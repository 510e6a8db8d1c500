"""DKIM signing keys in the store (schema 5): every backend."""
from __future__ import annotations

import pytest

from mailwright.store import DuplicateError
from mailwright.store.base import DkimKey

T0 = 1_700_000_000.0


def key(selector, algorithm="rsa-sha256", active=True, domain="Example.ORG", at=T0):
    return DkimKey(domain, selector, algorithm, f"-----PEM {selector}-----", at, active)


async def test_add_list_and_one_active_key_per_algorithm(store):
    await store.add_dkim_key(key("s1"))
    await store.add_dkim_key(key("e1", "ed25519-sha256", at=T0 + 1))
    await store.add_dkim_key(key("s2", at=T0 + 2))              # active: replaces s1
    keys = await store.list_dkim_keys("example.org")
    assert [(k.selector, k.algorithm, k.active) for k in keys] == [
        ("s1", "rsa-sha256", False), ("e1", "ed25519-sha256", True),
        ("s2", "rsa-sha256", True)]
    assert keys[0].domain == "example.org" and keys[0].private_key == "-----PEM s1-----"
    with pytest.raises(DuplicateError):
        await store.add_dkim_key(key("S1"))
    assert await store.list_dkim_keys("other.example") == []
    assert len(await store.list_dkim_keys()) == 3


async def test_rotation_by_activating_another_selector(store):
    await store.add_dkim_key(key("old"))
    await store.add_dkim_key(key("new", active=False, at=T0 + 1))
    assert await store.activate_dkim_key("EXAMPLE.org", "new")
    active = {k.selector for k in await store.list_dkim_keys("example.org") if k.active}
    assert active == {"new"}
    assert not await store.activate_dkim_key("example.org", "missing")
    assert await store.remove_dkim_key("example.org", "old")
    assert not await store.remove_dkim_key("example.org", "old")
    assert [k.selector for k in await store.list_dkim_keys()] == ["new"]


async def test_keys_survive_reopen(store, store_factory):
    await store.add_dkim_key(key("s1"))
    again = await store_factory()
    assert [k.selector for k in await again.list_dkim_keys()] == ["s1"]
