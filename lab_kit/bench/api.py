"""``bench api``: what a user's HTTP request sees, healthy and with the broker killed.

Every variant of the post API (``async``; ``wait-ack``: the async app asked ``?wait=ack``, 201
once Kafka acknowledged or the spool fsynced the post, called ``durable`` until the API's
answer learned the guide's meaning of that word; ``blocking``) under every condition
(``healthy``, ``broker_killed``) ``rounds`` times, medians reported; then the highest rate the
async API holds with p99 <= 100 ms (:func:`max_rate`), and the driver's own ceiling. One run of one
condition is :func:`lab_kit.harness.api_condition.run_condition`; the open-loop driver (latency
from each request's intended send time, no coordinated omission) is
:mod:`lab_kit.harness.http_load`.

``--cross-check`` runs only :func:`cross_check`: the async API at 5,000 requests/s on one
worker and 10,000 on two (the issue's targets: p99 <= 100 ms), driven by the lab's driver and
by Debian's ``hey`` (:mod:`lab_kit.harness.hey_load`) on the same server, side by side, with
the API's producer on each Kafka client (``--client`` picks one), the rounds interleaved, and
where each run's CPU went (:func:`cpu_per_request`: the server, the broker, the driver).

``python -m lab_kit.bench.api [--rate R] [--seconds S] [--rounds N] [--json PATH] [--quick]
[--cross-check [--client kafka-python|confluent]]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab_kit import broker as lab_broker
from lab_kit import lab_env
from lab_kit.api import ApiServer
from lab_kit.api.errors import API_CLIENTS
from lab_kit.api.server import group_members
from lab_kit.cli_support import run_cli
from lab_kit.harness.api_condition import CONDITIONS, delete_topic, own_broker, run_condition
from lab_kit.harness.hey_load import HEY_USER, INSTALL_HINT, hey_path, run_hey
from lab_kit.harness.http_load import driver_ceiling, make_bodies, run_load
from lab_kit.harness.readback import audit, keyed_post_ids_in
from lab_kit.harness.service_process import broker_pids, pids_cpu_s
from lab_kit.machine import cpu_count
from lab_kit.output_paths import check_output_path
from lab_kit.topics import ensure_topics

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


#: the post API's variants the bench drives (``wait-ack``: the async app, ``?wait=ack``)
VARIANTS = ("async", "wait-ack", "blocking")
#: older names still accepted: ``durable`` was ``wait-ack`` until a 201 for a one-broker ack
#: said ``"durable": false`` (the guide's vocabulary: one copy is acknowledged, not durable)
VARIANT_ALIASES = {"durable": "wait-ack"}


def parse_variants(text: str | None) -> tuple[str, ...]:
    """``--variants``: comma-separated names of :data:`VARIANTS` (or an alias), in the order
    given, each once; ``ValueError`` naming the flag and the choices otherwise."""
    names = [VARIANT_ALIASES.get(v.strip(), v.strip())
             for v in (text or ",".join(VARIANTS)).split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names:
        raise ValueError(f"--variants: each must be one of {', '.join(VARIANTS)}, got "
                         f"{text!r}")
    return tuple(dict.fromkeys(names))


def run_bench(rate: float = 2000, seconds: float = 30, rounds: int = 3, outage_s: float = 10,
              variants: tuple[str, ...] = VARIANTS,
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
    variants = parse_variants(",".join(variants))  # an older name works from Python too
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
                r = run_condition("async" if variant == "wait-ack" else variant, condition,
                                  rate, seconds, outage_s=outage_s, broker=broker,
                                  wait_ack=variant == "wait-ack")
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
    dh = result["runs"].get("wait-ack", {}).get("healthy", {}).get("median")
    result["targets"] = {
        **({"wait_ack_healthy_p99_le_100ms": dh.get("p99_ms") is not None
            and dh["p99_ms"] <= 100} if dh is not None else {}),
        "healthy_p99_le_20ms": h.get("p99_ms") is not None and h["p99_ms"] <= 20,
        "healthy_p999_le_100ms": h.get("p999_ms") is not None and h["p999_ms"] <= 100,
        "healthy_errors_0": h.get("errors") == 0,
        "killed_p99_le_100ms": k.get("p99_ms") is not None and k["p99_ms"] <= 100,
        "killed_every_post_accepted": bool(k.get("accepted_all")),
        "killed_lost_0": k.get("lost_max") == 0,
    }
    return result


#: (requests/s, API worker processes) of the cross-check: the issue's targets, p99 <= 100 ms
CROSS_CHECK_POINTS = ((5000, 1), (10000, 2))
CROSS_KEYS = ("achieved_rate", "p50_ms", "p99_ms", "p999_ms", "errors")


#: where a cross-check's CPU goes: the API server's processes (uvicorn's workers included),
#: the broker's JVM, the driver (the lab's runs in this process; hey is a child of it)
CPU_PARTS = ("server", "broker", "driver")


def cpu_now(server_pids: list[int], broker: Any) -> dict[str, float | None]:
    """CPU seconds so far of each of :data:`CPU_PARTS`: the API's processes ``server_pids``
    (listed once per server: a scan of every process would cost this process more than the
    reading), the broker's, and the driver's: this process's and its finished children's
    (``os.times``; the lab driver runs here, hey as a child)."""
    t = os.times()
    return {"server": pids_cpu_s(server_pids), "broker": pids_cpu_s(broker_pids(broker)),
            "driver": t.user + t.system + t.children_user + t.children_system}


def cpu_per_request(before: dict[str, float | None], after: dict[str, float | None],
                    requests: int, wall_s: float) -> dict[str, Any]:
    """µs of CPU per answered request and cores kept busy, per part and in all, between two
    :func:`cpu_now` readings ``wall_s`` apart; ``None`` for a part that was not measured
    (an external broker, a server that lost a process)."""
    measured = requests > 0 and wall_s > 0
    out: dict[str, Any] = {}
    total = 0.0
    for part in CPU_PARTS:
        a, b = before.get(part), after.get(part)
        used = b - a if measured and a is not None and b is not None and b >= a else None
        total += used or 0.0
        out[f"{part}_us_per_request"] = None if used is None else round(used / requests * 1e6, 1)
        out[f"{part}_cores"] = None if used is None else round(used / wall_s, 2)
    out["total_us_per_request"] = round(total / requests * 1e6, 1) if measured else None
    out["total_cores"] = round(total / wall_s, 2) if measured else None
    out["cores_here"] = cpu_count()
    return out


def drained_cpu(server: ApiServer, pids: list[int], broker: Any) -> tuple[dict, float]:
    """A driver's window ends once the server has drained (its posts acked), so the next
    driver does not pay for this one's leftovers: the :func:`cpu_now` reading and the time."""
    server.wait_drained(timeout_s=120)
    return cpu_now(pids, broker), time.perf_counter()


