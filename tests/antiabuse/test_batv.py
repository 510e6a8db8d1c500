"""BATV (draft-levine-smtp-batv-01 "prvs"): the pure functions as tables, the key file,
and the RCPT check / recipient rewriter over a real Directory and real key files."""
from __future__ import annotations

import os
import stat

import pytest

from mailwright.policy import batv
from mailwright.policy.backscatter import BACKSCATTER, BAD_TAG, Batv, BatvCheck
from mailwright.policy.batv_keys import KeyRing, read_keys, rotate
from mailwright.policy.context import SessionInfo, TransactionInfo
from mailwright.policy.verdict import Action
from mailwright.routing.directory import Directory
from mailwright.smtp.address import parse_path
from mailwright.store.base import DirectorySnapshot

K0 = bytes(range(32))
K1 = bytes(range(32, 64))
DAY = 86400
NOW = 1_700_000_000.0                     # day 19675: tags signed now with 7 days: DDD 682


# ---------------------------------------------------------------------------- pure: sign

@pytest.mark.parametrize("address,expected", [
    ("bob@example.test", "prvs=0682{sig}=bob@example.test"),
    ("first.last@example.test", "prvs=0682{sig}=first.last@example.test"),
    ("", ""),                                                  # null sender: never tagged
    ("prvs=0682abcdef=bob@example.test", "prvs=0682abcdef=bob@example.test"),  # already
    ("a" * 48 + "@example.test", "prvs=0682{sig}=" + "a" * 48 + "@example.test"),  # 64 max
    ("a" * 49 + "@example.test", "a" * 49 + "@example.test"),  # would exceed 64 octets
    ("john doe@example.test", "john doe@example.test"),        # not a dot-atom
    ("bob..x@example.test", "bob..x@example.test"),
    ("postmaster", "postmaster"),                              # no domain
])
def test_sign_table(address, expected):
    got = batv.sign(address, 0, K0, NOW, 7)
    if "{sig}" in expected:
        sig = batv.signature(K0, 0, 682, address)
        assert len(sig) == 6 and int(sig, 16) >= 0
        expected = expected.format(sig=sig)
    assert got == expected


def test_signature_depends_on_key_day_address_and_secret():
    base = batv.signature(K0, 0, 682, "bob@example.test")
    assert batv.signature(K0, 0, 682, "BOB@Example.TEST") == base       # case folded
    others = {batv.signature(K1, 0, 682, "bob@example.test"),
              batv.signature(K0, 1, 682, "bob@example.test"),
              batv.signature(K0, 0, 683, "bob@example.test"),
              batv.signature(K0, 0, 682, "rob@example.test")}
    assert base not in others


# ---------------------------------------------------------------------------- pure: parse

@pytest.mark.parametrize("address,expected", [
    ("prvs=0682abcdef=bob@example.test", batv.Tagged(0, 682, "abcdef", "bob@example.test")),
    ("PRVS=9001ABCDEF=Bob@Example.test", batv.Tagged(9, 1, "abcdef", "Bob@Example.test")),
    ("prvs=0682abcdef=a=b@example.test", batv.Tagged(0, 682, "abcdef", "a=b@example.test")),
    ("prvs=0682abcdef=@example.test", None),          # nothing after the tag
    ("prvs=682abcdef=bob@example.test", None),        # K missing
    ("prvs=0682abcdeg=bob@example.test", None),       # not hex
    ("prvs=0682abcde=bob@example.test", None),        # 5 hex digits
    ("bob@example.test", None),
    ("prvs=0682abcdef=bob", None),                    # no domain
    ("btv1==0682abcdef=bob@example.test", None),      # another tag type
])
def test_parse_table(address, expected):
    assert batv.parse(address) == expected


# ---------------------------------------------------------------------------- pure: verify

def _tag(now=NOW, key=0, secret=K0, days=7, address="bob@example.test"):
    return batv.parse(batv.sign(address, key, secret, now, days))


