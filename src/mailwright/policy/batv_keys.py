"""The BATV secrets: a small key file in the data directory, created on first use.

What: ``KeyRing(path)`` gives the signing key (``current() -> (number, secret)``) and every
key still accepted (``keys() -> {number: secret}``) for policy/batv.py.  ``rotate(path)``
makes a new key the signing key and keeps the previous one, so tags already handed out
stay valid until they expire (draft-levine-smtp-batv-01: the key digit exists for this).

File format (``data_dir/batv.keys``, mode 0600): one key a line, ``<digit> <64 hex>``;
the first line signs, every line verifies.  Operators rotate with ``rotate`` or by
editing the file (a new first line; drop the old line once ``batv_days`` have passed).

How: the file is created with 32 random bytes (``secrets``) in a temporary file
(``O_EXCL``, mode 0600, fsynced) that is renamed into place without replacing
(fsutil.rename_noreplace): when several processes start at once exactly one file wins
and every process reads that one.  Each process re-reads the file when its mtime changed,
looked at most every ``reload_interval`` seconds, and at once when a tag names a key
number it does not know (a rotation made by another process).

Invariants: the file is never readable by others (created 0600; a file with group or
other permissions is refused); a key file that does not parse raises ``ValueError``
(the SMTP layer turns it into a temporary failure: mail is never accepted or tagged
with a key we cannot read back).
"""
from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import time
from typing import Callable

from ..fsutil import rename_noreplace, unlink_quiet

__all__ = ["KeyRing", "KEY_FILE", "rotate", "read_keys"]

KEY_FILE = "batv.keys"
_LINE = re.compile(r"([0-9])[ \t]+([0-9a-fA-F]{32,128})")


def read_keys(path: str) -> list[tuple[int, bytes]]:
    """The keys of a key file, signing key first.  Raises ValueError on a bad file."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path}: BATV key file must not be accessible to group or others "
                         f"(chmod 600)")
    out: list[tuple[int, bytes]] = []
    with open(path, encoding="ascii") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _LINE.fullmatch(line)
            if m is None:
                raise ValueError(f"{path}:{n}: expected '<digit> <hex secret>'")
            number = int(m.group(1))
            if any(k == number for k, _ in out):
                raise ValueError(f"{path}:{n}: key {number} appears twice")
            out.append((number, bytes.fromhex(m.group(2))))
    if not out:
        raise ValueError(f"{path}: no BATV key")
    return out


def _write(path: str, keys: list[tuple[int, bytes]], *, replace: bool) -> None:
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("".join(f"{k} {s.hex()}\n" for k, s in keys))
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            rename_noreplace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _create(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        _write(path, [(0, secrets.token_bytes(32))], replace=False)
    except FileExistsError:
        pass                                # another process created it first: use that


def rotate(path: str) -> int:
    """A new signing key (the next digit); the previous signing key stays valid, older
    ones are dropped.  Returns the new key number."""
    if not os.path.exists(path):
        _create(path)
    keys = read_keys(path)
    number = (keys[0][0] + 1) % 10
    _write(path, [(number, secrets.token_bytes(32)), keys[0]], replace=True)
    return number


class KeyRing:
    """The keys of one key file, cached per process; see the module docstring."""

    def __init__(self, path: str, reload_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = str(path)
        self.reload_interval = reload_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: list[tuple[int, bytes]] = []
        self._mtime: int | None = None
        self._checked = float("-inf")

    def _refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self._keys and now - self._checked < self.reload_interval:
            return
        with self._lock:
            self._checked = now
            if not os.path.exists(self.path):
                _create(self.path)
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self._mtime or not self._keys:
                self._keys = read_keys(self.path)
                self._mtime = mtime

    def current(self) -> tuple[int, bytes]:
        self._refresh()
        return self._keys[0]

    def keys(self, wanted: int | None = None) -> dict[int, bytes]:
        """Every accepted key; re-reads the file first when ``wanted`` is unknown."""
        self._refresh()
        if wanted is not None and all(k != wanted for k, _ in self._keys):
            self._refresh(force=True)
        return dict(self._keys)
