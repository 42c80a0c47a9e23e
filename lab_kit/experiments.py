"""The notebooks' experiments: each one runs against the real broker and returns pandas data.

Plotting is separate (:mod:`lab_kit.plots`), so a notebook cell is one call to run and one to
draw. Sizes follow ``LAB_SCALE`` (see :func:`scaled`): small in CI, large for a class demo.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lab_kit import broker, lab_env
from lab_kit.drills.report import AUDIT_KEYS
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.harness.readback import post_ids_in, read_topic
from lab_kit.harness.service_process import ServiceProcess
from lab_kit.lab_env import shown  # noqa: F401 - for the notebooks: ex.shown(path)
from lab_kit.metrics import CpuMeter, MetricsRecorder
from lab_kit.moderation import ModerationService, moderation_results, topic_names
from lab_kit.moderation.backend import ModerationBackend
from lab_kit.posts import (
    Post,
    PostValidationError,
    Workload,
    kind_of,
    malformed_records,
    validate_post,
)
from lab_kit.producer import AsyncPostProducer
from lab_kit.producer.callbacks import CollectingHandler, UserCallback
from lab_kit.topics import ensure_topics


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
    scale = lab_env.lab_scale() if scale is None else scale
    return max(minimum, int(round(n * scale)))


CLIENT_LOGGERS = ("kafka", "confluent_kafka", "lab_kit")


def quiet_client_logs() -> Path:
    """Send the Kafka clients' connection chatter (and lab_kit's own log lines) to a file, so a
    cell shows results, not ``ECONNREFUSED`` warnings from a broker the lesson just killed.
    Returns the file; calling it again changes nothing."""
    path = lab_env.state_dir() / "notebook-clients.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(getattr(h, "lab_kit_notebook_log", False) for h in logger.handlers):
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.lab_kit_notebook_log = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.propagate = False
    return path


def setup(nodes: int = 1) -> Lab:
    """Start (or reuse) the broker and create the StreamSocial topics. Client log lines go to
    a file (one line printed says where)."""
    log_path = quiet_client_logs()
    print(f"Kafka client logs: {lab_env.shown(log_path)}")
    b = broker.ensure(nodes=nodes)
    cfg = b.client_config()
    ensure_topics(cfg)
    return Lab(broker=b, client_config=cfg, scale=lab_env.lab_scale())


def scratch_topic(lab: Lab, prefix: str, partitions: int = 3, **configs: str) -> str:
    """A fresh topic for one experiment, so results never mix with an earlier run's."""

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
    """Which thread runs the callbacks, and in which order posts of one user arrive: one row
    per delivery, in callback order, with ``submitted`` (the post's place in submit order).
    Five users and no spam bots (``spam_ratio=0``), so the users are the five keys."""
    collect = CollectingHandler()
    topic = scratch_topic(lab, "lab.callbacks")
    posts = Workload(seed=seed, users=5, spam_ratio=0.0).posts(n)
    with lab.producer(topic, handlers=[collect]) as producer:
        for post in posts:
            producer.submit(post)
        producer.flush(60)
    frame = collect.frame()
    order = {post.post_id: i for i, post in enumerate(posts)}
    frame["submitted"] = frame["post_id"].map(order)
    return frame


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
def repeated_sweep(lab: Lab, n: int, grid: list[dict], *, repeats: int = 3,
                   latency_s: float = 2.0, progress: bool = True) -> pd.DataFrame:
    """:func:`tuning_sweep` of the whole ``grid``, ``repeats`` times over, so that a slow
    moment of a shared machine hits every setting alike: one row per setting and run (column
    ``run``); take medians per setting, and plot the single runs as the scatter."""
    rounds: Any = range(repeats)
    if progress:
        from tqdm.auto import trange

        rounds = trange(repeats, desc="rounds")
    return pd.concat([tuning_sweep(lab, n, grid, latency_s=latency_s, progress=False)
                      .assign(run=r) for r in rounds], ignore_index=True)


def runs_of(runs: pd.DataFrame, col: str = "msgs_per_s", **setting: Any) -> pd.Series:
    """The single runs of one setting of a :func:`repeated_sweep` (the dots behind the
    medians): ``runs_of(runs, acks="all", linger_ms=20)``; values compared as text, so
    ``acks=0`` and ``acks="0"`` are the same setting."""
    mask = pd.Series(True, index=runs.index)
    for name, value in setting.items():
        mask &= runs[name].astype(str) == str(value)
    return runs.loc[mask, col]


