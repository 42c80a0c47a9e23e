"""The producer drills: broker-outage, broker-outage-long, broker-pause, leader-failover.

``broker-outage-long`` keeps the broker down for longer than the producer's
``delivery_timeout_ms`` (:data:`LONG_OUTAGE_DELIVERY_TIMEOUT_MS`, lowered so the drill takes
seconds, not minutes): the posts inside the client when it died leave it only by failing, after
newer posts of their users went to the spool. The checker reads the topic back and counts, per
user, any post that landed after a newer one (order violations): the drill fails on one.

Workload (:mod:`.workload`): posts submitted open-loop through ``AsyncPostProducer`` with a
durable spool. Nemesis (:mod:`lab_kit.harness.nemesis`): kill -9 or SIGSTOP a broker node, or
kill the leader of partition 0 on a 3-node cluster, healed after ``outage_s``. Checker
(:mod:`lab_kit.harness.checker`): the topic and its DLQ read back by post id, and no spooled
post cost the caller a Kafka client call. The result is a
:class:`~lab_kit.drills.report.DrillReport`.
"""

from __future__ import annotations

from pathlib import Path

from kafka import KafkaAdminClient

from lab_kit.drills.report import DrillReport, ProducerChecks
from lab_kit.drills.workload import DrillSettings, RssSampler, TimedSubmit
from lab_kit.harness.checker import KafkaCallWatch, audit
from lab_kit.harness.nemesis import Nemesis, broker_kill, broker_pause
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.machine import run_stamp
from lab_kit.metrics import MetricsRecorder
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer
from lab_kit.topics import ensure_topics, wait_for_leaders

PRODUCER_DRILLS = ("broker-outage", "broker-outage-long", "broker-pause", "leader-failover")
#: broker-outage-long: the producer gives up on a post after this long (kafka-python's default
#: is 120 s); the outage lasts longer, so posts time out inside the client during it
LONG_OUTAGE_DELIVERY_TIMEOUT_MS = 5_000
LONG_OUTAGE_CLIENT = {"delivery_timeout_ms": LONG_OUTAGE_DELIVERY_TIMEOUT_MS,
                      "request_timeout_ms": 4_000}


def fresh_topics(cfg: dict, name: str) -> tuple[str, str]:
    """A new posts topic (6 partitions) and its DLQ for one run of drill ``name``."""
    stamp = run_stamp()
    topic, dlq = f"drill.{name}.{stamp}", f"drill.{name}.{stamp}.dlq"
    ensure_topics(cfg, names=(topic, dlq), partitions={topic: 6, dlq: 1})
    return topic, dlq


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


def nemesis_for(name: str, broker, cfg: dict, topic: str, settings: DrillSettings,
                metrics: MetricsRecorder) -> Nemesis:
    """The fault of drill ``name`` on ``broker``."""
    if name in ("broker-outage", "broker-outage-long"):
        return broker_kill(broker, broker.node_ids()[0], settings.lead_s, settings.outage_s,
                           metrics)
    if name == "broker-pause":
        return broker_pause(broker, broker.node_ids()[0], settings.lead_s, settings.outage_s,
                            metrics)
    if name == "leader-failover":
        return broker_kill(broker, leader_of(cfg, topic), settings.lead_s, settings.outage_s,
                           metrics, what="leader")
    raise ValueError(f"not a producer drill: {name!r} (one of {', '.join(PRODUCER_DRILLS)})")


def producer_drill(name: str, broker, settings: DrillSettings, *, workdir: Path,
                   progress: bool = False) -> DrillReport:
    """broker-outage / broker-pause / leader-failover: the producer side under a broker fault.

    Torn down in a ``finally`` whatever fails: the nemesis is joined and its fault healed
    again (``broker.start``/``resume`` are idempotent), the producer closed."""
    cfg = broker.client_config()
    topic, dlq = fresh_topics(cfg, name)
    metrics = MetricsRecorder()
    spool_path = workdir / f"{name}.spool.db"
    extra = broker.extra_config()
    if name == "broker-outage-long":
        if settings.outage_s * 1000 <= LONG_OUTAGE_DELIVERY_TIMEOUT_MS:
            raise ValueError(f"--outage must be longer than the drill's delivery_timeout_ms "
                             f"({LONG_OUTAGE_DELIVERY_TIMEOUT_MS} ms), got {settings.outage_s} s")
        extra = {**extra, **LONG_OUTAGE_CLIENT}
    producer = AsyncPostProducer(cfg["bootstrap_servers"], topic, dlq_topic=dlq,
                                 spool_path=str(spool_path), metrics=metrics,
                                 probe_interval_s=0.25, stall_timeout_s=2.0,
                                 max_in_flight=5_000, client=settings.client, **extra)
    nemesis: Nemesis | None = None
    launched = ok = False
    try:
        nemesis = nemesis_for(name, broker, cfg, topic, settings, metrics)
        with RssSampler() as rss, KafkaCallWatch() as watch:
            submit = TimedSubmit(producer, nemesis, watch)
            nemesis.start()
            launched = True
            run = run_open_loop(submit, Workload(seed=17).iter_posts(), settings.rate,
                                settings.duration_s, max_posts=settings.posts,
                                progress=progress)
            nemesis.join(timeout=settings.lead_s + settings.outage_s + 300)  # heal <= 240 s
            producer.flush(timeout=60)
            left = producer.drain_spool(timeout=120)
            drained_at = metrics.clock()
            closed = producer.close(timeout=60)
        ok = True
    finally:
        teardown(producer, nemesis if launched else None, settings, failed=not ok)
    counters = metrics.counters()
    landed = audit(cfg, topic, submit.submitted, dlq_topic=dlq, counters=counters)
    # recovery: from the heal to the backlog's end (the replay done, or, if the last replay
    # ended before the heal, when drain_spool returned after the load)
    done = producer.replay_done_at
    if done is None or nemesis.healed_at is None or done < nemesis.healed_at:
        done = drained_at
    checks = ProducerChecks(
        spool_left=left, close_report_lost=closed.lost,
        recovery_s=None if nemesis.healed_at is None else round(done - nemesis.healed_at, 2),
        client_rebuilds=counters.get("client_rebuilds", 0))
    return DrillReport.build(name, broker, settings, run, landed, metrics, nemesis, submit, rss,
                             topic=topic, producer=checks)


def teardown(producer, nemesis: Nemesis | None, settings: DrillSettings, *,
             failed: bool) -> None:
    """Leave the broker healed and the producer closed, also when the drill failed midway.

    A started ``nemesis`` is waited for (it strikes after ``lead_s`` and heals on its own
    ``outage_s`` later: nothing strikes after this returns); if it struck, after a failure or
    a heal that raised, its heal runs once more (start/resume of a running node does
    nothing). An error here is raised only if the drill itself succeeded."""
    errors: list[BaseException] = []
    if nemesis is not None:
        nemesis.join(timeout=settings.lead_s + settings.outage_s + 300)
        if nemesis.started_at is not None and (failed or nemesis.error is not None):
            try:
                nemesis.heal()
            except Exception as exc:  # noqa: BLE001 - reported below (or by the drill's error)
                errors.append(exc)
    if not producer.closed:
        try:
            producer.close(timeout=30)
        except Exception as exc:  # noqa: BLE001 - as above
            errors.append(exc)
    if errors and not failed:
        raise errors[0]
