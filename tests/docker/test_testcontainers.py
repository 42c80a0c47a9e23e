"""The same broker image through testcontainers-python, as a test suite elsewhere would use it.

testcontainers' ``KafkaContainer`` expects Confluent's images, so the Kafka image (the official
``apache/kafka``, or the lab's local build of the same contract) runs as a generic
``DockerContainer``, configured by the image's ``KAFKA_*`` environment contract
(:func:`lab_kit.broker.docker.kafka_env`), its port published on 127.0.0.1 only. Three of
testcontainers' defaults are avoided on purpose: Ryuk is disabled (no registry here to pull it
from; the container is removed by the ``with`` block), the image is chosen among those present
(``start()`` would otherwise pull without a timeout), and readiness is waited for with a real
Kafka request (a generic container has no wait strategy).
"""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from lab_kit.broker.docker import kafka_env
from lab_kit.machine import free_port
from lab_kit.producer import AsyncPostProducer, api_versions_probe
from lab_kit.topics import ensure_topics
from tests.kafka_helpers import read_all

from .test_docker_backend import _docker_or_skip

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


def test_a_generic_testcontainer_runs_the_kafka_image_and_keeps_every_post(monkeypatch):
    _client, image = _docker_or_skip()
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", True)
    port = free_port()
    cluster_id = "l" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[1:22]  # 22 chars
    container = DockerContainer(image).with_env("CLUSTER_ID", cluster_id)
    # with_bind_ports() takes no host address; its ``ports`` dict goes to docker-py as is,
    # which binds (address, port) pairs: the broker listens on loopback only
    container.ports["9092/tcp"] = ("127.0.0.1", port)
    for key, value in kafka_env(port).items():
        container = container.with_env(key, value)
    with container:
        deadline = time.monotonic() + 240  # bounded: a JVM start on a loaded 2-core machine
        while not api_versions_probe("127.0.0.1", port, timeout_s=1.0):
            assert time.monotonic() < deadline, container.get_logs()[0][-2000:]
            time.sleep(0.5)
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        ports = wrapped.attrs["NetworkSettings"]["Ports"]["9092/tcp"]
        assert [p["HostIp"] for p in ports] == ["127.0.0.1"]  # loopback only
        cfg = {"bootstrap_servers": f"127.0.0.1:{port}"}
        ensure_topics(cfg, names=("tc.posts",), partitions={"tc.posts": 3}, timeout_s=120)
        with AsyncPostProducer(cfg["bootstrap_servers"], "tc.posts") as producer:
            futures = [producer.submit({"user_id": f"user-{i % 7}", "text": f"post {i}"})
                       for i in range(300)]
            assert producer.flush(60)
        ids = {f.result(0).post_id for f in futures}
        assert {f.result(0).outcome for f in futures} == {"acked"}
        landed = [r.key for r in read_all(cfg, "tc.posts")]
        assert len(landed) == 300 and len(ids) == 300
