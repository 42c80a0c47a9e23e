"""Reading the moderation results back from Kafka (checkers, tests and notebooks)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from lab_kit import json_codec
from lab_kit import topics as lab_topics

__all__ = ["moderation_results"]


def moderation_results(cfg: Mapping[str, Any] | str,
                       results_topic: str = lab_topics.MODERATION_RESULTS,
                       timeout_s: float = 30.0) -> dict[str, list[dict]]:
    """Every result in ``results_topic`` (beginning to the end offsets seen at call time),
    grouped by ``post_id`` in log order per partition. Undecodable records are skipped."""
    kcfg = {"bootstrap_servers": cfg} if isinstance(cfg, str) else dict(cfg)
    # read_committed: an exactly-once stage's aborted outputs are not results (and with
    # no transactions it reads the same records)
    kcfg.setdefault("isolation_level", "read_committed")
    consumer = KafkaConsumer(**kcfg, enable_auto_commit=False)
    try:
        parts = [TopicPartition(results_topic, p)
                 for p in sorted(consumer.partitions_for_topic(results_topic) or [])]
        out: dict[str, list[dict]] = {}
        if not parts:
            return out
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {results_topic}: short of end offsets after "
                                   f"{timeout_s:g}s")
            for recs in consumer.poll(timeout_ms=300).values():
                for r in recs:
                    try:
                        doc = json_codec.loads(r.value)
                    except (TypeError, ValueError):
                        continue
                    if isinstance(doc, dict) and "post_id" in doc:
                        out.setdefault(str(doc["post_id"]), []).append(doc)
        return out
    finally:
        consumer.close()
