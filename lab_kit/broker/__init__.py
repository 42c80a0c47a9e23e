"""One broker interface, three backends: ``local`` (JVM), ``docker``, ``external``.

``ensure()`` is what notebooks, the CLI and tests call: it returns the broker named in the
shared state file when it is running, or starts one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import config
from .base import NODE_STATES, Broker, BrokerError, NodeInfo
from .external import ExternalBroker
from .local import LocalBroker

BACKENDS = ("auto", "local", "docker", "external")

__all__ = [
    "BACKENDS", "NODE_STATES", "Broker", "BrokerError", "NodeInfo", "current", "ensure",
    "ExternalBroker", "LocalBroker",
]


def _state_backend(state_dir: Path | None = None) -> str | None:
    path = Path(state_dir or config.state_dir()) / "broker.json"
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
        from .docker import DockerBroker

        return DockerBroker(state_dir)
    return None


def choose_backend(backend: str = "auto", state_dir: Path | None = None) -> str:
    if backend not in BACKENDS:
        raise BrokerError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    existing = _state_backend(state_dir)
    if existing:
        return existing
    from .docker import docker_available

    return "docker" if docker_available()[0] else "local"


def ensure(nodes: int = 1, backend: str = "auto", port: int | None = None,
           state_dir: Path | None = None, timeout_s: float = 90) -> Broker:
    """Return the running broker, starting it when needed (idempotent)."""
    if nodes not in (1, 3):
        raise BrokerError(f"nodes must be 1 or 3 (got {nodes}): KRaft needs a majority")
    chosen = choose_backend(backend, state_dir)
    if chosen == "external":
        broker = ExternalBroker()
        broker.wait_ready(timeout_s=timeout_s)
        return broker
    if chosen == "docker":
        from .docker import DockerBroker

        return DockerBroker(state_dir).up(nodes=nodes, timeout_s=timeout_s)
    from .local import up

    return up(nodes=nodes, port=port, state_dir=state_dir, timeout_s=timeout_s)
