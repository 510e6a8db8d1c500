import asyncio
import errno
import os
import re
import stat

import pytest

from mailwright.delivery import maildir as maildir_mod
from mailwright.delivery.base import DeliveryTask
from mailwright.queue.body import MessageBody
from mailwright.delivery.maildir import MaildirAgent, maildir_size
from mailwright.message.headers import quarantine_field
from mailwright.message.trace import local_delivery_headers
from mailwright.queue.model import (
    Envelope, QueuedMessage, QueuedRecipient, RecipientRequest, RecipientState,
)
from mailwright.routing.route import Route
from mailwright.store.base import Mailbox

HOST = "mx.example.org"
BODY = (b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\n"
        b"line one\r\n.dot\r\n\x00binary\xff\r\nno final newline")


class FakeDirectory:
    def __init__(self, **quotas):
        self.boxes = {addr: Mailbox(addr, "", q) for addr, q in quotas.items()}
        self.fail = False

    async def get_mailbox(self, address):
        if self.fail:
            raise RuntimeError("store down")
        return self.boxes.get(address)


def make_message(tmp_path, body=BODY, queue_id="4F3A2B1C", rcpts=("bob@example.org",)):
    body_path = tmp_path / f"blob-{queue_id}"
    body_path.write_bytes(body)
    env = Envelope(sender="alice@example.com",
                   recipients=[RecipientRequest(a) for a in rcpts],
                   received_at=1_700_000_000.5, client_ip="192.0.2.1", helo="mail.example.com",
                   client_name="mail.example.com", size=len(body))
    recipients = [QueuedRecipient(id=i + 1, queue_id=queue_id, address=a, notify=None,
                                  orcpt=None, state=RecipientState.QUEUED)
                  for i, a in enumerate(rcpts)]
    return QueuedMessage(queue_id, env, str(body_path), recipients), str(body_path)


def tasks_for(msg, mailbox="bob@example.org", folder=""):
    return [DeliveryTask(msg, r, Route("maildir", r.address, mailbox=mailbox, folder=folder))
            for r in msg.recipients]


def deliver(agent, msg, body, tasks):
    """``body``: a path (the body in a file, as make_message wrote it) or a MessageBody."""
    if not isinstance(body, MessageBody):
        body = MessageBody.in_file(body)
    return asyncio.run(agent.deliver(msg, body, tasks))


def files(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


def test_first_delivery_creates_maildir_and_writes_exact_bytes(tmp_path, root):
    agent = MaildirAgent(root, HOST)
    msg, body_path = make_message(tmp_path)
    [res] = deliver(agent, msg, body_path, tasks_for(msg))
    assert res.ok and res.recipient_id == 1 and res.reply.startswith("250 2.0.0")

    md = os.path.join(root, "example.org", "bob")
    for sub in ("cur", "new", "tmp"):
        assert stat.S_IMODE(os.stat(os.path.join(md, sub)).st_mode) == 0o700
    assert files(os.path.join(md, "tmp")) == [] and files(os.path.join(md, "cur")) == []
    [name] = files(os.path.join(md, "new"))
    m = re.fullmatch(r"1700000000\.Q4F3A2B1CR1\.mx\.example\.org,S=(\d+)", name)
    assert m, name
    path = os.path.join(md, "new", name)
    data = open(path, "rb").read()
    assert int(m.group(1)) == len(data) == os.path.getsize(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    headers = local_delivery_headers(msg.envelope, queue_id=msg.queue_id, hostname=HOST,
                                     recipient="bob@example.org",
                                     delivered_to="bob@example.org")
    assert data == headers + BODY
    assert data.startswith(b"Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.org\r\n"
                           b"Received: from mail.example.com")


def test_body_in_memory_is_written_byte_identical(tmp_path, root):
    """A body the store kept inline arrives in memory (no file to read): the copy is the
    same octets, its size in the name right, and a quarantine mark is still found."""
    msg, _ = make_message(tmp_path, body=BODY)
    [res] = deliver(MaildirAgent(root, HOST), msg, MessageBody.in_memory(BODY), tasks_for(msg))
    assert res.ok
    new = os.path.join(root, "example.org", "bob", "new")
    [name] = files(new)
    data = open(os.path.join(new, name), "rb").read()
    headers = local_delivery_headers(msg.envelope, queue_id=msg.queue_id, hostname=HOST,
                                     recipient="bob@example.org",
                                     delivered_to="bob@example.org")
    assert data == headers + BODY and name.endswith(f",S={len(data)}")
    marked = quarantine_field("dmarc=fail (p=quarantine)") + BODY
    other, _ = make_message(tmp_path, body=marked, queue_id="5A")
    [res] = deliver(MaildirAgent(root, HOST), other, MessageBody.in_memory(marked),
                    tasks_for(other))
    assert res.ok and len(files(os.path.join(root, "example.org", "bob", ".Junk", "new"))) == 1


def test_large_body_is_streamed_byte_identical(tmp_path, root):
    body = b"Subject: big\r\n\r\n" + os.urandom(3 * 1024 * 1024 + 17)
    msg, body_path = make_message(tmp_path, body=body)
    [res] = deliver(MaildirAgent(root, HOST, fsync=False), msg, body_path, tasks_for(msg))
    assert res.ok
    new = os.path.join(root, "example.org", "bob", "new")
    [name] = files(new)
    assert open(os.path.join(new, name), "rb").read().endswith(body)


def test_mailbox_path_is_lower_cased_and_uses_route_mailbox(tmp_path, root):
    msg, body_path = make_message(tmp_path, rcpts=("Bob+Tag@Example.ORG",))
    tasks = [DeliveryTask(msg, msg.recipients[0],
                          Route("maildir", "bob+tag@example.org", mailbox="Bob@Example.ORG"))]
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks)
    assert res.ok
    [name] = files(os.path.join(root, "example.org", "bob", "new"))
    data = open(os.path.join(root, "example.org", "bob", "new", name), "rb").read()
    assert b"Delivered-To: bob+tag@example.org\r\n" in data
    assert b"for <Bob+Tag@Example.ORG>;" in data


@pytest.mark.parametrize("folder, subdir", [
    ("Junk", ".Junk"), ("Lists/Python", ".Lists.Python"), ("Lists.Python", ".Lists.Python"),
])
def test_maildirplusplus_folder(tmp_path, root, folder, subdir):
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg, folder=folder))
    assert res.ok
    md = os.path.join(root, "example.org", "bob")
    f = os.path.join(md, subdir)
    assert len(files(os.path.join(f, "new"))) == 1
    assert os.path.isfile(os.path.join(f, "maildirfolder"))
    assert files(os.path.join(md, "new")) == []  # INBOX exists but stays empty
    assert os.path.isdir(os.path.join(md, "cur"))


