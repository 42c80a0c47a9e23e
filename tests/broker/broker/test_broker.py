"""The broker backends against real Kafka JVMs: round trip, kill -9, pause, 3-node failover."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from lab_kit import broker as lab_broker
from lab_kit.broker import BrokerError, ExternalBroker, LocalBroker
from lab_kit.broker import local as local_mod
from lab_kit.topics import TOPIC_NAMES, describe, ensure_topics
from tests.kafka_helpers import create_topic, read_all

pytestmark = pytest.mark.timeout(240)


def _our_jvms(state_dir) -> list[int]:
    """Pids of live kafka.Kafka JVMs whose config lives under ``state_dir``."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if (p.info["status"] != psutil.STATUS_ZOMBIE and "kafka.Kafka" in cmd
                and any(str(state_dir) in c for c in cmd)):
            out.append(p.info["pid"])
    return out


def _produce(cfg: dict, topic: str, n: int, prefix: str) -> list[bytes]:
    producer = KafkaProducer(**cfg, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, f"{prefix}-{i}".encode()) for i in range(n)]
        producer.flush(timeout=30)
        return [f"{prefix}-{i}".encode() for i, f in enumerate(futures) if f.succeeded()]
    finally:
        producer.close(timeout=5)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    """A single-node broker of this module's own, so faults do not disturb other tests."""
    state = tmp_path_factory.mktemp("fault-broker")
    b = local_mod.up(nodes=1, state_dir=state)
    yield b
    b.down(purge=True)
    assert _our_jvms(state) == []


# --- single node ---------------------------------------------------------------------------
def test_round_trip_on_shared_broker(client_config, topic_name):
    create_topic(client_config, topic_name)
    sent = _produce(client_config, topic_name, 50, "rt")
    assert len(sent) == 50
    got = [r.value for r in read_all(client_config, topic_name)]
    assert got == sent  # one partition: order kept, nothing lost or duplicated


def test_status_fields(kafka_broker):
    st = kafka_broker.status()
    assert st["backend"] in ("local", "docker", "external")
    assert set(st) >= {"backend", "kafka_version", "bootstrap_servers", "data_dir", "nodes"}
    for n in st["nodes"]:
        assert n["state"] in lab_broker.NODE_STATES
        assert set(n) == {"id", "state", "pid", "port"}


def test_ensure_topics_is_idempotent_and_fits_one_node(client_config):
    first = ensure_topics(client_config)
    second = ensure_topics(client_config)
    assert first == second
    live = describe(client_config)
    assert set(live) == set(TOPIC_NAMES)
    assert all(v["replication_factor"] == 1 and v["min_insync_replicas"] == 1
               for v in live.values())


def test_acked_messages_survive_kill_9_and_restart(own_broker, tmp_path):
    cfg = own_broker.client_config()
    create_topic(cfg, "durable")
    acked = _produce(cfg, "durable", 300, "k9")
    assert len(acked) == 300
    pid = own_broker.nodes()[0].pid
    own_broker.kill()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert own_broker.nodes()[0].state == "stopped"
    own_broker.start()
    assert own_broker.nodes()[0].state == "running"
    got = {r.value for r in read_all(cfg, "durable")}
    assert set(acked) <= got


def test_pause_makes_sends_time_out_and_resume_delivers(own_broker):
    cfg = own_broker.client_config()
    create_topic(cfg, "paused")
    patient = KafkaProducer(**cfg, acks="all")  # default delivery timeout: 120 s
    hasty = KafkaProducer(**cfg, acks="all", request_timeout_ms=1000, delivery_timeout_ms=2500)
    try:
        patient.send("paused", b"warm-up").get(timeout=10)
        hasty.send("paused", b"warm-up-2").get(timeout=10)
        own_broker.pause()
        assert own_broker.nodes()[0].state == "paused"
        waiting = patient.send("paused", b"sent-during-pause")
        with pytest.raises(KafkaError):  # a short delivery timeout surfaces as an error
            hasty.send("paused", b"gives-up").get(timeout=10)
        assert not waiting.is_done  # the patient one is still waiting for the frozen broker
        own_broker.resume()
        assert own_broker.nodes()[0].state == "running"
        waiting.get(timeout=30)
    finally:
        own_broker.resume()
        patient.close(timeout=5)
        hasty.close(timeout=1)
    values = [r.value for r in read_all(cfg, "paused")]
    assert b"sent-during-pause" in values


def test_up_twice_reuses_the_broker(own_broker):
    before = [n.pid for n in own_broker.nodes()]
    again = local_mod.up(nodes=1, state_dir=own_broker.state_dir)
    assert [n.pid for n in again.nodes()] == before


def test_asking_for_another_size_is_refused(own_broker):
    with pytest.raises(BrokerError, match="down --purge"):
        local_mod.up(nodes=3, state_dir=own_broker.state_dir)


def test_external_backend_talks_to_a_running_broker(own_broker, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", own_broker.bootstrap_servers)
    b = lab_broker.ensure(backend="auto")
    assert isinstance(b, ExternalBroker)
    assert b.bootstrap_servers == own_broker.bootstrap_servers
    create_topic(b.client_config(), "via-external")
    assert len(_produce(b.client_config(), "via-external", 10, "ext")) == 10
    with pytest.raises(BrokerError, match="cannot kill"):
        b.kill()


# --- bad input -------------------------------------------------------------------------------
def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab_kit", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_rejects_unknown_backend_and_two_nodes(tmp_path):
    env = {**os.environ, "LAB_STATE_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    r = _cli("broker", "up", "--backend", "kubernetes", env=env)
    assert r.returncode == 2 and "unknown backend 'kubernetes'" in r.stderr
    r = _cli("broker", "up", "--nodes", "2", "--backend", "local", env=env)
    assert r.returncode == 2 and "1 or 3" in r.stderr


def test_taken_port_is_reported_and_nothing_is_left_running(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {taken}"):
            local_mod.up(nodes=1, port=taken, state_dir=tmp_path)
    assert _our_jvms(tmp_path) == []


def test_missing_java_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="Java 17"):
        local_mod.check_java()


def test_old_java_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(BrokerError, match="Java 11 found.*needs Java 17"):
        local_mod.check_java()


def test_missing_mvn_and_unresolvable_jars(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(BrokerError, match="could not resolve org.apache.kafka:kafka_2.13:0.0.1"):
        local_mod.resolve_jars(version="0.0.1-does-not-exist")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="mvn"):
        local_mod.resolve_jars(version="0.0.2-does-not-exist")


def test_broker_that_does_not_come_up_reports_log_and_leaves_no_process(tmp_path):
    b = LocalBroker(tmp_path)
    b.setup(nodes=1)
    props = b.state["nodes"][0]["props"]
    with open(props, "a") as f:  # a setting Kafka refuses at start-up
        f.write("process.roles=nonsense\n")
    with pytest.raises(BrokerError) as info:
        b.start(timeout_s=30)
    assert "last lines of" in str(info.value)
    time.sleep(0.5)
    assert _our_jvms(tmp_path) == []
    assert b.nodes()[0].state == "stopped"


def test_bad_bootstrap_string_names_the_part():
    with pytest.raises(BrokerError, match="'nohost' is not host:port"):
        ExternalBroker("127.0.0.1:9092,nohost")
