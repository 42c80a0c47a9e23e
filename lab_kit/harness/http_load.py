"""``bench api``: what a user's HTTP request sees, healthy and with the broker killed.

The load generator is an **open loop** at a fixed rate, written on asyncio streams (raw
HTTP/1.1 with keep-alive over a pool of connections, uvloop when installed). Every request has
an *intended* send time ``start + i / rate``; its latency is measured from that time, not from
when a connection was free, so a stalled server cannot hide its queue (no coordinated
omission, as in wrk2). Debian's ``wrk`` and ``hey`` are closed-loop load generators (they
wait for a response before the next request on a connection), which is why they are not used.

The driver is Python too, so its own ceiling is measured (:func:`driver_ceiling`, against a
stub server that answers 202 without doing anything) and reported next to the results.

``python -m lab_kit.api_bench [--rate R] [--seconds S] [--rounds N] [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_kit.metrics import MetricsRecorder, percentiles_ms
from lab_kit.output_paths import check_output_path
from lab_kit.posts import Workload

CONDITIONS = ("healthy", "broker_killed")
HEAD = (b"POST /posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n")


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
        import pandas as pd

        return pd.DataFrame({"t_s": self.offsets, "latency_ms": [x * 1000 for x in
                                                                 self.latencies],
                             "status": self.statuses})


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class _Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, body: bytes) -> int:
        if self.writer is None:
            await self.connect()
        self.writer.write(HEAD % len(body) + body)
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
                     seconds: float, connections: int, timeout_s: float) -> LoadRun:
    loop = asyncio.get_running_loop()
    run = LoadRun(rate, seconds)
    n = min(len(bodies), int(rate * seconds))
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    conns = [_Conn(host, port) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in conns))  # connected before the clock starts
    for c in conns:
        pool.put_nowait(c)

    async def one(i: int, intended: float) -> None:
        post_id, body = bodies[i]
        conn = await pool.get()
        try:
            async with asyncio.timeout_at(intended + timeout_s):  # no extra task per request
                status = await conn.request(body)
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            conn.close()
            status = 0
            run.errors[type(exc).__name__] += 1
        finally:
            pool.put_nowait(conn)
        run.offsets.append(intended - start)
        run.latencies.append(loop.time() - intended)
        run.statuses.append(status)
        if 200 <= status < 300:
            run.accepted_ids.append(post_id)

    gc.collect()
    gc.freeze()  # the pre-built bodies stay out of the collector's walks (no pauses)
    start = loop.time() + 0.05
    tasks = set()
    for i in range(n):
        intended = start + i / rate
        delay = intended - loop.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        run.max_lag_s = max(run.max_lag_s, loop.time() - intended)
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
    run.elapsed_s = loop.time() - start
    return run


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.new_event_loop()


def run_load(url: str, bodies: list[tuple[str, bytes]], rate: float, seconds: float, *,
             connections: int = 256, timeout_s: float = 30.0) -> LoadRun:
    """Open-loop POST /posts at ``rate`` for ``seconds`` (bounded: at most len(bodies)
    requests, each abandoned ``timeout_s`` after its intended time). Runs its own event
    loop in a thread, so it works from a notebook too."""
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
                host, int(port), bodies, rate, seconds, connections, timeout_s))
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


# --- one condition: server + load (+ nemesis) + checker ------------------------------------------

def run_condition(variant: str, condition: str, rate: float, seconds: float, *,
                  workers: int = 1, lead_s: float | None = None, outage_s: float = 10.0,
                  broker=None, topic_prefix: str = "lab.api", keep_topic: bool = False,
                  audit_topic: bool = True, workdir: Path | None = None,
                  warmup_s: float = 2.0, timeout_s: float = 30.0) -> dict[str, Any]:
    """Serve the API (``variant``), drive it open-loop, kill -9 the broker for ``outage_s``
    if ``condition == "broker_killed"``, wait for the spool to drain, stop the server
    (SIGTERM) and read the topic back. Returns the summary plus ``load`` (the LoadRun).

    ``warmup_s`` of load at the same rate first (connections, the client's first batches,
    the allocator): not measured, but its posts are audited too."""
    from lab_kit import broker as lab_broker
    from lab_kit.api.app import ApiServer
    from lab_kit.harness.nemesis import Nemesis
    from lab_kit.harness.readback import audit
    from lab_kit.topics import ensure_topics

    if condition not in CONDITIONS:
        raise ValueError(f"condition: {condition!r} is not one of {CONDITIONS}")
    broker = broker or lab_broker.ensure()
    cfg = broker.client_config()
    topic = f"{topic_prefix}.{variant}.{condition}.{time.strftime('%H%M%S')}.{time.time_ns() % 997}"
    ensure_topics(cfg, names=(topic,), partitions={topic: 6})
    bodies = make_bodies(int(rate * (seconds + warmup_s)))
    warm, bodies = bodies[:int(rate * warmup_s)], bodies[int(rate * warmup_s):]
    tmp = tempfile.TemporaryDirectory(prefix="lab-api-") if workdir is None else None
    wd = Path(tmp.name) if tmp else workdir
    nemesis = None
    metrics = MetricsRecorder()
    try:
        server = ApiServer(variant=variant, topic=topic, workers=workers, spool_dir=wd,
                           bootstrap=broker.bootstrap_servers,
                           verdicts="off", log_path=wd / "api.log").start()
        try:
            warm_ids = run_load(server.url, warm, rate, warmup_s).accepted_ids if warm else []
            if condition == "broker_killed":
                node = broker.node_ids()[0]
                lead = lead_s if lead_s is not None else min(5.0, seconds / 4)
                nemesis = Nemesis(f"broker node {node} killed (-9)", lambda: broker.kill(node),
                                  lambda: heal(broker, node), lead, outage_s, metrics).start()
            load = run_load(server.url, bodies, rate, seconds, timeout_s=timeout_s)
            if nemesis is not None:
                nemesis.join(timeout=outage_s + 300)  # a restart waits up to 240 s
            health = server.wait_drained(timeout_s=120)
            counters = server.counters()
        finally:
            code = server.stop()
        out = {"variant": variant, "condition": condition, "workers": workers, "topic": topic,
               **load.summary(), "server_exit_code": code,
               "spool_left": health.get("spool_depth"), "in_flight_left": health.get("in_flight"),
               "server": {k.removeprefix("lab_api_"): int(v) for k, v in counters.items()
                          if k.startswith(("lab_api_posts", "lab_api_spool_replayed"))}}
        if nemesis is not None:
            out["outage"] = {"lead_s": nemesis.lead_s, "outage_s": outage_s,
                             "error": None if nemesis.error is None else repr(nemesis.error)}
            t0 = nemesis.lead_s
            during = [lat for off, lat in zip(load.offsets, load.latencies, strict=True)
                      if t0 <= off <= t0 + outage_s]
            p = percentiles_ms(during)
            out.update(p99_during_outage_ms=_r(p["p99_ms"]),
                       p999_during_outage_ms=_r(p["p999_ms"]), sent_during_outage=len(during))
        if audit_topic:
            rep = audit(cfg, topic, warm_ids + load.accepted_ids, timeout_s=120)
            out.update(lost=rep.lost, duplicates=rep.duplicates,
                       delivered_unique=rep.delivered_unique)
        out["load"] = load
        return out
    finally:
        if nemesis is not None and any(n.state != "running" for n in broker.nodes()):
            heal(broker, None)  # never leave the lab's broker down
        if not keep_topic:
            _delete_topic(cfg, topic)
        if tmp is not None:
            tmp.cleanup()


def heal(broker, node: int | None, timeout_s: float = 120) -> None:
    """Restart a killed node. On a shared broker someone else may have restarted it first
    (``start`` then finds its port taken): healed is "a broker answers on the port"."""
    from lab_kit.broker import BrokerError
    from lab_kit.producer import api_versions_probe

    try:
        broker.start(node)
        return
    except BrokerError:
        host, _, port = broker.bootstrap_servers.split(",")[0].rpartition(":")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if api_versions_probe(host, int(port)):
                return
            time.sleep(0.5)
        raise


def own_broker(name: str = "api-drill"):
    """A one-node local broker of this harness's own (state under LAB_STATE_DIR/<name>), so
    its kill -9 does not race other users of the lab's broker. ``.down(purge=True)`` after."""
    from lab_kit import lab_env
    from lab_kit.broker import local

    return local.up(nodes=1, state_dir=lab_env.state_dir() / name)


