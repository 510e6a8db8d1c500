"""The router the queue manager asks: recipient address → Route, from the live directory."""
from __future__ import annotations

from typing import Callable, Iterable

from .directory import Directory
from .route import Route


class Router:
    """``discard_domains``: local domains whose mail is accepted, then dropped by the
    "discard" agent (Postfix's discard transport), e.g. for sinks and load tests."""

    def __init__(self, directory: Callable[[], Directory],
                 discard_domains: Iterable[str] = ()) -> None:
        self._directory = directory
        self._discard = frozenset(d.lower() for d in discard_domains)

    def route(self, address: str) -> Route:
        route = self._directory().route(address)
        if self._discard and route.transport == "maildir" \
                and route.mailbox.rpartition("@")[2] in self._discard:
            return Route(transport="discard", address=route.address, mailbox=route.mailbox)
        return route
