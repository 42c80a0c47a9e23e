"""Shared fixtures: one real Kafka broker for the whole session (started if none runs).

The broker comes from ``lab_kit.broker.ensure()``, the same call notebooks and the CLI use,
so a broker started by ``make lab`` is reused. A broker this session started is stopped at
the end (data kept); one that was already running is left alone.
"""

from __future__ import annotations

import uuid

import pytest

from lab_kit import broker as lab_broker
from lab_kit import topics as lab_topics
from lab_kit.moderation import topic_names
from lab_kit.moderation.backend import ModerationBackend


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
    """A fresh topic name per test, so tests never read each other's records.

    Topics whose name starts with it are deleted afterwards from the shared broker, so a
    long test session does not leave thousands of partitions behind (a broker restarted
    after kill -9 recovers every partition's log before it answers).
    """
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_topics_with_prefix(name)


@pytest.fixture
def created_topic(kafka_broker, topic_name):
    """``topic_name``, created on the shared broker: the lab's brokers create no topic on
    first use (``auto.create.topics.enable=false``), as a student's broker does not."""
    from lab_kit.topics import ensure_topics

    ensure_topics(kafka_broker.client_config(), names=(topic_name,))
    return topic_name


def delete_topics_with_prefix(prefix: str) -> None:
    from kafka import KafkaAdminClient

    b = lab_broker.current()
    if b is None or not any(n.state == "running" for n in b.nodes()):
        return
    try:
        admin = KafkaAdminClient(**b.client_config(), request_timeout_ms=5000)
    except Exception:  # noqa: BLE001 - clean-up is best effort
        return
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(prefix)]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=10000)
    except Exception:  # noqa: BLE001
        pass
    finally:
        admin.close()


# --- the moderation tests' own topics, backend process, group and stages ----------------------


@pytest.fixture
def topics(client_config) -> dict[str, str]:
    names = topic_names(f"t{uuid.uuid4().hex[:10]}-")
    lab_topics.ensure_topics(client_config, tuple(names.values()),
                              partitions={names["posts"]: 3, names["admin"]: 1,
                                          names["dlq"]: 1})
    return names


@pytest.fixture
def backend(tmp_path, request) -> ModerationBackend:
    b = ModerationBackend(state_dir=tmp_path / "backend").start()
    request.addfinalizer(b.stop)
    return b


@pytest.fixture
def group() -> str:
    return f"mod-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stages(request):
    """Track services/workers to stop at the end of the test."""
    started: list = []

    def stop_all() -> None:
        for s in started:
            assert s.stop(timeout=20), f"{s.kind} did not stop"

    request.addfinalizer(stop_all)
    return started
