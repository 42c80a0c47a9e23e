"""The notebooks' experiments: each one runs against the real broker and returns pandas data.

Plotting is separate (:mod:`lab_kit.plots`), so a notebook cell is one call to run and one to
draw. Sizes follow ``LAB_SCALE`` (see :func:`scaled`): small in CI, large for a class demo.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from . import config
from .callbacks import CollectingHandler, UserCallback
from .metrics import CpuMeter, MetricsRecorder
from .posts import Post, PostValidationError, Workload, run_open_loop
from .producer import AsyncPostProducer


@dataclass
class Lab:
    """What every notebook needs: the broker, client settings, and the scale knob."""

    broker: Any
    client_config: dict
    scale: float

    @property
    def bootstrap_servers(self) -> str:
        return self.client_config["bootstrap_servers"]

    @property
    def extra(self) -> dict:
        """Client settings other than bootstrap (security settings of an external cluster)."""
        return self.broker.extra_config()

    def producer(self, topic: str = "posts", **kwargs: Any) -> AsyncPostProducer:
        return AsyncPostProducer(self.bootstrap_servers, topic, **{**self.extra, **kwargs})

    def scaled(self, n: int, minimum: int = 1) -> int:
        return scaled(n, self.scale, minimum)

    def status(self) -> pd.DataFrame:
        return pd.DataFrame(self.broker.status()["nodes"])


def scaled(n: int, scale: float | None = None, minimum: int = 1) -> int:
    """``n`` times ``LAB_SCALE`` (at least ``minimum``)."""
    scale = config.lab_scale() if scale is None else scale
    return max(minimum, int(round(n * scale)))


def setup(nodes: int = 1) -> Lab:
    """Start (or reuse) the broker and create the StreamSocial topics."""
    from . import broker
    from .topics import ensure_topics

    b = broker.ensure(nodes=nodes)
    cfg = b.client_config()
    ensure_topics(cfg)
    return Lab(broker=b, client_config=cfg, scale=config.lab_scale())


def scratch_topic(lab: Lab, prefix: str, partitions: int = 3, **configs: str) -> str:
    """A fresh topic for one experiment, so results never mix with an earlier run's."""
    from .topics import ensure_topics

    name = f"{prefix}.{uuid.uuid4().hex[:8]}"
    ensure_topics(lab.client_config, names=(name,), partitions={name: partitions},
                  configs={name: configs})
    return name


# --- 00: a first asynchronous send ----------------------------------------------------------
def first_async_send(lab: Lab, text: str = "Hello StreamSocial!",
                     linger_ms: int = 5) -> pd.DataFrame:
    """One post, with a timeline of what happened on which thread."""
    events: list[dict] = []
    t0 = 0.0

    def log(event: str, **extra: Any) -> None:
        events.append({"event": event, "ms": round((time.perf_counter() - t0) * 1000, 3),
                       "thread": threading.current_thread().name, **extra})

    done = threading.Event()

    def on_success(post: Post, delivery: Any) -> None:
        log("delivery callback ran", partition=delivery.partition, offset=delivery.offset)
        done.set()

    with lab.producer(handlers=[UserCallback(on_success=on_success)],
                      linger_ms=linger_ms) as producer:
        post = Post(user_id="user-00001", text=text)
        t0 = time.perf_counter()
        log("submit() called")
        future = producer.submit(post)
        log("submit() returned", future_done=future.done())
        done.wait(timeout=30)
        log("main thread sees the future", future_done=future.done())
    return pd.DataFrame(events)


# --- 01: blocking vs non-blocking -----------------------------------------------------------
def compare_sync_async(lab: Lab, n_sync: int, n_async: int, seed: int = 1) -> dict:
    """Send posts the blocking way (``send().get()``) and the async way; return the numbers.

    Returns ``{"summary": DataFrame, "results": {mode: dict}, "cdf": {mode: DataFrame}}``;
    each mode's dict also has its CPU time per post, caller thread vs background.
    """
    posts = Workload(seed=seed).posts(max(n_sync, n_async))
    results, cdfs = {}, {}
    for mode, n, linger in (("sync", n_sync, 0), ("async", n_async, 5)):
        with lab.producer(mode=mode, linger_ms=linger, max_in_flight=n + 1) as producer:
            producer.submit(posts[0]).result(timeout=30)  # warm-up: connection and metadata
            producer.metrics.reset()
            cpu = CpuMeter().start()
            t0 = time.perf_counter()
            for post in posts[:n]:
                producer.submit(post)
            producer.flush(timeout=120)
            elapsed = time.perf_counter() - t0
            m = producer.metrics
            submit, ack = m.summary_ms("submit"), m.summary_ms("ack")
            results[mode] = {"posts": n, "seconds": elapsed, "msgs_per_s": n / elapsed,
                             "submit_p50_ms": submit["p50_ms"], "submit_p99_ms": submit["p99_ms"],
                             "ack_p50_ms": ack["p50_ms"], "ack_p99_ms": ack["p99_ms"],
                             **cpu.fields(n, elapsed)}
            cdfs[f"{mode}: submit"] = m.cdf_frame("submit")
    summary = pd.DataFrame(results).T
    return {"summary": summary, "results": results, "cdf": cdfs}


