"""AdminService validation against the real SQLite store."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailwright.admin.service import (
    AdminService, AlreadyExists, Conflict, InvalidInput, NotFound, normalise_address,
    normalise_domain,
)
from mailwright.store import open_store


def run_with(tmp_path: Path, fn):
    async def go():
        store = open_store("sqlite", path=str(tmp_path / "db.sqlite"),
                           blob_dir=str(tmp_path / "blobs"))
        await store.open()
        try:
            svc = AdminService(store)
            await svc.ensure_domains(["example.test"])
            return await fn(svc)
        finally:
            await store.close()
    return asyncio.run(go())


@pytest.mark.parametrize("given, expected", [
    ("Alice@Example.TEST", "alice@example.test"),
    ("a.b+tag@example.test.", "a.b+tag@example.test"),
    ("o'brien@example.test", "o'brien@example.test"),
    ("user@bücher.example", "user@xn--bcher-kva.example"),
])
def test_normalise_address(given, expected):
    assert normalise_address(given) == expected


@pytest.mark.parametrize("bad", [
    "", "plain", "@example.test", "a@", "a..b@example.test", ".a@example.test",
    "a.@example.test", "a b@example.test", "a@exa mple.test", "a@-bad.test",
    "a%b@example.test", "a!b@example.test", "x" * 65 + "@example.test", "a@1.2.3.4",
    'a"b@example.test', "a@b@example.test",
])
def test_bad_addresses(bad):
    with pytest.raises(InvalidInput):
        normalise_address(bad)


def test_external_targets_may_use_routing_chars():
    assert normalise_address("a%b@example.test", mailbox=False) == "a%b@example.test"


@pytest.mark.parametrize("bad", ["", "a..b", "-a.test", "a_b.test", "x" * 64 + ".test", "1.2.3.4"])
def test_bad_domains(bad):
    with pytest.raises(InvalidInput):
        normalise_domain(bad)


def test_ensure_domains_idempotent(tmp_path):
    async def go(svc):
        first = await svc.ensure_domains(["Example.test", "other.test", "other.test"])
        second = await svc.ensure_domains(["other.test"])
        return first, second, await svc.list_domains()
    assert run_with(tmp_path, go) == (["other.test"], [], ["example.test", "other.test"])


def test_users(tmp_path):
    async def go(svc):
        u = await svc.add_user("A@example.test", "pw", 1000)
        assert (u.address, u.has_password, u.quota_bytes) == ("a@example.test", True, 1000)
        assert "pw" not in repr(u) and "scrypt" not in repr(u)
        with pytest.raises(AlreadyExists):
            await svc.add_user("a@example.test")
        with pytest.raises(Conflict, match="not a local domain"):
            await svc.add_user("a@nowhere.test")
        with pytest.raises(InvalidInput):
            await svc.add_user("b@example.test", quota=-1)
        assert await svc.check_password("a@example.test", "pw")
        assert not await svc.check_password("a@example.test", "nope")
        assert not await svc.check_password("ghost@example.test", "pw")
        assert not await svc.check_password("bad", "pw")
        await svc.set_password("a@example.test", None)
        assert not await svc.check_password("a@example.test", "pw")
        with pytest.raises(NotFound):
            await svc.set_password("ghost@example.test", "x")
        await svc.set_quota("a@example.test", 5)
        assert (await svc.get_user("a@example.test")).quota_bytes == 5
        await svc.add_alias("al@example.test", ["a@example.test"])
        with pytest.raises(Conflict, match="is an alias"):
            await svc.add_user("al@example.test")
        assert await svc.remove_user("a@example.test") == "a@example.test"
        with pytest.raises(NotFound):
            await svc.remove_user("a@example.test")
    run_with(tmp_path, go)


def test_aliases(tmp_path):
    async def go(svc):
        await svc.add_user("box@example.test")
        a = await svc.add_alias("sales@example.test", ["Box@Example.test", "box@example.test",
                                                       "x@remote.example"])
        assert a.targets == ("box@example.test", "x@remote.example")
        # sub-address of a mailbox is a valid local target
        await svc.add_alias("tagged@example.test", ["box+tag@example.test"])
        with pytest.raises(Conflict, match="neither a mailbox nor an alias"):
            await svc.add_alias("y@example.test", ["ghost@example.test"])
        with pytest.raises(Conflict, match="neither"):        # would resolve to itself
            await svc.add_alias("@example.test", ["ghost@example.test"])
        # a catch-all makes any local target resolvable
        await svc.add_alias("@example.test", ["box@example.test"])
        await svc.add_alias("y@example.test", ["ghost@example.test"])
        with pytest.raises(Conflict, match="itself"):
            await svc.add_alias("self@example.test", ["self@example.test"])
        with pytest.raises(InvalidInput, match="not a domain"):
            await svc.add_alias("z@example.test", ["@remote.example"])
        with pytest.raises(InvalidInput, match="at least one target"):
            await svc.add_alias("z@example.test", [])
        await svc.add_alias("c1@example.test", ["sales@example.test"])
        await svc.add_alias("c2@example.test", ["c1@example.test"])
        await svc.remove_alias("sales@example.test")
        with pytest.raises(Conflict, match="loop: sales@example.test -> c2@example.test"):
            await svc.add_alias("sales@example.test", ["c2@example.test"])
        sources = [x.source for x in await svc.list_aliases()]
        assert sources[0] == "@example.test" and "sales@example.test" not in sources
        assert (await svc.list_aliases())[0].catch_all
        assert await svc.remove_alias("@EXAMPLE.test") == "@example.test"
        with pytest.raises(NotFound):
            await svc.remove_alias("@example.test")
    run_with(tmp_path, go)


def test_remove_domain_force(tmp_path):
    async def go(svc):
        await svc.add_domain("gone.test")
        await svc.add_user("u@gone.test", "pw")
        await svc.add_alias("@gone.test", ["u@gone.test"])
        with pytest.raises(Conflict, match="1 mailbox"):
            await svc.remove_domain("gone.test")
        assert await svc.remove_domain("GONE.test", force=True) == "gone.test"
        assert await svc.list_users() == []
        assert await svc.list_aliases() == []
        assert await svc.list_domains() == ["example.test"]
        with pytest.raises(NotFound):
            await svc.remove_domain("gone.test")
    run_with(tmp_path, go)


def test_queue_state_filter_validation(tmp_path):
    async def go(svc):
        assert await svc.list_queue() == []
        assert await svc.list_queue("HELD") == []
        with pytest.raises(InvalidInput, match="unknown queue state"):
            await svc.list_queue("stuck")
        with pytest.raises(NotFound):
            await svc.show_queue("nope")
    run_with(tmp_path, go)
