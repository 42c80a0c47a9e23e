"""Kafka settings of the moderation service are checked when it is built, before anything
starts (issue 10, item 6). Real broker: a refused setting leaves no thread, no topic and no
consumer group behind, where the same service with good settings creates all three.

Before the check, a bad setting gave a service whose thread retried building its clients
forever (``poll: KafkaConfigurationError ...`` every few seconds): posts were never moderated.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest
from kafka import KafkaAdminClient

from lab_kit.moderation import ModerationService, RecheckWorker, topic_names
from lab_kit.topics import ensure_topics
from tests.broker.moderation.test_moderation import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def _groups_and_topics(cfg: dict) -> tuple[set[str], set[str]]:
    admin = KafkaAdminClient(**cfg, request_timeout_ms=10_000)
    try:
        return {g["group_id"] for g in admin.list_groups()}, set(admin.list_topics())
    finally:
        admin.close()


def _lab_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("lab-")]


@pytest.mark.parametrize("kwargs, name", [
    ({"client_config": {"linger_ms": 5}}, "linger_ms"),  # producer-only: consumer refused it
    ({"client_config": {"request_timeout_ms": 0}}, "request_timeout_ms"),
    ({"client_config": {"security_protocol": "TLS"}}, "security_protocol"),
    ({"client_config": {"heartbeat_interval_ms": 100}}, "heartbeat_interval_ms"),
    ({"bootstrap_servers": "127.0.0.1:99999"}, "bootstrap_servers"),
    ({"group_id": " "}, "group_id"),
    ({"client": "confluent", "client_config": {"retry_backoff_ms": 5}}, "retry_backoff_ms"),
])
def test_a_bad_setting_is_refused_and_nothing_starts(client_config, kwargs, name):
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    group = f"mod-{uuid.uuid4().hex[:10]}"
    threads = _lab_threads()
    for cls in (ModerationService, RecheckWorker):
        args = {"bootstrap_servers": None, "group_id": group, "topics": topic_names(prefix),
                **kwargs,
                "client_config": {**client_config, **kwargs.get("client_config", {})}}
        with pytest.raises(ValueError) as info:
            cls(backend_url="http://127.0.0.1:1", **args)
        assert str(info.value).startswith(f"{name}: "), str(info.value)
    time.sleep(1.0)  # anything started in the background would have reached the broker
    groups, topics = _groups_and_topics(client_config)
    assert group not in groups
    assert not [t for t in topics if t.startswith(prefix)]
    assert _lab_threads() == threads


def test_the_same_service_with_good_settings_does_create_them(client_config, backend, stages):
    """The control of the test above: its checks would see a service that started."""
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    group = f"mod-{uuid.uuid4().hex[:10]}"
    names = topic_names(prefix)
    # the lab's brokers do not auto-create topics: they are made first, as every run does
    ensure_topics(dict(client_config), tuple(names.values()))
    svc = ModerationService(None, backend.url, group_id=group, topics=names,
                            client_config=dict(client_config))
    stages.append(svc)
    svc.start()
    assert "lab-moderation" in _lab_threads()
    try:
        wait_until(lambda: group in _groups_and_topics(client_config)[0], 60,
                   "the service's consumer group to show up")
    finally:
        assert svc.stop(timeout=20)
        from tests.conftest import delete_topics_with_prefix

        delete_topics_with_prefix(prefix)


@pytest.mark.parametrize("flag, value", [("--bootstrap", "127.0.0.1:99999"),
                                         ("--bootstrap", "localhost:x"),
                                         ("--topic-prefix", "a b"), ("--group", ""),
                                         ("--recheck-group", " ")])
def test_the_cli_refuses_bad_kafka_values_before_any_member_starts(flag, value):
    args = ["--bootstrap", "127.0.0.1:1", "--backend-url", "http://127.0.0.1:1",
            "--processes", "2", flag, value]
    proc = subprocess.run([sys.executable, "-m", "lab_kit.moderation", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert "supervisor" not in line  # no member process was started
    assert line.startswith(f"error: {flag}: "), line
