"""Backend-neutral checks on a stored body (a file, an inline row, a database copy)."""
from __future__ import annotations

from dataclasses import replace

from mailwright.store import NotFoundError


def has_body(store, msg) -> bool:
    """True while the store still holds the body of ``msg``: read from where the store
    keeps it (not from a copy the message object may carry)."""
    try:
        store.read_body(replace(msg, inline_body=None))
        return True
    except NotFoundError:
        return False
