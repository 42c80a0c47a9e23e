"""docker-compose.yml brought up with a real compose against a real Docker daemon.

Single node (`--profile single`) and the 3-node cluster (`--profile cluster`: three JVMs, not
four), each healthy, each with a produce/consume round trip; a broker-outage drill runs against
the compose cluster. Without `apache/kafka:<version>` on the machine, LAB_KAFKA_IMAGE points
compose at the image `make kafka-image` builds. Host ports are free ones (LAB_KAFKA_PORT*), so
the tests never collide with a student's `docker compose up`. Skipped, with the reason, when no
daemon, no compose or no image is there.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lab_kit import lab_env
from lab_kit.broker.base import Broker, BrokerError, NodeInfo
from lab_kit.broker.docker import LOCAL_IMAGE, docker_available
from lab_kit.machine import free_port
from tests.kafka_helpers import create_topic, produce_values, read_all

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) if it answers, else Debian's `docker-compose`."""
    if shutil.which("docker"):
        out = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if out.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _image(client) -> str:
    import docker

    for name in (lab_env.KAFKA_IMAGE, LOCAL_IMAGE):
        try:
            client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            continue
    pytest.skip(f"neither {lab_env.KAFKA_IMAGE} nor {LOCAL_IMAGE} is present "
                "(`make kafka-image` builds the latter)")


class ComposeProject:
    def __init__(self, profile: str, nodes: int):
        ok, why = docker_available()
        if not ok:
            pytest.skip(f"compose not testable here: {why}")
        cmd = compose_command()
        if cmd is None:
            pytest.skip("no compose: install Debian's docker-compose or the v2 plugin")
        import docker

        self.client = docker.from_env()
        self.cmd = cmd
        self.profile = profile
        self.name = f"labtest{uuid.uuid4().hex[:8]}"
        self.ports = [free_port() for _ in range(nodes)]
        self.env = {"LAB_KAFKA_IMAGE": _image(self.client), "LAB_KAFKA_PORT": str(self.ports[0])}
        for i, p in enumerate(self.ports, start=1):
            self.env[f"LAB_KAFKA_PORT_{i}"] = str(p)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        import os

        full = [*self.cmd, "-f", str(ROOT / "docker-compose.yml"), "-p", self.name,
                "--profile", self.profile, *args]
        out = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **self.env}, cwd=ROOT)
        assert out.returncode == 0, f"{' '.join(full)}:\n{out.stdout}\n{out.stderr}"
        return out

    def containers(self):
        return self.client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.name}"})

    def wait_healthy(self, timeout_s: float = 240) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            states = [c.attrs["State"].get("Health", {}).get("Status") for c in self.containers()
                      if not c.reload()]
            if states and all(s == "healthy" for s in states):
                return
            time.sleep(1)
        logs = "\n".join(c.logs(tail=10).decode(errors="replace") for c in self.containers())
        raise AssertionError(f"not healthy within {timeout_s}s: {states}\n{logs}")

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def __enter__(self):
        self.run("up", "-d")
        return self

    def __exit__(self, *exc):
        self.run("down", "-v", "--remove-orphans")


class ComposeCluster(Broker):
    """The compose cluster behind the lab's broker interface: fault injection = docker kill /
    start of a node's container, so the lab's drills run against it."""

    backend = "compose"

    def __init__(self, project: ComposeProject):
        self.project = project

    @property
    def bootstrap_servers(self) -> str:
        return self.project.bootstrap

    def _by_node(self) -> dict[int, object]:
        out = {}
        for c in self.project.containers():
            service = c.labels["com.docker.compose.service"]
            out[int(service.rsplit("-", 1)[1])] = c
        return out

    def nodes(self) -> list[NodeInfo]:
        out = []
        for nid, c in sorted(self._by_node().items()):
            c.reload()
            state = {"running": "running", "paused": "paused"}.get(c.status, "stopped")
            out.append(NodeInfo(nid, state, None, self.project.ports[nid - 1]))
        return out

    def kill(self, node: int | None = None) -> None:
        self._by_node()[node].kill()

    def start(self, node: int | None = None, wait: bool = True) -> None:
        self._by_node()[node].start()

    def down(self, purge: bool = False) -> None:
        raise BrokerError("compose owns this cluster")


def _round_trip(bootstrap: str, rf: int) -> None:

    cfg = {"bootstrap_servers": bootstrap}
    topic = f"compose-{uuid.uuid4().hex[:8]}"
    create_topic(cfg, topic, partitions=3, rf=rf, isr=min(rf, 2))
    values = [f"v{i}".encode() for i in range(100)]
    produce_values(cfg, topic, values)
    assert sorted(r.value for r in read_all(cfg, topic)) == sorted(values)


def test_compose_single_node_round_trip():
    project = ComposeProject("single", nodes=1)
    with project:
        assert [c.labels["com.docker.compose.service"] for c in project.containers()] == ["kafka"]
        project.wait_healthy()
        c = project.containers()[0]
        ports = c.attrs["HostConfig"]["PortBindings"]["9092/tcp"]
        assert [b["HostIp"] for b in ports] == ["127.0.0.1"]
        assert "-Xmx512m" in " ".join(c.attrs["Config"]["Env"])
        _round_trip(project.bootstrap, rf=1)


def test_compose_cluster_is_three_nodes_round_trip_and_outage_drill(tmp_path):
    from lab_kit.drills import DrillSettings
    from lab_kit.drills.runner import run_drill

    project = ComposeProject("cluster", nodes=3)
    with project:
        services = sorted(c.labels["com.docker.compose.service"] for c in project.containers())
        assert services == ["kafka-1", "kafka-2", "kafka-3"], "three JVMs, not four"
        project.wait_healthy()
        cluster = ComposeCluster(project)
        cluster.wait_ready(timeout_s=120, expect_brokers=3)
        _round_trip(project.bootstrap, rf=3)
        settings = DrillSettings(posts=2000, rate=500, outage_s=4, lead_s=1)
        report = run_drill("broker-outage", settings, broker=cluster, workdir=tmp_path)
        print("broker-outage on the compose cluster:", report.summary())
        assert report.audit.lost == 0 and report.audit.submitted == 2000, report.summary()
        assert report.audit.delivered_unique == 2000
        assert report.outage_windows, "node 1 must have been killed"
