"""docker-compose.yml checked without a Docker daemon (the live compose tests are in
test_docker_compose.py), plus a Docker backend round trip (skips without a daemon)."""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

import pytest
import yaml

from lab_kit import lab_env
from lab_kit.broker.docker import DockerBroker, docker_available, kafka_env

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _defaults(value):
    """What compose makes of ``${VAR:-default}`` when VAR is unset, through the whole file."""
    if isinstance(value, dict):
        return {k: _defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_defaults(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return value


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return _defaults(raw_compose)


def _kafka_services(compose: dict) -> dict:
    return {k: v for k, v in compose["services"].items() if v["image"].startswith("apache/kafka")}


def _listener_ports(value: str) -> dict[str, int]:
    out = {}
    for part in value.split(","):
        name, _, addr = part.partition("://")
        out[name] = int(addr.rsplit(":", 1)[1])
    return out


def test_every_kafka_image_is_the_pinned_version_unless_overridden(compose, raw_compose):
    services = _kafka_services(compose)
    assert set(services) == {"kafka", "kafka-1", "kafka-2", "kafka-3"}
    assert {s["image"] for s in services.values()} == {lab_env.KAFKA_IMAGE}
    raw = {raw_compose["services"][k]["image"] for k in services}
    assert raw == {f"${{LAB_KAFKA_IMAGE:-{lab_env.KAFKA_IMAGE}}}"}


def test_profiles_cluster_is_three_nodes_not_four(compose):
    services = compose["services"]
    assert services["kafka"]["profiles"] == ["single"]
    cluster = {k for k, v in services.items() if "cluster" in v.get("profiles", [])}
    assert cluster == {"kafka-1", "kafka-2", "kafka-3"}
    assert all("profiles" in v for v in services.values()), "a profile-less service always runs"
    assert services["kafka-ui"]["profiles"] == ["ui"]
    assert services["kafka-ui"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_cluster_id_is_a_valid_kafka_cluster_id(compose):
    ids = {s["environment"]["CLUSTER_ID"] for s in _kafka_services(compose).values()}
    assert len(ids) == 1
    cid = ids.pop()
    raw = base64.urlsafe_b64decode(cid + "==")
    assert len(cid) == 22 and len(raw) == 16, cid  # 22 base64url characters of a UUID
    uuid.UUID(bytes=raw)


def test_heap_limits_and_healthchecks(compose):
    for name, svc in _kafka_services(compose).items():
        heap = svc["environment"]["KAFKA_HEAP_OPTS"]
        xmx = re.search(r"-Xmx(\d+)m", heap)
        assert xmx and int(xmx.group(1)) <= 512, name
        assert svc["healthcheck"]["test"][0] == "CMD", name


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
        # brokers reach each other on their own listener, never on the host-facing one
        inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
        assert inter in listeners and "127.0.0.1" not in env["KAFKA_ADVERTISED_LISTENERS"] \
            .split(inter + "://")[1].split(",")[0], name
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
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                "KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS",
                "KAFKA_INTER_BROKER_LISTENER_NAME", "KAFKA_LOG_DIRS",
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"):
        assert ours[key] == env[key], key




@pytest.mark.docker
@pytest.mark.timeout(600)
def test_docker_backend_round_trip(tmp_path):
    """Records produced to the container's broker are read back, also after pause/resume."""
    from tests.kafka_helpers import create_topic, produce_values, read_all

    ok, why = docker_available()
    if not ok:
        pytest.skip(f"Docker backend not testable here: {why}")
    b = DockerBroker(tmp_path).up()
    try:
        assert b.nodes()[0].state == "running"
        assert b.kafka_version == lab_env.KAFKA_VERSION
        cfg = b.client_config()
        create_topic(cfg, "round-trip", partitions=1)
        before = [f"before-{i}".encode() for i in range(20)]
        produce_values(cfg, "round-trip", before)
        assert [r.value for r in read_all(cfg, "round-trip")] == before
        b.pause()
        assert b.nodes()[0].state == "paused"
        b.resume()
        assert b.nodes()[0].state == "running"
        after = [f"after-{i}".encode() for i in range(20)]
        produce_values(cfg, "round-trip", after)
        assert [r.value for r in read_all(cfg, "round-trip")] == before + after
    finally:
        b.down(purge=True)