def relation(what: str, value: str, expected: str, ok: bool,
             clear: bool | None = None) -> None:
    """Print one expectation checked on a sweep's medians: ✓ or ✗, and with ``clear``
    whether the single runs of the two settings clear each other or overlap."""
    verdict = "✓" if ok else "✗ not on this run (see the dots)"
    if ok and clear is not None:
        verdict += (" beyond the scatter" if clear
                    else " on the medians only: the single runs overlap")
    print(f"{what} = {value}, expected {expected} {verdict}")


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
if TYPE_CHECKING:
    from lab_kit.drills.report import DrillReport


def drill_timeline(report: DrillReport) -> tuple[pd.DataFrame, list]:
    """A drill's report (:class:`lab_kit.drills.DrillReport`) → (per-second frame indexed
    by ``t_s``, fault windows as ``(start_s, end_s, label)``) for plots."""
    ts = pd.DataFrame(report.timeline).set_index("t_s")
    ts.attrs["interval_s"] = 1.0
    windows = [(w.start_s, w.end_s, w.label) for w in report.outage_windows]
    return ts, windows


def audit_table(report: DrillReport) -> pd.DataFrame:
    """The checker's counts of a drill's report, one row each."""

    return pd.DataFrame({"count": {k: getattr(report.audit, k) for k in AUDIT_KEYS}})


# --- 08: moderation at scale -----------------------------------------------------------------
#: mode -> (batch_size, concurrency) of the ModerationService
MODERATION_MODES: dict[str, tuple[int, int]] = {
    "one_at_a_time": (1, 1),  # one blocking POST /moderate per post
    "concurrent": (1, 16),  # single-post calls, 16 in flight
    "batched": (100, 4),  # POST /moderate/batch of 100 posts, 4 in flight
}
STOP_TIMEOUT_S = 20.0  # a service process that has not stopped after SIGTERM is killed


def _moderation_topics(lab: Lab, prefix: str, posts_topic: str | None = None,
                       posts_partitions: int = 6) -> dict[str, str]:
    """Fresh moderation topics under ``prefix`` (posts: 6 partitions, results: 6, others 1);
    with ``posts_topic`` the source is that existing topic instead."""

    names = topic_names(prefix, **({"posts": posts_topic} if posts_topic else {}))
    parts = {names["results"]: 6, names["posts"]: posts_partitions}
    create = tuple(n for k, n in names.items() if not (posts_topic and k == "posts"))
    ensure_topics(lab.client_config, names=create,
                  partitions={n: parts.get(n, 1) for n in create})
    return names


def _delete_topics(lab: Lab, names: list[str]) -> None:
    """Best effort: a long session must not leave thousands of partitions behind."""
    import contextlib

    from kafka import KafkaAdminClient

    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(**lab.client_config, request_timeout_ms=10000)
        try:
            existing = set(admin.list_topics())
            doomed = [n for n in names if n in existing]
            if doomed:
                admin.delete_topics(doomed, timeout_ms=10000)
        finally:
            admin.close()


def _fill(lab: Lab, topic: str, n_posts: int, seed: int) -> list[str]:
    """Write ``n_posts`` posts of ``Workload(seed)`` to ``topic`` as fast as the producer
    goes; returns their ids."""
    posts = Workload(seed=seed).posts(n_posts)
    with lab.producer(topic, max_in_flight=n_posts + 1, linger_ms=20,
                      dlq_topic=None) as producer:
        for post in posts:
            producer.submit(post)
        if not producer.flush(120):
            raise TimeoutError(f"filling {topic}: {n_posts} posts not acked within 120 s")
    return [p.post_id for p in posts]


