"""Logging set-up: one line per event, human or JSON (``[log] format``).

What: ``setup(level, fmt, file)`` installs one handler on the root logger: ``"human"``
(``time level logger[pid]: message``, the default, for a terminal) or ``"json"`` (one JSON
object per line, for log collectors).

How (JSON): every line has ``ts`` (UTC, milliseconds), ``level``, ``logger``, ``pid`` and
``msg`` (the event as the human format shows it), plus ``sid`` (SMTP session id) and ``id``
(queue id) wherever they apply. Call sites pass them as ``extra={"sid": ..., "id": ...}``;
for lines that do not, they are read from where the log formats put them (a session
line's leading ``<event> sid=<sid> id=<qid>``, a queue line's leading ``<qid>``), never
from later in the line, so text from a peer (a HELO name, an address) cannot pose as one.
Any other ``extra`` field is written as well; ``exc`` holds a traceback.

Invariants: credentials are never passed to the logger by any module (net/session.py logs
the mechanism and a sanitised account name only); a record that cannot be serialised is
still written (values fall back to ``repr``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}
# Only where the format puts them: "<event words> sid=<sid>[ id=<qid>]" at the start of a
# line (session lines), "session <sid>: ..." or "<qid>: ..."/"<qid> ..." (queue lines).
# Peer text (HELO names, addresses) comes later in a line and is never read.
_SID_RE = r"[0-9a-f]{1,16}\.[0-9a-f]{1,16}"
_QID_RE = r"[0-9a-hjkmnp-tv-z]{16}"       # store/queueid.py: Crockford base32, 16 chars
_SID = re.compile(rf"^(?:[a-z]+ ){{1,3}}sid=({_SID_RE})(?![^ ])|^session ({_SID_RE}):")
_QID = re.compile(rf"^(?:[a-z]+ ){{1,3}}sid={_SID_RE} id=({_QID_RE})(?![^ ])"
                  rf"|^({_QID_RE})(?=[: ])")

def _first(match: re.Match | None) -> str | None:
    if match is None:
        return None
    return next(g for g in match.groups() if g is not None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": msg,
        }
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        sid = extra.pop("sid", None) or _first(_SID.search(msg))
        qid = extra.pop("id", None) or _first(_QID.search(msg))
        if sid:
            entry["sid"] = sid
        if qid:
            entry["id"] = qid
        for key, value in extra.items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=repr)


def setup(level: str = "info", fmt: str = "human", file: str | os.PathLike | None = None) -> None:
    handler: logging.Handler
    if file:
        handler = logging.FileHandler(file)
    else:
        handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    # No record needs the caller's file and line; finding them walks the stack on every
    # log call (documented switch in the logging module).
    logging._srcfile = None  # type: ignore[attr-defined]
    # Nor the thread or multiprocessing names (no format shows them; documented
    # switches of the logging module). The process id stays: both formats show it.
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
