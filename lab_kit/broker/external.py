"""A broker someone else runs (a managed cluster): ``KAFKA_BOOTSTRAP_SERVERS`` + client settings.

Optional client settings come from environment variables (``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``,
``KAFKA_SSL_CAFILE``) or from a JSON/YAML file named by ``LAB_KAFKA_CONFIG`` holding
kafka-python settings (e.g. ``{"security_protocol": "SASL_SSL", ...}``). Fault injection is
not available: we do not own those processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from lab_kit.broker.base import Broker, BrokerError, NodeInfo

_ENV_SETTINGS = {
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "KAFKA_SASL_USERNAME": "sasl_plain_username",
    "KAFKA_SASL_PASSWORD": "sasl_plain_password",
    "KAFKA_SSL_CAFILE": "ssl_cafile",
}


def parse_bootstrap(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` → list of pairs; a clear error naming the bad part."""
    out = []
    for part in value.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if not part or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BrokerError(
                f"KAFKA_BOOTSTRAP_SERVERS: {part!r} is not host:port (port 1-65535); "
                f"expected e.g. 127.0.0.1:9092,127.0.0.1:9093"
            )
        out.append((host, int(port)))
    return out


class ExternalBroker(Broker):
    backend = "external"

    def __init__(self, bootstrap_servers: str | None = None, settings: dict | None = None):
        value = bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not value:
            raise BrokerError("the external backend needs KAFKA_BOOTSTRAP_SERVERS=host:port[,..]")
        self._servers = parse_bootstrap(value)
        self._settings = dict(settings) if settings is not None else load_client_settings()

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self._servers)

    def client_config(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, **self._settings}

    def nodes(self) -> list[NodeInfo]:
        # We do not know node ids or pids of a cluster we do not run: report the seeds.
        return [NodeInfo(id=i, state="running", pid=None, port=p)
                for i, (_, p) in enumerate(self._servers, start=1)]


def load_client_settings() -> dict[str, Any]:
    settings: dict[str, Any] = {}
    path = os.environ.get("LAB_KAFKA_CONFIG")
    if path:
        p = Path(path)
        if not p.exists():
            raise BrokerError(f"LAB_KAFKA_CONFIG: file {p} does not exist")
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise BrokerError(f"LAB_KAFKA_CONFIG: {p} must hold a mapping of client settings")
        settings.update(data)
    for env, key in _ENV_SETTINGS.items():
        if os.environ.get(env):
            settings[key] = os.environ[env]
    return settings
