"""metrics/http.py over real loopback sockets: the one page, 404/405/400/431, idle
connections closed, a failing renderer answered 500."""
import asyncio
import socket
import time

import pytest

from mailwright.metrics.http import MAX_HEAD, MetricsHTTPServer


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


async def serve(render=None, **kw):
    async def default():
        return b"mailwright_up 1\n"
    server = MetricsHTTPServer("127.0.0.1", 0, "/metrics", render or default, **kw)
    await server.start()
    return server


def run(coro):
    return asyncio.run(coro)


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_get_metrics_then_connection_closed():
    async def main():
        server = await serve()
        try:
            return await in_thread(exchange, server.port,
                                   b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        finally:
            await server.stop()
    reply = run(main())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert b"Content-Length: 16" in head and b"Connection: close" in head
    assert body == b"mailwright_up 1\n"


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\n\r\n", b"404"),
    (b"GET /metrics/x HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
    (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"200"),
])
def test_status_codes(request_bytes, status):
    async def main():
        server = await serve()
        try:
            return await in_thread(exchange, server.port, request_bytes)
        finally:
            await server.stop()
    reply = run(main())
    assert reply.split(b" ", 2)[1] == status, reply
    if request_bytes.startswith(b"HEAD"):
        assert reply.endswith(b"\r\n\r\n")            # no body for HEAD


def test_oversized_request_head_is_refused():
    async def main():
        server = await serve()
        try:
            big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n"
            many = big + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 100)
                                  for i in range(MAX_HEAD // 100 + 5)) + b"\r\n"
            one_long = b"GET /metrics HTTP/1.1\r\nX: " + b"c" * (MAX_HEAD * 3) + b"\r\n\r\n"
            return (await in_thread(exchange, server.port, many),
                    await in_thread(exchange, server.port, one_long))
        finally:
            await server.stop()
    for reply in run(main()):
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]


def test_idle_connection_is_closed_without_answer():
    async def main():
        server = await serve(idle_timeout=0.3)
        try:
            def idle():
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\n")      # never finishes the head
                    started = time.monotonic()
                    data = s.recv(100)
                    return data, time.monotonic() - started
            return await in_thread(idle)
        finally:
            await server.stop()
    data, waited = run(main())
    assert data == b"" and waited < 3.0


def test_failing_renderer_gives_500_and_the_server_keeps_serving():
    calls = []

    async def render():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return b"ok 1\n"

    async def main():
        server = await serve(render)
        try:
            first = await in_thread(exchange, server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            second = await in_thread(exchange, server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            return first, second
        finally:
            await server.stop()
    first, second = run(main())
    assert first.startswith(b"HTTP/1.1 500 ") and b"boom" not in first
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"ok 1\n")