@pytest.mark.parametrize("folder", ["INBOX", "", "../../etc", "a//b", "..", "x/../y"])
def test_inbox_and_unusable_folders_deliver_to_inbox(tmp_path, root, folder):
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg, folder=folder))
    assert res.ok
    md = os.path.join(root, "example.org", "bob")
    assert len(files(os.path.join(md, "new"))) == 1
    assert [d for d in os.listdir(md) if d.startswith(".")] == []


@pytest.mark.parametrize("mailbox", ["../x@example.org", "bob@../etc", "bob@", "@example.org",
                                     "nobody", ".hidden@example.org", "a/b@example.org"])
def test_unsafe_mailbox_names_fail_permanently(tmp_path, root, mailbox):
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg, mailbox=mailbox))
    assert not res.ok and res.permanent and res.reply.startswith("550 5.1.1")
    assert not os.path.exists(root) or all(
        "new" not in dirs for _, dirs, _ in os.walk(os.path.dirname(root)))


def test_hostname_is_escaped_in_file_names(tmp_path, root):
    msg, body_path = make_message(tmp_path, queue_id="Q:1")
    [res] = deliver(MaildirAgent(root, "odd/host:name,x"), msg, body_path, tasks_for(msg))
    assert res.ok
    [name] = files(os.path.join(root, "example.org", "bob", "new"))
    assert name.startswith("1700000000.Q" + "Q\\0721" + "R1.odd\\057host\\072name\\054x,S=")
    assert name.count(",") == 1 and ":" not in name


def test_redelivery_is_idempotent_in_new_and_cur(tmp_path, root):
    agent = MaildirAgent(root, HOST)
    msg, body_path = make_message(tmp_path)
    md = os.path.join(root, "example.org", "bob")
    [first] = deliver(agent, msg, body_path, tasks_for(msg))
    [again] = deliver(agent, msg, body_path, tasks_for(msg))
    assert first.ok and again.ok and "Already" in again.reply
    assert len(files(os.path.join(md, "new"))) == 1

    # An IMAP client read it: moved to cur/ with flags. A message reclaimed after a crash
    # (the only case where an earlier attempt may have delivered) still gets no second copy.
    [name] = files(os.path.join(md, "new"))
    os.rename(os.path.join(md, "new", name), os.path.join(md, "cur", name + ":2,S"))
    msg.reclaimed = True
    [third] = deliver(agent, msg, body_path, tasks_for(msg))
    assert third.ok and "Already" in third.reply
    assert files(os.path.join(md, "new")) == []
    assert files(os.path.join(md, "cur")) == [name + ":2,S"]
    assert files(os.path.join(md, "tmp")) == []


