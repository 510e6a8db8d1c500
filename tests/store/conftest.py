"""Fixtures for the store contract suite (GUIDE idea 12: one suite, every backend).

``store`` is parametrized over ``BACKENDS``; a PostgreSQL backend joins by adding a
name here and a branch in ``_make``. ``async def`` tests run on the same event loop
as the fixture that opened the store (a small hook, no pytest-asyncio needed).
"""
from __future__ import annotations

import asyncio
import inspect

import pytest

from mailwright.store import open_store

BACKENDS = ["sqlite"]


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


def _make(backend: str, root):
    if backend == "sqlite":
        return open_store("sqlite", path=str(root / "queue.db"), blob_dir=str(root / "blobs"))
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def store_factory(backend, tmp_path, runner):
    """``await store_factory()`` opens another store over the same storage (a second
    worker process, or the same one after a restart). All are closed at teardown."""
    opened = []

    async def make():
        s = _make(backend, tmp_path)
        await s.open()
        opened.append(s)
        return s
    yield make
    for s in reversed(opened):
        runner.run(s.close())


@pytest.fixture
def store(store_factory, runner):
    return runner.run(store_factory())
