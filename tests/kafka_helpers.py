"""Small helpers tests use to read what actually landed in a topic."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic


def create_topic(cfg: dict, name: str, partitions: int = 1, rf: int = 1, isr: int = 1) -> None:
    admin = KafkaAdminClient(**cfg)
    try:
        admin.create_topics([NewTopic(name, partitions, rf,
                                      topic_configs={"min.insync.replicas": str(isr)})])
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            meta = admin.describe_topics([name])
            parts = meta[0]["partitions"] if meta and meta[0]["error_code"] == 0 else []
            if parts and all(p["leader_id"] >= 0 for p in parts):
                return
            time.sleep(0.2)
        raise TimeoutError(f"topic {name} has no leader")
    finally:
        admin.close()


def read_all(cfg: dict, topic: str, timeout_s: float = 30.0) -> list:
    """Every record of ``topic`` from the beginning up to the end offsets seen at call time."""
    consumer = KafkaConsumer(**cfg, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                          or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = []
        t0 = time.monotonic()
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"reading {topic}: positions short of end offsets")
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()