def hey_workers(rate: float) -> int:
    """hey's connections for ``rate``: 20 requests/s each, 4 to 256 (the lab driver's pool)."""
    return min(256, max(4, int(rate // 20)))


def _cross_round(broker, rate: float, seconds: float, workers: int, hey_first: bool,
                 client: str) -> dict[str, Any]:
    """One API server (its producer on ``client``) on a fresh topic: a warm-up, then the lab's
    driver and hey, one after the other (``hey_first`` swaps them), then the topic read back
    for both."""
    cfg = broker.client_config()
    topic = f"lab.api.cross.{time.strftime('%H%M%S')}.{time.time_ns() % 997}"
    ensure_topics(cfg, names=(topic,), partitions={topic: 6})
    bodies = make_bodies(int(rate * (seconds + 2)))
    warm, bodies = bodies[:int(rate * 2)], bodies[int(rate * 2):]
    try:
        with tempfile.TemporaryDirectory(prefix="lab-api-cross-") as tmp:
            server = ApiServer(variant="async", topic=topic, workers=workers,
                               spool_dir=Path(tmp), bootstrap=broker.bootstrap_servers,
                               verdicts="off", log_path=Path(tmp) / "api.log",
                               client=client).start()
            try:
                ids = list(run_load(server.url, warm, rate, 2.0).accepted_ids)
                server.wait_drained(timeout_s=120)  # the warm-up's work stays out of the CPU
                pids = [p.pid for p in group_members(server.proc.pid)]  # workers are up now
                out: dict[str, Any] = {}
                for driver in (("hey", "lab") if hey_first else ("lab", "hey")):
                    ends: list[tuple[dict, float]] = []  # the window's end: drained_cpu()
                    before, t0 = cpu_now(pids, broker), time.perf_counter()
                    if driver == "hey":  # read as hey exits, before its CSV is parsed
                        out["hey"] = run_hey(
                            server.url, rate, seconds, workers=hey_workers(rate),
                            on_exit=lambda e=ends: e.append(drained_cpu(server, pids, broker)))
                    else:
                        load = run_load(server.url, bodies, rate, seconds)
                        ends.append(drained_cpu(server, pids, broker))
                        out["lab"] = {"driver": "lab", **load.summary()}
                        ids += load.accepted_ids
                    (end_cpu, t1), = ends
                    out[driver]["cpu"] = cpu_per_request(before, end_cpu,
                                                         out[driver]["accepted"], t1 - t0)
            finally:
                server.stop()
        rep = audit(cfg, topic, ids, timeout_s=120)
        hey_on_topic = sum(1 for key, _pid in keyed_post_ids_in(cfg, topic)
                           if key == HEY_USER.encode())
        out["lab"].update(lost=rep.lost, duplicates=rep.duplicates)
        out["hey"].update(on_topic=hey_on_topic,
                          missing_from_topic=max(0, out["hey"]["accepted"] - hey_on_topic))
        return out
    finally:
        delete_topic(cfg, topic)


def cross_check(points: tuple[tuple[float, int], ...] = CROSS_CHECK_POINTS,
                seconds: float = 10.0, rounds: int = 3, broker=None, progress: bool = True,
                clients: tuple[str, ...] = API_CLIENTS) -> dict[str, Any]:
    """Per ``(rate, workers)`` and API client: ``rounds`` servers, each driven by the lab's
    driver and by hey at the same rate (the order alternates), medians per driver, and whether
    each driver saw p99 <= 100 ms with no errors at >= 98 % of the rate. The clients' rounds
    are interleaved (a noisy minute hits both). One point per (rate, workers, client). On a
    broker of its own unless ``broker`` is given."""
    unknown = [c for c in clients if c not in API_CLIENTS]
    if unknown or not clients:
        raise ValueError(f"clients: each must be one of {API_CLIENTS}, got {clients!r}")
    if hey_path() is None:
        raise RuntimeError(f"--cross-check needs hey: {INSTALL_HINT}")
    own = broker is None
    broker = own_broker("api-cross") if own else broker
    try:
        out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "points": []}
        for rate, workers in points:
            runs: dict[str, list[dict]] = {c: [] for c in clients}
            for i in range(rounds):
                for client in (clients if i % 2 == 0 else clients[::-1]):
                    runs[client].append(_cross_round(broker, rate, seconds, workers,
                                                     hey_first=bool(i % 2), client=client))
            for client in clients:
                point = _cross_point(rate, workers, client, runs[client])
                out["points"].append(point)
                if progress:
                    print(f"{rate:,.0f}/s on {workers} worker(s), {client}: " + " | ".join(
                        f"{d} achieved {point[d]['achieved_rate']:,.0f}/s p50 "
                        f"{point[d]['p50_ms']} p99 {point[d]['p99_ms']} ms errors "
                        f"{point[d]['errors']}" for d in ("lab", "hey")), flush=True)
                    for d in ("lab", "hey"):
                        print(f"  {d}: {format_cpu(point[d]['cpu'])}", flush=True)
        return out
    finally:
        if own:
            broker.down(purge=True)


def _cross_point(rate: float, workers: int, client: str, rs: list[dict]) -> dict[str, Any]:
    """One point's rounds, their medians per driver and the verdicts."""
    point: dict[str, Any] = {"rate": rate, "workers": workers, "client": client, "rounds": rs}
    for driver in ("lab", "hey"):
        med = {k: statistics.median(r[driver][k] for r in rs if r[driver].get(k) is not None)
               for k in CROSS_KEYS}
        med["p99_le_100ms"] = (med["p99_ms"] <= 100 and med["errors"] == 0
                               and med["achieved_rate"] >= 0.98 * rate)
        med["cpu"] = _median_cpu([r[driver].get("cpu") or {} for r in rs])
        point[driver] = med
    point["lost_max"] = max(r["lab"]["lost"] for r in rs)
    point["hey_missing_max"] = max(r["hey"]["missing_from_topic"] for r in rs)
    return point


def _median_cpu(cpus: list[dict[str, Any]]) -> dict[str, Any]:
    """Per field of :func:`cpu_per_request`, the median of the rounds that measured it."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for c in cpus for k in c):
        vals = [c[key] for c in cpus if c.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    return out


def format_cpu(cpu: dict[str, Any]) -> str:
    """One line: µs per request and cores, per part of :data:`CPU_PARTS` and in all."""
    def one(part: str) -> str:
        us, cores = cpu.get(f"{part}_us_per_request"), cpu.get(f"{part}_cores")
        return f"{part} " + ("not measured" if us is None else f"{us:,.0f} µs/req "
                             f"({cores:.2f} cores)")
    return "CPU: " + ", ".join(one(p) for p in (*CPU_PARTS, "total")) + \
        f" of {cpu.get('cores_here')} here"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=2000, help="requests per second (default 2000)")
    p.add_argument("--seconds", type=float, default=30, help="per run (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="runs per variant and condition")
    p.add_argument("--outage", type=float, default=10, help="broker killed for S seconds")
    p.add_argument("--quick", action="store_true",
                   help="10 s runs, 1 round, 5 s outage, short max-rate search")
    p.add_argument("--no-max-rate", action="store_true", help="skip the max-rate search")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, of async, wait-ack (?wait=ack), blocking")
    p.add_argument("--cross-check", action="store_true",
                   help="only the lab driver against hey: 5,000/s on 1 worker, 10,000/s on 2")
    p.add_argument("--client", choices=API_CLIENTS, default=None,
                   help="--cross-check: only this client under the API's producer (default: "
                        "each, side by side)")
    p.add_argument("--json", dest="json_path", default=None)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")
    if not 1 <= args.rounds <= 10:
        raise ValueError(f"--rounds must be between 1 and 10, got {args.rounds}")
    variants = parse_variants(args.variants)
    if getattr(args, "cross_check", False):
        client = getattr(args, "client", None)
        res = cross_check(seconds=10 if args.quick else min(args.seconds, 30),
                          rounds=1 if args.quick else args.rounds,
                          clients=(client,) if client else API_CLIENTS)
        print(json.dumps({k: v for k, v in res.items() if k != "points"}, indent=2))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(res, indent=2))
            print(f"wrote {args.json_path}")
        return 0 if all(p[d]["p99_le_100ms"] for p in res["points"] for d in ("lab", "hey")) \
            else 1
    if args.quick:
        res = run_bench(args.rate, 10, 1, 5, max_rates=() if args.no_max_rate else
                        (2000, 4000), max_rate_seconds=5, json_path=args.json_path,
                        broker_warmup_s=5, variants=variants)
    else:
        res = run_bench(args.rate, args.seconds, args.rounds, args.outage,
                        max_rates=() if args.no_max_rate else (1000, 2000, 3000, 4000, 5000),
                        json_path=args.json_path, variants=variants)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json_path}")
    return 0 if all(res["targets"].values()) else 1


def cli(argv: list[str] | None = None) -> int:
    return run_cli("python -m lab_kit.bench.api", __doc__, add_arguments, main, argv)


def main_from_bench(args: argparse.Namespace) -> int:
    """``python -m lab_kit bench api ...`` (the shared ``bench`` parser: unset flags are None)."""
    if getattr(args, "broker_warmup", None) is not None:
        raise ValueError("--broker-warmup belongs to `bench pipeline`; `bench api` warms its "
                         "own broker (one unmeasured 15 s run; 5 s with --quick)")
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
        variants=getattr(args, "variants", None), json_path=args.json_path,
        cross_check=getattr(args, "cross_check", False), client=getattr(args, "client", None))
    return main(ns)


if __name__ == "__main__":
    sys.exit(cli())
