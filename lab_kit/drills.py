"""Failover drills: workload + nemesis + checker, in the shape of a Jepsen test.

* the **workload** submits posts open-loop at a fixed rate through ``AsyncPostProducer``
  (with a durable spool), recording how long every ``submit`` took;
* the **nemesis** breaks a real process at a set time (kill -9 or SIGSTOP the broker, kill
  the partition leader of a 3-node cluster, kill or slow the moderation backend) and heals
  it after ``outage_s``;
* the **checker** (:func:`lab_kit.audit.audit`) reads the topics back and counts every post
  by id: delivered once, duplicated, dead-lettered, lost. A :class:`KafkaCallWatch` on the
  workload's thread checks that no post the producer spooled cost the caller a Kafka client
  call (``kafka_calls_while_spooling``): the user never waits on Kafka, checked by what
  happened rather than by a stopwatch.

``python -m lab_kit drill broker-outage --json out.json`` prints a summary and writes the
JSON (audit counts, outage windows, submit p99 during the outage, a per-second timeline).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from kafka import KafkaAdminClient

from . import config
from .audit import audit
from .metrics import MetricsRecorder, percentiles_ms
from .posts import Workload, run_open_loop
from .topics import ensure_topics, wait_for_leaders

DRILLS = ("broker-outage", "broker-pause", "leader-failover", "moderation-outage",
          "moderation-slow", "moderation-overload", "api-broker-outage")


@dataclass
class DrillSettings:
    posts: int = 20_000
    rate: float = 2_000.0
    outage_s: float = 4.0
    lead_s: float = 2.0  # load runs this long before the nemesis strikes

    def validate(self) -> None:
        if not 1 <= self.posts <= 1_000_000:
            raise ValueError(f"--posts must be between 1 and 1000000, got {self.posts}")
        if not 1 <= self.rate <= 50_000:
            raise ValueError(f"--rate must be between 1 and 50000 posts/s, got {self.rate}")
        if not 0.5 <= self.outage_s <= 300:
            raise ValueError(f"--outage must be between 0.5 and 300 s, got {self.outage_s}")

    @property
    def duration_s(self) -> float:
        return self.posts / self.rate

    @classmethod
    def for_drill(cls, name: str, **overrides: Any) -> DrillSettings:
        """Defaults per drill: moderation calls an HTTP service per post, so its drills run
        at a rate one consumer can moderate (~150 posts/s) instead of 2,000 posts/s."""
        base = cls(posts=1_500, rate=150.0) if name.startswith("moderation") else cls()
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base


class RssSampler:
    """Samples this process's resident memory every ``interval_s`` (peak and baseline)."""

    def __init__(self, interval_s: float = 0.2):
        self.proc = psutil.Process()
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self.interval_s = interval_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak = max(self.peak, self.proc.memory_info().rss)


class Nemesis:
    """Breaks something ``lead_s`` after start and heals it ``outage_s`` later (one thread).

    ``windows`` holds (start, end, label) as clock readings of the metrics recorder.
    """

    def __init__(self, label: str, strike, heal, lead_s: float, outage_s: float,
                 metrics: MetricsRecorder):
        self.label, self.strike, self.heal = label, strike, heal
        self.lead_s, self.outage_s, self.metrics = lead_s, outage_s, metrics
        self.started_at: float | None = None
        self.healed_at: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="nemesis")

    @property
    def active(self) -> bool:
        return self.started_at is not None and self.healed_at is None

    def start(self) -> Nemesis:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            time.sleep(self.lead_s)
            self.metrics.mark(f"{self.label}: start")
            self.started_at = self.metrics.clock()
            self.strike()
            time.sleep(self.outage_s)
            self.heal()
        except BaseException as exc:  # noqa: BLE001 - reported in the drill result
            self.error = exc
        finally:
            self.healed_at = self.metrics.clock()
            if self.started_at is not None:
                self.metrics.add_window(self.started_at, self.healed_at, self.label)
                self.metrics.mark(f"{self.label}: healed")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


#: KafkaProducer methods a caller could block in (send waits for metadata, flush for acks,
#: the constructor for a bootstrap connection, close for the sender thread)
WATCHED_METHODS = ("__init__", "send", "flush", "partitions_for", "close", "metrics",
                   "bootstrap_connected")


