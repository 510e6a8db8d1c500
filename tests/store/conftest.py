"""Fixtures for the store contract suite (GUIDE idea 12: one suite, every backend).

``store`` is parametrized over ``BACKENDS``; a backend joins by adding a name here and a
branch in ``_make``. ``async def`` tests run on the same event loop as the fixture that
opened the store (a small hook, no pytest-asyncio needed).

PostgreSQL: the server named by ``MAILWRIGHT_TEST_PG_DSN`` (default: the local test
database, trust auth). Each test gets its own schema ``mw_test_<random hex>`` (so tests
running at the same time never collide), dropped with CASCADE afterwards. An
unreachable server makes the postgres tests FAIL, never skip: CI has PostgreSQL.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import secrets

import pytest

from mailwright.store import open_store

# "sqlite" as configured by default (small bodies inline in the database); "sqlite-files"
# with inline_body_max = 0 (every body a file under blob_dir).
BACKENDS = ["sqlite", "sqlite-files", "postgres"]

PG_DSN = os.environ.get("MAILWRIGHT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    runner = pyfuncitem.funcargs.get("runner")
    if runner is None:
        raise pytest.UsageError("async store tests need the 'runner' (or 'store') fixture")
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    runner.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture
def runner():
    with asyncio.Runner() as r:
        yield r


async def _drop_schema(schema: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def pg_schema():
    """A fresh schema name for one test; the schema is dropped (CASCADE) afterwards."""
    schema = "mw_test_" + secrets.token_hex(6)
    yield schema
    asyncio.run(_drop_schema(schema))


@pytest.fixture
def pg_dsn():
    return PG_DSN


@pytest.fixture
def pg_node():
    return "node-" + secrets.token_hex(4)


def _make(backend: str, root, request):
    if backend in ("sqlite", "sqlite-files"):
        return open_store("sqlite", path=str(root / "queue.db"), blob_dir=str(root / "blobs"),
                          inline_body_max=0 if backend == "sqlite-files" else 65536)
    if backend == "postgres":
        # every store of one test: the same schema, node and cache directory (the
        # processes of one node); test_postgres.py adds stores with others
        return open_store("postgres", dsn=PG_DSN, schema=request.getfixturevalue("pg_schema"),
                          node=request.getfixturevalue("pg_node"),
                          cache_dir=str(root / "blobs"), pool_size=4)
    raise AssertionError(backend)


def pytest_generate_tests(metafunc):
    """Every test that uses ``backend`` (``store``, ``store_factory``) runs on every
    backend, except in backend-specific modules, named ``test_<backend>*.py``, which
    run on theirs only."""
    if "backend" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    only = [b for b in BACKENDS if module.startswith(f"test_{b.partition('-')[0]}")]
    metafunc.parametrize("backend", only or BACKENDS, indirect=True)


@pytest.fixture
def backend(request):
    return request.param


@pytest.fixture
def store_factory(backend, tmp_path, runner, request):
    """``await store_factory()`` opens another store over the same storage (a second
    worker process, or the same one after a restart). All are closed at teardown."""
    opened = []
    if backend == "postgres":
        request.getfixturevalue("pg_schema")    # set up first, so dropped after the close

    async def make():
        s = _make(backend, tmp_path, request)
        await s.open()
        opened.append(s)
        return s
    yield make
    for s in reversed(opened):
        runner.run(s.close())


@pytest.fixture
def store(store_factory, runner):
    return runner.run(store_factory())
