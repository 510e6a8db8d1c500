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

import asyncio
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


class HumanFormatter(logging.Formatter):
    """``time level logger[pid]: message``; the date and time of a second are formatted
    once (time.strftime per line was a visible cost at a thousand lines a second)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


#: Lines per write: at most PIPE_BUF bytes, so lines of several processes sharing one
#: pipe (stdout under a supervisor) never interleave inside a line.
_CHUNK = 4096


class LineHandler(logging.Handler):
    """Writes formatted lines to a stream, flushed once per event-loop pass.

    A line logged on a thread running an asyncio loop is buffered and the buffer is
    written by a callback at the end of the current pass (``call_soon``): the lines that
    many sessions log in one pass cost one write(2), not one each. A line from any other
    thread, and every line at WARNING and above, is written at once together with what
    is buffered before it, so order is kept. At most one pass of lines is lost if the
    process is killed (SIGKILL); ``logging.shutdown`` at a normal exit flushes."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream
        self._buffer: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - as logging.StreamHandler does
            self.handleError(record)
            return
        self._buffer.append(line + "\n")
        if record.levelno < logging.WARNING and not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._scheduled = True
                loop.call_soon(self._flush_pass)
                return
        if not self._scheduled or record.levelno >= logging.WARNING:
            self._write()

    def _flush_pass(self) -> None:
        with self.lock:
            self._scheduled = False
            self._write()

    def _write(self) -> None:
        lines, self._buffer = self._buffer, []
        try:
            chunk: list[str] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > _CHUNK:
                    self.stream.write("".join(chunk))
                    self.stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self.stream.write("".join(chunk))
                self.stream.flush()
        except Exception:  # noqa: BLE001 - a full disk must not stop the server
            pass

    def flush(self) -> None:
        with self.lock:
            self._write()

    def close(self) -> None:
        try:
            self.flush()
            if self.stream not in (sys.stdout, sys.stderr):
                self.stream.close()
        finally:
            super().close()


def setup(level: str = "info", fmt: str = "human", file: str | os.PathLike | None = None) -> None:
    if file:
        handler = LineHandler(open(file, "a", encoding="utf-8", errors="backslashreplace"))
    else:
        handler = LineHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(HumanFormatter())
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
