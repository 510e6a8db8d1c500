"""The outbound signing hook (delivery/signing.py) on a real SQLite store: no key, no read;
a key of the From domain signs."""
from __future__ import annotations

import asyncio
import logging

from mailwright.config.mailauth import AuthSettings
from mailwright.delivery.signing import OutboundSigner
from mailwright.queue.body import MessageBody
from mailwright.mailauth.dkim_keys import generate_key
from mailwright.queue.model import (
    Envelope, QueuedMessage, QueuedRecipient, RecipientRequest, RecipientState,
)
from mailwright.store.base import DkimKey
from mailwright.store.sqlite import SQLiteStore

BODY = (b"From: Alice <alice@signer.example>\r\nTo: bob@remote.example\r\n"
        b"Subject: hi\r\nDate: Fri, 27 Nov 2026 05:00:00 +0000\r\n\r\nHello\r\n")


def _message(path: str, **env) -> QueuedMessage:
    envelope = Envelope(sender="alice@signer.example",
                        recipients=[RecipientRequest("bob@remote.example")],
                        received_at=1_700_000_000.0, size=len(BODY), **env)
    rcpt = QueuedRecipient(id=1, queue_id="Q1", address="bob@remote.example", notify=None,
                           orcpt=None, state=RecipientState.QUEUED)
    return QueuedMessage("Q1", envelope, path, [rcpt])


async def _with_store(tmp_path, fn):
    store = SQLiteStore(tmp_path / "db.sqlite", tmp_path / "blobs")
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def test_without_any_key_the_message_is_not_read(tmp_path, caplog):
    """No active key at all: nothing could sign, so the body is not even opened (a
    missing file proves it: reading it would log "signing failed")."""
    async def main(store):
        signer = OutboundSigner(store, AuthSettings(), primary_domain="signer.example",
                                authserv_id="mx.signer.example")
        missing = str(tmp_path / "no-such-body")
        return await signer(_message(missing), MessageBody.in_file(missing))
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(_with_store(tmp_path, main)) == b""
    assert "signing failed" not in caplog.text


def test_key_of_another_domain_reads_and_leaves_unsigned(tmp_path):
    path = tmp_path / "body"
    path.write_bytes(BODY)

    async def main(store):
        await store.add_dkim_key(DkimKey("other.example", "s1", "rsa-sha256",
                                         generate_key("rsa").decode(), 1.0, True))
        signer = OutboundSigner(store, AuthSettings(), primary_domain="signer.example",
                                authserv_id="mx.signer.example")
        return await signer(_message(str(path)), MessageBody.in_file(path))
    assert asyncio.run(_with_store(tmp_path, main)) == b""


def test_key_of_the_from_domain_signs(tmp_path):
    path = tmp_path / "body"
    path.write_bytes(BODY)

    async def main(store):
        await store.add_dkim_key(DkimKey("signer.example", "s1", "ed25519-sha256",
                                         generate_key("ed25519").decode(), 1.0, True))
        signer = OutboundSigner(store, AuthSettings(), primary_domain="signer.example",
                                authserv_id="mx.signer.example")
        return await signer(_message(str(path)), MessageBody.in_file(path))
    added = asyncio.run(_with_store(tmp_path, main))
    assert added.startswith(b"DKIM-Signature:") and b"d=signer.example" in added
    assert b"s=s1" in added
