"""The StreamSocial topics, in one place, and an idempotent ``ensure_topics()``.

Replication fits the cluster's *configured* size, not the brokers that happen to be up: on 1
node every topic has RF 1; on 3 nodes RF 3 with ``min.insync.replicas=2``, so an
``acks=all`` write survives the loss of any one node, even for a topic created while one node
is down. The size is the largest of (:func:`cluster_size_of`):

* ``cluster_size=`` passed by the caller, or the ``LAB_CLUSTER_SIZE`` setting (an external
  cluster: say how many brokers it is meant to have);
* the lab's broker state (``broker.json`` in ``LAB_STATE_DIR``): the nodes it was started with;
* the brokers the cluster has registered, fenced (down) ones included (``describe_cluster``).

Existing topics are checked (partitions, replication factor, ``min.insync.replicas``): a
mismatch is a :class:`TopicMismatchWarning`, or a :class:`TopicMismatchError` with
``strict=True``. The lab's brokers do not create topics on first use
(``auto.create.topics.enable=false``): a producer started before ``ensure_topics`` must not
create ``posts`` with the broker's default partitions.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from lab_kit import lab_env

log = logging.getLogger(__name__)

CLUSTER_SIZE_ENV = "LAB_CLUSTER_SIZE"
MAX_CLUSTER_SIZE = 1000
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


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


class TopicMismatchWarning(UserWarning):
    """An existing topic is not laid out as the lab expects (see :class:`Mismatch`)."""


class TopicMismatchError(RuntimeError):
    """``strict=True``: existing topics are not laid out as the lab expects."""

    def __init__(self, mismatches: list[Mismatch]):
        self.mismatches = mismatches
        super().__init__("; ".join(str(m) for m in mismatches))


@dataclass(frozen=True)
class Mismatch:
    topic: str
    setting: str  # "partitions", "replication_factor" or "min_insync_replicas"
    wanted: int
    actual: int | None

    def __str__(self) -> str:
        hint = {
            "partitions": "was it auto-created by a client before ensure_topics ran, or made "
                          "by an earlier run with other settings? Delete it and run again",
            "replication_factor": "it was created while fewer brokers were up, or elsewhere: "
                                  "reassign its replicas, or delete and re-create it",
            "min_insync_replicas": "set it with kafka-configs.sh --alter --entity-type topics "
                                   f"--entity-name {self.topic} --add-config "
                                   f"min.insync.replicas={self.wanted}",
        }[self.setting]
        if self.actual is None:
            return f"topic {self.topic!r} does not exist (ensure_topics creates it)"
        return (f"topic {self.topic!r}: {self.setting} is {self.actual}, the lab expects "
                f"{self.wanted} ({hint})")


@dataclass(frozen=True)
class ClusterSize:
    configured: int  # the nodes the cluster is meant to have
    live: int  # brokers registered and not fenced (up) right now
    source: str  # where ``configured`` came from


def replication_for(n_brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``n_brokers``."""
    if n_brokers >= 3:
        return 3, 2
    return 1, 1


def declared_size(value: int | str | None, name: str = CLUSTER_SIZE_ENV) -> int | None:
    """A cluster size given by a caller or a setting: None if not given; else a whole number
    1..1000, or a ``ValueError`` naming the setting and the limit."""
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or n > MAX_CLUSTER_SIZE or str(n) != str(value).strip():
        raise ValueError(f"{name}: must be a whole number of brokers from 1 to "
                         f"{MAX_CLUSTER_SIZE}, got {value!r}")
    return n


def state_file_size(bootstrap_servers: str, state_dir: Path | None = None) -> int | None:
    """The nodes the lab's own broker was started with, if ``bootstrap_servers`` is that
    broker (a loopback address on one of its ports); None otherwise."""
    path = Path(state_dir or lab_env.state_dir()) / "broker.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    nodes = state.get("nodes") if state.get("backend") == "local" else None
    ports = ({n.get("port") for n in nodes if isinstance(n, dict)} if isinstance(nodes, list)
             else {state.get("port")} if state.get("backend") == "docker" else set())
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if host in _LOOPBACK and port.isdigit() and int(port) in ports:
            return len(nodes) if isinstance(nodes, list) else 1
    return None