def _delete_topic(cfg: dict, topic: str) -> None:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(**cfg, request_timeout_ms=10000)
        try:
            admin.delete_topics([topic], timeout_ms=10000)
        finally:
            admin.close()
    except Exception:  # noqa: BLE001 - clean-up is best effort
        pass


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
    from lab_kit.machine import free_port

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


# --- the bench -----------------------------------------------------------------------------------

MEDIAN_KEYS = ("achieved_rate", "p50_ms", "p99_ms", "p999_ms", "max_ms", "errors",
               "p99_during_outage_ms", "p999_during_outage_ms")


def _median_of(rounds: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in MEDIAN_KEYS:
        vals = [r[k] for r in rounds if r.get(k) is not None]
        if vals:
            out[k] = round(statistics.median(vals), 3)
    for k in ("lost", "duplicates"):
        vals = [r[k] for r in rounds if r.get(k) is not None]
        if vals:
            out[k + "_max"] = max(vals)
    out["accepted_all"] = all(r["accepted"] == r["sent"] for r in rounds)
    return out


def max_rate(rates: tuple[float, ...], seconds: float, workers: int, broker=None
             ) -> dict[str, Any]:
    """The highest rate (of ``rates``, tried in order, stopping at the first miss) at which
    the async API keeps HTTP p99 <= 100 ms, errors 0 and >= 98 % of the target rate."""
    steps, best = [], None
    for rate in rates:
        r = run_condition("async", "healthy", rate, seconds, workers=workers, broker=broker,
                          audit_topic=False)
        r.pop("load")
        ok = (r["p99_ms"] is not None and r["p99_ms"] <= 100 and r["errors"] == 0
              and r["achieved_rate"] >= 0.98 * rate)
        steps.append({k: r[k] for k in ("target_rate", "achieved_rate", "p50_ms", "p99_ms",
                                        "p999_ms", "errors")} | {"ok": ok})
        if not ok:
            break
        best = rate
    return {"workers": workers, "max_rate_p99_le_100ms": best, "steps": steps}


def run_bench(rate: float = 2000, seconds: float = 30, rounds: int = 3, outage_s: float = 10,
              variants: tuple[str, ...] = ("async", "blocking"),
              conditions: tuple[str, ...] = CONDITIONS,
              max_rates: tuple[float, ...] = (1000, 2000, 3000, 4000, 5000),
              max_rate_seconds: float = 10, ceiling: bool = True,
              progress: bool = True, json_path: str | Path | None = None,
              isolated: bool = True, broker_warmup_s: float = 15) -> dict[str, Any]:
    """Every variant x condition ``rounds`` times (medians), the max-rate search, the
    driver's ceiling. With ``json_path`` the report is rewritten after every run, so an
    interrupted bench keeps what it measured. ``isolated``: on a broker of its own (purged
    after), so nobody else's restarts race the nemesis and nobody else's topics slow its
    recovery; else on the lab's broker. ``broker_warmup_s``: one unmeasured async run first
    (a fresh broker JVM compiles its hot paths under its first load; measured here, the first
    two healthy rounds on a cold broker had twice the p99 of the third)."""
    from lab_kit import broker as lab_broker

    broker = own_broker("api-bench") if isolated else lab_broker.ensure()
    try:
        return _run_bench(broker, rate, seconds, rounds, outage_s, variants, conditions,
                          max_rates, max_rate_seconds, ceiling, progress, json_path,
                          broker_warmup_s)
    finally:
        if isolated:
            broker.down(purge=True)


def _run_bench(broker, rate, seconds, rounds, outage_s, variants, conditions, max_rates,
               max_rate_seconds, ceiling, progress, json_path,
               broker_warmup_s) -> dict[str, Any]:
    from lab_kit import lab_env
    result: dict[str, Any] = {
        "bench": "api", "kafka_version": broker.kafka_version or lab_env.KAFKA_VERSION,
        "settings": {"rate": rate, "seconds": seconds, "rounds": rounds, "outage_s": outage_s,
                     "broker_warmup_s": broker_warmup_s},
        "driver": {"kind": "open loop on asyncio streams (HTTP/1.1 keep-alive, 256 "
                           "connections, uvloop); latency from the intended send time"},
        "runs": {}}
    if ceiling:
        result["driver"]["ceiling"] = driver_ceiling()
    if broker_warmup_s:
        run_condition("async", "healthy", rate, broker_warmup_s, broker=broker,
                      audit_topic=False)
    for variant in variants:
        for condition in conditions:
            rs = []
            for i in range(rounds):
                r = run_condition(variant, condition, rate, seconds, outage_s=outage_s,
                                  broker=broker)
                r.pop("load")
                rs.append(r)
                if progress:
                    print(f"{variant:8} {condition:13} round {i + 1}: rate {r['achieved_rate']}"
                          f" p50 {r['p50_ms']} p99 {r['p99_ms']} p99.9 {r['p999_ms']} ms, "
                          f"errors {r['errors']}, lost {r.get('lost')}", flush=True)
                result["runs"].setdefault(variant, {})[condition] = {
                    "median": _median_of(rs), "rounds": rs}
                if json_path:
                    Path(json_path).write_text(json.dumps(result, indent=2))
    if max_rates:
        result["max_rate"] = [max_rate(max_rates, max_rate_seconds, w, broker) for w in (1, 2)]
        if progress:
            for m in result["max_rate"]:
                print(f"max rate with p99 <= 100 ms, workers={m['workers']}: "
                      f"{m['max_rate_p99_le_100ms']}", flush=True)
    a = result["runs"].get("async", {})
    h, k = a.get("healthy", {}).get("median", {}), a.get("broker_killed", {}).get("median", {})
    result["targets"] = {
        "healthy_p99_le_20ms": h.get("p99_ms") is not None and h["p99_ms"] <= 20,
        "healthy_p999_le_100ms": h.get("p999_ms") is not None and h["p999_ms"] <= 100,
        "healthy_errors_0": h.get("errors") == 0,
        "killed_p99_le_100ms": k.get("p99_ms") is not None and k["p99_ms"] <= 100,
        "killed_every_post_accepted": bool(k.get("accepted_all")),
        "killed_lost_0": k.get("lost_max") == 0,
    }
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=2000, help="requests per second (default 2000)")
    p.add_argument("--seconds", type=float, default=30, help="per run (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="runs per variant and condition")
    p.add_argument("--outage", type=float, default=10, help="broker killed for S seconds")
    p.add_argument("--quick", action="store_true",
                   help="10 s runs, 1 round, 5 s outage, short max-rate search")
    p.add_argument("--no-max-rate", action="store_true", help="skip the max-rate search")
    p.add_argument("--json", dest="json_path", default=None)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")
    if not 1 <= args.rounds <= 10:
        raise ValueError(f"--rounds must be between 1 and 10, got {args.rounds}")
    if args.quick:
        res = run_bench(args.rate, 10, 1, 5, max_rates=() if args.no_max_rate else
                        (2000, 4000), max_rate_seconds=5, json_path=args.json_path,
                        broker_warmup_s=5)
    else:
        res = run_bench(args.rate, args.seconds, args.rounds, args.outage,
                        max_rates=() if args.no_max_rate else (1000, 2000, 3000, 4000, 5000),
                        json_path=args.json_path)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json_path}")
    return 0 if all(res["targets"].values()) else 1