def _drain_report(lab: Lab, results_topic: str, ids: list[str]) -> dict[str, Any]:
    """Posts of ``ids`` (in the order they were written) with a result, seconds from the
    first result to the last, degraded results, and ``out_of_order``: users one of whose
    posts got its result before an earlier post of theirs."""

    results = moderation_results(lab.client_config, results_topic,
                                 timeout_s=max(30.0, len(ids) / 2000))
    firsts = [min(results[pid], key=lambda r: r.get("moderated_at") or 0.0)
              for pid in ids if pid in results]
    times = sorted(r["moderated_at"] for r in firsts if r.get("moderated_at"))
    seconds = times[-1] - times[0] if len(times) > 1 else float("nan")
    last_by_user: dict[str, float] = {}
    out_of_order: set[str] = set()
    for r in firsts:  # in post order
        user, at = r.get("user_id"), r.get("moderated_at") or 0.0
        if at < last_by_user.get(user, 0.0):
            out_of_order.add(user)
        last_by_user[user] = max(at, last_by_user.get(user, 0.0))
    return {"posts": len(firsts), "seconds": seconds,
            "posts_per_s": len(firsts) / seconds if seconds > 0 else float("nan"),
            "degraded": sum(bool(r.get("degraded")) for r in firsts),
            "missing": len(ids) - len(firsts), "out_of_order": len(out_of_order)}


def moderation_modes(lab: Lab, n_posts: int, modes: list[str] | None = None,
                     progress: bool = True, max_seconds: float = 60.0,
                     seed: int = 8) -> pd.DataFrame:
    """The same backlog of ``n_posts`` posts drained three ways (:data:`MODERATION_MODES`).

    The posts are written first to a fresh ``posts`` topic (6 partitions). Then, per mode, a
    ``ModerationService`` with its own consumer group, its own output topics and its own
    backend process (default cost model: 1 ms per request + 0.02 ms per post) reads them from
    the beginning. A mode stops when every post has a result or after ``max_seconds`` (then
    it reports what it did). Load shedding is off: every post goes to the backend.

    One row per mode: ``mode, batch_size, concurrency, posts`` (posts with a result),
    ``seconds`` (first result to last), ``posts_per_s``, ``backend_calls``, ``degraded``,
    ``out_of_order`` (users whose results came out of post order; one chunk per partition at
    a time keeps it 0).
    """
    import tempfile
    from pathlib import Path


    modes = list(modes or MODERATION_MODES)
    unknown = [m for m in modes if m not in MODERATION_MODES]
    if unknown:
        raise ValueError(f"modes: unknown {unknown}; known: {list(MODERATION_MODES)}")
    stamp = uuid.uuid4().hex[:6]
    prefix = f"lab.modes.{stamp}."
    created: list[str] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="lab-modes-") as tmp:
        try:
            posts_topic = _moderation_topics(lab, prefix)["posts"]
            created += [posts_topic]
            ids = _fill(lab, posts_topic, n_posts, seed)
            for mode in modes:
                batch_size, concurrency = MODERATION_MODES[mode]
                names = _moderation_topics(lab, f"{prefix}{mode}.", posts_topic=posts_topic)
                created += [n for k, n in names.items() if k != "posts"]
                backend = service = bar = None
                try:
                    backend = ModerationBackend(state_dir=Path(tmp) / mode).start()
                    service = ModerationService(
                        lab.bootstrap_servers, backend.url, topics=names,
                        group_id=f"lab-modes-{stamp}-{mode}", client_config=lab.extra,
                        batch_size=batch_size, concurrency=concurrency, shed_after_ms=None)
                    if progress:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=n_posts, desc=mode, unit="post")
                    service.start()
                    deadline = time.monotonic() + max_seconds
                    while time.monotonic() < deadline and service.is_running():
                        s = service.stats()
                        if bar is not None:
                            bar.update(min(s["results"], n_posts) - bar.n)
                        if s["results"] >= n_posts and s["in_flight"] == 0:
                            break
                        time.sleep(0.1)
                    stats = service.stats()
                finally:
                    if service is not None:
                        service.close(timeout=STOP_TIMEOUT_S)
                    if backend is not None:
                        backend.stop()
                    if bar is not None:
                        bar.close()
                report = _drain_report(lab, names["results"], ids)
                rows.append({"mode": mode, "batch_size": batch_size, "concurrency": concurrency,
                             "posts": report["posts"], "seconds": report["seconds"],
                             "posts_per_s": report["posts_per_s"],
                             "backend_calls": stats["backend_calls"],
                             "degraded": report["degraded"],
                             "out_of_order": report["out_of_order"]})
        finally:
            _delete_topics(lab, created)
    return pd.DataFrame(rows)


