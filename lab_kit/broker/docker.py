"""The same Kafka version on the ``apache/kafka`` image, through testcontainers.

One node (for a 3-node cluster in Docker use ``docker compose --profile cluster up``).
The container's port 9092 is bound to the same free host port and advertised as
127.0.0.1:<port>, so clients outside the container reach it. The container id is kept in
the state file; fault injection maps to docker stop/kill/pause/unpause/start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import config
from .base import Broker, BrokerError, NodeInfo
from .local import free_port

STATE_FILE = "broker.json"


def docker_available(timeout_s: float = 3.0) -> tuple[bool, str]:
    """(True, "") if a Docker daemon answers a ping, else (False, reason)."""
    try:
        import docker
    except ImportError:
        return False, "the docker/testcontainers Python packages are not installed"
    try:
        client = docker.from_env(timeout=timeout_s)
        client.ping()
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure means no usable daemon
        return False, f"no Docker daemon answers ({type(exc).__name__}: {exc})"


def kafka_env(port: int) -> dict[str, str]:
    """KRaft single-node settings for the apache/kafka image (also used by the compose test)."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "3",
    }


class DockerBroker(Broker):
    backend = "docker"

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(state_dir) if state_dir else config.state_dir()
        self.state_path = self.state_dir / STATE_FILE
        self.state: dict[str, Any] = {}
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=2))

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.state.get('port')}"

    @property
    def kafka_version(self) -> str | None:
        return self.state.get("kafka_version")

    def _container(self):
        import docker

        if not self.state.get("container_id"):
            raise BrokerError("no docker broker is set up: run `python -m lab_kit broker up`")
        try:
            return docker.from_env().containers.get(self.state["container_id"])
        except docker.errors.NotFound as exc:
            raise BrokerError("the broker's container is gone: run `broker down --purge`") from exc

    def nodes(self) -> list[NodeInfo]:
        try:
            c = self._container()
            c.reload()
            status = c.status
            pid = c.attrs.get("State", {}).get("Pid") or None
        except BrokerError:
            status, pid = "exited", None
        state = {"running": "running", "paused": "paused"}.get(status, "stopped")
        return [NodeInfo(id=1, state=state, pid=pid, port=self.state.get("port", 0))]

    def up(self, nodes: int = 1, timeout_s: float = 90) -> DockerBroker:
        if nodes != 1:
            raise BrokerError(
                "the docker backend runs 1 node; for 3 use `docker compose --profile cluster up`"
            )
        ok, why = docker_available()
        if not ok:
            raise BrokerError(f"docker backend unavailable: {why}. Use --backend local instead.")
        if self.state.get("container_id"):
            self.start()
            return self
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # outlive this process
        from testcontainers.core.container import DockerContainer

        port = free_port()
        container = DockerContainer(config.KAFKA_IMAGE).with_bind_ports(9092, port)
        for k, v in kafka_env(port).items():
            container = container.with_env(k, v)
        container.start()
        self.state = {
            "backend": "docker", "kafka_version": config.KAFKA_VERSION, "port": port,
            "container_id": container.get_wrapped_container().id,
        }
        self._save()
        self.wait_ready(timeout_s=timeout_s)
        return self

    def start(self, node: int | None = None, wait: bool = True) -> None:
        c = self._container()
        c.reload()
        if c.status == "paused":
            c.unpause()
        elif c.status != "running":
            c.start()
        if wait:
            self.wait_ready()

    def stop(self, node: int | None = None) -> None:
        self._container().stop(timeout=30)

    def kill(self, node: int | None = None) -> None:
        self._container().kill()

    def pause(self, node: int | None = None) -> None:
        self._container().pause()

    def resume(self, node: int | None = None) -> None:
        self._container().unpause()

    def down(self, purge: bool = False) -> None:
        if self.state.get("container_id"):
            try:
                c = self._container()
                c.stop(timeout=30)
                if purge:
                    c.remove(v=True)
            except BrokerError:
                pass
        if purge:
            self.state_path.unlink(missing_ok=True)
            self.state = {}
