"""The read-back checker: read a topic back and count what landed, by post id.

"Lost" is decided here and only here: a post accepted by the lab and never found in the topic.
The producer's own counters are never trusted for it. So is "in order": per user, no post lands
after a newer post of the same user (:func:`order_violations`, given the submit order).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lab_kit import json_codec


def _consumer(client_config: dict):
    from kafka import KafkaConsumer

    # a producer's settings may come along (linger_ms, acks, ...): keep what a consumer takes
    cfg = {k: v for k, v in client_config.items() if k in KafkaConsumer.DEFAULT_CONFIG}
    # earliest: a start offset that retention or delete_records has passed reads from what
    # is left, instead of jumping to the end and reading nothing
    cfg.setdefault("isolation_level", "read_committed")  # aborted transactions are not data
    return KafkaConsumer(**cfg, enable_auto_commit=False, group_id=None,
                         auto_offset_reset="earliest")


def end_offsets(client_config: dict, topics: list[str] | tuple[str, ...]
                ) -> dict[str, dict[int, int]]:
    """``{topic: {partition: end offset}}`` now, for the topics that exist (a topic that does
    not exist yet is left out: read it from the beginning). Take it before a run and pass it
    to :func:`audit` as ``since``, so a shared topic is read from where the run began."""
    from kafka import TopicPartition

    consumer = _consumer(client_config)
    try:
        out: dict[str, dict[int, int]] = {}
        for topic in topics:
            parts = [TopicPartition(topic, p)
                     for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if parts:
                out[topic] = {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
        return out
    finally:
        consumer.close()


def read_topic(client_config: dict, topic: str, timeout_s: float = 60.0,
               start: dict[int, int] | None = None) -> list:
    """Every record of ``topic`` from the beginning (or from ``start``, offsets by partition)
    to the end offsets seen at call time. A topic that does not exist is an error (after
    ``timeout_s``), never an empty list: a checker that reads nothing must not report 0 lost.
    """
    from kafka import TopicPartition

    consumer = _consumer(client_config)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions and time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no partitions (does it exist?)")
            if not partitions:
                time.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        for tp in parts:
            if start and tp.partition in start:
                consumer.seek(tp, start[tp.partition])
        end = consumer.end_offsets(parts)
        out: list = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: still short of the end offsets")
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def keyed_post_ids_in(client_config: dict, topic: str, timeout_s: float = 60.0,
                      start: dict[int, int] | None = None) -> list[tuple[bytes | None, str]]:
    """``(key, post_id)`` of every record of ``topic``, partition by partition in offset
    order (records without a post_id are skipped)."""
    out = []
    for record in read_topic(client_config, topic, timeout_s, start):
        try:
            pid = json_codec.loads(record.value).get("post_id")
        except (ValueError, AttributeError, TypeError):
            continue
        if pid:
            out.append((record.key, pid))
    return out


def post_ids_in(client_config: dict, topic: str, timeout_s: float = 60.0,
                start: dict[int, int] | None = None) -> list[str]:
    """The ``post_id`` of every record of ``topic`` (records without one are skipped)."""
    return [pid for _key, pid in keyed_post_ids_in(client_config, topic, timeout_s, start)]


def order_violations(landed: Iterable[tuple[Any, str]], submitted_in_order: Sequence[str]
                     ) -> tuple[list[str], set[Any]]:
    """Per key (a user), posts that landed after a newer post of the same key: Jepsen's
    per-key order check. ``landed`` is ``(key, post_id)`` in the order a consumer reads them
    (offset order: a key lives in one partition); ``submitted_in_order`` is the order the
    producer accepted them. A duplicate copy is a duplicate, not a reordering: only the first
    copy of a post counts. Returns the late posts and the keys they belong to."""
    rank = {pid: i for i, pid in enumerate(submitted_in_order)}
    newest: dict[Any, int] = {}
    seen: set[str] = set()
    late: list[str] = []
    keys: set[Any] = set()
    for key, pid in landed:
        r = rank.get(pid)
        if r is None or pid in seen:
            continue
        seen.add(pid)
        if r < newest.get(key, -1):
            late.append(pid)
            keys.add(key)
        else:
            newest[key] = r
    return late, keys


@dataclass
class AuditReport:
    """What actually landed, by post_id — the checker of a drill (Jepsen's shape).

    ``lost`` = submitted − found on the topic − found in the DLQ − still waiting in a spool
    (``pending``). Every count comes from reading the topics back; ``acked``, ``spooled`` and
    ``replayed`` are the producer's own counters, shown alongside, never used to decide.
    """

    submitted: int
    acked: int
    spooled: int
    replayed: int
    delivered_unique: int
    duplicates: int
    lost: int
    dead_lettered: int
    pending: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    dead_lettered_ids: list[str] = field(default_factory=list)
    #: posts that landed after a newer post of their user, and those users (None: the
    #: submitted ids came as a set, with no order to check against)
    out_of_order: int | None = None
    users_out_of_order: int | None = None
    out_of_order_ids: list[str] = field(default_factory=list)

    def to_dict(self, max_ids: int = 20) -> dict[str, Any]:
        d = asdict(self)
        for key in ("lost_ids", "duplicate_ids", "dead_lettered_ids", "out_of_order_ids"):
            d[key] = d[key][:max_ids]
        return d


def audit(client_config: dict, topic: str, submitted_ids: list[str] | set[str], *,
          dlq_topic: str | None = None, counters: dict | None = None,
          timeout_s: float = 120.0, since: dict[str, dict[int, int]] | None = None,
          pending_ids: list[str] | set[str] = ()) -> AuditReport:
    """Read ``topic`` (and the DLQ) back and count, by post_id: delivered once, duplicated,
    dead-lettered, lost.

    ``since`` (from :func:`end_offsets` before the run) reads shared topics from where the
    run began; ``pending_ids`` are posts still in a spool (durable, not yet on the topic: not
    lost). ``counters`` (the producer's) adds acked/spooled/replayed for the reader.
    """
    submitted = set(submitted_ids)
    since = since or {}
    keyed = keyed_post_ids_in(client_config, topic, timeout_s, since.get(topic))
    landed = Counter(pid for _key, pid in keyed if pid in submitted)
    late: list[str] | None = None
    late_users: set = set()
    if not isinstance(submitted_ids, set | frozenset):  # a sequence: the submit order
        late, late_users = order_violations(keyed, list(submitted_ids))
    dead: set[str] = set()
    if dlq_topic:
        dead = set(post_ids_in(client_config, dlq_topic, timeout_s, since.get(dlq_topic))) \
            & submitted
    pending = (set(pending_ids) & submitted) - set(landed) - dead
    lost_ids = sorted(submitted - set(landed) - dead - pending)
    dup_ids = sorted(pid for pid, n in landed.items() if n > 1)
    counters = counters or {}
    return AuditReport(
        submitted=len(submitted), acked=counters.get("acked", 0),
        spooled=counters.get("spooled", 0), replayed=counters.get("replayed", 0),
        delivered_unique=len(landed), duplicates=sum(n - 1 for n in landed.values()),
        lost=len(lost_ids), dead_lettered=len(dead), pending=len(pending),
        lost_ids=lost_ids, duplicate_ids=dup_ids, dead_lettered_ids=sorted(dead),
        out_of_order=None if late is None else len(late),
        users_out_of_order=None if late is None else len(late_users),
        out_of_order_ids=late or [])
