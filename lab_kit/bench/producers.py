"""``python -m lab_kit bench`` (the producer suite): the producers side by side, on one
broker, in one run.

Every contender sends the same realistic posts (seeded workload, UTF-8 JSON values keyed by
user) with ``acks=all`` and idempotence on. Closed-loop contenders are run ``rounds`` times in
interleaved order and the medians are reported, so a noisy neighbour on a shared machine hits
all of them alike; ratios are taken from those medians.

* ``sync``             ``send().get()`` per post (``AsyncPostProducer(mode="sync")``, linger 0)
* ``raw_kafka_python`` a plain ``send`` loop + ``flush``, as in kafka-python's
                       ``benchmarks/producer_performance.py`` (no per-post timing, no callbacks)
* ``lab_kit_async``    ``AsyncPostProducer`` with its callbacks and metrics on
* ``confluent_kafka``  confluent-kafka's ``Producer`` (librdkafka) as a peer, if installed
* ``confluent_poll_thread`` the same plain loop, its reports served by a poll thread (the
                       model ``lab_kit_confluent`` uses, without the lab's code)
* ``lab_kit_confluent`` ``AsyncPostProducer(client="confluent")``: the same producer on
                       librdkafka, callbacks on the lab's poll thread
* ``open_loop``        ``AsyncPostProducer`` fed at a fixed rate (10,000 posts/s) by the
                       open-loop driver: latency is measured from each post's intended send
                       time, so queueing delay cannot hide (no coordinated omission)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from kafka import KafkaProducer

from lab_kit import broker as lab_broker
from lab_kit import lab_env
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.harness.readback import audit, end_offsets
from lab_kit.machine import cpu_count
from lab_kit.metrics import CpuMeter, percentiles_ms
from lab_kit.posts import Post, Workload
from lab_kit.producer import AsyncPostProducer
from lab_kit.producer.callbacks import LoggingHandler
from lab_kit.topics import POSTS_DLQ, ensure_topics

BENCH_TOPIC = "bench.posts"
#: Posts per round for the librdkafka contenders, quick or not: about a second of sending.
#: librdkafka sends 10,000 in well under 0.1 s, and a run that short measures the final flush
#: (linger, one round trip) more than the rate.
N_CONFLUENT = 100_000
COMMON = {"acks": "all", "enable_idempotence": True, "linger_ms": 5}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _latency_fields(submit: dict | None, ack: dict | None) -> dict[str, Any]:
    def g(d: dict | None, k: str) -> float | None:
        return None if d is None or d.get(k) is None else round(d[k], 4)

    return {"submit_p50_ms": g(submit, "p50_ms"), "submit_p99_ms": g(submit, "p99_ms"),
            "submit_p999_ms": g(submit, "p999_ms"), "ack_p50_ms": g(ack, "p50_ms"),
            "ack_p99_ms": g(ack, "p99_ms")}


# --- contenders: each sends ``posts`` once and returns a result dict -------------------------
def run_sync(cfg: dict, posts: list[Post]) -> dict:
    # linger 0: waiting for a batch to fill makes no sense when each send waits for its ack
    with AsyncPostProducer(cfg["bootstrap_servers"], BENCH_TOPIC, mode="sync",
                           **_extra(cfg), **{**COMMON, "linger_ms": 0}) as p:
        cpu = CpuMeter().start()
        t0 = time.perf_counter()
        for post in posts:
            p.submit(post)
        elapsed = time.perf_counter() - t0
        m = p.metrics
        return {"msgs_per_s": len(posts) / elapsed, "posts": len(posts),
                **_latency_fields(m.summary_ms("submit"), m.summary_ms("ack")),
                **cpu.fields(len(posts), elapsed)}


def run_raw(cfg: dict, posts: list[Post]) -> dict:
    producer = KafkaProducer(**cfg, **COMMON)
    try:
        producer.send(BENCH_TOPIC, b"warm-up").get(timeout=30)
        cpu = CpuMeter().start()
        t0 = time.perf_counter()
        for post in posts:
            producer.send(BENCH_TOPIC, key=post.key_bytes(), value=post.to_json_bytes())
        producer.flush(timeout=120)
        elapsed = time.perf_counter() - t0
        cpu_fields = cpu.fields(len(posts), elapsed)
    finally:
        producer.close(timeout=10)
    return {"msgs_per_s": len(posts) / elapsed, "posts": len(posts),
            **_latency_fields(None, None), **cpu_fields, "note": "plain loop: throughput only"}


def run_lab(cfg: dict, posts: list[Post], client: str = "kafka-python") -> dict:
    """``AsyncPostProducer`` on ``client``; ``lost`` is read back from the topic (posts the
    producer accepted that are not on it), from the offsets the round began at."""
    since = end_offsets(cfg, [BENCH_TOPIC])
    with AsyncPostProducer(cfg["bootstrap_servers"], BENCH_TOPIC, handlers=[LoggingHandler()],
                           max_in_flight=len(posts) + 1, client=client, **_extra(cfg),
                           **COMMON) as p:
        p.submit(posts[0]).result(timeout=30)  # warm-up (connection, metadata)
        p.metrics.reset()
        cpu = CpuMeter().start()
        t0 = time.perf_counter()
        for post in posts:
            p.submit(post)
        p.flush(timeout=120)
        elapsed = time.perf_counter() - t0
        cpu_fields = cpu.fields(len(posts), elapsed)
        m = p.metrics
        acked = m.counters()["acked"]
    report = audit(cfg, BENCH_TOPIC, {post.post_id for post in posts}, since=since)
    return {"msgs_per_s": len(posts) / elapsed, "posts": len(posts), "acked": acked,
            "lost": report.lost, **_latency_fields(m.summary_ms("submit"), m.summary_ms("ack")),
            **cpu_fields}


def run_confluent(cfg: dict, posts: list[Post]) -> dict | None:
    try:
        from confluent_kafka import Producer  # optional: the peer is skipped without it
    except ImportError:
        return None
    acks: list[float] = []
    submits: list[float] = []
    errors = [0]

    def on_delivery(err, msg, t_sent):  # noqa: ANN001 - librdkafka callback signature
        if err is not None:
            errors[0] += 1
        else:
            acks.append(time.perf_counter() - t_sent)

    producer = _warm_confluent(Producer, cfg)
    cpu = CpuMeter().start()
    t0 = time.perf_counter()
    for post in posts:
        ts = time.perf_counter()
        key, value = post.key_bytes(), post.to_json_bytes()
        while True:
            try:
                producer.produce(BENCH_TOPIC, value, key,
                                 on_delivery=lambda e, m, ts=ts: on_delivery(e, m, ts))
                break
            except BufferError:  # local queue full: serve callbacks, then try again
                producer.poll(0.01)
        producer.poll(0)
        submits.append(time.perf_counter() - ts)
    producer.flush(120)
    elapsed = time.perf_counter() - t0
    return {"msgs_per_s": len(posts) / elapsed, "posts": len(posts), "errors": errors[0],
            **_latency_fields(percentiles_ms(submits), percentiles_ms(acks)),
            **cpu.fields(len(posts), elapsed)}


def _warm_confluent(producer_class: Any, cfg: dict) -> Any:
    """The plain confluent contenders' producer (the bench's settings), one record delivered."""
    producer = producer_class({"bootstrap.servers": cfg["bootstrap_servers"], "acks": "all",
                               "enable.idempotence": True, "linger.ms": 5})
    producer.produce(BENCH_TOPIC, b"warm-up")
    producer.flush(30)
    return producer


def run_confluent_poll_thread(cfg: dict, posts: list[Post]) -> dict:
    """The plain confluent loop with its reports served by a poll thread of its own instead of
    ``poll(0)`` after each produce: what the model (callbacks off the caller's thread) costs
    before any lab code runs. Each report takes the GIL from the producing thread."""
    from confluent_kafka import Producer  # as in run_confluent: the peer is optional

    acked = [0]
    stop = threading.Event()

    def on_delivery(err, msg):  # noqa: ANN001 - librdkafka callback signature
        if err is None:
            acked[0] += 1

    producer = _warm_confluent(Producer, cfg)

    def serve() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=serve, name="bench-poll", daemon=True)
    poller.start()
    cpu = CpuMeter().start()
    t0 = time.perf_counter()
    for post in posts:
        while True:
            try:
                producer.produce(BENCH_TOPIC, post.to_json_bytes(), post.key_bytes(),
                                 on_delivery=on_delivery)
                break
            except BufferError:  # the poll thread makes room
                time.sleep(0.001)
    while len(producer):  # the poll thread serves what is left
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    cpu_fields = cpu.fields(len(posts), elapsed)
    stop.set()
    poller.join(5)
    return {"msgs_per_s": len(posts) / elapsed, "posts": len(posts), "acked": acked[0],
            **_latency_fields(None, None), **cpu_fields, "note": "plain loop, poll thread"}


def run_open_loop_bench(cfg: dict, workload: Workload, rate: float, duration_s: float) -> dict:
    """The open loop, checked like a drill: ``lost`` comes from reading ``bench.posts`` (and
    the DLQ) back from the offsets the run began at, never from the producer's counters.
    The closed-loop contenders wrote the same post ids before: the offsets keep them out."""
    warm_up, *posts = workload.posts(int(rate * duration_s) + 2)
    since = end_offsets(cfg, [BENCH_TOPIC, POSTS_DLQ])
    p = AsyncPostProducer(cfg["bootstrap_servers"], BENCH_TOPIC, dlq_topic=POSTS_DLQ,
                          **_extra(cfg), **COMMON)
    try:
        p.submit(warm_up).result(timeout=30)
        p.metrics.reset()
        run = run_open_loop(p.submit, iter(posts), rate, duration_s)
        p.flush(timeout=60)
        m = p.metrics
        submit, ack = m.summary_ms("submit"), m.summary_ms("ack")
    finally:
        p.close()
    counters = m.counters()
    ids = [warm_up.post_id] + [post.post_id for post in posts[:run.submitted]]
    dlq = POSTS_DLQ if POSTS_DLQ in since or counters.get("dead_lettered") else None
    found = audit(cfg, BENCH_TOPIC, ids, dlq_topic=dlq, since=since, counters=counters)
    return {
        "msgs_per_s": run.achieved_rate, "target_rate": rate, "achieved_rate": run.achieved_rate,
        "duration_s": duration_s, "submitted": run.submitted, "skipped": run.skipped,
        "max_lag_ms": round(run.max_lag_s * 1000, 3), "acked": counters["acked"],
        "lost": found.lost, "delivered_unique": found.delivered_unique,
        "duplicates": found.duplicates, "dead_lettered": found.dead_lettered,
        "lost_ids": found.lost_ids[:20],
        **_latency_fields(submit, ack),
    }


def _extra(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "bootstrap_servers"}


# --- the run ----------------------------------------------------------------------------------
def run_bench(quick: bool = False, rounds: int | None = None, rate: float = 10_000,
              duration_s: float | None = None, progress: bool = True) -> dict:
    b = lab_broker.ensure()
    cfg = b.client_config()
    ensure_topics(cfg, names=(BENCH_TOPIC,), partitions={BENCH_TOPIC: 6})
    rounds = rounds or (3 if quick else 5)
    n_async = 10_000 if quick else 30_000
    n_sync = 500 if quick else 2_000
    duration_s = duration_s or (5.0 if quick else 20.0)
    workload = Workload(seed=7)
    posts = workload.posts(max(n_async, N_CONFLUENT))
    posts_c, posts = posts[:N_CONFLUENT], posts[:n_async]
    payload = statistics.fmean(len(p.to_json_bytes()) for p in posts)
    # The pre-built workload is a benchmark artefact (a server does not hold 30k posts):
    # freeze it out of the garbage collector's sight, for every contender alike.
    gc.collect()
    gc.freeze()

    contenders = {"sync": lambda: run_sync(cfg, posts[:n_sync]),
                  "raw_kafka_python": lambda: run_raw(cfg, posts),
                  "lab_kit_async": lambda: run_lab(cfg, posts),
                  "confluent_kafka": lambda: run_confluent(cfg, posts_c),
                  "confluent_poll_thread": lambda: run_confluent_poll_thread(cfg, posts_c),
                  "lab_kit_confluent": lambda: run_lab(cfg, posts_c, client="confluent")}
    runs: dict[str, list[dict]] = {k: [] for k in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            if progress:
                print(f"round {r + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
            res = contenders[name]()
            if res is not None:
                runs[name].append(res)
    results: dict[str, Any] = {name: _median_result(rs) for name, rs in runs.items()}
    if results["confluent_kafka"] is None:
        results["confluent_kafka"] = None
        confluent_reason = "confluent-kafka not installed (pip install '.[confluent]')"
    else:
        confluent_reason = None
    if progress:
        print(f"open loop: {rate:.0f} posts/s for {duration_s:.0f} s ...", file=sys.stderr,
              flush=True)
    gc.unfreeze()
    results["open_loop"] = run_open_loop_bench(cfg, workload, rate, duration_s)

    def ratio(a: str, b_: str) -> float | None:
        if results.get(a) is None or results.get(b_) is None:
            return None
        return round(results[a]["msgs_per_s"] / results[b_]["msgs_per_s"], 3)

    out = {
        "kafka_version": b.kafka_version or lab_env.KAFKA_VERSION,
        "python": platform.python_version(),
        "kafka_python": _version("kafka-python"),
        "confluent_kafka": _version("confluent-kafka"),
        "machine": {"cpus": cpu_count(), "platform": platform.platform()},
        "quick": quick, "rounds": rounds,
        "payload_bytes_avg": round(payload, 1),
        "settings": COMMON,
        "results": results,
        "ratios": {"async_over_sync": ratio("lab_kit_async", "sync"),
                   "lab_kit_over_raw": ratio("lab_kit_async", "raw_kafka_python"),
                   "lab_kit_over_confluent": ratio("lab_kit_async", "confluent_kafka"),
                   "lab_kit_confluent_over_raw_confluent": ratio("lab_kit_confluent",
                                                                 "confluent_kafka"),
                   "poll_thread_over_raw_confluent": ratio("confluent_poll_thread",
                                                           "confluent_kafka"),
                   "lab_kit_confluent_over_poll_thread": ratio("lab_kit_confluent",
                                                               "confluent_poll_thread")},
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    out["profile"] = cpu_profile(results)
    out["targets"] = evaluate_targets(results, out["ratios"])
    if confluent_reason:
        out["confluent_kafka_reason"] = confluent_reason
    return out


def _median_result(rs: list[dict]) -> dict | None:
    if not rs:
        return None
    out: dict[str, Any] = {}
    for key in rs[0]:
        vals = [r[key] for r in rs if isinstance(r.get(key), int | float)]
        out[key] = round(statistics.median(vals), 4) if vals and not isinstance(
            rs[0][key], bool) else rs[0][key]
    out["rounds_msgs_per_s"] = [round(r["msgs_per_s"], 1) for r in rs]
    return out


def cpu_profile(results: dict) -> dict[str, Any] | None:
    """What lab_kit costs on top of the plain loop, in CPU microseconds per post, by thread.

    kafka-python contenders are CPU-bound on one core (``cores_busy`` ~1), so throughput is
    about 1 / (CPU per post): the ratio ``lab_kit_over_raw`` follows from these numbers.
    """
    raw, lab = results.get("raw_kafka_python"), results.get("lab_kit_async")
    if not raw or not lab or raw.get("cpu_us_per_post") is None:
        return None
    return {
        "raw_cpu_us_per_post": raw["cpu_us_per_post"],
        "lab_kit_cpu_us_per_post": lab["cpu_us_per_post"],
        "extra_caller_us_per_post": round(
            lab["caller_cpu_us_per_post"] - raw["caller_cpu_us_per_post"], 2),
        "extra_background_us_per_post": round(
            lab["background_cpu_us_per_post"] - raw["background_cpu_us_per_post"], 2),
        "cpu_ratio_raw_over_lab_kit": round(raw["cpu_us_per_post"] / lab["cpu_us_per_post"], 3),
        # sync waits one round trip per post; async pays CPU per post: their quotient bounds
        # async_over_sync (a longer round trip or a cheaper client moves it, nothing else)
        "sync_round_trip_ms": (results.get("sync") or {}).get("ack_p50_ms"),
    }


TARGETS = {
    ("ratios", "async_over_sync"): (">=", 20),
    ("ratios", "lab_kit_over_raw"): (">=", 0.85),
    ("ratios", "lab_kit_confluent_over_raw_confluent"): (">=", 0.6),
    ("lab_kit_confluent", "msgs_per_s"): (">=", 100_000),
    ("lab_kit_confluent", "lost"): ("<=", 0),
    ("lab_kit_async", "lost"): ("<=", 0),
    ("open_loop", "achieved_rate"): (">=", 9800),
    ("open_loop", "submit_p99_ms"): ("<=", 1),
    ("open_loop", "submit_p999_ms"): ("<=", 5),
    ("open_loop", "ack_p99_ms"): ("<=", 50),
    ("open_loop", "lost"): ("<=", 0),
}


def evaluate_targets(results: dict, ratios: dict) -> dict:
    """{"open_loop.ack_p99_ms <= 50": true, ...}; None where the value is missing."""
    out = {}
    for (group, key), (op, limit) in TARGETS.items():
        src = ratios if group == "ratios" else (results.get(group) or {})
        value = src.get(key)
        out[f"{group}.{key} {op} {limit}"] = None if value is None else (
            value >= limit if op == ">=" else value <= limit)
    return out


def format_table(report: dict) -> str:
    cols = ["msgs_per_s", "submit_p50_ms", "submit_p99_ms", "submit_p999_ms", "ack_p50_ms",
            "ack_p99_ms"]
    lines = [f"Kafka {report['kafka_version']} | Python {report['python']} | payload "
             f"{report['payload_bytes_avg']} B avg | acks=all, idempotent, linger 5 ms | "
             f"medians of {report['rounds']} rounds"]
    lines.append(f"{'contender':<18}" + "".join(f"{c:>15}" for c in cols))
    for name, res in report["results"].items():
        if res is None:
            lines.append(f"{name:<18}  (not run: {report.get('confluent_kafka_reason', '')})")
            continue
        row = "".join(f"{_fmt(res.get(c), c):>15}" for c in cols)
        lines.append(f"{name:<18}{row}")
    ol = report["results"]["open_loop"]
    lines.append(f"open loop: target {ol['target_rate']:,.0f}/s, achieved "
                 f"{ol['achieved_rate']:,.0f}/s, lost {ol['lost']}, max lag {ol['max_lag_ms']} ms")
    lines.append("ratios: " + ", ".join(f"{k}={v}" for k, v in report["ratios"].items()))
    lines.append("CPU per post, µs (caller thread + background threads; cores busy):")
    for name, res in report["results"].items():
        if res is not None and res.get("cpu_us_per_post") is not None:
            lines.append(f"  {name:<18}{res['cpu_us_per_post']:>8.1f} = "
                         f"{res['caller_cpu_us_per_post']:.1f} + "
                         f"{res['background_cpu_us_per_post']:.1f}; {res['cores_busy']:.2f}")
    if report.get("profile"):
        pr = report["profile"]
        lines.append(f"  lab_kit over the plain loop: +{pr['extra_caller_us_per_post']} µs "
                     f"caller, +{pr['extra_background_us_per_post']} µs background per post")
    lines.append(f"peak RSS: {report['peak_rss_mb']} MB")
    for k, v in report["targets"].items():
        lines.append(f"  target {k}: {'met' if v else 'NOT met' if v is False else 'n/a'}")
    return "\n".join(lines)


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return "-"
    return format(value, ",.3f" if "ms" in column else ",.0f")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(args: argparse.Namespace) -> int:
    """``python -m lab_kit bench [producer]``: the parsed ``bench`` arguments (the shared
    parser of :mod:`lab_kit.bench.cli`, which has checked ``--json`` already)."""
    for flag in ("seconds", "processes", "client", "backlog", "shed_after_ms", "broker_warmup"):
        if getattr(args, flag) is not None:
            name = "--" + flag.replace("_", "-")
            raise ValueError(f"{name} belongs to `bench pipeline`; the producer suite takes "
                             f"--rate, --duration, --rounds")
    if args.rate is None:
        args.rate = 10_000
    if args.rate <= 0 or args.rate > 100_000:
        raise ValueError(f"--rate must be in (0, 100000], got {args.rate}")
    if args.duration is not None and not 0 < args.duration <= 600:
        raise ValueError(f"--duration must be in (0, 600] seconds, got {args.duration}")
    report = run_bench(quick=args.quick, rounds=args.rounds, rate=args.rate,
                       duration_s=args.duration)
    print(format_table(report))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0