class KafkaCallWatch:
    """Counts calls into kafka-python's ``KafkaProducer`` made on one thread.

    Used as ``with KafkaCallWatch() as watch:`` on the thread that calls ``submit()``; while
    any watch is active, the :data:`WATCHED_METHODS` of ``KafkaProducer`` are wrapped (once,
    for every watch) and restored when the last watch ends. ``calls`` is the running total
    for the watched thread, ``by_method`` the same per method name. A spooled post whose
    ``submit()`` moved ``calls`` reached the Kafka client: it may have waited on Kafka.
    """

    _lock = threading.Lock()
    _active: tuple[KafkaCallWatch, ...] = ()
    _originals: dict[str, Any] = {}

    def __init__(self, thread: threading.Thread | None = None):
        self.thread_id = (thread or threading.current_thread()).ident
        self.calls = 0
        self.by_method: Counter[str] = Counter()

    def _seen(self, name: str) -> None:
        self.calls += 1
        self.by_method[name] += 1

    @classmethod
    def _install(cls) -> None:
        from kafka import KafkaProducer

        for name in WATCHED_METHODS:
            original = KafkaProducer.__dict__[name]
            cls._originals[name] = original

            def wrapper(*args: Any, _name: str = name, _original: Any = original,
                        **kwargs: Any) -> Any:
                ident = threading.get_ident()
                for watch in KafkaCallWatch._active:
                    if watch.thread_id == ident:
                        watch._seen(_name)
                return _original(*args, **kwargs)

            setattr(KafkaProducer, name, functools.wraps(original)(wrapper))

    @classmethod
    def _uninstall(cls) -> None:
        from kafka import KafkaProducer

        for name, original in cls._originals.items():
            setattr(KafkaProducer, name, original)
        cls._originals = {}

    def __enter__(self) -> KafkaCallWatch:
        with KafkaCallWatch._lock:
            if not KafkaCallWatch._active:
                self._install()
            KafkaCallWatch._active = (*KafkaCallWatch._active, self)
        return self

    def __exit__(self, *exc: object) -> None:
        with KafkaCallWatch._lock:
            KafkaCallWatch._active = tuple(w for w in KafkaCallWatch._active if w is not self)
            if not KafkaCallWatch._active:
                self._uninstall()


class TimedSubmit:
    """The workload's submit: remembers every accepted post id, how long each ``submit``
    took while the nemesis was active (the user-facing latency during the fault, for the
    report), and — with a :class:`KafkaCallWatch` on the caller's thread — how many posts
    ``submit()`` spooled and how many of those made a Kafka client call on the way
    (the check: none)."""

    def __init__(self, producer, nemesis: Nemesis, watch: KafkaCallWatch | None = None):
        self.producer, self.nemesis, self.watch = producer, nemesis, watch
        self.submitted: list[str] = []
        self.during: list[float] = []
        self.spooled_by_caller = 0
        self.kafka_calls_while_spooling = 0

    def __call__(self, post, intended_at: float) -> None:
        calls = self.watch.calls if self.watch is not None else 0
        t0 = time.perf_counter()
        future = self.producer.submit(post, intended_at=intended_at)
        took = time.perf_counter() - t0
        self.submitted.append(post.post_id)
        if self.nemesis.active:
            self.during.append(took)
        if future.done() and future.exception(0) is None \
                and future.result(0).outcome == "spooled":
            self.spooled_by_caller += 1
            if self.watch is not None and self.watch.calls != calls:
                self.kafka_calls_while_spooling += 1

    def checks(self) -> dict[str, int | None]:
        """``spooled_by_caller`` and ``kafka_calls_while_spooling`` (None without a watch)."""
        return {"spooled_by_caller": self.spooled_by_caller,
                "kafka_calls_while_spooling": (self.kafka_calls_while_spooling
                                               if self.watch is not None else None)}


def _fresh_topics(cfg: dict, name: str) -> tuple[str, str]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    topic, dlq = f"drill.{name}.{stamp}", f"drill.{name}.{stamp}.dlq"
    ensure_topics(cfg, names=(topic, dlq), partitions={topic: 6, dlq: 1})
    return topic, dlq