def run_cli(prog: str, doc: str, add_args: Any, run: Any, argv: list[str] | None) -> int:
    """A module's own command line: parse, run, a ValueError is one line and exit 2."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    add_args(p)
    try:
        return run(p.parse_args(argv))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cli(argv: list[str] | None = None) -> int:
    return run_cli("python -m lab_kit.api_bench", __doc__, add_arguments, main, argv)


if __name__ == "__main__":
    sys.exit(cli())


# --- figures -------------------------------------------------------------------------------------

def plot_cdfs(runs: dict[str, dict], slo_ms: float = 100.0):
    """Response-time CDFs (left) and latency over the run (right) of ``{label: result}``,
    where each result holds its ``load`` (a :class:`LoadRun`). Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, r in runs.items():
        lat = np.sort(np.asarray(r["load"].latencies) * 1000)
        if len(lat) == 0:
            continue
        ax1.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=label)
        ax2.plot(r["load"].offsets, np.asarray(r["load"].latencies) * 1000, ".", ms=1.5,
                 label=label)
        if r.get("outage"):
            lead, out = r["outage"]["lead_s"], r["outage"]["outage_s"]
            ax2.axvspan(lead, lead + out, color="red", alpha=0.06)
    ax1.axvline(slo_ms, color="grey", ls="--", lw=1)
    ax1.set(xscale="log", xlabel="HTTP response time, ms (from the intended send time)",
            ylabel="fraction of requests", title="response-time CDF")
    ax2.axhline(slo_ms, color="grey", ls="--", lw=1)
    ax2.set(yscale="log", xlabel="intended send time, s", ylabel="response time, ms",
            title="every request over the run (red: broker killed)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8, markerscale=6)
    fig.tight_layout()
    return fig


def main_from_bench(args: argparse.Namespace) -> int:
    """``python -m lab_kit bench api ...`` (the shared ``bench`` parser: unset flags are None)."""
    for flag, value, low, high in (("--rate", args.rate, 1, 50_000),
                                   ("--seconds", getattr(args, "seconds", None), 1, 3600),
                                   ("--rounds", args.rounds, 1, 20),
                                   ("--outage", getattr(args, "outage", None), 1, 600)):
        if value is not None and not low <= value <= high:
            raise ValueError(f"{flag} must be in [{low}, {high}], got {value}")
    ns = argparse.Namespace(
        rate=args.rate if args.rate is not None else 2000,
        seconds=getattr(args, "seconds", None) or 30,
        rounds=args.rounds if args.rounds is not None else 3,
        outage=getattr(args, "outage", None) or 10,
        quick=args.quick, no_max_rate=getattr(args, "no_max_rate", False),
        json_path=args.json_path)
    return main(ns)
