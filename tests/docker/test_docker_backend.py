"""The Docker backend against a real Docker daemon (skipped, with the reason, when none answers
or no Kafka image is available: `make kafka-image` builds one without a registry).

One container for the module, in its own state dir: up, status, loopback-only port, acked
records surviving `docker kill` + start, pause/resume, a transactional producer, the broker
drills, a notebook under nbval, and at the end down --purge leaving nothing behind. The bad
inputs (image missing, port in use, container removed behind the lab's back, daemon down)
each give one line naming the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lab_kit import lab_env
from lab_kit.broker import BrokerError, choose_backend, ensure
from lab_kit.broker.docker import LABEL, DockerBroker, choose_image, docker_available
from lab_kit.drills.report import load_report
from lab_kit.machine import free_port
from tests.kafka_helpers import create_topic, produce_values, read_all

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def _docker_or_skip():
    ok, why = docker_available()
    if not ok:
        pytest.skip(f"Docker backend not testable here: {why}")
    import docker

    client = docker.from_env()
    try:
        image = choose_image(client)
    except BrokerError as exc:
        pytest.skip(f"no Kafka image for the Docker backend: {exc}")
    return client, image


@pytest.fixture(scope="module")
def docker_client():
    client, _ = _docker_or_skip()
    return client


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docker-state")


@pytest.fixture(scope="module")
def dbroker(docker_client, state_dir):
    b = DockerBroker(state_dir).up(timeout_s=180)
    yield b
    DockerBroker(state_dir).down(purge=True)


def _env(state_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(LAB_STATE_DIR=str(state_dir), LAB_SCALE="0.2", **extra)
    return env


def _cli(state_dir: Path, *args: str, timeout: float = 300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab_kit", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=_env(state_dir, **extra))




def test_up_status_and_port_on_loopback_only(dbroker, docker_client, state_dir):
    st = json.loads(_cli(state_dir, "broker", "status", "--json").stdout)
    assert st["backend"] == "docker" and st["kafka_version"] == lab_env.KAFKA_VERSION
    assert [n["state"] for n in st["nodes"]] == ["running"]
    c = docker_client.containers.get(dbroker.state["container_id"])
    bindings = c.attrs["HostConfig"]["PortBindings"]
    assert list(bindings) == ["9092/tcp"]
    assert [(b["HostIp"], int(b["HostPort"])) for b in bindings["9092/tcp"]] == [
        ("127.0.0.1", dbroker.state["port"])]
    assert c.labels[LABEL] == "broker"
    # the up is idempotent: a second `broker up` reuses the container
    again = _cli(state_dir, "broker", "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == dbroker.bootstrap_servers


def test_docker_kill_then_start_keeps_every_acked_record(dbroker, state_dir):
    cfg = dbroker.client_config()
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    create_topic(cfg, topic, partitions=3)
    values = [f"acked-{i}".encode() for i in range(300)]
    produce_values(cfg, topic, values)
    out = subprocess.run(["docker", "kill", dbroker.state["container_id"]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(_cli(state_dir, "broker", "status", "--json").stdout)
    assert [n["state"] for n in st["nodes"]] == ["stopped"]
    assert _cli(state_dir, "broker", "status", "--check").returncode == 3
    started = _cli(state_dir, "broker", "start")
    assert started.returncode == 0, started.stderr
    assert dbroker.nodes()[0].state == "running"
    assert sorted(r.value for r in read_all(cfg, topic)) == sorted(values)


def test_pause_and_resume(dbroker, state_dir):
    assert _cli(state_dir, "broker", "pause").returncode == 0
    assert dbroker.nodes()[0].state == "paused"
    assert _cli(state_dir, "broker", "resume").returncode == 0
    assert dbroker.nodes()[0].state == "running"
    cfg = dbroker.client_config()
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    create_topic(cfg, topic)
    produce_values(cfg, topic, [b"after-resume"])
    assert [r.value for r in read_all(cfg, topic)] == [b"after-resume"]


def test_transactional_producer_commits(dbroker):
    """Transactions need the broker to reach itself (markers): the INTERNAL listener."""
    from confluent_kafka import Consumer, Producer

    cfg = dbroker.client_config()
    topic = f"txn-{uuid.uuid4().hex[:8]}"
    create_topic(cfg, topic)
    p = Producer({"bootstrap.servers": dbroker.bootstrap_servers,
                  "transactional.id": f"lab-{uuid.uuid4().hex[:6]}"})
    p.init_transactions(60)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, f"txn-{i}".encode())
    p.commit_transaction(60)
    p.begin_transaction()
    p.produce(topic, b"aborted")
    p.abort_transaction(60)
    c = Consumer({"bootstrap.servers": dbroker.bootstrap_servers, "group.id": topic,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(60):
            m = c.poll(1.0)
            if m is not None and not m.error():
                got.append(m.value())
            if len(got) >= 10:
                break
        extra = c.poll(2.0)
    finally:
        c.close()
    assert got == [f"txn-{i}".encode() for i in range(10)]
    assert extra is None or extra.error() or extra.value() != b"aborted"


@pytest.mark.parametrize("drill", ["broker-outage", "broker-pause"])
def test_drill_against_the_docker_backend_loses_nothing(dbroker, state_dir, tmp_path, drill):
    out_json = tmp_path / f"{drill}.json"
    run = _cli(state_dir, "drill", drill, "--posts", "3000", "--rate", "500", "--outage", "4",
               "--json", str(out_json), timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = load_report(out_json)
    assert report.audit.lost == 0 and report.ok, report.summary()
    assert report.audit.submitted == 3000
    assert report.audit.delivered_unique == 3000
    assert report.audit.spooled > 0, "the fault must have been felt"
    print(f"{drill} on docker:\n{report.summary()}")
    assert dbroker.nodes()[0].state == "running"


def test_a_notebook_under_nbval_against_the_docker_backend(dbroker, state_dir):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-current-env", "--nbval-sanitize-with", "notebooks/sanitize.cfg",
         "notebooks/00_start_here.ipynb"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=_env(state_dir))
    assert run.returncode == 0, run.stdout[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


# --- bad input: one clear line each ----------------------------------------------------------
def test_missing_image_gives_one_line_and_no_traceback(docker_client, tmp_path):
    run = _cli(tmp_path, "broker", "up", "--backend", "docker",
               LAB_KAFKA_IMAGE="streamsocial-lab/no-such-image:0", timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    err = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "LAB_KAFKA_IMAGE=streamsocial-lab/no-such-image:0" in err[0]
    assert not (tmp_path / "broker.json").exists()


def test_auto_falls_back_to_local_in_one_line_when_docker_cannot(docker_client, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LAB_KAFKA_IMAGE", "streamsocial-lab/no-such-image:0")
    b = ensure(backend="auto", state_dir=tmp_path, timeout_s=120)
    try:
        assert b.backend == "local"
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert "using the local JVM backend" in err.strip().splitlines()[-1], err
    finally:
        b.down(purge=True)


def test_three_nodes_under_auto_use_the_local_backend(docker_client, tmp_path, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert choose_backend("auto", tmp_path, nodes=1) == "docker"
    assert choose_backend("auto", tmp_path, nodes=3) == "local"
    with pytest.raises(BrokerError, match="--backend local --nodes 3"):
        DockerBroker(tmp_path).up(nodes=3)


def test_port_in_use_gives_one_line(docker_client, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {busy} is already in use"):
            DockerBroker(tmp_path).up(port=busy)
    assert not (tmp_path / "broker.json").exists()


def test_daemon_down_gives_one_line(tmp_path):
    (tmp_path / "broker.json").write_text(json.dumps(
        {"backend": "docker", "kafka_version": lab_env.KAFKA_VERSION, "port": free_port(),
         "container_id": "0" * 64}))
    run = _cli(tmp_path, "broker", "status", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "no Docker daemon answers" in run.stderr


def test_state_pointing_at_a_missing_container(docker_client, tmp_path):
    (tmp_path / "broker.json").write_text(json.dumps(
        {"backend": "docker", "kafka_version": lab_env.KAFKA_VERSION, "port": free_port(),
         "container_id": "0" * 64}))
    run = _cli(tmp_path, "broker", "kill")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "no longer exists" in run.stderr and "broker down --purge" in run.stderr
    purged = _cli(tmp_path, "broker", "down", "--purge")
    assert purged.returncode == 0 and not (tmp_path / "broker.json").exists()


def test_container_removed_behind_the_labs_back_then_up_starts_a_new_one(docker_client,
                                                                         tmp_path):
    b = DockerBroker(tmp_path).up(timeout_s=180)
    first = b.state["container_id"]
    try:
        docker_client.containers.get(first).remove(force=True, v=True)
        st = _cli(tmp_path, "broker", "status")
        assert st.returncode == 2 and "no longer exists" in st.stderr
        up = _cli(tmp_path, "broker", "up", timeout=240)
        assert up.returncode == 0, up.stderr
        assert "starting a new container" in up.stderr
        again = DockerBroker(tmp_path)
        assert again.state["container_id"] != first
        assert again.nodes()[0].state == "running"
    finally:
        DockerBroker(tmp_path).down(purge=True)


def test_down_purge_leaves_no_container(dbroker, docker_client, state_dir):
    cid = dbroker.state["container_id"]
    volumes = [m["Name"] for m in docker_client.containers.get(cid).attrs["Mounts"]
               if m["Type"] == "volume"]
    run = _cli(state_dir, "broker", "down", "--purge")
    assert run.returncode == 0, run.stderr
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL}.state_dir="
                                                                      f"{state_dir}"})
    assert left == []
    assert not (state_dir / "broker.json").exists()
    names = {v.name for v in docker_client.volumes.list()}
    assert volumes and not set(volumes) & names, "the data volume must go with --purge"
