"""Small helpers tests use to read what actually landed in a topic."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
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


class UnknownTopicError(LookupError):
    """Reading a topic that does not exist: an error, never an empty list (a test comparing
    records of a misnamed topic with ``[]`` would pass without checking anything)."""


def read_all(cfg: dict, topic: str, timeout_s: float = 30.0, exists_timeout_s: float = 10.0
             ) -> list:
    """Every record of ``topic`` from the beginning up to the end offsets seen at call time.

    Raises :class:`UnknownTopicError` if the topic has no partitions within
    ``exists_timeout_s`` (a topic created a moment ago gets that long to show up).
    """
    consumer = KafkaConsumer(**cfg, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        t0 = time.monotonic()
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() - t0 > exists_timeout_s:
                raise UnknownTopicError(f"topic {topic!r} does not exist (no partitions after "
                                        f"{exists_timeout_s:g} s)")
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"reading {topic}: positions short of end offsets")
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def produce_values(cfg: dict, topic: str, values: list[bytes]) -> None:
    """Write ``values`` to ``topic``, each one acked (acks=all) before the next."""
    producer = KafkaProducer(**cfg, acks="all")
    try:
        for v in values:
            producer.send(topic, v).get(timeout=30)
    finally:
        producer.close(timeout=5)


def wait_for(fn, timeout_s: float = 15.0, interval_s: float = 0.1):
    """Call ``fn`` until it returns something truthy or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval_s)
    return fn()
