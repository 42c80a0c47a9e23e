"""The open-loop HTTP driver's clock, against a real (tiny) HTTP server on loopback: no
response time can be zero or negative, and none sits on a whole-millisecond grid."""

from __future__ import annotations

import asyncio
import socket
import threading

from lab_kit.harness.http_load import make_bodies, run_load


def _serve_202(ready: threading.Event, port: list[int], stop: threading.Event) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, family=socket.AF_INET)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(main())


def test_response_times_are_positive_and_finer_than_a_millisecond():
    ready, stop, port = threading.Event(), threading.Event(), []
    t = threading.Thread(target=_serve_202, args=(ready, port, stop), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        run = run_load(f"http://127.0.0.1:{port[0]}", make_bodies(600), rate=1000, seconds=0.5,
                       connections=8, timeout_s=5)
    finally:
        stop.set()
        t.join(5)
    assert len(run.latencies) == 500 and set(run.statuses) == {202}
    assert min(run.latencies) > 0  # never measured from before the request existed
    # a loopback answer takes well under a millisecond: on a 1 ms clock most would read 0
    off_grid = [x for x in run.latencies if abs(x * 1000 - round(x * 1000)) > 1e-6]
    assert len(off_grid) > 0.9 * len(run.latencies)
