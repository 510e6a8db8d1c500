"""The outbound session driver's I/O shape (net/outbound.py) over real loopback sockets:
how many writes a transaction takes, and the per-destination limiter's bookkeeping."""
from __future__ import annotations

import asyncio

from mailwright.net.outbound import DestinationLimiter, Timeouts, TlsPolicy, open_session
from outbound.helpers import run
from outbound.sink import Sink


async def _body(*chunks: bytes):
    for c in chunks:
        yield c


def test_small_message_leaves_in_one_write_with_its_final_dot():
    """The pipelined group is one write, the body with its final dot another: two
    writes per message (plus nothing else) on a fresh connection."""
    async def main():
        s = await Sink("127.0.0.1", 0).start()
        session = await open_session("127.0.0.1", s.port, host="", helo_name="c.test",
                                     timeouts=Timeouts(), tls=TlsPolicy(mode="none"))
        writes: list[bytes] = []
        real = session._transport.write

        def counting(data: bytes) -> None:
            writes.append(bytes(data))
            real(data)
        session._transport.write = counting
        out = await session.send_message("a@x.test", [], [("b@y.test", [])],
                                         _body(b"Received: x\r\n", b"Subject: s\r\n\r\n.hi\r\n"),
                                         use_bdat=False)
        await session.quit()
        await s.stop()
        return out, writes, s
    out, writes, s = run(main())
    assert out.final is not None and out.final.code == 250
    assert writes[0].startswith(b"MAIL FROM:<a@x.test>") and writes[0].endswith(b"DATA\r\n")
    assert writes[1] == b"Received: x\r\nSubject: s\r\n\r\n..hi\r\n.\r\n"
    assert writes[2:] == [b"QUIT\r\n"]
    assert s.transactions[0].body == b"Received: x\r\nSubject: s\r\n\r\n.hi\r\n"


def test_destination_limiter_bounds_and_forgets():
    async def main():
        lim = DestinationLimiter(2)
        running = 0
        peak = 0

        async def one():
            nonlocal running, peak
            async with lim.hold("d.test"):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(one() for _ in range(7)))
        assert peak == 2 and lim.peak["d.test"] == 2
        assert lim._sems == {}                    # nothing kept for an idle destination

        # A waiter cancelled while queued gives its place back and leaves no entry.
        gate = asyncio.Event()

        async def holder():
            async with lim.hold("e.test"):
                await gate.wait()
        holders = [asyncio.ensure_future(holder()) for _ in range(2)]
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(holder())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.set()
        await asyncio.gather(*holders)
        assert lim._sems == {}
        async with lim.hold("e.test"):            # still usable, not over-counted
            assert lim._sems["e.test"][1] == 1
    run(main())
