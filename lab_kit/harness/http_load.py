"""The open-loop HTTP load driver: ``POST /posts`` at a fixed rate, each request timed from
its intended send time.

The load generator is an **open loop** at a fixed rate, written on asyncio streams (raw
HTTP/1.1 with keep-alive over a pool of connections, uvloop when installed). Every request has
an *intended* send time ``start + i / rate``; its latency is measured from that time, not from
when a connection was free, so a stalled server cannot hide its queue (no coordinated
omission, as in wrk2). Debian's ``wrk`` and ``hey`` are closed-loop load generators (they
wait for a response before the next request on a connection), which is why they do not drive
the benchmark; ``hey`` is its second opinion (:mod:`lab_kit.harness.hey_load`,
``bench api --cross-check``).

The driver is Python too, so its own ceiling is measured (:func:`driver_ceiling`, against a
stub server that answers 202 without doing anything) and reported next to the results.

:func:`run_load` drives one run (a :class:`LoadRun`); :func:`make_bodies` builds its request
bodies. One API condition (server + load + nemesis + checker) is
:mod:`lab_kit.harness.api_condition`; the benchmark is ``python -m lab_kit bench api``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lab_kit.machine import free_port
from lab_kit.metrics import percentiles_ms
from lab_kit.posts import Workload

HEAD = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %%d\r\n\r\n")


@dataclass
class LoadRun:
    """One open-loop run: per request its intended offset (s), latency (s) and status
    (HTTP status, or 0 for a transport error/timeout)."""

    target_rate: float
    seconds: float
    offsets: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    max_lag_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.statuses)

    def summary(self) -> dict[str, Any]:
        p = percentiles_ms(self.latencies)
        ok = sum(1 for s in self.statuses if 200 <= s < 300)
        return {"target_rate": self.target_rate, "seconds": self.seconds, "sent": self.sent,
                "accepted": ok,
                "achieved_rate": round(ok / max(self.elapsed_s, self.seconds, 1e-9), 1),
                "p50_ms": _r(p["p50_ms"]), "p99_ms": _r(p["p99_ms"]),
                "p999_ms": _r(p["p999_ms"]), "max_ms": _r(p["max_ms"]),
                "errors": self.sent - ok,  # non-2xx answers and transport errors/timeouts
                "errors_by_kind": dict(self.errors),
                "driver_max_lag_ms": round(self.max_lag_s * 1000, 2)}

    def frame(self):
        import pandas as pd  # only a notebook asks for a frame: the driver stays light

        return pd.DataFrame({"t_s": self.offsets, "latency_ms": [x * 1000 for x in
                                                                 self.latencies],
                             "status": self.statuses})


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class _Conn:
    def __init__(self, host: str, port: int, path: str = "/posts"):
        self.host, self.port = host, port
        self.head = HEAD % path.encode("ascii")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, body: bytes) -> int:
        if self.writer is None:
            await self.connect()
        self.writer.write(self.head % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, close = 0, False
        for line in head.lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
            elif line.startswith(b"connection:") and b"close" in line:
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _open_loop(host: str, port: int, bodies: list[tuple[str, bytes]], rate: float,
                     seconds: float, connections: int, timeout_s: float,
                     path: str = "/posts") -> LoadRun:
    loop = asyncio.get_running_loop()
    # Times from perf_counter, not loop.time(): uvloop's clock counts whole milliseconds
    # (uv_now), which put every latency on a 1 ms grid and a sub-ms answer at 0
    clock = time.perf_counter
    run = LoadRun(rate, seconds)
    n = min(len(bodies), int(rate * seconds))
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    conns = [_Conn(host, port, path) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in conns))  # connected before the clock starts
    for c in conns:
        pool.put_nowait(c)

    async def one(i: int, intended: float) -> None:
        # from the intended time: a late start is queueing the user sees (no coordinated
        # omission); a timer that woke us early starts it now, and the clock with it (an
        # answer must not come before its request: a negative or zero response time)
        t0 = min(intended, clock())
        post_id, body = bodies[i]
        conn = await pool.get()
        try:  # the request gives up at intended + timeout_s (no extra task per request)
            async with asyncio.timeout(max(0.0, intended + timeout_s - clock())):
                status = await conn.request(body)
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            conn.close()
            status = 0
            run.errors[type(exc).__name__] += 1
        finally:
            pool.put_nowait(conn)
        run.offsets.append(intended - start)
        run.latencies.append(clock() - t0)
        run.statuses.append(status)
        if 200 <= status < 300:
            run.accepted_ids.append(post_id)

    gc.collect()
    gc.freeze()  # the pre-built bodies stay out of the collector's walks (no pauses)
    start = clock() + 0.05
    tasks = set()
    for i in range(n):
        intended = start + i / rate
        delay = intended - clock()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        run.max_lag_s = max(run.max_lag_s, clock() - intended)
        t = loop.create_task(one(i, intended))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:  # each request gives up at its own intended time + timeout_s
        await asyncio.wait(set(tasks), timeout=timeout_s + 5)
    for t in list(tasks):
        t.cancel()
    gc.unfreeze()
    for c in conns:
        c.close()
    run.elapsed_s = clock() - start
    return run


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # a dependency, but the driver also runs without it

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.new_event_loop()


def run_load(url: str, bodies: list[tuple[str, bytes]], rate: float, seconds: float, *,
             connections: int = 256, timeout_s: float = 30.0,
             path: str = "/posts") -> LoadRun:
    """Open-loop POST ``path`` (``/posts``, or ``/posts?wait=ack``) at ``rate`` for ``seconds``
    (bounded: at most len(bodies) requests, each abandoned ``timeout_s`` after its intended
    time). Runs its own event loop in a thread, so it works from a notebook too."""
    if not 1 <= rate <= 50_000:
        raise ValueError(f"--rate must be between 1 and 50000, got {rate}")
    if not 0.1 <= seconds <= 600:
        raise ValueError(f"--seconds must be between 0.1 and 600, got {seconds}")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    out: dict[str, Any] = {}

    def target() -> None:
        loop = _new_loop()
        try:
            out["run"] = loop.run_until_complete(_open_loop(
                host, int(port), bodies, rate, seconds, connections, timeout_s, path))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc
        finally:
            loop.close()

    # A full collection of this process (the bodies, pandas...) would stop the driver for
    # tens of ms, counted as the server's latency: hide what exists now from the collector.
    gc.collect()
    gc.freeze()
    th = threading.Thread(target=target, name="api-load", daemon=True)
    try:
        th.start()
        th.join(seconds + timeout_s + 30)
    finally:
        gc.unfreeze()
    if "error" in out:
        raise out["error"]
    return out["run"]


def make_bodies(n: int, seed: int = 23) -> list[tuple[str, bytes]]:
    """``n`` (post_id, JSON body) pairs from the seeded workload (unique ids per seed)."""
    stamp = f"{seed}-{time.time_ns() % 10**9}"
    out = []
    for i, post in enumerate(Workload(seed=seed).posts(n)):
        d = post.to_dict()
        d["post_id"] = pid = f"api-{stamp}-{i:07d}"
        del d["created_at"]
        out.append((pid, json.dumps(d, separators=(",", ":")).encode()))
    return out


# --- the driver's own ceiling -------------------------------------------------------------------

STUB = r"""
import asyncio, sys
RESP = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0: return
            head = self.buf[:i].lower(); n = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"): n = int(line[15:])
            if len(self.buf) < i + 4 + n: return
            self.buf = self.buf[i + 4 + n:]; self.t.write(RESP)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
try:
    import uvloop; uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def driver_ceiling(rates: tuple[float, ...] = (2000, 4000, 8000), seconds: float = 5.0
                   ) -> list[dict[str, Any]]:
    """The driver against a stub that answers 202 at once (another process): what the
    driver itself achieves, and the latency it adds, at each rate."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STUB, str(port)])
    try:
        time.sleep(0.5)
        bodies = make_bodies(int(max(rates) * seconds))
        out = []
        for rate in rates:
            s = run_load(f"http://127.0.0.1:{port}", bodies, rate, seconds).summary()
            out.append({k: s[k] for k in ("target_rate", "achieved_rate", "p50_ms", "p99_ms",
                                          "p999_ms", "errors", "driver_max_lag_ms")})
        return out
    finally:
        proc.terminate()
        proc.wait(10)

