"""The "discard" transport: accept and drop (a black-hole mailbox, or a sink for tests).

Invariant: one ok DeliveryResult per task, no I/O, never raises.
"""
from __future__ import annotations

from typing import Sequence

from ..queue.body import MessageBody
from ..queue.model import DeliveryResult, QueuedMessage
from .base import DeliveryTask

DISCARD_REPLY = "250 2.0.0 Discarded"


class DiscardAgent:
    transport = "discard"

    async def deliver(self, message: QueuedMessage, body: MessageBody,
                      tasks: Sequence[DeliveryTask]) -> list[DeliveryResult]:
        return [DeliveryResult(t.recipient.id, ok=True, reply=DISCARD_REPLY) for t in tasks]
