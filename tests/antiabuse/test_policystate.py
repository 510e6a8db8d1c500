"""The policy state store: fixed-window counters and greylisting triplets (real SQLite)."""
from __future__ import annotations

import asyncio

from mailwright.store.policystate import SqlitePolicyState


def test_counters_count_per_window_and_key(tmp_path):
    st = SqlitePolicyState(str(tmp_path / "ps.db"))
    assert [st.incr_sync("k", 60, 120.0 + i) for i in range(3)] == [1, 2, 3]
    assert st.incr_sync("other", 60, 125.0) == 1
    assert st.incr_sync("k", 60, 179.9, amount=0) == 3      # read only
    assert st.incr_sync("k", 60, 180.0) == 1                 # next window
    assert st.incr_sync("k", 60, 181.0, amount=5) == 6


def test_two_connections_share_the_file(tmp_path):
    """Two worker processes each open their own connection to the same file."""
    a = SqlitePolicyState(str(tmp_path / "ps.db"))
    b = SqlitePolicyState(str(tmp_path / "ps.db"))

    async def both():
        await a.incr("conn:1", 60, 10.0)
        await b.incr("conn:1", 60, 11.0)
        return await a.incr("conn:1", 60, 12.0)
    assert asyncio.run(both()) == 3
    asyncio.run(a.close())
    asyncio.run(b.close())


def test_greylist_lifecycle(tmp_path):
    st = SqlitePolicyState(str(tmp_path / "ps.db"))
    g = lambda now: st.greylist_sync("t1", now, 300, 3600, 86400)  # noqa: E731
    assert g(1000) == "new"
    assert g(1100) == "early"
    assert g(1300) == "retried"
    assert g(1301) == "passed"
    assert g(1301 + 86000) == "passed"              # use refreshes the age
    assert g(1301 + 86000 + 86401) == "new"         # unused for max_age: forgotten
    # a new triplet not retried within the retry window starts again
    assert st.greylist_sync("t2", 0, 300, 3600, 86400) == "new"
    assert st.greylist_sync("t2", 3601, 300, 3600, 86400) == "new"
    assert st.greylist_sync("t2", 3700, 300, 3600, 86400) == "early"


def test_prune_removes_expired_rows(tmp_path, monkeypatch):
    import mailwright.store.policystate as ps
    monkeypatch.setattr(ps, "PRUNE_EVERY", 2)
    st = SqlitePolicyState(str(tmp_path / "ps.db"))
    st.incr_sync("old", 10, 0.0)
    st.incr_sync("new", 10, 1000.0)     # second write: prunes rows expired before 1000
    rows = st._conn().execute("SELECT key FROM policy_counters").fetchall()
    assert rows == [("new",)]