def configured_size(*, declared: int | None, state: int | None,
                    registered: int) -> tuple[int, str]:
    """The cluster's configured size and where it came from: the largest of what the caller
    or a setting declared, the lab's broker state, and the brokers registered (down or up)."""
    candidates = [(registered, "registered brokers")]
    if state is not None:
        candidates.append((state, "the lab's broker state"))
    if declared is not None:
        candidates.append((declared, f"cluster_size / {CLUSTER_SIZE_ENV}"))
    return max(candidates, key=lambda c: c[0])


def cluster_size_of(admin: KafkaAdminClient, bootstrap_servers: str,
                    declared: int | None = None) -> ClusterSize:
    """How many nodes the cluster is meant to have (see the module's docstring)."""
    brokers = admin.describe_cluster()["brokers"]
    live = sum(1 for b in brokers if not b.get("is_fenced"))
    if declared is None:
        declared = declared_size(os.environ.get(CLUSTER_SIZE_ENV))
    n, source = configured_size(declared=declared, state=state_file_size(bootstrap_servers),
                                registered=len(brokers))
    return ClusterSize(n, live, source)


def _bootstrap_string(cfg: dict) -> str:
    servers = cfg.get("bootstrap_servers", "")
    return servers if isinstance(servers, str) else ",".join(servers)


def _admin(client_config: dict | str) -> tuple[KafkaAdminClient, str]:
    cfg = {"bootstrap_servers": client_config} if isinstance(client_config, str) \
        else dict(client_config)
    return KafkaAdminClient(**cfg, request_timeout_ms=10000), _bootstrap_string(cfg)


def ensure_topics(client_config: dict | str, names: tuple[str, ...] = TOPIC_NAMES,
                  timeout_s: float = 30, partitions: dict[str, int] | None = None,
                  configs: dict[str, dict[str, str]] | None = None, *,
                  cluster_size: int | None = None, strict: bool = False) -> dict:
    """Create the lab's topics if missing; wait until every partition has a leader; check
    the existing ones.

    ``client_config`` is a broker's ``client_config()`` or a bootstrap string; ``configs``
    adds topic settings per name (e.g. ``{"t": {"max.message.bytes": "2048"}}``);
    ``cluster_size`` declares how many brokers the cluster is meant to have. Returns
    ``{topic: {"partitions": n, "replication_factor": rf, "min_insync_replicas": isr}}`` as
    the topics are; a topic not as wanted is a :class:`TopicMismatchWarning` (or, with
    ``strict=True``, a :class:`TopicMismatchError` naming every difference).
    """
    declared = declared_size(cluster_size, "cluster_size")
    admin, bootstrap = _admin(client_config)
    try:
        size = cluster_size_of(admin, bootstrap, declared)
        wanted = _wanted(names, size, partitions, configs)
        existing = set(admin.list_topics())
        missing = [t for t in wanted.values() if t.name not in existing]
        if missing:
            _create(admin, missing, size, timeout_s)
        actual = _describe(admin, list(names), timeout_s)
        mismatches = compare(wanted, actual)
        report(mismatches, strict)
        return actual
    finally:
        admin.close()


def _wanted(names: tuple[str, ...], size: ClusterSize, partitions: dict[str, int] | None,
            configs: dict[str, dict[str, str]] | None) -> dict[str, NewTopic]:
    specs = {t.name: t for t in TOPICS}
    rf, isr = replication_for(size.configured)
    if size.live < size.configured:
        log.warning("%d of the cluster's %d brokers are up (%s): topics get replication %d "
                    "anyway, under-replicated until the others return", size.live,
                    size.configured, size.source, rf)
    wanted = {}
    for name in names:
        n_parts = (partitions or {}).get(name) or (specs[name].partitions if name in specs
                                                    else 3)
        wanted[name] = NewTopic(name, n_parts, rf, topic_configs={
            "min.insync.replicas": str(isr), **(configs or {}).get(name, {})})
    return wanted


def _create(admin: KafkaAdminClient, missing: list[NewTopic], size: ClusterSize,
            timeout_s: float) -> None:
    try:
        admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
    except TopicAlreadyExistsError:
        pass  # created concurrently by another process: fine (checked like any other)
    except InvalidReplicationFactorError as exc:
        raise InvalidReplicationFactorError(
            f"cannot create {[t.name for t in missing]} with replication "
            f"{missing[0].replication_factor}: the cluster is meant to have "
            f"{size.configured} brokers ({size.source}) and {size.live} are up. Start the "
            f"missing brokers (`python -m lab_kit broker start`), or declare the real size "
            f"with {CLUSTER_SIZE_ENV}") from exc


