"""The open-relay battery of smtp-security/open-relay-tricks.yaml, read in place.

Every case runs in a fresh connection from 127.0.0.1 (unauthenticated, not trusted). No
"relaytest" mailbox exists, so every RCPT must be refused; afterwards the queue holds no
message at all for a non-local domain.
"""
import json

import pytest
import yaml

from support import CONFORMANCE, RawClient

SUITE = yaml.safe_load((CONFORMANCE / "smtp-security" / "open-relay-tricks.yaml").read_text())
EXT, LOC, IP = "relaytest.invalid", "example.test", "127.0.0.1"


def fill(text: str, srv: str) -> str:
    return (text.replace("{EXT_UPPER}", EXT.upper()).replace("{EXT}", EXT)
            .replace("{LOC}", LOC).replace("{SRV}", srv).replace("{IP}", IP))


def expand_cases():
    out = []
    for case in SUITE["cases"]:
        froms = [case["from"]] if "from" in case else SUITE["mail_from_variants"]
        for i, sender in enumerate(froms):
            out.append(pytest.param(case, sender, id=f"{case['id']}-{i}"))
    return out


def test_battery_has_36_cases():
    assert len(SUITE["cases"]) == 36


@pytest.mark.parametrize("case,sender", expand_cases())
def test_never_relays(server, case, sender):
    c = RawClient(server.host, server.port)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO relay-probe.example")[0] == 250
    before = case.get("before", "")
    if "XCLIENT" in before:
        assert c.cmd(f"XCLIENT ADDR={IP}")[0] in (500, 502)
        assert c.cmd(f"XFORWARD ADDR={IP}")[0] in (500, 502)
    if "AUTH" in before:
        # Port 25 offers no AUTH: the attempt fails and nothing is unlocked by it.
        assert c.cmd("AUTH PLAIN AGFhYQBiYmI=")[0] >= 500
    code, _ = c.cmd(f"MAIL FROM:{fill(sender, server.hostname)}")
    assert code == 250, "every sender form is acceptable at MAIL; relaying is judged at RCPT"
    rcpt = fill(case["rcpt"], server.hostname)
    code, lines = c.cmd(f"RCPT TO:{rcpt}")
    assert 500 <= code < 600, f"RCPT TO:{rcpt} got {lines}"
    code, _ = c.cmd("DATA")
    assert code >= 500  # no valid recipients
    c.cmd("QUIT")
    c.close()


def test_queue_holds_nothing_for_other_domains(server):
    """Runs after the battery: nothing was queued for a non-local domain."""
    out = server.cli("queue", "list", "--json").stdout
    messages = json.loads(out)
    for m in messages:
        for r in m["recipients"]:
            assert r["address"].lower().endswith("@" + LOC), m
