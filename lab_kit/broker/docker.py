"""The same Kafka version in a Docker container, one node, driven with docker-py.

Which image: ``LAB_KAFKA_IMAGE`` if set; else the official ``apache/kafka:<version>`` when it
is present or can be pulled (progress shown); else ``streamsocial-lab/kafka:<version>``, the
image ``make kafka-image`` builds without a registry on the official image's contract (same
``KAFKA_*`` variables). Both are configured the same way.

Listeners: clients on the host use ``EXTERNAL``, advertised as ``127.0.0.1:<host port>`` and
published on 127.0.0.1 only; the broker talks to itself (transaction markers, ...) on its own
``INTERNAL`` listener, since the host port does not exist inside the container. The container
id is kept in the state file; fault injection maps to docker stop/kill/pause/unpause/start.
The container's data lives in a volume that survives kill and start; ``down --purge`` removes
both. (For a 3-node cluster in Docker use ``docker compose --profile cluster up -d``.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from lab_kit import lab_env
from lab_kit.broker.base import Broker, BrokerError, NodeInfo
from lab_kit.machine import free_port, port_free, write_json_atomic

STATE_FILE = "broker.json"
LOCAL_IMAGE = f"streamsocial-lab/kafka:{lab_env.KAFKA_VERSION}"
LABEL = "streamsocial.lab"
DATA_DIR = "/var/lib/kafka/data"
PULL_TIMEOUT_S = float(os.environ.get("LAB_DOCKER_PULL_TIMEOUT", "600"))
NO_IMAGE_HINT = (
    f"no Kafka image: neither {lab_env.KAFKA_IMAGE} (pull it with `docker pull "
    f"{lab_env.KAFKA_IMAGE}` where a registry is reachable) nor {LOCAL_IMAGE} (build it with "
    "`make kafka-image`) is available; or set LAB_KAFKA_IMAGE, or use --backend local"
)


def _client(timeout_s: float = 60):
    import docker

    return docker.from_env(timeout=timeout_s)


def docker_available(timeout_s: float = 3.0) -> tuple[bool, str]:
    """(True, "") if a Docker daemon answers a ping, else (False, reason)."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return False, "the docker Python package is not installed (pip install testcontainers)"
    try:
        client = _client(timeout_s)
        client.ping()
        client.close()
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure means no usable daemon
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return False, f"no Docker daemon answers ({first})"