def test_first_attempt_does_not_scan_the_mailbox(tmp_path, root, monkeypatch):
    """The O(mailbox) scan runs only for reclaimed messages or quota'd mailboxes."""
    import mailwright.delivery.maildir as maildir_mod
    calls = []
    real = maildir_mod.scan_maildir
    monkeypatch.setattr(maildir_mod, "scan_maildir", lambda *a, **k: calls.append(a) or real(*a, **k))
    agent = MaildirAgent(root, HOST)
    msg, body_path = make_message(tmp_path)
    [res] = deliver(agent, msg, body_path, tasks_for(msg))
    assert res.ok and calls == []
    msg.reclaimed = True
    [again] = deliver(agent, msg, body_path, tasks_for(msg))
    assert again.ok and "Already" in again.reply


def test_distinct_recipients_and_messages_get_distinct_files(tmp_path, root):
    agent = MaildirAgent(root, HOST)
    msg, body_path = make_message(tmp_path, rcpts=("bob@example.org", "bob2@example.org"))
    results = deliver(agent, msg, body_path, tasks_for(msg))  # both into bob's Maildir
    assert [r.recipient_id for r in results] == [1, 2] and all(r.ok for r in results)
    msg2, body2 = make_message(tmp_path, queue_id="OTHER")
    deliver(agent, msg2, body2, tasks_for(msg2))
    assert len(files(os.path.join(root, "example.org", "bob", "new"))) == 3


def test_missing_mailbox_is_permanent(tmp_path, root):
    agent = MaildirAgent(root, HOST, directory=FakeDirectory())
    msg, body_path = make_message(tmp_path)
    [res] = deliver(agent, msg, body_path, tasks_for(msg))
    assert (res.ok, res.permanent, res.reply) == (False, True, "550 5.1.1 Mailbox unavailable")
    assert not os.path.exists(os.path.join(root, "example.org", "bob"))


def test_directory_error_is_temporary(tmp_path, root):
    d = FakeDirectory(**{"bob@example.org": 0})
    d.fail = True
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST, directory=d), msg, body_path, tasks_for(msg))
    assert not res.ok and not res.permanent and res.reply.startswith("451 4.3.0")


def test_over_quota_is_temporary_and_writes_nothing(tmp_path, root):
    msg, body_path = make_message(tmp_path)
    size = len(local_delivery_headers(msg.envelope, queue_id=msg.queue_id, hostname=HOST,
                                      recipient="bob@example.org",
                                      delivered_to="bob@example.org")) + len(BODY)
    d = FakeDirectory(**{"bob@example.org": 2 * size})
    agent = MaildirAgent(root, HOST, directory=d)
    msg2, body2 = make_message(tmp_path, queue_id="4F3A2B1D")
    msg3, body3 = make_message(tmp_path, queue_id="4F3A2B1E")
    assert deliver(agent, msg, body_path, tasks_for(msg))[0].ok
    assert deliver(agent, msg2, body2, tasks_for(msg2))[0].ok       # exactly at quota
    md = os.path.join(root, "example.org", "bob")
    assert maildir_size(md) == 2 * size
    [res] = deliver(agent, msg3, body3, tasks_for(msg3))
    assert (res.ok, res.permanent, res.reply) == (False, False, "452 4.2.2 Mailbox full")
    assert len(files(os.path.join(md, "new"))) == 2 and files(os.path.join(md, "tmp")) == []
    # Already-delivered copies are still reported ok when over quota (idempotence first).
    assert deliver(agent, msg, body_path, tasks_for(msg))[0].ok
    # The user expunges a message (from cur/ after reading): the retry succeeds.
    name = files(os.path.join(md, "new"))[0]
    os.rename(os.path.join(md, "new", name), os.path.join(md, "cur", name + ":2,S"))
    assert maildir_size(md) == 2 * size   # cur/ counts too
    os.unlink(os.path.join(md, "cur", name + ":2,S"))
    assert deliver(agent, msg3, body3, tasks_for(msg3))[0].ok


