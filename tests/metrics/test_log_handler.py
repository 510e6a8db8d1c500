"""The log handler (logs.py): one write per event-loop pass, order kept, no torn lines."""
from __future__ import annotations

import asyncio
import io
import logging

from mailwright.logs import HumanFormatter, LineHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def logger_with(stream) -> logging.Logger:
    handler = LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test.linehandler.{id(stream)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log


def test_lines_of_one_loop_pass_are_one_write_and_a_warning_flushes_at_once():
    stream = CountingStream()
    log = logger_with(stream)

    async def main():
        for i in range(50):
            log.info("accepted %d", i)
        assert stream.writes == []              # still in this pass
        await asyncio.sleep(0)                  # the pass ends: one write
        assert len(stream.writes) == 1
        log.info("before")
        log.warning("bad")                      # written at once, after what was buffered
        assert stream.writes[-1] == "INFO before\nWARNING bad\n"
        await asyncio.sleep(0)
    asyncio.run(main())
    lines = stream.getvalue().splitlines()
    assert lines[:50] == [f"INFO accepted {i}" for i in range(50)]
    assert lines[50:] == ["INFO before", "WARNING bad"]


def test_outside_an_event_loop_each_line_is_written_at_once():
    stream = CountingStream()
    log = logger_with(stream)
    log.info("one")
    assert stream.writes == ["INFO one\n"]


def test_large_buffers_are_written_in_whole_lines_of_at_most_pipe_buf():
    stream = CountingStream()
    log = logger_with(stream)

    async def main():
        for i in range(400):
            log.info("line %03d %s", i, "x" * 60)
    asyncio.run(main())
    assert len(stream.writes) > 1
    assert all(len(w) <= 4096 and w.endswith("\n") for w in stream.writes)
    assert stream.getvalue().splitlines()[399].startswith("INFO line 399")


def test_human_format_names_time_level_logger_and_pid():
    record = logging.LogRecord("mailwright.smtpd", logging.INFO, "", 0, "hello %s", ("x",),
                               None)
    line = HumanFormatter().format(record)
    assert line.endswith(f" INFO mailwright.smtpd[{record.process}]: hello x")
    assert line[4] == "-" and line[19] == ","            # 2026-11-27 09:00:00,123