# --- 02: futures and callbacks ------------------------------------------------------------
def callback_threads(lab: Lab, n: int, seed: int = 2) -> pd.DataFrame:
    """Which thread runs the callbacks, and in which order posts of one user arrive."""
    collect = CollectingHandler()
    topic = scratch_topic(lab, "lab.callbacks")
    with lab.producer(topic, handlers=[collect]) as producer:
        for post in Workload(seed=seed, users=5).posts(n):
            producer.submit(post)
        producer.flush(60)
    return collect.frame()


def validation_errors() -> pd.DataFrame:
    """Bad input gets a typed error naming the field and the limit (nothing is sent)."""
    cases = {
        "missing user_id": {"text": "hi"},
        "empty text": {"user_id": "u1", "text": "  "},
        "text too long": {"user_id": "u1", "text": "x" * 5001},
        "lone surrogate": {"user_id": "u1", "text": "bad \ud800"},
        "unknown field": {"user_id": "u1", "text": "hi", "mood": "happy"},
        "number as user_id": {"user_id": 7, "text": "hi"},
    }
    from .posts import validate_post

    rows = []
    for case, data in cases.items():
        try:
            validate_post(data)
            rows.append({"case": case, "field": None, "limit": None, "message": "accepted"})
        except PostValidationError as exc:
            rows.append({"case": case, "field": exc.field, "limit": str(exc.limit),
                         "message": str(exc)})
    return pd.DataFrame(rows)


def oversized_to_dlq(lab: Lab) -> dict:
    """A post the topic refuses as too large: errback, DLQ record, and the next posts fine."""
    from .audit import read_topic

    small = scratch_topic(lab, "lab.small", partitions=1, **{"max.message.bytes": "2048"})
    dlq = scratch_topic(lab, "lab.small.dlq", partitions=1)
    errors: list[dict] = []
    handler = UserCallback(on_error=lambda p, e: errors.append(
        {"post_id": p.post_id, "error": type(e).__name__,
         "thread": threading.current_thread().name}))
    with lab.producer(small, dlq_topic=dlq, handlers=[handler], linger_ms=0) as producer:
        big = producer.submit(Post(user_id="user-00042", text="A very long story. " * 250))
        fine = [producer.submit(Post(user_id="user-00042", text=f"short post {i}"))
                for i in range(5)]
        big_error = big.exception(timeout=30)
        outcomes = [f.result(timeout=30).outcome for f in fine]
    dlq_rows = [json.loads(r.value) for r in read_topic(lab.client_config, dlq)]
    return {"error": big_error, "errbacks": pd.DataFrame(errors), "later_outcomes": outcomes,
            "dlq": pd.DataFrame(dlq_rows)}


# --- 04: metrics under load -----------------------------------------------------------------
def load_at_rates(lab: Lab, rates: list[float], duration_s: float, seed: int = 4,
                  progress: bool = True) -> dict:
    """Open-loop load at each rate: latency percentiles per rate, and per-second series."""
    rows, series, cdfs, acks = [], {}, {}, {}
    workload = Workload(seed=seed)
    for rate in rates:
        with lab.producer(max_in_flight=50_000) as producer:
            producer.submit(workload.posts(1)[0]).result(timeout=30)
            producer.metrics.reset()
            run = run_open_loop(producer.submit, workload.iter_posts(), rate, duration_s,
                                progress=progress)
            producer.flush(60)
            m = producer.metrics
            rows.append({"target_rate": rate, "achieved_rate": round(run.achieved_rate),
                         **{f"ack_{k}": v for k, v in m.summary_ms("ack").items()
                            if k != "count"},
                         "submit_p99_ms": m.summary_ms("submit")["p99_ms"],
                         "acked": m.counters()["acked"]})
            series[rate] = m.timeseries_frame()
            acks[f"{rate:,.0f}/s"] = m.summary_ms("ack")
            cdfs[f"{rate:,.0f}/s"] = m.cdf_frame("ack")
            client = MetricsRecorder.client_metrics_frame(producer.client_metrics())
    return {"summary": pd.DataFrame(rows), "timeseries": series, "cdf": cdfs, "ack": acks,
            "client_metrics": client}