def _group_committed(admin: Any, group: str, topic: str, partitions: int) -> int:
    """Sum of the offsets ``group`` has committed on ``topic`` (0 where none)."""
    from kafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        committed = admin.list_group_offsets({group: tps}).get(group, {})
    except Exception:  # noqa: BLE001 - a missed sample: try again
        return 0
    return sum(max(0, c.offset) for c in committed.values()
               if c is not None and c.offset is not None)


def _group_size(admin: Any, group: str) -> int:
    """Members of ``group`` when it is Stable, else 0."""
    try:
        desc = admin.describe_groups([group])[group]
    except Exception:  # noqa: BLE001
        return 0
    return len(desc.get("members") or []) if desc.get("group_state") == "Stable" else 0


def moderation_processes_left() -> list:
    """Moderation service or backend processes this process started that are still alive
    (``psutil.Process`` objects; zombies not counted): after :func:`scale_out`, none."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE
            and "lab_kit.moderation" in " ".join(p.cmdline())]


def scale_out(lab: Lab, n_posts: int, processes: tuple[int, ...] = (1, 2),
              client: str = "kafka-python", max_seconds: float = 60.0,
              seed: int = 9, progress: bool = True) -> pd.DataFrame:
    """The same backlog drained by 1, 2, ... member *processes* of one consumer group.

    Per process count: fresh topics (posts: 6 partitions), a backend process, then
    ``python -m lab_kit.moderation --processes N`` (batched: 100 posts per call, 4 calls in
    flight; shedding and the recheck worker off). Once the group is Stable with N members,
    ``n_posts`` posts are written as fast as the producer goes and the members drain them;
    the run ends when the group has committed every post or after ``max_seconds``, then the
    processes get SIGTERM (SIGKILL after 20 s). One row per N: ``processes, posts``
    (posts with a result), ``seconds`` (first result to last), ``posts_per_s``,
    ``degraded``, ``exit_code``, ``killed``.

    The CLI takes no client security settings: this runs against the lab's own broker.
    """
    import tempfile
    from pathlib import Path

    from kafka import KafkaAdminClient


    stamp = uuid.uuid4().hex[:6]
    rows = []
    created: list[str] = []
    iterator: Any = processes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(processes, desc="processes")
    with tempfile.TemporaryDirectory(prefix="lab-scale-") as tmp:
        admin = KafkaAdminClient(**lab.client_config, request_timeout_ms=5000)
        try:
            for n in iterator:
                prefix = f"lab.scale.{stamp}.p{n}."
                names = _moderation_topics(lab, prefix)
                created += list(names.values())
                group = f"lab-scale-{stamp}-p{n}"
                backend = service = None
                try:
                    backend = ModerationBackend(state_dir=Path(tmp) / f"backend-{n}").start()
                    service = ServiceProcess(
                        lab.bootstrap_servers, backend.url, prefix=prefix, group=group,
                        processes=n, client=client, log_path=Path(tmp) / f"moderation-{n}.log",
                        extra_args=("--no-recheck", "--shed-after-ms", "0", "--batch-size",
                                    "100", "--concurrency", "4",  # orphan safety net:
                                    "--max-seconds", f"{max_seconds + 120:.0f}")).start()
                    deadline = time.monotonic() + 60
                    while _group_size(admin, group) < n:
                        if not service.alive() or time.monotonic() > deadline:
                            raise RuntimeError(f"{n} moderation process(es) did not form a "
                                               f"group:\n{service.log_tail()}")
                        time.sleep(0.2)
                    ids = _fill(lab, names["posts"], n_posts, seed)
                    deadline = time.monotonic() + max_seconds
                    while (time.monotonic() < deadline and service.alive()
                           and _group_committed(admin, group, names["posts"], 6) < n_posts):
                        time.sleep(0.2)
                finally:
                    stopped = service.stop() if service is not None else {}
                    stop = {k: stopped.get(k) for k in ("exit_code", "killed")}
                    if backend is not None:
                        backend.stop()
                report = _drain_report(lab, names["results"], ids)
                rows.append({"processes": n, "posts": report["posts"],
                             "seconds": report["seconds"], "posts_per_s": report["posts_per_s"],
                             "degraded": report["degraded"], **stop})
        finally:
            admin.close()
            _delete_topics(lab, created)
    return pd.DataFrame(rows)
