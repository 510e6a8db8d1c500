"""Fixtures: a config file with a tmp data_dir, and ``run`` calling the CLI in-process."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailwright.cli.main import main


@dataclass
class Result:
    rc: int
    out: str
    err: str


class FakeStdin(io.StringIO):
    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailwright.toml"
    path.write_text(f'hostname = "mx.example.test"\n'
                    f'data_dir = "{tmp_path / "data"}"\n'
                    f'local_domains = ["example.test"]\n'
                    f'[delivery]\nfsync = false\n')
    return path


@pytest.fixture
def run(config: Path):
    def run(*args: str, input: str = "", tty: bool = False, cfg: Path | None = config) -> Result:
        out, err = io.StringIO(), io.StringIO()
        argv = (["-c", str(cfg)] if cfg is not None else []) + list(args)
        rc = main(argv, stdin=FakeStdin(input, tty), stdout=out, stderr=err)
        return Result(rc, out.getvalue(), err.getvalue())
    return run