def compare(wanted: dict[str, NewTopic], actual: dict[str, dict]) -> list[Mismatch]:
    """Every way the topics as they are differ from the topics as wanted."""
    out = []
    for name, t in wanted.items():
        have = actual.get(name)
        if have is None:
            out.append(Mismatch(name, "partitions", t.num_partitions, None))
            continue
        isr = int(t.topic_configs.get("min.insync.replicas", 1))
        for setting, want in (("partitions", t.num_partitions),
                              ("replication_factor", t.replication_factor),
                              ("min_insync_replicas", isr)):
            if have.get(setting) != want:
                out.append(Mismatch(name, setting, want, have.get(setting)))
    return out


def report(mismatches: list[Mismatch], strict: bool) -> None:
    """Raise (``strict``) or warn, once per mismatch, in words a student can act on."""
    if mismatches and strict:
        raise TopicMismatchError(mismatches)
    for m in mismatches:
        log.warning("%s", m)
        warnings.warn(TopicMismatchWarning(str(m)), stacklevel=3)


def check_topics(client_config: dict | str, names: tuple[str, ...] = TOPIC_NAMES,
                 partitions: dict[str, int] | None = None, *, cluster_size: int | None = None,
                 timeout_s: float = 15) -> list[Mismatch]:
    """Check existing topics without creating any: every difference from what
    :func:`ensure_topics` would create (a missing topic has ``actual=None``)."""
    declared = declared_size(cluster_size, "cluster_size")
    admin, bootstrap = _admin(client_config)
    try:
        wanted = _wanted(names, cluster_size_of(admin, bootstrap, declared), partitions, None)
        present = [n for n in names if n in set(admin.list_topics())]
        return compare(wanted, _describe(admin, present, timeout_s) if present else {})
    finally:
        admin.close()


def broker_auto_creates_topics(client_config: dict | str) -> bool:
    """True if the answering broker creates a topic when a client first asks for it."""
    admin, _ = _admin(client_config)
    try:
        node = admin.describe_cluster()["brokers"][0]["broker_id"]
        res = admin.describe_configs([ConfigResource(
            ConfigResourceType.BROKER, str(node), {"auto.create.topics.enable": None})],
            config_filter="all")
        entries = res.get("broker", {}).get(str(node), {})
        return str(entries["auto.create.topics.enable"]["value"]).lower() == "true"
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


def _describe(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> dict:
    out = {}
    for t in wait_for_leaders(admin, names, timeout_s):
        out[t["name"]] = {"partitions": len(t["partitions"]),
                          "replication_factor": len(t["partitions"][0]["replica_nodes"])}
    res = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n, {"min.insync.replicas": None})
         for n in names], config_filter="all")
    for name, entries in res.get("topic", {}).items():
        if name in out and "min.insync.replicas" in entries:
            out[name]["min_insync_replicas"] = int(entries["min.insync.replicas"]["value"])
    return out


def ack_is_durable(acks: Any, replication_factor: int, min_insync_replicas: int) -> bool:
    """Whether Kafka's ack of a record is **durable** in the lab's vocabulary: with
    ``acks=all`` the leader acks once every in-sync replica has the record, and with
    ``min.insync.replicas`` >= 2 on a topic of at least two replicas that is two brokers or
    more, so the record survives the loss of any one. On the lab's one broker an ack is one
    copy in one page cache: **acknowledged**, not durable."""
    return (str(acks).lower() in ("all", "-1") and replication_factor >= 2
            and min_insync_replicas >= 2)


def acks_durable_on(client_config: dict | str, topic: str, acks: Any,
                    timeout_s: float = 5.0) -> bool:
    """:func:`ack_is_durable` for ``topic`` as the broker describes it now (raises what the
    admin client raises, e.g. when no broker answers within ``timeout_s``)."""
    d = describe(client_config, (topic,), timeout_s)[topic]
    return ack_is_durable(acks, d["replication_factor"], d.get("min_insync_replicas", 1))


def describe(client_config: dict | str, names: tuple[str, ...] = TOPIC_NAMES,
             timeout_s: float = 15) -> dict:
    """{topic: {"partitions": n, "replication_factor": rf, "min_insync_replicas": isr}}.

    Waits (up to ``timeout_s``) until the answering broker knows every partition's leader.
    """
    admin, _ = _admin(client_config)
    try:
        return _describe(admin, list(names), timeout_s)
    finally:
        admin.close()
