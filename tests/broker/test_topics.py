"""Topics against a real broker (issue 22, item 6): existing topics are checked, replication
follows the cluster's configured size, and the lab's brokers create no topic on first use."""

from __future__ import annotations

import time
import uuid
import warnings

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import InvalidReplicationFactorError, KafkaTimeoutError

from lab_kit.broker import local as local_mod
from lab_kit.producer import AsyncPostProducer, BrokerUnavailableError
from lab_kit.topics import (
    TopicMismatchError,
    TopicMismatchWarning,
    broker_auto_creates_topics,
    check_topics,
    describe,
    ensure_topics,
)
from tests.kafka_helpers import create_topic


def _topics(cfg: dict) -> set[str]:
    admin = KafkaAdminClient(**cfg)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_a_topic_with_the_wrong_settings_is_reported(client_config, topic_name):
    create_topic(client_config, topic_name, partitions=1, isr=1)  # as if made by someone else
    with pytest.warns(TopicMismatchWarning) as caught:
        got = ensure_topics(client_config, names=(topic_name,), partitions={topic_name: 3})
    assert [str(w.message) for w in caught] == [
        f"topic '{topic_name}': partitions is 1, the lab expects 3 (was it auto-created by a "
        "client before ensure_topics ran, or made by an earlier run with other settings? "
        "Delete it and run again)"]
    assert got[topic_name]["partitions"] == 1  # what the topic is, not what was wanted
    with pytest.raises(TopicMismatchError) as info:
        ensure_topics(client_config, names=(topic_name,), partitions={topic_name: 3},
                      strict=True)
    assert [(m.setting, m.wanted, m.actual) for m in info.value.mismatches] == [
        ("partitions", 3, 1)]


def test_replication_and_min_isr_below_the_configured_size_are_reported(client_config,
                                                                        topic_name):
    create_topic(client_config, topic_name, partitions=3)
    got = check_topics(client_config, names=(topic_name,), partitions={topic_name: 3},
                       cluster_size=3)
    assert [(m.setting, m.wanted, m.actual) for m in got] == [
        ("replication_factor", 3, 1), ("min_insync_replicas", 2, 1)]


def test_a_topic_ensure_topics_made_is_not_reported(client_config, topic_name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TopicMismatchWarning)
        ensure_topics(client_config, names=(topic_name,), partitions={topic_name: 2})
        ensure_topics(client_config, names=(topic_name,), partitions={topic_name: 2})
    assert check_topics(client_config, names=(topic_name,), partitions={topic_name: 2}) == []


def test_a_min_isr_set_by_hand_is_read_back(client_config, topic_name):
    admin = KafkaAdminClient(**client_config)
    try:
        admin.create_topics([NewTopic(topic_name, 2, 1,
                                      topic_configs={"min.insync.replicas": "2"})])
    finally:
        admin.close()
    got = check_topics(client_config, names=(topic_name,), partitions={topic_name: 2})
    assert [(m.setting, m.wanted, m.actual) for m in got] == [("min_insync_replicas", 1, 2)]


def test_replication_is_not_lowered_to_the_brokers_that_are_up(client_config, topic_name):
    """A cluster meant to have 3 brokers with 1 up: creating a topic fails with the reason,
    instead of a topic with replication 1 that nobody notices."""
    with pytest.raises(InvalidReplicationFactorError, match="meant to have 3 brokers"):
        ensure_topics(client_config, names=(topic_name,), cluster_size=3, timeout_s=10)
    assert topic_name not in _topics(client_config)


def test_checking_creates_nothing(client_config, topic_name):
    got = check_topics(client_config, names=(topic_name,))
    assert [str(m) for m in got] == [f"topic '{topic_name}' does not exist (ensure_topics "
                                     "creates it)"]
    assert topic_name not in _topics(client_config)


# --- a broker set up by this lab_kit: no topic is created on first use ------------------------
@pytest.fixture(scope="module")
def fresh_broker(tmp_path_factory):
    """A broker set up now (the session's broker may predate auto.create.topics.enable=false)."""
    b = local_mod.up(nodes=1, state_dir=tmp_path_factory.mktemp("fresh-broker"))
    yield b
    b.down(purge=True)


def test_producing_to_a_missing_topic_does_not_create_it(fresh_broker):
    cfg = fresh_broker.client_config()
    assert broker_auto_creates_topics(cfg) is False
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(**cfg, max_block_ms=2000)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(missing, b"hello").get(timeout=10)
    finally:
        producer.close(timeout=2)
    consumer = KafkaConsumer(**cfg, group_id=f"g-{missing}")
    try:
        consumer.subscribe([missing + ".c"])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=300)
    finally:
        consumer.close()
    assert not {missing, missing + ".c"} & _topics(cfg)


def test_ensure_topics_still_creates_the_lab_topics(fresh_broker):
    """The control of the test above: the lab creates what it needs, as it wants it."""
    cfg = fresh_broker.client_config()
    ensure_topics(cfg, strict=True)
    assert describe(cfg)["posts"] == {"partitions": 6, "replication_factor": 1,
                                      "min_insync_replicas": 1}


# --- three nodes, not all up -------------------------------------------------------------------
@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_a_three_node_cluster_with_a_node_down_gets_rf3_or_a_clear_error(tmp_path_factory,
                                                                       monkeypatch):
    state = tmp_path_factory.mktemp("cluster-one-down")
    monkeypatch.setenv("LAB_STATE_DIR", str(state))  # the lab's broker state: 3 nodes
    cluster = local_mod.LocalBroker(state)
    cluster.setup(nodes=3)
    try:
        cluster.start(1, wait=False)
        cluster.start(2)  # a quorum: 2 of 3 brokers registered, node 3 never came up
        cfg = cluster.client_config()
        first = f"two-up-{uuid.uuid4().hex[:6]}"
        with pytest.raises(InvalidReplicationFactorError,
                           match=r"meant to have 3 brokers \(the lab's broker state\) and 2 "
                                 "are up"):
            ensure_topics(cfg, names=(first,), timeout_s=30)  # not a silent RF 1
        assert first not in _topics(cfg)
        cluster.start(3)
        cluster.stop(3)  # registered once, now down (fenced)
        monkeypatch.setenv("LAB_STATE_DIR", str(state / "elsewhere"))  # describe_cluster only
        second = f"one-down-{uuid.uuid4().hex[:6]}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", TopicMismatchWarning)
            got = ensure_topics(cfg, names=(second,), partitions={second: 3}, timeout_s=60)
        assert got[second] == {"partitions": 3, "replication_factor": 3,
                               "min_insync_replicas": 2}
    finally:
        cluster.down(purge=True)


def test_a_producer_for_a_missing_topic_says_so(fresh_broker):
    """Without auto-creation a missing topic times out like a dead broker: the error names it."""
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BrokerUnavailableError, match=f"topic '{missing}' has no metadata"):
        AsyncPostProducer(fresh_broker.bootstrap_servers, missing, max_block_ms=2000)
    assert missing not in _topics(fresh_broker.client_config())
