"""Topic layout decisions without a broker (issue 22, item 6): the cluster's configured size,
the check of existing topics, and no auto-creation in any of the lab's broker configs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from kafka.admin import NewTopic

from lab_kit.broker.docker import kafka_env
from lab_kit.broker.local import _server_properties
from lab_kit.topics import (
    CLUSTER_SIZE_ENV,
    Mismatch,
    TopicMismatchError,
    TopicMismatchWarning,
    ack_is_durable,
    compare,
    configured_size,
    declared_size,
    replication_for,
    report,
    state_file_size,
)

REPO = Path(__file__).resolve().parents[2]


# --- the configured size ------------------------------------------------------------------------
def test_a_node_down_does_not_shrink_the_replication() -> None:
    """3 nodes set up, 2 registered (one never came up): RF 3 and min ISR 2, not 1 and 1."""
    n, source = configured_size(declared=None, state=3, registered=2)
    assert (n, source) == (3, "the lab's broker state")
    assert replication_for(n) == (3, 2)


@pytest.mark.parametrize(("declared", "state", "registered", "expected"), [
    (None, None, 1, 1),  # a single broker, nothing declared
    (None, None, 3, 3),  # an external cluster: fenced (down) brokers count too
    (3, None, 1, 3),  # LAB_CLUSTER_SIZE=3 for an external cluster with two brokers away
    (1, None, 3, 3),  # a setting cannot make replication lower than the brokers there are
    (None, 1, 1, 1),
])
def test_configured_size_is_the_largest_known(declared, state, registered, expected) -> None:
    assert configured_size(declared=declared, state=state, registered=registered)[0] == expected


@pytest.mark.parametrize("bad", ["0", "-1", "three", "2.5", "1001", True])
def test_a_bad_declared_size_names_the_setting_and_the_limit(bad) -> None:
    with pytest.raises(ValueError, match=rf"^{CLUSTER_SIZE_ENV}: .*1 to 1000, got"):
        declared_size(bad)


def test_a_declared_size_is_read() -> None:
    assert declared_size("3") == 3 and declared_size(" 3 ") == 3
    assert declared_size(None) is None and declared_size("") is None
    with pytest.raises(ValueError, match="^cluster_size: "):
        declared_size(0, "cluster_size")


def _state(tmp_path: Path, state: dict) -> Path:
    (tmp_path / "broker.json").write_text(json.dumps(state))
    return tmp_path


def test_the_local_brokers_state_gives_its_node_count(tmp_path: Path) -> None:
    d = _state(tmp_path, {"backend": "local", "nodes": [{"id": i, "port": 19090 + i}
                                                        for i in (1, 2, 3)]})
    assert state_file_size("127.0.0.1:19092", d) == 3
    assert state_file_size("localhost:19093,127.0.0.1:19091", d) == 3
    assert state_file_size("127.0.0.1:9092", d) is None  # another broker
    assert state_file_size("kafka.example:19092", d) is None  # not ours: not on loopback


def test_the_docker_brokers_state_is_one_node(tmp_path: Path) -> None:
    d = _state(tmp_path, {"backend": "docker", "port": 29092})
    assert state_file_size("127.0.0.1:29092", d) == 1
    assert state_file_size("127.0.0.1:29093", d) is None


def test_no_or_a_broken_state_file_says_nothing(tmp_path: Path) -> None:
    assert state_file_size("127.0.0.1:9092", tmp_path) is None
    (tmp_path / "broker.json").write_text("{not json")
    assert state_file_size("127.0.0.1:9092", tmp_path) is None


# --- existing topics checked -------------------------------------------------------------------
def _wanted(name: str, parts: int, rf: int, isr: int) -> dict[str, NewTopic]:
    return {name: NewTopic(name, parts, rf, topic_configs={"min.insync.replicas": str(isr)})}


def test_every_difference_is_reported() -> None:
    got = compare(_wanted("posts", 6, 3, 2),
                  {"posts": {"partitions": 3, "replication_factor": 1, "min_insync_replicas": 1}})
    assert [(m.setting, m.wanted, m.actual) for m in got] == [
        ("partitions", 6, 3), ("replication_factor", 3, 1), ("min_insync_replicas", 2, 1)]
    assert "topic 'posts': partitions is 3, the lab expects 6" in str(got[0])
    assert "auto-created" in str(got[0])
    assert "min.insync.replicas=2" in str(got[2])  # the command that fixes it


def test_a_topic_as_wanted_is_not_reported() -> None:
    assert compare(_wanted("posts", 6, 1, 1), {"posts": {
        "partitions": 6, "replication_factor": 1, "min_insync_replicas": 1}}) == []


def test_a_missing_topic_is_one_clear_line() -> None:
    got = compare(_wanted("posts", 6, 1, 1), {})
    assert len(got) == 1 and str(got[0]) == "topic 'posts' does not exist (ensure_topics " \
                                            "creates it)"


def test_a_mismatch_warns_or_raises() -> None:
    m = [Mismatch("posts", "partitions", 6, 3)]
    with pytest.warns(TopicMismatchWarning, match="partitions is 3"):
        report(m, strict=False)
    with pytest.raises(TopicMismatchError, match="partitions is 3") as info:
        report(m, strict=True)
    assert info.value.mismatches == m
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report([], strict=True)  # nothing to say: no warning, no error


# --- no auto-creation, in every broker config the lab ships ------------------------------------
def test_the_local_broker_does_not_create_topics_on_first_use() -> None:
    node = {"id": 1, "port": 9092, "controller_port": 9093, "log_dir": "/tmp/x"}
    for n_nodes in (1, 3):
        props = dict(line.split("=", 1) for line in
                     _server_properties(node, "1@127.0.0.1:9093", n_nodes).splitlines())
        assert props["auto.create.topics.enable"] == "false"


def test_the_docker_broker_and_image_do_not_create_topics_on_first_use() -> None:
    assert kafka_env(9092)["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    props = (REPO / "docker" / "kafka" / "server.properties").read_text().splitlines()
    assert "auto.create.topics.enable=false" in props


def test_no_compose_broker_creates_topics_on_first_use() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    brokers = {k: v for k, v in services.items() if k.startswith("kafka") and k != "kafka-ui"}
    assert set(brokers) == {"kafka", "kafka-1", "kafka-2", "kafka-3"}
    for name, svc in brokers.items():
        assert svc["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name


@pytest.mark.parametrize(("acks", "rf", "isr", "durable"), [
    ("all", 1, 1, False),  # the lab's one broker: one copy, acknowledged only
    ("all", 3, 1, False),  # replicated, but an ack may rest on the leader alone
    ("all", 3, 2, True),  # every ack is on two brokers at least
    (-1, 2, 2, True),  # -1 is acks=all
    ("1", 3, 2, False),  # the leader alone acks
    (0, 3, 2, False),  # nobody acks
])
def test_an_ack_is_durable_only_with_acks_all_on_two_insync_replicas(acks, rf, isr, durable):
    assert ack_is_durable(acks, rf, isr) is durable
