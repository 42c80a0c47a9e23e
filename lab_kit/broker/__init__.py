"""One broker interface, three backends: ``local`` (JVM), ``docker``, ``external``.

:mod:`.base` is the interface (``Broker``: start, stop, kill -9, pause, resume per node, and a
readiness wait); :mod:`.local` runs Apache Kafka from Maven-resolved jars as a JVM on
127.0.0.1; :mod:`.docker` runs the ``apache/kafka`` image; :mod:`.external` speaks to a broker
named by ``KAFKA_BOOTSTRAP_SERVERS`` (no fault injection there).

``ensure()`` is what notebooks, the CLI and tests call: it returns the broker named in the
shared state file when it is running, or starts one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lab_kit import lab_env
from lab_kit.broker.base import NODE_STATES, Broker, BrokerError, NodeInfo
from lab_kit.broker.docker import DockerBroker, docker_available
from lab_kit.broker.external import ExternalBroker
from lab_kit.broker.local import LocalBroker, up

BACKENDS = ("auto", "local", "docker", "external")

__all__ = [
    "BACKENDS", "NODE_STATES", "Broker", "BrokerError", "NodeInfo", "current", "ensure",
    "ExternalBroker", "LocalBroker",
]


def _state_backend(state_dir: Path | None = None) -> str | None:
    path = Path(state_dir or lab_env.state_dir()) / "broker.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("backend")
    except (OSError, ValueError):
        return None


def current(state_dir: Path | None = None) -> Broker | None:
    """The broker the lab is set up to use (external env, or the state file), or None."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return ExternalBroker()
    backend = _state_backend(state_dir)
    if backend == "local":
        return LocalBroker(state_dir)
    if backend == "docker":

        return DockerBroker(state_dir)
    return None


def choose_backend(backend: str = "auto", state_dir: Path | None = None, nodes: int = 1) -> str:
    """auto: external if KAFKA_BOOTSTRAP_SERVERS is set; else the backend in the state file;
    else docker if a daemon answers and one node is asked for; else local."""
    if backend not in BACKENDS:
        raise BrokerError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    existing = _state_backend(state_dir)
    if existing:
        return existing
    if nodes != 1:  # the docker backend runs one node; three JVMs run locally
        return "local"

    return "docker" if docker_available()[0] else "local"


def ensure(nodes: int = 1, backend: str = "auto", port: int | None = None,
           state_dir: Path | None = None, timeout_s: float = 90) -> Broker:
    """Return the running broker, starting it when needed (idempotent).

    In auto mode a Docker daemon that cannot provide a broker (no image, a crashed container)
    is not an error: the local JVM backend is used instead, and one line on stderr says why.
    """
    if nodes not in (1, 3):
        raise BrokerError(f"nodes must be 1 or 3 (got {nodes}): KRaft needs a majority")
    chosen = choose_backend(backend, state_dir, nodes=nodes)
    if chosen == "external":
        broker = ExternalBroker()
        broker.wait_ready(timeout_s=timeout_s)
        return broker
    if chosen == "docker":

        fresh = backend == "auto" and _state_backend(state_dir) is None
        try:
            return DockerBroker(state_dir).up(nodes=nodes, port=port, timeout_s=timeout_s)
        except BrokerError as exc:
            if not fresh:
                raise
            reason = str(exc).splitlines()[0]
            print(f"docker cannot provide a broker ({reason}); using the local JVM backend "
                  "instead", file=sys.stderr)

    return up(nodes=nodes, port=port, state_dir=state_dir, timeout_s=timeout_s)
