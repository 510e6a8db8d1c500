"""The router the queue manager asks: recipient address → Route, from the live directory."""
from __future__ import annotations

from typing import Callable

from .directory import Directory
from .route import Route


class Router:
    def __init__(self, directory: Callable[[], Directory]) -> None:
        self._directory = directory

    def route(self, address: str) -> Route:
        return self._directory().route(address)
