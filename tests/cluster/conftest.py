"""Fixtures for the cluster tests: a schema of its own on the real PostgreSQL server
(helpers in ``pgtools``). An unreachable server makes these tests FAIL, never skip."""
from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import pytest

from cluster.pgtools import drop_schema


@pytest.fixture
def pg_schema():
    """A fresh schema ``mw_cl_<hex>``, dropped (CASCADE) after the test."""
    schema = "mw_cl_" + secrets.token_hex(6)
    yield schema
    for _ in range(30):          # the restart test may leave the server starting up
        try:
            asyncio.run(drop_schema(schema))
            return
        except (OSError, asyncpg.PostgresError):
            time.sleep(1)