@pytest.mark.parametrize("tag,keys,now,status", [
    (_tag(), {0: K0}, NOW, batv.Status.VALID),
    (_tag(), {0: K0}, NOW + 7 * DAY, batv.Status.VALID),             # the expiry day
    (_tag(), {0: K0}, (NOW // DAY + 8) * DAY - 1, batv.Status.VALID),  # its last second
    (_tag(), {0: K0}, (NOW // DAY + 8) * DAY, batv.Status.EXPIRED),    # the day after
    (_tag(), {0: K0}, NOW + 500 * DAY, batv.Status.EXPIRED),
    (_tag(), {0: K0}, NOW - 2 * DAY, batv.Status.EXPIRED),          # from too far ahead
    (_tag(), {1: K1}, NOW, batv.Status.UNKNOWN_KEY),
    (_tag(), {0: K1}, NOW, batv.Status.BAD_SIGNATURE),              # other secret
    (_tag(key=1, secret=K1), {0: K0, 1: K1}, NOW, batv.Status.VALID),  # rotation: 2 keys
    (batv.Tagged(0, 682, "000000", "bob@example.test"), {0: K0}, NOW,
     batv.Status.BAD_SIGNATURE),                                      # forged
    (batv.Tagged(0, 683, _tag().sig, "bob@example.test"), {0: K0}, NOW,
     batv.Status.BAD_SIGNATURE),                                      # day changed
    (batv.Tagged(0, 682, _tag().sig, "eve@example.test"), {0: K0}, NOW,
     batv.Status.BAD_SIGNATURE),                                      # address changed
])
def test_verify_table(tag, keys, now, status):
    assert batv.verify(tag, keys, now, 7) is status


def test_day_field_wraps_modulo_1000():
    now = 999 * DAY + 5.0                                   # day 999: expires day 1006 -> 006
    tag = _tag(now=now)
    assert tag.day == 6
    assert batv.verify(tag, {0: K0}, now + 3 * DAY, 7) is batv.Status.VALID
    assert batv.verify(tag, {0: K0}, now + 8 * DAY, 7) is batv.Status.EXPIRED


# ---------------------------------------------------------------------------- key file

def test_key_file_created_0600_and_shared(tmp_path):
    path = str(tmp_path / "data" / "batv.keys")
    a, b = KeyRing(path), KeyRing(path)
    ka = a.current()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b.current() == ka and ka[0] == 0 and len(ka[1]) == 32
    assert [f for f in os.listdir(tmp_path / "data")] == ["batv.keys"]   # no temp left


def test_rotation_keeps_the_previous_key(tmp_path):
    path = str(tmp_path / "batv.keys")
    ring = KeyRing(path, reload_interval=3600)
    old = ring.current()
    assert rotate(path) == 1
    # another process rotated: a tag with key 1 makes this ring re-read the file at once
    assert set(ring.keys(1)) == {0, 1}
    assert ring.current()[0] == 1 and ring.keys()[0] == old[1]
    assert rotate(path) == 2
    assert [k for k, _ in read_keys(path)] == [2, 1]        # key 0 dropped
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = str(tmp_path / "batv.keys")
    KeyRing(path).current()
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        KeyRing(path).current()
    os.chmod(path, 0o600)
    with open(path, "a") as f:
        f.write("x nonsense\n")
    with pytest.raises(ValueError, match="expected"):
        KeyRing(path).current()


# ---------------------------------------------------------------------------- the check

def _directory() -> Directory:
    snap = DirectorySnapshot(1, frozenset({"example.test", "other.test"}),
                             frozenset({"bob@example.test", "bob@other.test",
                                        "postmaster@example.test"}), {}, {})
    return Directory(snap, "example.test")


@pytest.fixture
def hooks(tmp_path):
    ring = KeyRing(str(tmp_path / "batv.keys"))
    clock = [NOW]
    state = Batv(ring, domains=("example.test",), days=7, is_local=_directory().is_local_domain,
                 clock=lambda: clock[0])
    return state, BatvCheck(state), clock


def _rcpt(hooks, rcpt: str, sender: str = "", role: str = "mx", trusted: bool = False):
    """What the session does: rewrite, resolve the rewritten address, run the check on
    the address as given."""
    state, check, _ = hooks
    directory = _directory()
    given = parse_path(rcpt, sender=False, smtputf8=False)
    target, note = state.rewrite_recipient(given, directory)
    resolution = directory.resolve(target.local, target.domain)
    info = SessionInfo("192.0.2.1", 1234, "smtp", role, trusted=trusted)
    verdict = check.check_rcpt(info, TransactionInfo(sender=sender), given, resolution)
    return verdict, note, resolution


def test_tag_sender_only_for_batv_local_domains(hooks):
    state, _, _ = hooks
    tagged = state.tag_sender("bob@example.test")
    assert tagged.startswith("prvs=0682") and tagged.endswith("=bob@example.test")
    assert state.tag_sender("bob@other.test") == "bob@other.test"        # not in batv_domains
    assert state.tag_sender("alice@remote.test") == "alice@remote.test"  # not local
    assert state.tag_sender("") == ""


@pytest.mark.parametrize("sender,when,forge,action,reply,status", [
    ("", 0, None, Action.CONTINUE, None, "valid"),                 # our bounce comes home
    ("list@remote.test", 0, None, Action.CONTINUE, None, "valid"),  # a reply
    ("", 9, None, Action.REJECT, BAD_TAG, "expired"),
    ("list@remote.test", 9, None, Action.CONTINUE, None, "expired"),  # subscriptions live
    ("", 0, "000000", Action.REJECT, BAD_TAG, "bad-signature"),
    ("spam@remote.test", 0, "000000", Action.REJECT, BAD_TAG, "bad-signature"),
])
def test_tagged_recipient(hooks, sender, when, forge, action, reply, status):
    state, _, clock = hooks
    address = state.tag_sender("bob@example.test")
    if forge:
        address = address[:9] + forge + address[15:]
    clock[0] = NOW + when * DAY
    verdict, note, resolution = _rcpt(hooks, address, sender)
    assert (verdict.action, verdict.reply) == (action, reply)
    assert note == {"batv": status, "address": "bob@example.test"}
    assert resolution.targets == ("bob@example.test",)


@pytest.mark.parametrize("rcpt,sender,kwargs,action", [
    ("bob@example.test", "", {}, Action.REJECT),                      # backscatter
    ("BOB@Example.TEST", "", {}, Action.REJECT),
    ("bob@example.test", "alice@remote.test", {}, Action.CONTINUE),    # ordinary mail
    ("postmaster@example.test", "", {}, Action.CONTINUE),             # RFC 5321 §4.5.1
    ("bob@other.test", "", {}, Action.CONTINUE),                      # BATV not on there
    ("x@remote.test", "", {}, Action.CONTINUE),                       # not ours at all
    ("bob@example.test", "", {"trusted": True}, Action.CONTINUE),     # local programs
    ("bob@example.test", "", {"role": "submission"}, Action.CONTINUE),
])
def test_untagged_recipient(hooks, rcpt, sender, kwargs, action):
    verdict, note, _ = _rcpt(hooks, rcpt, sender, **kwargs)
    assert verdict.action is action and note is None
    if action is Action.REJECT:
        assert verdict.reply == BACKSCATTER and str(verdict.reply).startswith("550 5.7.1")


def test_prvs_in_a_domain_without_batv_is_an_ordinary_local_part(hooks):
    state, _, _ = hooks
    address = state.tag_sender("bob@example.test").replace("example.test", "other.test")
    verdict, note, resolution = _rcpt(hooks, address, "")
    assert note is None and verdict.action is Action.CONTINUE
    assert resolution.kind.value == "unknown"           # the recipient check says 5.1.1