def test_quota_counts_subfolders_and_files_without_size_field(tmp_path, root):
    md = tmp_path / "mail" / "example.org" / "bob"
    for sub in ("new", "cur", "tmp", ".Junk/cur", ".Junk/new", ".Junk/tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "1.M1P1.h,S=500:2,S").write_bytes(b"x" * 10)     # S= wins over stat
    (md / ".Junk" / "new" / "2.M2P2.h").write_bytes(b"y" * 300)     # no S=: stat
    (md / "tmp" / "3.M3P3.h").write_bytes(b"z" * 10_000)            # tmp/ never counts
    assert maildir_size(str(md)) == 800
    msg, body_path = make_message(tmp_path)
    agent = MaildirAgent(root, HOST, directory=FakeDirectory(**{"bob@example.org": 1000}))
    [res] = deliver(agent, msg, body_path, tasks_for(msg))
    assert res.reply == "452 4.2.2 Mailbox full"


def test_unreadable_body_is_temporary_and_leaves_nothing(tmp_path, root):
    msg, body_path = make_message(tmp_path)
    os.unlink(body_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))
    assert (res.ok, res.permanent) == (False, False) and res.reply.startswith("451 4.3.0")
    md = os.path.join(root, "example.org", "bob")
    assert files(os.path.join(md, "new")) == [] and files(os.path.join(md, "tmp")) == []


@pytest.mark.parametrize("err, reply", [
    (errno.ENOSPC, "451 4.3.0"), (errno.EIO, "451 4.3.0"), (errno.EDQUOT, "452 4.2.2"),
])
def test_disk_error_mid_write_is_temporary_and_leaves_nothing(tmp_path, root, monkeypatch, err,
                                                               reply):
    real = maildir_mod._write_all
    calls = []

    def failing_write_all(out, data):
        calls.append(len(data))
        if len(calls) == 2:  # headers written, then the disk fills up during the body
            real(out, data[:5])
            raise OSError(err, os.strerror(err))
        real(out, data)

    monkeypatch.setattr(maildir_mod, "_write_all", failing_write_all)
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))
    assert (res.ok, res.permanent) == (False, False) and res.reply.startswith(reply)
    md = os.path.join(root, "example.org", "bob")
    assert files(os.path.join(md, "new")) == [] and files(os.path.join(md, "tmp")) == []
    # The disk has room again: the retry delivers one complete copy.
    monkeypatch.setattr(maildir_mod, "_write_all", real)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))
    assert res.ok and len(files(os.path.join(md, "new"))) == 1


def test_fsync_failure_is_temporary_and_not_linked(tmp_path, root, monkeypatch):
    def bad_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(maildir_mod.os, "fsync", bad_fsync)
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))
    assert not res.ok and not res.permanent
    md = os.path.join(root, "example.org", "bob")
    assert files(os.path.join(md, "new")) == [] and files(os.path.join(md, "tmp")) == []


def test_unwritable_maildir_root_is_temporary(tmp_path, root, monkeypatch):
    # Running as root defeats chmod, so refuse mkdir the way a read-only fs would.
    def ro_mkdir(path, mode=0o777):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(maildir_mod.os, "mkdir", ro_mkdir)
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))
    assert not res.ok and not res.permanent and res.reply.startswith("451 4.3.0")
    assert not os.path.exists(root)


def test_link_unsupported_falls_back_to_rename(tmp_path, root, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(maildir_mod.os, "link", no_link)
    msg, body_path = make_message(tmp_path)
    [res] = deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))
    assert res.ok
    md = os.path.join(root, "example.org", "bob")
    assert len(files(os.path.join(md, "new"))) == 1 and files(os.path.join(md, "tmp")) == []


def test_one_result_per_task_even_when_some_fail(tmp_path, root):
    msg, body_path = make_message(tmp_path, rcpts=("bob@example.org", "gone@example.org",
                                                   "carol@example.org"))
    d = FakeDirectory(**{"bob@example.org": 0, "carol@example.org": 1})
    tasks = [DeliveryTask(msg, r, Route("maildir", r.address, mailbox=r.address))
             for r in msg.recipients]
    results = deliver(MaildirAgent(root, HOST, directory=d), msg, body_path, tasks)
    assert [(r.recipient_id, r.ok, r.permanent) for r in results] == [
        (1, True, False), (2, False, True), (3, False, False)]


def test_delivery_runs_off_the_event_loop(tmp_path, root, monkeypatch):
    import threading
    seen = []
    real = MaildirAgent._write

    def spy(self, *a):
        seen.append(threading.current_thread() is threading.main_thread())
        return real(self, *a)

    monkeypatch.setattr(MaildirAgent, "_write", spy)
    msg, body_path = make_message(tmp_path)
    assert deliver(MaildirAgent(root, HOST), msg, body_path, tasks_for(msg))[0].ok
    assert seen == [False]
