"""The queue-control tests of issue 5 (tests/cli/test_queue_ops.py), run again with the
store on PostgreSQL: every ``mailwright queue`` command works on the cluster backend.

The tests are imported unchanged; only the ``config`` fixture differs (``[store] backend =
"postgres"`` on this test's own schema)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cli.conftest import run  # noqa: F401  (fixture used by the imported tests)
from cli.test_queue_ops import *  # noqa: F401,F403  (the tests themselves)
from cluster.pgtools import store_sections


@pytest.fixture
def config(tmp_path: Path, pg_schema: str) -> Path:
    path = tmp_path / "mailwright.toml"
    path.write_text(f'hostname = "mx.example.test"\n'
                    f'data_dir = "{tmp_path / "data"}"\n'
                    f'local_domains = ["example.test"]\n'
                    + store_sections(pg_schema, "n1", mailbox_store="maildir")
                    .replace("[delivery]\n", "[delivery]\nfsync = false\n"))
    return path
