"""The broker interface every backend implements (local JVM, Docker, external)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

NODE_STATES = ("running", "stopped", "paused")


class BrokerError(RuntimeError):
    """A broker could not be started, reached or controlled. The message says how to fix it."""


@dataclass
class NodeInfo:
    id: int  # Kafka node.id
    state: str  # one of NODE_STATES
    pid: int | None
    port: int


class Broker(ABC):
    """One Kafka cluster (1 or 3 nodes) plus per-node fault injection."""

    backend: str = "?"

    @property
    @abstractmethod
    def bootstrap_servers(self) -> str:
        """Comma-separated host:port list."""

    @property
    def kafka_version(self) -> str | None:
        return None

    @property
    def data_dir(self) -> str | None:
        return None

    def client_config(self) -> dict[str, Any]:
        """kafka-python settings every client of this broker needs (bootstrap, security)."""
        return {"bootstrap_servers": self.bootstrap_servers}

    def extra_config(self) -> dict[str, Any]:
        """``client_config()`` without ``bootstrap_servers`` (security settings), for APIs
        that take the bootstrap servers as their own argument."""
        return {k: v for k, v in self.client_config().items() if k != "bootstrap_servers"}

    @abstractmethod
    def nodes(self) -> list[NodeInfo]: ...

    def node_ids(self) -> list[int]:
        return [n.id for n in self.nodes()]

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "kafka_version": self.kafka_version,
            "bootstrap_servers": self.bootstrap_servers,
            "data_dir": self.data_dir,
            "nodes": [asdict(n) for n in self.nodes()],
        }

    # fault injection ---------------------------------------------------------------------
    def _unsupported(self, what: str) -> BrokerError:
        return BrokerError(f"the {self.backend} backend cannot {what} a node")

    def start(self, node: int | None = None, wait: bool = True) -> None:
        raise self._unsupported("start")

    def stop(self, node: int | None = None) -> None:
        raise self._unsupported("stop")

    def kill(self, node: int | None = None) -> None:
        raise self._unsupported("kill")

    def pause(self, node: int | None = None) -> None:
        raise self._unsupported("pause")

    def resume(self, node: int | None = None) -> None:
        raise self._unsupported("resume")

    def down(self, purge: bool = False) -> None:
        raise self._unsupported("shut down")

    # readiness ---------------------------------------------------------------------------
    def wait_ready(self, timeout_s: float = 60.0, expect_brokers: int | None = None) -> float:
        """Block until a metadata request answers (and ``expect_brokers`` are registered).

        Returns the seconds waited; raises BrokerError with a hint on timeout.
        """
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaConfigurationError

        t0 = time.monotonic()
        last: Exception | None = None
        while time.monotonic() - t0 < timeout_s:
            admin = None
            try:
                cfg = dict(self.client_config())
                admin = KafkaAdminClient(**cfg, request_timeout_ms=3000)
                cluster = admin.describe_cluster()
                live = [b for b in cluster["brokers"] if not b.get("is_fenced")]
                if expect_brokers is None or len(live) >= expect_brokers:
                    return time.monotonic() - t0
                last = BrokerError(f"{len(live)} of {expect_brokers} brokers registered")
            except KafkaConfigurationError:
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure means "not ready yet"
                last = exc
            finally:
                if admin is not None:
                    admin.close()
            time.sleep(0.3)
        raise BrokerError(
            f"broker at {self.bootstrap_servers} did not answer a metadata request within "
            f"{timeout_s:.0f}s (last error: {last}). {self.log_hint()}"
        )

    def log_hint(self) -> str:
        return ""