def _random_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def kafka_env(port: int) -> dict[str, str]:
    """KRaft single-node settings on the official image's contract (also the compose test's)."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "EXTERNAL://0.0.0.0:9092,INTERNAL://0.0.0.0:29092,"
                           "CONTROLLER://0.0.0.0:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"EXTERNAL://127.0.0.1:{port},INTERNAL://localhost:29092",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":
            "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_LOG_DIRS": DATA_DIR,
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "10",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS": "2000",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "3",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",  # the lab creates its topics
        "KAFKA_LOG_CLEANER_DEDUPE_BUFFER_SIZE": str(4 * 1024 * 1024),
        "KAFKA_HEAP_OPTS": "-Xmx512m -Xms128m",
    }


# --- images ---------------------------------------------------------------------------------
def _image_present(client, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def pull(client, name: str, timeout_s: float = PULL_TIMEOUT_S, out=sys.stderr) -> str:
    """Pull ``name`` with a progress line per layer state change; "" on success, else why."""
    repo, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
    result: dict[str, str] = {"error": "timed out"}

    def run() -> None:
        try:
            seen: dict[str, str] = {}
            print(f"pulling {name} (first start only) ...", file=out, flush=True)
            for ev in client.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in ev:
                    result["error"] = str(ev["error"]).splitlines()[0]
                    return
                layer, status = ev.get("id", ""), ev.get("status", "")
                if status in ("Downloading", "Extracting"):
                    continue  # per-byte events: too many lines; report state changes only
                if layer and seen.get(layer) != status:
                    seen[layer] = status
                    print(f"  {layer}: {status}", file=out, flush=True)
            result["error"] = ""
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            result["error"] = str(exc).splitlines()[0][:200] or type(exc).__name__

    t = threading.Thread(target=run, daemon=True, name="docker-pull")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return f"the pull did not finish within {timeout_s:.0f}s (LAB_DOCKER_PULL_TIMEOUT)"
    return result["error"]


def choose_image(client, out=sys.stderr) -> str:
    """The image the backend runs (see the module docstring); BrokerError if there is none."""
    named = os.environ.get("LAB_KAFKA_IMAGE")
    if named:
        if _image_present(client, named):
            return named
        why = pull(client, named, out=out)
        if why:
            raise BrokerError(f"LAB_KAFKA_IMAGE={named} is not present and could not be pulled "
                              f"({why}): pull or build it, or unset LAB_KAFKA_IMAGE")
        return named
    if _image_present(client, lab_env.KAFKA_IMAGE):
        return lab_env.KAFKA_IMAGE
    if not _image_present(client, LOCAL_IMAGE):
        why = pull(client, lab_env.KAFKA_IMAGE, out=out)
        if not why:
            return lab_env.KAFKA_IMAGE
        print(f"could not pull {lab_env.KAFKA_IMAGE}: {why}", file=out)
        raise BrokerError(NO_IMAGE_HINT)
    return LOCAL_IMAGE


# --- the backend ----------------------------------------------------------------------------
class DockerBroker(Broker):
    backend = "docker"

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(state_dir) if state_dir else lab_env.state_dir()
        self.state_path = self.state_dir / STATE_FILE
        self.state: dict[str, Any] = {}
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())

    def _save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    @property
    def container_name(self) -> str:
        digest = hashlib.sha1(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        return f"streamsocial-kafka-{digest}"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.state.get('port')}"

    @property
    def kafka_version(self) -> str | None:
        return self.state.get("kafka_version")

    @property
    def data_dir(self) -> str | None:
        cid = self.state.get("container_id")
        return f"{self.container_name}:{DATA_DIR}" if cid else None

    @property
    def image(self) -> str | None:
        return self.state.get("image")

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["image"] = self.image
        out["container"] = self.state.get("container_id", "")[:12] or None
        return out

    def _docker(self):
        ok, why = docker_available()
        if not ok:
            raise BrokerError(f"{why}: start Docker (Docker Desktop, or `sudo dockerd`), or "
                              "run `python -m lab_kit broker down --purge` and use "
                              "--backend local")
        return _client()

    def _container(self, client=None):
        import docker

        cid = self.state.get("container_id")
        if not cid:
            raise BrokerError("no docker broker is set up: run `python -m lab_kit broker up "
                              "--backend docker`")
        client = client or self._docker()
        try:
            return client.containers.get(cid)
        except docker.errors.NotFound as exc:
            raise BrokerError(
                f"the broker's container {cid[:12]} no longer exists (removed outside the lab):"
                " run `python -m lab_kit broker down --purge`, then `broker up`"
            ) from exc

    def nodes(self) -> list[NodeInfo]:
        c = self._container()
        c.reload()
        pid = c.attrs.get("State", {}).get("Pid") or None
        state = {"running": "running", "paused": "paused"}.get(c.status, "stopped")
        return [NodeInfo(id=1, state=state, pid=pid if state != "stopped" else None,
                         port=self.state.get("port", 0))]

    def log_hint(self, lines: int = 15) -> str:
        try:
            c = self._container()
            tail = c.logs(tail=lines).decode(errors="replace").rstrip()
        except Exception:  # noqa: BLE001 - a hint is best effort
            return ""
        return (f"Last lines of `docker logs {c.name}`:\n{tail}" if tail
                else f"`docker logs {c.name}` is empty")

    # --- lifecycle ----------------------------------------------------------------------------
    def up(self, nodes: int = 1, port: int | None = None, timeout_s: float = 90,
           out=sys.stderr) -> DockerBroker:
        if nodes != 1:
            raise BrokerError(
                "the docker backend runs 1 node: for 3 use `--backend local --nodes 3`, or "
                "`docker compose --profile cluster up -d` and KAFKA_BOOTSTRAP_SERVERS"
            )
        if port is not None and not 1024 <= port <= 65535:
            raise BrokerError(f"--port must be between 1024 and 65535, got {port}")
        client = self._docker()
        if self.state.get("container_id"):
            try:
                self._container(client)
            except BrokerError as exc:
                print(f"{exc}; starting a new container", file=out)
                self.state = {}
                self.state_path.unlink(missing_ok=True)
            else:
                if self.state.get("kafka_version") != lab_env.KAFKA_VERSION:
                    raise BrokerError(
                        f"the docker broker in {self.state_dir} runs Kafka "
                        f"{self.state.get('kafka_version')}, this lab pins "
                        f"{lab_env.KAFKA_VERSION}: run `python -m lab_kit broker down --purge`")
                self.start(timeout_s=timeout_s)
                return self
        image = choose_image(client, out=out)
        port = port or free_port()
        if not port_free(port):
            raise BrokerError(f"port {port} is already in use on 127.0.0.1: free it or choose "
                              "another with --port")
        self._remove_leftover(client)
        env = {**kafka_env(port), "CLUSTER_ID": _random_cluster_id()}
        try:
            c = client.containers.run(
                image, detach=True, name=self.container_name, environment=env,
                ports={"9092/tcp": ("127.0.0.1", port)},
                labels={LABEL: "broker", f"{LABEL}.state_dir": str(self.state_dir)},
            )
        except Exception as exc:  # noqa: BLE001 - docker APIError, turned into one line
            msg = str(exc)
            if "already allocated" in msg or "address already in use" in msg:
                raise BrokerError(f"port {port} is already in use: choose another with --port "
                                  "or free it") from exc
            raise BrokerError(f"docker could not start {image}: {msg.splitlines()[0][:300]}"
                              ) from exc
        self.state = {
            "backend": "docker", "kafka_version": lab_env.KAFKA_VERSION, "port": port,
            "image": image, "container_id": c.id, "container_name": c.name,
        }
        self._save()
        try:
            self._wait_up(timeout_s)
        except BrokerError:
            self.down(purge=True)  # the message already holds the container's last log lines
            raise
        return self

    def _remove_leftover(self, client) -> None:
        """A container of this state dir that the state file no longer names (lab crashed)."""
        import docker

        try:
            old = client.containers.get(self.container_name)
        except docker.errors.NotFound:
            return
        if old.labels.get(LABEL) == "broker":
            old.remove(force=True, v=True)
        else:
            raise BrokerError(f"a container named {self.container_name} exists and is not "
                              "the lab's: remove it with `docker rm -f`")

    def _wait_up(self, timeout_s: float) -> float:
        """Wait for a metadata answer; a container that exits meanwhile ends the wait at once."""
        t0 = time.monotonic()
        while True:
            c = self._container()
            c.reload()
            if c.status in ("exited", "dead"):
                code = c.attrs.get("State", {}).get("ExitCode")
                raise BrokerError(f"the broker's container exited (code {code}) during "
                                  f"start-up. {self.log_hint(25)}")
            left = timeout_s - (time.monotonic() - t0)
            if left <= 0:
                raise BrokerError(f"the broker in container {c.name} did not answer within "
                                  f"{timeout_s:.0f}s. {self.log_hint()}")
            try:
                super().wait_ready(timeout_s=min(3.0, left))
                return time.monotonic() - t0
            except BrokerError:
                continue

    def wait_ready(self, timeout_s: float = 60.0, expect_brokers: int | None = None) -> float:
        return self._wait_up(timeout_s)

    def start(self, node: int | None = None, wait: bool = True, timeout_s: float = 240) -> None:
        """Start (or unpause) the container. After a kill -9 the broker recovers every
        partition's log before it answers; on a loaded 2-core machine that took 133 s once,
        so the wait is generous (still bounded)."""
        c = self._container()
        c.reload()
        if c.status == "paused":
            c.unpause()
        elif c.status != "running":
            c.start()
        if wait:
            self._wait_up(timeout_s)

    def stop(self, node: int | None = None) -> None:
        c = self._container()
        c.reload()
        if c.status == "paused":
            c.unpause()
        c.stop(timeout=30)

    def kill(self, node: int | None = None) -> None:
        """``docker kill`` (SIGKILL to the JVM); returns once the container has exited."""
        c = self._container()
        c.reload()
        if c.status in ("running", "paused"):
            c.kill()
        self._wait_status(("exited", "dead"))

    def pause(self, node: int | None = None) -> None:
        c = self._container()
        c.reload()
        if c.status != "running":
            raise BrokerError(f"the broker's container is {c.status}, so it cannot be paused")
        c.pause()
        self._wait_status(("paused",))

    def resume(self, node: int | None = None) -> None:
        c = self._container()
        c.reload()
        if c.status == "paused":
            c.unpause()
            self._wait_status(("running",))

    def _wait_status(self, want: tuple[str, ...], timeout_s: float = 15) -> None:
        t0 = time.monotonic()
        c = self._container()
        while time.monotonic() - t0 < timeout_s:
            c.reload()
            if c.status in want:
                return
            time.sleep(0.05)
        raise BrokerError(f"the broker's container is {c.status}, not {'/'.join(want)}, "
                          f"after {timeout_s:.0f}s")

    def down(self, purge: bool = False) -> None:
        import docker

        if self.state.get("container_id"):
            try:
                c = self._container()
                c.reload()
                if c.status == "paused":
                    c.unpause()
                if purge:
                    c.remove(force=True, v=True)
                elif c.status == "running":
                    c.stop(timeout=30)
            except BrokerError as exc:
                if not purge:
                    raise
                if "no Docker daemon" in str(exc):
                    print(f"warning: {exc}", file=sys.stderr)
            except docker.errors.NotFound:
                pass
        if purge:
            self.state_path.unlink(missing_ok=True)
            self.state = {}
