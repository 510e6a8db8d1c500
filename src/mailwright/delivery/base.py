"""The delivery agent interface: one result per recipient, never an exception for the peer.

Agents are built from config through explicit factories (GUIDE idea 11) and registered with
the queue manager by transport name ("maildir", "smtp", "lmtp", "discard").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..queue.body import MessageBody
from ..queue.model import DeliveryResult, QueuedMessage, QueuedRecipient
from ..routing.route import Route


@dataclass(frozen=True, slots=True)
class DeliveryTask:
    message: QueuedMessage
    recipient: QueuedRecipient
    route: Route


class DeliveryAgent(Protocol):
    transport: str

    async def deliver(self, message: QueuedMessage, body: MessageBody,
                      tasks: Sequence[DeliveryTask]) -> list[DeliveryResult]:
        """Deliver one message to the given recipients (all of this transport).
        ``body`` is in memory or in a file (queue/body.py).
        Must return exactly one DeliveryResult per task. Unknown errors are temporary."""
