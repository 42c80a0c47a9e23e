"""docker-compose.yml checked without a Docker daemon, plus the Docker backend (skips)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lab_kit import config
from lab_kit.broker.docker import DockerBroker, docker_available, kafka_env

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _kafka_services(compose: dict) -> dict:
    return {k: v for k, v in compose["services"].items() if v["image"].startswith("apache/kafka")}


def _listener_ports(value: str) -> dict[str, int]:
    out = {}
    for part in value.split(","):
        name, _, addr = part.partition("://")
        out[name] = int(addr.rsplit(":", 1)[1])
    return out


def test_every_kafka_image_is_the_pinned_version(compose):
    services = _kafka_services(compose)
    assert set(services) == {"kafka", "kafka-1", "kafka-2", "kafka-3"}
    assert {s["image"] for s in services.values()} == {config.KAFKA_IMAGE}


def test_profiles_single_node_by_default_cluster_and_ui_opt_in(compose):
    services = compose["services"]
    assert "profiles" not in services["kafka"]
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        assert services[name]["profiles"] == ["cluster"]
    assert services["kafka-ui"]["profiles"] == ["ui"]


def test_kraft_settings_are_consistent(compose):
    services = _kafka_services(compose)
    cluster = {k: v for k, v in services.items() if k != "kafka"}
    ids = {int(v["environment"]["KAFKA_NODE_ID"]) for v in cluster.values()}
    assert ids == {1, 2, 3}
    for name, svc in services.items():
        env = svc["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        listeners = _listener_ports(env["KAFKA_LISTENERS"])
        advertised = _listener_ports(env["KAFKA_ADVERTISED_LISTENERS"])
        assert "CONTROLLER" in listeners and "CONTROLLER" not in advertised
        protocol_map = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                            .split(","))
        assert set(listeners) <= set(protocol_map), name
        # what clients on the host are told must be the port published on 127.0.0.1
        published = {int(p.split(":")[-1]) for p in svc["ports"]}
        host_facing = {port for lst, port in advertised.items()
                       if "127.0.0.1" in env["KAFKA_ADVERTISED_LISTENERS"].split(lst + "://")[1]
                       .split(",")[0]}
        assert host_facing and host_facing <= published, name
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), "loopback only"
        rf = int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"])
        if name == "kafka":
            assert voters == ["1@localhost:9093"] and rf == 1
        else:
            assert len(voters) == 3 and rf == 3
            assert {v.split("@")[1].split(":")[0] for v in voters} == set(cluster)
            assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"


def test_docker_backend_env_matches_compose_single_node(compose):
    env = compose["services"]["kafka"]["environment"]
    ours = kafka_env(9092)
    for key in ("KAFKA_PROCESS_ROLES", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_CONTROLLER_QUORUM_VOTERS"):
        assert ours[key] == env[key], key


@pytest.mark.docker
def test_docker_backend_round_trip(tmp_path):
    ok, why = docker_available()
    if not ok:
        pytest.skip(f"Docker backend not testable here: {why}")
    b = DockerBroker(tmp_path).up()
    try:
        assert b.nodes()[0].state == "running"
        assert b.kafka_version == config.KAFKA_VERSION
        b.pause()
        assert b.nodes()[0].state == "paused"
        b.resume()
        assert b.nodes()[0].state == "running"
    finally:
        b.down(purge=True)
