"""The post-submission HTTP API (lab_kit.api) against the real broker: posting, status,
metrics, bad input (nothing reaches Kafka, the server keeps serving), SIGTERM."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from lab_kit import topics as lab_topics
from lab_kit.api import MAX_BODY_BYTES, ApiServer
from lab_kit.harness.readback import end_offsets, post_ids_in
from tests.kafka_helpers import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def api_topic(client_config):
    name = f"test-api-{uuid.uuid4().hex[:8]}"
    lab_topics.ensure_topics(client_config, (name,), partitions={name: 3})
    yield name
    from tests.conftest import delete_topics_with_prefix

    delete_topics_with_prefix(name)


@pytest.fixture(scope="module")
def api(api_topic, bootstrap, tmp_path_factory):
    server = ApiServer(topic=api_topic, bootstrap=bootstrap, verdicts="off",
                       spool_dir=tmp_path_factory.mktemp("api-spool"))
    with server:
        yield server


@pytest.fixture
def client(api):
    with httpx.Client(base_url=api.url, timeout=10) as c:
        yield c


def test_post_is_accepted_at_once_then_acked_and_on_the_topic(client, api_topic, client_config):
    r = client.post("/posts", json={"user_id": "user-1", "text": "hello from the API"})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "accepted" and body["delivery"] in ("pending", "acked")
    pid = body["post_id"]
    status = wait_for(lambda: (s := client.get(f"/posts/{pid}").json())["delivery"] == "acked"
                      and s)
    assert status["delivery"] == "acked" and status["offset"] is not None
    assert status["moderation"] is None
    assert pid in post_ids_in(client_config, api_topic)


def test_wait_ack_uses_the_asyncio_bridge_and_returns_the_offset(client):
    r = client.post("/posts?wait=ack", json={"user_id": "user-2", "text": "wait for it",
                                             "post_id": f"t-{uuid.uuid4().hex}"})
    assert r.status_code == 201
    assert r.json()["delivery"] == "acked" and r.json()["partition"] is not None


def test_unknown_post_is_404_naming_the_field(client):
    r = client.get("/posts/never-posted")
    assert r.status_code == 404 and r.json()["field"] == "post_id"


BAD = [
    (b"not json {", JSON, 400, "body"),
    (b'["a", "list"]', JSON, 422, "body"),
    (b'{"text": "no user"}', JSON, 422, "user_id"),
    (b'{"user_id": 42, "text": "mistyped"}', JSON, 422, "user_id"),
    (b'{"user_id": "u", "text": "' + b"x" * 5001 + b'"}', JSON, 422, "text"),
    (b'{"user_id": "u", "text": "hi", "color": "red"}', JSON, 422, "color"),
    (b'{"user_id": "u", "text": "hi"}', {"content-type": "text/plain"}, 415, "content-type"),
    (b'{"user_id": "caf\xe9", "text": "x"}', JSON, 400, "body"),
    (b"x" * (MAX_BODY_BYTES + 1), JSON, 413, "body"),
]


def test_bad_input_gets_a_4xx_naming_the_field_and_nothing_reaches_kafka(
        client, api, api_topic, client_config):
    before = end_offsets(client_config, [api_topic]).get(api_topic, {})
    rejected_before = api.counters()
    for body, headers, status, field in BAD:
        r = client.post("/posts", content=body, headers=headers)
        assert r.status_code == status, (body[:40], r.text)
        payload = r.json()
        assert payload["field"] == field and payload["error"] and "limit" in payload
    r = client.post("/posts", json={"user_id": "u", "text": "x" * 5001})
    assert r.json()["limit"] == 5000
    # an oversized body sent chunked (no content-length) is cut off at the limit too
    r = client.post("/posts", content=iter([b"x" * 40_000] * 3), headers=JSON)
    assert r.status_code == 413 and r.json()["field"] == "body"
    time.sleep(1.0)
    after = end_offsets(client_config, [api_topic]).get(api_topic, {})
    assert after == before, "a rejected post reached Kafka"
    assert client.get("/healthz").status_code == 200  # still serving
    assert api.counters()["lab_api_posts_submitted_total"] == \
        rejected_before["lab_api_posts_submitted_total"]
    text = client.get("/metrics").text
    for field in ("body", "user_id", "text", "content-type", "unknown"):
        assert f'lab_api_posts_rejected_total{{field="{field}"}}' in text
    assert 'field="color"' not in text  # an unknown key is not a label value (issue 22)


def test_metrics_counters_move(client, api):
    before = api.counters()
    for i in range(20):
        assert client.post("/posts", json={"user_id": f"user-{i}", "text": "count me"}
                           ).status_code == 202
    after = wait_for(lambda: (c := api.counters())["lab_api_posts_acked_total"]
                     >= before["lab_api_posts_acked_total"] + 20 and c)
    assert after["lab_api_posts_submitted_total"] == before["lab_api_posts_submitted_total"] + 20
    assert after["lab_api_posts_acked_total"] >= before["lab_api_posts_acked_total"] + 20
    assert after["lab_api_posts_in_flight"] == 0
    text = client.get("/metrics").text
    assert 'lab_api_requests_total{route="/posts",status="202"}' in text
    assert 'lab_api_request_duration_seconds_bucket{le="0.1",route="/posts"}' in text
    assert "lab_api_broker_healthy 1.0" in text


def test_healthz(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["variant"] == "async" and h["broker_healthy"] is True
    assert h["client"] == "kafka-python"  # the default


@pytest.mark.parametrize("variant", ["async", "blocking"])
def test_the_api_on_librdkafka_accepts_posts_that_reach_the_topic(
        bootstrap, api_topic, client_config, tmp_path, variant):
    """``--client confluent``: the same routes and answers, the producer on librdkafka."""
    server = ApiServer(variant=variant, topic=api_topic, bootstrap=bootstrap, verdicts="off",
                       spool_dir=tmp_path, log_path=tmp_path / "api.log", client="confluent")
    server.start()
    try:
        ids = []
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get("/healthz").json()["client"] == "confluent"
            for i in range(20):
                r = c.post("/posts", json={"user_id": f"user-{i}", "text": "on librdkafka"})
                assert r.status_code == 202, r.text
                ids.append(r.json()["post_id"])
            if variant == "async":
                r = c.post("/posts?wait=ack", json={"user_id": "user-w", "text": "wait"})
                body = r.json()
                assert r.status_code == 201 and body["acknowledged"] is True, r.text
                # one broker: an ack is one copy (topics.ack_is_durable), so not durable
                assert body["durable"] is False, r.text
                ids.append(r.json()["post_id"])
    finally:
        code = server.stop()
    assert code in (0, -15)
    assert "lost 0" in (tmp_path / "api.log").read_text()
    assert set(ids) <= set(post_ids_in(client_config, api_topic))


def test_sigterm_flushes_and_the_blocking_variant_answers_acked(bootstrap, api_topic,
                                                                client_config, tmp_path):
    server = ApiServer(variant="blocking", topic=api_topic, bootstrap=bootstrap,
                       verdicts="off", spool_dir=tmp_path, log_path=tmp_path / "api.log")
    server.start()
    try:
        ids = []
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for i in range(30):
                r = c.post("/posts", json={"user_id": f"user-{i}", "text": "blocking"})
                assert r.status_code == 202 and r.json()["delivery"] == "acked"
                ids.append(r.json()["post_id"])
    finally:
        code = server.stop()
    assert code in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert "lost 0" in (tmp_path / "api.log").read_text()
    assert set(ids) <= set(post_ids_in(client_config, api_topic))


def test_cli_refuses_bad_values_with_exit_code_2():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "lab_kit.api", "--workers", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--workers" in p.stderr


def test_users_posting_feed_for_the_instructor_panel(api, client):
    from lab_kit.api import UsersPostingFeed

    feed = UsersPostingFeed(api.url)
    feed.poll()
    for i in range(10):
        client.post("/posts", json={"user_id": f"user-{i}", "text": "panel"})
    client.post("/posts", content=b"nope", headers=JSON)
    time.sleep(0.2)
    row = feed.poll()
    assert row["accepted_per_s"] > 0 and row["rejected_per_s"] > 0
    assert row["broker_healthy"] == 1.0 and 0 <= row["within_100ms"] <= 1


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_the_served_app_hides_its_startup_objects_from_the_collector(bootstrap, api_topic,
                                                                      tmp_path):
    """``python -m lab_kit api`` serves ``create_app(freeze_gc=True)``: once started, a full
    collection no longer walks the modules, the app and the Kafka client (it stopped the event
    loop for 55-95 ms per collection in bench api)."""
    import gc

    from starlette.testclient import TestClient

    from lab_kit.api import create_app

    assert gc.get_freeze_count() == 0
    app = create_app(topic=api_topic, bootstrap=bootstrap, spool_dir=tmp_path,
                     verdicts=False, freeze_gc=True)
    try:
        with TestClient(app) as c:
            assert c.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_wait_ack_has_an_end_and_the_post_stays_accepted(bootstrap, api_topic, tmp_path,
                                                        client_config):
    """``?wait=ack`` past ``wait_ack_timeout_s``: 504, ``delivery: pending``, and the post
    still reaches the topic (only the wait ended). 1 ms is shorter than the producer's
    ``linger_ms`` (5), so no ack can come in time."""
    from starlette.testclient import TestClient

    from lab_kit.api import create_app

    app = create_app(topic=api_topic, bootstrap=bootstrap, spool_dir=tmp_path, verdicts=False,
                     wait_ack_timeout_s=0.001)
    pid = f"t-{uuid.uuid4().hex}"
    with TestClient(app) as c:
        r = c.post("/posts?wait=ack", json={"user_id": "user-9", "text": "slow", "post_id": pid})
        assert r.status_code == 504
        assert r.json()["delivery"] == "pending" and "wait_ack_timeout_s" in r.json()["error"]
        assert wait_for(lambda: c.get(f"/posts/{pid}").json()["delivery"] == "acked")
    assert pid in post_ids_in(client_config, api_topic)


@pytest.mark.parametrize("bad", [0, -1, 301])
def test_a_bad_wait_ack_timeout_is_refused_naming_the_field(bad):
    from lab_kit.api import create_app

    with pytest.raises(ValueError, match="wait_ack_timeout_s"):
        create_app(wait_ack_timeout_s=bad)
