"""The StreamSocial topics, in one place, and an idempotent ``ensure_topics()``.

Replication fits the cluster: on 1 node every topic has RF 1; on 3 nodes RF 3 with
``min.insync.replicas=2``, so an ``acks=all`` write survives the loss of any one node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str


POSTS = "posts"
MODERATION_RESULTS = "moderation.results"
TIMELINE_UPDATES = "timeline.updates"
USER_REPUTATION = "user.reputation"
ADMIN_NOTIFICATIONS = "admin.notifications"
MODERATION_RECHECK = "moderation.recheck"
POSTS_DLQ = "posts.dlq"

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(POSTS, 6, "every submitted post, keyed by user_id"),
    TopicSpec(MODERATION_RESULTS, 3, "one moderation verdict per post (full or degraded)"),
    TopicSpec(TIMELINE_UPDATES, 3, "approved posts fanned out to followers' timelines"),
    TopicSpec(USER_REPUTATION, 3, "spam/violation signals per user"),
    TopicSpec(ADMIN_NOTIFICATIONS, 1, "violations a human moderator should see"),
    TopicSpec(MODERATION_RECHECK, 3, "posts moderated by fallback rules, to re-moderate"),
    TopicSpec(POSTS_DLQ, 1, "records that could not be delivered or parsed, with the reason"),
)
TOPIC_NAMES = tuple(t.name for t in TOPICS)


def replication_for(n_brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``n_brokers``."""
    if n_brokers >= 3:
        return 3, 2
    return 1, 1


def ensure_topics(client_config: dict | str, names: tuple[str, ...] = TOPIC_NAMES,
                  timeout_s: float = 30, partitions: dict[str, int] | None = None,
                  configs: dict[str, dict[str, str]] | None = None) -> dict:
    """Create the lab's topics if missing; wait until every partition has a leader.

    ``client_config`` is a broker's ``client_config()`` or a bootstrap string; ``configs``
    adds topic settings per name (e.g. ``{"t": {"max.message.bytes": "2048"}}``). Returns
    ``{topic: {"partitions": n, "replication_factor": rf, "min_insync_replicas": isr}}``.
    """
    cfg = {"bootstrap_servers": client_config} if isinstance(client_config, str) \
        else dict(client_config)
    specs = {t.name: t for t in TOPICS}
    admin = KafkaAdminClient(**cfg, request_timeout_ms=10000)
    try:
        n_brokers = len(admin.describe_cluster()["brokers"])
        rf, isr = replication_for(n_brokers)
        wanted = []
        for name in names:
            n_parts = (partitions or {}).get(name) or (specs[name].partitions if name in specs
                                                        else 3)
            wanted.append(NewTopic(name, n_parts, rf, topic_configs={
                "min.insync.replicas": str(isr), **(configs or {}).get(name, {})}))
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: fine
        wait_for_leaders(admin, list(names), timeout_s)
        return {t.name: {"partitions": t.num_partitions, "replication_factor": rf,
                         "min_insync_replicas": isr} for t in wanted}
    finally:
        admin.close()


def wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> list[dict]:
    """Poll until the answering broker knows every partition of ``names`` and its leader;
    returns that metadata (``describe_topics``). On a cluster a fresh topic reaches each
    broker's metadata cache a little later, and a partition whose leader died has none for a
    moment: callers that read metadata wait here rather than on their own."""
    t0 = time.monotonic()
    while True:
        meta = admin.describe_topics(names)
        ready = all(
            t.get("error_code", 0) == 0 and t["partitions"]
            and all(p["leader_id"] >= 0 for p in t["partitions"])
            for t in meta
        )
        if ready and len(meta) == len(names):
            return meta
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"topics {names} have no leader after {timeout_s:.0f}s")
        time.sleep(0.2)


def describe(client_config: dict | str, names: tuple[str, ...] = TOPIC_NAMES,
             timeout_s: float = 15) -> dict:
    """{topic: {"partitions": n, "replication_factor": rf, "min_insync_replicas": isr}}.

    Waits (up to ``timeout_s``) until the answering broker knows every partition's leader.
    """
    from kafka.admin import ConfigResource, ConfigResourceType

    cfg = {"bootstrap_servers": client_config} if isinstance(client_config, str) \
        else dict(client_config)
    admin = KafkaAdminClient(**cfg, request_timeout_ms=10000)
    try:
        out = {}
        for t in wait_for_leaders(admin, list(names), timeout_s):
            out[t["name"]] = {"partitions": len(t["partitions"]),
                              "replication_factor": len(t["partitions"][0]["replica_nodes"])}
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        for name, entries in res.get("topic", {}).items():
            if name in out and "min.insync.replicas" in entries:
                out[name]["min_insync_replicas"] = int(entries["min.insync.replicas"]["value"])
        return out
    finally:
        admin.close()
