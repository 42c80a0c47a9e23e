"""Backpressure with a contract, small scale, against the real broker (issue 22): an API whose
broker is away fills its (capped) spool, then answers 503 + Retry-After with the JSON error
body, never a 500; a second API on the same spool folder, with the broker, replays it, and
every post answered 202 is on the topic (read back), none of the refused ones."""

from __future__ import annotations

import time
import uuid

import pytest
from starlette.testclient import TestClient

from lab_kit import topics as lab_topics
from lab_kit.api import create_app
from lab_kit.harness.readback import post_ids_in
from lab_kit.machine import free_port

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240),
              pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")]

CAP = 30


@pytest.fixture
def spool_topic(client_config):
    name = f"test-fullspool-{uuid.uuid4().hex[:8]}"
    lab_topics.ensure_topics(client_config, (name,), partitions={name: 3})
    yield name
    from tests.conftest import delete_topics_with_prefix  # why here: the shared clean-up

    delete_topics_with_prefix(name)


def _post(c: TestClient, i: int):
    pid = f"fs-{i:04d}"
    return pid, c.post("/posts", json={"user_id": f"user-{i % 7}", "text": f"post {i}",
                                        "post_id": pid})


def test_a_full_spool_answers_503_and_every_202_is_delivered(spool_topic, bootstrap,
                                                               client_config, tmp_path):
    away = f"127.0.0.1:{free_port()}"  # nobody listens: the API starts SPOOLING
    accepted, refused = [], []
    app = create_app(topic=spool_topic, bootstrap=away, spool_dir=tmp_path, verdicts=False,
                     spool_max_rows=CAP)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["broker_healthy"] is False
        for i in range(2 * CAP):
            pid, r = _post(c, i)
            assert r.status_code in (202, 503), r.text
            assert r.headers["content-type"] == "application/json"
            if r.status_code == 202:
                assert r.json()["delivery"] == "spooled"
                accepted.append(pid)
            else:
                body = r.json()
                assert body["field"] == "spool_rows" and body["limit"] == CAP
                assert r.headers["retry-after"] == "5"
                refused.append(pid)
        assert len(accepted) == CAP and len(refused) == CAP
        assert c.get("/healthz").json()["spool_depth"] == CAP  # the counter
        assert 'lab_api_posts_rejected_total{field="spool_rows"} 30.0' in c.get("/metrics").text
        assert 'status="500"' not in c.get("/metrics").text

    # the same spool folder, the broker there: the spool is replayed, new posts accepted
    app = create_app(topic=spool_topic, bootstrap=bootstrap, spool_dir=tmp_path,
                     verdicts=False, spool_max_rows=CAP)
    with TestClient(app) as c:
        deadline = time.monotonic() + 90
        while c.get("/healthz").json()["spool_depth"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/healthz").json()["spool_depth"] == 0  # replayed: room again
        for i in range(2 * CAP, 2 * CAP + 5):
            pid, r = _post(c, i)
            assert r.status_code == 202, r.text
            accepted.append(pid)
    on_topic = set(post_ids_in(client_config, spool_topic, timeout_s=60))
    assert set(accepted) <= on_topic, sorted(set(accepted) - on_topic)  # lost: 0
    assert not set(refused) & on_topic  # a 503 was not accepted


def test_wait_ack_with_the_broker_away_answers_once_the_spool_is_fsynced(spool_topic, tmp_path,
                                                                         monkeypatch):
    """The durable answer without Kafka: 201 ``spooled``, ``durable: true``, only after an
    fsync of the spool; one fsync (per file) can serve many waiting requests."""
    import os

    away = f"127.0.0.1:{free_port()}"
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    app = create_app(topic=spool_topic, bootstrap=away, spool_dir=tmp_path, verdicts=False)
    with TestClient(app) as c:
        before = len(fsyncs)
        r = c.post("/posts?wait=ack", json={"user_id": "u1", "text": "keep me",
                                            "post_id": "durable-1"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["delivery"] == "spooled" and body["durable"] is True
        assert len(fsyncs) > before  # the answer waited for the disk
        r = c.post("/posts", json={"user_id": "u1", "text": "no wait", "post_id": "plain-1"})
        assert r.status_code == 202 and "durable" not in r.json()
