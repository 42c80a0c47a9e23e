"""The moderation stage's constants, topic names and the checks of its settings.

Everything here is checked or decided before a stage starts: the topic mapping
(:func:`topic_names`), the Kafka settings a stage builds its clients with
(:func:`check_kafka_settings`), and the ranges of its numeric arguments (:func:`check_int`,
:func:`check_float`), each refused with one ``ValueError`` naming the bad value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab_kit import broker
from lab_kit import topics as lab_topics
from lab_kit.kafka_settings import check_topic_name
from lab_kit.moderation.clients import check_settings

__all__ = [
    "TOPIC_KEYS",
    "DEFAULT_TOPICS",
    "SESSION_TIMEOUT_MS",
    "HEARTBEAT_INTERVAL_MS",
    "OUTPUT_TIMEOUT_S",
    "MAX_BACKOFF_S",
    "MAX_EVENTS",
    "COMMIT_INTERVAL_S",
    "IDLE_POLL_S",
    "BUSY_POLL_S",
    "DRAIN_TIMEOUT_S",
    "OVERLOAD_QUIET_S",
    "RECHECK_MAX_LIVE_AGE_S",
    "GROUP_QUIET_S",
    "RECHECK_END_CHECK_S",
    "PAUSE_AFTER_FULL_S",
    "PRODUCER_DEFAULTS",
    "GUARANTEES",
    "TRANSACTION_INTERVAL_S",
    "TRANSACTION_TIMEOUT_MS",
    "check_guarantee",
    "topic_names",
    "user_kafka_config",
    "kafka_config",
    "check_kafka_settings",
    "check_int",
    "check_float",
]

#: Keys of the ``topics=`` mapping, and the lab's default topic names.
TOPIC_KEYS = ("posts", "results", "timeline", "reputation", "admin", "recheck", "dlq")
DEFAULT_TOPICS: dict[str, str] = {
    "posts": lab_topics.POSTS,
    "results": lab_topics.MODERATION_RESULTS,
    "timeline": lab_topics.TIMELINE_UPDATES,
    "reputation": lab_topics.USER_REPUTATION,
    "admin": lab_topics.ADMIN_NOTIFICATIONS,
    "recheck": lab_topics.MODERATION_RECHECK,
    "dlq": lab_topics.POSTS_DLQ,
}

SESSION_TIMEOUT_MS = 6000  # broker minimum: a killed member's partitions move after ~6 s
HEARTBEAT_INTERVAL_MS = 1500
OUTPUT_TIMEOUT_S = 30.0  # max wait for a chunk's acks before it is treated as failed
MAX_BACKOFF_S = 5.0
MAX_EVENTS = 10_000
COMMIT_INTERVAL_S = 0.2
IDLE_POLL_S = 0.2  # nothing in flight: poll this long (stop() stays prompt)
BUSY_POLL_S = 0.005  # calls in flight: come back soon to emit their results
DRAIN_TIMEOUT_S = 5.0  # on rebalance/stop: wait this long for calls in flight
OVERLOAD_QUIET_S = 2.0  # the recheck worker waits this long after an overload answer
#: the recheck worker also waits while the oldest post waiting for the service is older than
#: this, or the service has stopped polling (backpressure): the live path has no spare
#: capacity then, and a recheck would take some (same process, same backend)
RECHECK_MAX_LIVE_AGE_S = 0.25
#: ... and while any member of the group degraded a post lately: ``moderation.recheck``'s end
#: (read at most every ``RECHECK_END_CHECK_S``) moved within ``GROUP_QUIET_S``. A member's own
#: service only knows its own load; a peer that sheds has no spare capacity either, and on
#: shared cores a recheck anywhere takes some from it.
GROUP_QUIET_S = 2.0
RECHECK_END_CHECK_S = 1.0
#: a stage full this long (e.g. a recheck worker gated through a long overload) pauses its
#: partitions and polls again: a consumer that does not poll for ``max.poll.interval.ms``
#: (300 s by default) is dropped from its group
PAUSE_AFTER_FULL_S = 30.0

#: What a member promises about its outputs (``guarantee=``). ``"at-least-once"``: outputs
#: are produced, then the offsets committed once they are acked; a killed member's successor
#: re-processes what was in flight (duplicates, counted). ``"exactly-once"``: the outputs of
#: an interval and the consumed offsets go in one Kafka transaction; a ``read_committed``
#: reader sees each post's outputs once, after the commit.
GUARANTEES = ("at-least-once", "exactly-once")
#: exactly-once: one transaction per member at most this long (its outputs become visible to
#: read_committed readers when it commits: this is the latency it adds).
TRANSACTION_INTERVAL_S = 0.5
#: exactly-once: a member killed mid-transaction blocks read_committed readers of the output
#: partitions until the broker aborts it: after this long (Kafka's default is 60 s), plus the
#: broker's abort check interval (2 s on the lab's brokers).
TRANSACTION_TIMEOUT_MS = 10_000

#: Producer settings: acks=all; fail a send within seconds rather than minutes. Outputs
#: linger 50 ms: at 10,000 posts/s that makes batches ~10x fuller than 5 ms would, and a
#: produce request costs the broker about as much CPU per batch as per record in it
#: (measured: 17.6 µs of broker CPU per record at linger 5 ms, 8.8 µs at 50 ms). The
#: end-to-end figure (``created_at`` to ``moderated_at``) does not include it.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 50,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 25_000,
    "bootstrap_timeout_ms": 3000,  # no broker: fail fast, retry with back-off (stop stays prompt)
}


def topic_names(prefix: str = "", **overrides: str) -> dict[str, str]:
    """The topic mapping (keys :data:`TOPIC_KEYS`), each name prefixed, then ``overrides``.

    >>> topic_names("t1-")["results"]
    't1-moderation.results'
    """
    unknown = set(overrides) - set(TOPIC_KEYS)
    if unknown:
        raise ValueError(f"unknown topic keys {sorted(unknown)}; known: {TOPIC_KEYS}")
    return {k: overrides.get(k, f"{prefix}{v}") for k, v in DEFAULT_TOPICS.items()}


def user_kafka_config(bootstrap_servers: str | list[str] | None,
                      client_config: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(client_config or {})
    if bootstrap_servers is not None:
        cfg["bootstrap_servers"] = bootstrap_servers
    return cfg


def kafka_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg``, with the lab broker's settings under it when it names no bootstrap servers
    (that starts the lab's broker if none runs)."""
    if "bootstrap_servers" not in cfg:
        cfg = {**broker.ensure().client_config(), **cfg}
    return cfg


def check_kafka_settings(client: str, kafka_config: Mapping[str, Any], *, group_id: str,
                         topics: Mapping[str, str], max_poll_records: int) -> None:
    """Every Kafka setting a stage will build its clients with (see
    :meth:`lab_kit.moderation.stage.Stage._new_clients`) and every topic name, checked before
    anything starts: ``ValueError`` naming the first bad one. kafka-python would refuse most of
    them only after connecting, or not at all (then posts are consumed and never settle)."""
    for key, name in topics.items():
        check_topic_name(name, f"topics[{key!r}]")
    check_settings(client, kafka_config, group_id=group_id, max_poll_records=max_poll_records,
                   session_timeout_ms=SESSION_TIMEOUT_MS,
                   heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                   producer_settings=PRODUCER_DEFAULTS)


def check_guarantee(guarantee: Any) -> str:
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {GUARANTEES}, got {guarantee!r}")
    return guarantee


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)