def producer_drill(name: str, broker, settings: DrillSettings, *, workdir: Path,
                   progress: bool = False) -> dict[str, Any]:
    """broker-outage / broker-pause / leader-failover: the producer side under a broker fault."""
    from .producer import AsyncPostProducer

    cfg = broker.client_config()
    topic, dlq = _fresh_topics(cfg, name)
    metrics = MetricsRecorder()
    spool_path = workdir / f"{name}.spool.db"
    extra = broker.extra_config()
    producer = AsyncPostProducer(cfg["bootstrap_servers"], topic, dlq_topic=dlq,
                                 spool_path=str(spool_path), metrics=metrics,
                                 probe_interval_s=0.25, stall_timeout_s=2.0,
                                 max_in_flight=5_000, **extra)
    if name == "broker-outage":
        node = broker.node_ids()[0]
        nemesis = Nemesis(f"broker node {node} killed (-9)", lambda: broker.kill(node),
                          lambda: broker.start(node), settings.lead_s, settings.outage_s, metrics)
    elif name == "broker-pause":
        node = broker.node_ids()[0]
        nemesis = Nemesis(f"broker node {node} paused (SIGSTOP)", lambda: broker.pause(node),
                          lambda: broker.resume(node), settings.lead_s, settings.outage_s,
                          metrics)
    else:  # leader-failover
        leader = leader_of(cfg, topic)
        nemesis = Nemesis(f"leader node {leader} killed (-9)", lambda: broker.kill(leader),
                          lambda: broker.start(leader), settings.lead_s, settings.outage_s,
                          metrics)
    with RssSampler() as rss, KafkaCallWatch() as watch:
        submit = TimedSubmit(producer, nemesis, watch)
        nemesis.start()
        run = run_open_loop(submit, Workload(seed=17).iter_posts(), settings.rate,
                            settings.duration_s, max_posts=settings.posts, progress=progress)
        nemesis.join(timeout=settings.lead_s + settings.outage_s + 120)
        producer.flush(timeout=60)
        left = producer.drain_spool(timeout=120)
        drained_at = metrics.clock()
        report = producer.close(timeout=60)
    counters = metrics.counters()
    result = audit(cfg, topic, submit.submitted, dlq_topic=dlq, counters=counters)
    checks = {
        "topic": topic, "spool_left": left, "close_report_lost": report.lost,
        "recovery_s": None if nemesis.healed_at is None else round(
            drained_at - nemesis.healed_at, 2),
        "client_rebuilds": counters.get("client_rebuilds", 0),
        **submit.checks(),
    }
    out = _result(name, broker, settings, run, result, metrics, nemesis, submit.during, rss,
                  extra=checks)
    out["ok"] = bool(out["ok"] and out["kafka_calls_while_spooling"] == 0)
    return out


def leader_of(cfg: dict, topic: str, partition: int = 0, timeout_s: float = 15) -> int:
    """The node id leading ``topic``/``partition`` (waits, like the topics module, until the
    answering broker knows it)."""
    admin = KafkaAdminClient(**cfg)
    try:
        meta = wait_for_leaders(admin, [topic], timeout_s)[0]
        return next(p["leader_id"] for p in meta["partitions"]
                    if p["partition_index"] == partition)
    finally:
        admin.close()


def _result(name, broker, settings, run, audit_report, metrics, nemesis, during, rss,
            extra: dict, consumer_metrics: MetricsRecorder | None = None) -> dict[str, Any]:
    ts = metrics.timeseries_frame()
    windows = list(metrics.windows)
    if consumer_metrics is not None:  # the moderation side: results, degraded, rechecked
        offset = consumer_metrics.start - metrics.start
        cts = consumer_metrics.timeseries_frame()
        cts.index = (cts.index + offset).round().astype(int).astype(float)
        keep = [c for c in ("results", "degraded", "rechecked") if c in cts.columns]
        ts = ts.join(cts[keep].groupby(level=0).sum(), how="outer").fillna(0)
        windows += [(s + offset, e + offset, label) for s, e, label in consumer_metrics.windows]
    names = {"submitted": "submitted", "acked": "acked", "failed": "failed",
             "spooled": "spooled", "replayed": "replayed", "results": "moderated",
             "degraded": "degraded", "rechecked": "rechecked"}
    columns = [c for c in names if c in ts.columns]
    timeline = [{"t_s": float(t), **{names[c]: int(row[c]) for c in columns}}
                for t, row in ts[columns].iterrows()]
    p = percentiles_ms(during)
    return {
        "drill": name,
        "kafka_version": broker.kafka_version or config.KAFKA_VERSION,
        "nodes": len(broker.nodes()),
        "settings": {"posts": settings.posts, "rate": settings.rate,
                     "outage_s": settings.outage_s, "lead_s": settings.lead_s},
        "achieved_rate": round(run.achieved_rate, 1),
        **audit_report.to_dict(),
        "outage_windows": [[round(s, 3), round(e, 3), label] for s, e, label in windows],
        "nemesis_error": None if nemesis.error is None else repr(nemesis.error),
        "submitted_during_outage": len(during),
        "submit_p99_during_outage_ms": p["p99_ms"],
        "submit_p999_during_outage_ms": p["p999_ms"],
        "submit_max_during_outage_ms": p["max_ms"],
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "baseline_rss_mb": round(rss.baseline / 2**20, 1),
        **extra,
        "timeline": timeline,
        "ok": audit_report.lost == 0 and nemesis.error is None,
    }


