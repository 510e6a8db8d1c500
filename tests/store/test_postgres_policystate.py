"""Cluster-wide policy state (store/pg_policystate.py) against the real PostgreSQL: two
state objects with their own pools are two nodes; each test has its own schema."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from mailwright.config.settings import parse_settings
from mailwright.policy.antiabuse import policy_state
from mailwright.store import pg_policystate
from mailwright.store.base import StoreError
from mailwright.store.pg_policystate import PostgresPolicyState
from mailwright.store.policystate import SqlitePolicyState


@pytest.fixture
def nodes(pg_dsn, pg_schema, runner):
    made: list[PostgresPolicyState] = []

    def make() -> PostgresPolicyState:
        st = PostgresPolicyState(pg_dsn, pg_schema, pool_size=4, node=f"n{len(made)}")
        made.append(st)
        return st
    yield make
    for st in made:
        runner.run(st.close())


async def test_two_nodes_counting_the_same_key_reach_the_exact_total(nodes):
    a, b = nodes(), nodes()
    per_node = 150

    async def hammer(st):
        return await asyncio.gather(*(st.incr("msg-ip:192.0.2.1", 60, 960.0 + i % 60)
                                      for i in range(per_node)))
    # both nodes start cold at once: the tables are created exactly once, concurrently
    got_a, got_b = await asyncio.gather(hammer(a), hammer(b))
    # every increment saw a distinct count: no lost update, no duplicate
    assert sorted(got_a + got_b) == list(range(1, 2 * per_node + 1))
    assert await a.incr("msg-ip:192.0.2.1", 60, 1019.9, amount=0) == 2 * per_node
    assert await b.incr("msg-ip:192.0.2.1", 60, 1020.0, amount=0) == 0     # next window
    assert await b.incr("other", 60, 1000.0) == 1


async def test_counters_per_window_and_amount(nodes):
    st = nodes()
    assert [await st.incr("k", 60, 120.0 + i) for i in range(3)] == [1, 2, 3]
    assert await st.incr("k", 60, 179.9, amount=0) == 3
    assert await st.incr("k", 60, 180.0) == 1
    assert await st.incr("k", 60, 181.0, amount=5) == 6
    with pytest.raises(ValueError):
        await st.incr("k", 0, 1.0)


async def test_greylist_lifecycle_with_injected_time(nodes):
    a, b = nodes(), nodes()

    async def g(st, now, triplet="t1"):
        return await st.greylist(triplet, now, 300, 3600, 86400)
    assert await g(a, 1000) == "new"
    assert await g(b, 1100) == "early"               # the other node sees the same triplet
    assert await g(a, 1300) == "retried"
    assert await g(b, 1301) == "passed"
    assert await g(a, 1301 + 86000) == "passed"      # use refreshes the age
    assert await g(b, 1301 + 86000 + 86401) == "new"  # unused for max_age: forgotten
    # a new triplet not retried within the retry window starts again
    assert await g(a, 0, "t2") == "new"
    assert await g(a, 3601, "t2") == "new"
    assert await g(b, 3700, "t2") == "early"
    assert await g(b, 3601 + 300, "t2") == "retried"


async def test_greylist_race_on_a_new_triplet_gives_one_new(nodes):
    a, b = nodes(), nodes()
    states = await asyncio.gather(*(st.greylist("race", 5000.0, 300, 3600, 86400)
                                    for st in (a, b) * 10))
    assert sorted(states) == ["early"] * 19 + ["new"]


async def test_same_semantics_as_sqlite(nodes, tmp_path):
    """The same call sequence gives the same answers from both backends."""
    pg, lite = nodes(), SqlitePolicyState(str(tmp_path / "ps.db"))
    calls = [("t", 0), ("t", 10), ("t", 299), ("t", 300), ("t", 301), ("u", 50),
             ("u", 4000), ("u", 4100), ("u", 4400), ("t", 301 + 90000), ("u", 4401)]
    for triplet, now in calls:
        assert await pg.greylist(triplet, now, 300, 3600, 86400) == \
            await lite.greylist(triplet, now, 300, 3600, 86400), (triplet, now)
    await lite.close()


async def test_prune_removes_expired_rows(nodes, pg_dsn, pg_schema, monkeypatch):
    monkeypatch.setattr(pg_policystate, "PRUNE_EVERY", 2)
    st = nodes()
    await st.incr("old", 10, 0.0)
    await st.greylist("old-triplet", 0.0, 300, 5, 86400)    # 2nd write: prunes before 0.0
    await st.incr("new", 10, 1000.0)
    await st.greylist("new-triplet", 1000.0, 300, 3600, 86400)  # 4th: prunes before 1000
    conn = await asyncpg.connect(pg_dsn)
    try:
        keys = await conn.fetch(f'SELECT key FROM "{pg_schema}".policy_counters')
        triplets = await conn.fetch(f'SELECT triplet FROM "{pg_schema}".policy_greylist')
    finally:
        await conn.close()
    assert [r["key"] for r in keys] == ["new"]
    assert [r["triplet"] for r in triplets] == ["new-triplet"]


async def test_unreachable_database_is_a_store_error(runner):
    st = PostgresPolicyState("postgresql://postgres@127.0.0.1:1/test", "mw_none",
                             connect_timeout=2)
    with pytest.raises(StoreError):
        await st.incr("k", 60, 1.0)
    await st.close()


async def test_policy_state_follows_the_store_backend(runner, pg_dsn, pg_schema, tmp_path):
    base = {"hostname": "mx.example.test", "data_dir": str(tmp_path)}
    pg = parse_settings({**base, "store": {"backend": "postgres", "dsn": pg_dsn,
                                           "schema": pg_schema}}, "test", env={})
    st = policy_state(pg)
    assert isinstance(st, PostgresPolicyState) and st.schema == pg_schema
    assert await st.incr("wired", 60, 1.0) == 1
    await st.close()
    lite = policy_state(parse_settings(base, "test", env={}))
    assert isinstance(lite, SqlitePolicyState)
    assert lite.path == str(tmp_path / "policystate.db")
