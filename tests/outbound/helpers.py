"""Shared helpers for outbound tests: messages, tasks, TLS material, agent construction."""
from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from mailwright.config.outbound import OutboundSettings, parse_outbound
from mailwright.delivery.base import DeliveryTask
from mailwright.delivery.smtp import SmtpAgent
from mailwright.net.tls import make_self_signed
from mailwright.queue.body import MessageBody
from mailwright.queue.model import (
    Envelope, QueuedMessage, QueuedRecipient, RecipientRequest, RecipientState,
)
from mailwright.routing.route import Route

BODY = b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello\r\n.dot line\r\n"


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_message(tmp_path: Path, rcpts=("b@example.test",), body: bytes = BODY,
                 queue_id: str = "Q1", sender: str = "a@sender.test", **env) -> tuple:
    path = tmp_path / f"body-{queue_id}"
    path.write_bytes(body)
    envelope = Envelope(sender=sender, recipients=[RecipientRequest(a) for a in rcpts],
                        received_at=1_700_000_000.0, size=len(body), **env)
    recipients = [QueuedRecipient(id=i + 1, queue_id=queue_id, address=a, notify=None,
                                  orcpt=None, state=RecipientState.QUEUED)
                  for i, a in enumerate(rcpts)]
    return QueuedMessage(queue_id, envelope, str(path), recipients), MessageBody.in_file(path)


def tasks_for(msg: QueuedMessage, next_hop: str = "") -> list[DeliveryTask]:
    return [DeliveryTask(msg, r, Route("smtp", r.address,
                                       next_hop=next_hop or r.address.rpartition("@")[2]))
            for r in msg.recipients]


def fast_settings(port: int, **table) -> OutboundSettings:
    base = {"port": port, "connect_timeout": 2, "greeting_timeout": 5, "command_timeout": 5,
            "mail_timeout": 5, "rcpt_timeout": 5, "data_init_timeout": 5,
            "data_block_timeout": 5, "data_done_timeout": 5, "idle_connection_timeout": 5,
            "helo_name": "client.test"}
    base.update(table)
    return parse_outbound(base)


def agent(settings: OutboundSettings, resolver=None, **kw) -> SmtpAgent:
    return SmtpAgent(settings, hostname="client.test", resolver=resolver, **kw)


class TLSFiles:
    """A self-signed certificate for "localhost"/127.0.0.1 written to tmp files."""

    def __init__(self, tmp_path: Path, name: str = "localhost") -> None:
        cert, key = make_self_signed(name)
        self.cert = tmp_path / f"{name}-cert.pem"
        self.key = tmp_path / f"{name}-key.pem"
        self.cert.write_bytes(cert)
        self.key.write_bytes(key)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx
