"""Shared fixtures: one real Kafka broker for the whole session (started if none runs).

The broker comes from ``lab_kit.broker.ensure()``, the same call notebooks and the CLI use,
so a broker started by ``make lab`` is reused. A broker this session started is stopped at
the end (data kept); one that was already running is left alone.
"""

from __future__ import annotations

import uuid

import pytest

from lab_kit import broker as lab_broker


@pytest.fixture(scope="session")
def kafka_broker():
    existing = lab_broker.current()
    was_running = existing is not None and any(n.state == "running" for n in existing.nodes())
    b = lab_broker.ensure(nodes=1)
    yield b
    if not was_running and b.backend in ("local", "docker"):
        b.down()


@pytest.fixture(scope="session")
def client_config(kafka_broker) -> dict:
    return kafka_broker.client_config()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_name():
    """A fresh topic name per test, so tests never read each other's records."""
    return f"test-{uuid.uuid4().hex[:10]}"