def run_drill(name: str, settings: DrillSettings | None = None, broker=None,
              workdir: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run one drill on ``broker`` (default: the lab's broker; leader-failover: a 3-node
    cluster of its own, started and stopped here)."""
    if name not in DRILLS:
        raise ValueError(f"unknown drill {name!r}: choose one of {', '.join(DRILLS)}")
    if name == "moderation-overload":  # its own shape: rates follow the backend's capacity
        from .moderation_drills import overload_drill

        return overload_drill(broker, workdir=workdir, progress=progress)
    settings = settings or DrillSettings.for_drill(name)
    settings.validate()
    own_cluster = None
    if broker is None:
        from . import broker as lab_broker

        if name == "leader-failover":
            from .broker import local

            own_cluster = broker = local.up(nodes=3,
                                            state_dir=config.state_dir() / "drill-cluster")
        else:
            broker = lab_broker.ensure()
    if name == "leader-failover" and len(broker.nodes()) < 3:
        raise ValueError("leader-failover needs a 3-node cluster (RF 3, min.insync.replicas=2)")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lab-drill-")
        workdir = Path(tmp.name)
    try:
        if name.startswith("moderation"):
            from .moderation_drills import moderation_drill

            return moderation_drill(name, broker, settings, workdir=workdir, progress=progress)
        return producer_drill(name, broker, settings, workdir=workdir, progress=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
        if own_cluster is not None:
            own_cluster.down(purge=True)


def summary(result: dict) -> str:
    keys = ("submitted", "acked", "spooled", "replayed", "delivered_unique", "duplicates",
            "lost", "dead_lettered")
    lines = [f"drill {result['drill']} on {result['nodes']} node(s), Kafka "
             f"{result['kafka_version']}: {'OK' if result['ok'] else 'FAILED'}",
             "  " + ", ".join(f"{k}={result.get(k)}" for k in keys if k in result)]
    for s, e, label in result["outage_windows"]:
        lines.append(f"  outage {s:.1f}s..{e:.1f}s: {label}")
    if result.get("submit_p99_during_outage_ms") is not None:
        lines.append(f"  submit during outage: n={result['submitted_during_outage']}, "
                     f"p99={result['submit_p99_during_outage_ms']:.3f} ms, "
                     f"p99.9={result['submit_p999_during_outage_ms']:.3f} ms")
    if result.get("kafka_calls_while_spooling") is not None:
        lines.append(f"  spooled by submit(): {result['spooled_by_caller']}, of which "
                     f"{result['kafka_calls_while_spooling']} made a Kafka client call")
    lines.append(f"  peak RSS {result['peak_rss_mb']} MB (baseline {result['baseline_rss_mb']})")
    for k in ("recovery_s", "results_missing", "degraded", "rechecked_missing"):
        if k in result:
            lines.append(f"  {k}: {result[k]}")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drill", help="failover drills: workload + nemesis + checker")
    p.add_argument("name", choices=DRILLS)
    p.add_argument("--posts", type=int, default=None, help="default 20000 (moderation: 1500)")
    p.add_argument("--rate", type=float, default=None,
                   help="posts per second, default 2000 (moderation: 150)")
    p.add_argument("--outage", type=float, default=None, help="seconds, default 4")
    p.add_argument("--lead", type=float, default=None,
                   help="seconds of load before the fault, default 2")
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.name == "api-broker-outage":
        from .api_drill import main_from_drill

        return main_from_drill(args)
    if args.name == "moderation-overload":
        from .moderation_drills import overload_main

        return overload_main(args)
    settings = DrillSettings.for_drill(args.name, posts=args.posts, rate=args.rate,
                                       outage_s=args.outage, lead_s=args.lead)
    result = run_drill(args.name, settings, progress=True)
    print(summary(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json_path}")
    return 0 if result["ok"] else 1
