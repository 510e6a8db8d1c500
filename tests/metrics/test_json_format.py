"""logs.JsonFormatter on real LogRecords: sid/id from extra or from where the formats put
them, never from peer text later in a line; other extras kept; one line per record."""
import json
import logging

from mailwright.logs import JsonFormatter

QID = "0d1qk3v8m2a7cxyz"


def fmt(msg, *args, exc=False, **extra):
    record = logging.LogRecord("mailwright.smtpd", logging.INFO, __file__, 1, msg, args,
                               None)
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys
            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_fields_from_extra_win():
    e = fmt("accepted sid=%s id=%s", "1.2", QID, sid="9.9", id="other", client="192.0.2.1")
    assert (e["sid"], e["id"], e["client"]) == ("9.9", "other", "192.0.2.1")
    assert e["msg"] == f"accepted sid=1.2 id={QID}" and e["level"] == "info"
    assert e["ts"].endswith("Z") and e["logger"] == "mailwright.smtpd"


def test_fields_from_the_line_formats():
    assert fmt(f"accepted sid=1a.2 id={QID} client=x")["id"] == QID
    assert fmt("auth failed sid=1a.2 client=x user=y")["sid"] == "1a.2"
    assert fmt("session 1a.2: internal error handling Hello")["sid"] == "1a.2"
    assert fmt(f"{QID} rcpt=1 ok: 250 2.0.0 delivered")["id"] == QID
    assert fmt(f"{QID}: failed DSN x to <a@b>")["id"] == QID


def test_peer_text_cannot_pose_as_an_id():
    e = fmt(f"reject sid=1a.2 client=192.0.2.1 helo=x id={QID} sid=ff.ff check=helo")
    assert e["sid"] == "1a.2" and "id" not in e
    e = fmt(f"routing x id={QID} sid=1.1 failed")
    assert "id" not in e and "sid" not in e


def test_traceback_and_unserialisable_extra():
    e = fmt("oops", exc=True, thing=object())
    assert "RuntimeError: boom" in e["exc"] and e["thing"].startswith("<object")