# --- 06: tuning -------------------------------------------------------------------------------
def tuning_sweep(lab: Lab, n: int, grid: list[dict], seed: int = 6, latency_rate: float = 2_000,
                 latency_s: float = 2.0, progress: bool = True) -> pd.DataFrame:
    """For each setting in ``grid``: throughput (closed loop, ``n`` posts as fast as possible)
    and ack latency at a fixed, moderate rate (open loop, ``latency_rate`` for ``latency_s``).

    Latency is measured separately because a closed-loop flood measures queueing, not the
    setting. Each grid entry is a dict of producer settings, e.g. ``{"acks": 1, "linger_ms": 10}``.
    """
    workload = Workload(seed=seed)
    posts = workload.posts(n)
    rows = []
    iterator = grid
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(grid, desc="settings")
    for settings in iterator:
        kwargs = dict(settings)
        if kwargs.get("acks") in (0, 1):  # idempotence needs acks=all
            kwargs.setdefault("enable_idempotence", False)
        with lab.producer("posts", max_in_flight=n + 1, **kwargs) as producer:
            producer.submit(posts[0]).result(timeout=30)
            producer.metrics.reset()
            t0 = time.perf_counter()
            for post in posts:
                producer.submit(post)
            producer.flush(120)
            elapsed = time.perf_counter() - t0
            cm = producer.client_metrics().get("producer-metrics", {})
            producer.metrics.reset()
            run_open_loop(producer.submit, workload.iter_posts(), latency_rate, latency_s)
            producer.flush(60)
            ack = producer.metrics.summary_ms("ack")
        rows.append({**{k: str(v) for k, v in settings.items()},
                     "msgs_per_s": n / elapsed, "ack_p50_ms": ack["p50_ms"],
                     "ack_p99_ms": ack["p99_ms"],
                     "batch_size_avg": cm.get("batch-size-avg"),
                     "compression_rate_avg": cm.get("compression-rate-avg")})
    return pd.DataFrame(rows)


# --- 03: the moderation pipeline -------------------------------------------------------------
def moderation_pipeline(lab: Lab, n_posts: int, n_poison: int = 6, rate: float = 200,
                        backend: Any = None, timeout_s: float = 120,
                        progress: bool = True) -> dict:
    """Posts → ModerationService → results and fan-out, plus poison records → DLQ.

    Runs on fresh topics (a unique prefix) so earlier runs never mix in. Returns DataFrames:
    ``results`` (one row per result), ``fanout`` (records per output topic), ``dlq``.
    """
    from .audit import post_ids_in, read_topic
    from .moderation import ModerationService, moderation_results, topic_names
    from .moderation_backend import ModerationBackend
    from .posts import kind_of, malformed_records
    from .topics import ensure_topics

    names = topic_names(f"lab.pipeline.{uuid.uuid4().hex[:6]}.")
    ensure_topics(lab.client_config, names=tuple(names.values()))
    backend = backend or ModerationBackend.ensure()
    service = ModerationService(lab.bootstrap_servers, backend.url, topics=names,
                                group_id=f"lab-{uuid.uuid4().hex[:6]}",
                                client_config=lab.extra)
    service.start()
    deadline = time.monotonic() + 30  # let the consumer group hand it its partitions first
    while not service.assignment and time.monotonic() < deadline:
        time.sleep(0.1)
    posts: list[Post] = []

    def fresh_posts():  # built just before it is sent, so created_at is the submit time
        for post in Workload(seed=3).iter_posts():
            posts.append(post)
            yield post

    try:
        with lab.producer(names["posts"], dlq_topic=names["dlq"]) as producer:
            run_open_loop(producer.submit, fresh_posts(), rate, n_posts / rate,
                          max_posts=n_posts, progress=progress)
            producer.flush(60)
        from kafka import KafkaProducer

        raw = KafkaProducer(**lab.client_config)
        for value in malformed_records(n_poison, seed=1):
            raw.send(names["posts"], value)
        raw.flush(30)
        raw.close()
        ids = {p.post_id for p in posts}
        deadline = time.monotonic() + timeout_s
        while True:
            results = moderation_results(lab.client_config, names["results"])
            if ids <= set(results) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        t_wait = time.monotonic() + 10  # the poison records come last: wait for their DLQ rows
        while (len(read_topic(lab.client_config, names["dlq"])) < n_poison
               and time.monotonic() < t_wait):
            time.sleep(0.5)
    finally:
        service.stop(timeout=20)
    created = {p.post_id: p.created_at for p in posts}
    kinds = {p.post_id: kind_of(p) for p in posts}
    rows = [{"post_id": pid, "kind": kinds.get(pid), "label": r["label"], "score": r["score"],
             "degraded": r["degraded"], "source": r.get("source"),
             "latency_ms": (r["moderated_at"] - created[pid]) * 1000 if pid in created
             else None}
            for pid, rs in results.items() for r in rs]
    fanout = {key: len(post_ids_in(lab.client_config, names[key]))
              for key in ("results", "timeline", "reputation", "admin", "recheck")}
    dlq = pd.DataFrame([json.loads(r.value) for r in read_topic(lab.client_config,
                                                                names["dlq"])])
    return {"results": pd.DataFrame(rows), "fanout": fanout, "dlq": dlq, "topics": names,
            "stats": service.stats(), "submitted": len(posts)}


# --- 05: drills as data ----------------------------------------------------------------------
def drill_timeline(result: dict) -> tuple[pd.DataFrame, list]:
    """A drill's JSON → (per-second frame indexed by ``t_s``, fault windows) for plots."""
    ts = pd.DataFrame(result["timeline"]).set_index("t_s")
    ts.attrs["interval_s"] = 1.0
    windows = [tuple(w) for w in result["outage_windows"]]
    return ts, windows


def audit_table(result: dict) -> pd.DataFrame:
    keys = ["submitted", "acked", "spooled", "replayed", "delivered_unique", "duplicates",
            "lost", "dead_lettered"]
    return pd.DataFrame({"count": {k: result.get(k) for k in keys}})
