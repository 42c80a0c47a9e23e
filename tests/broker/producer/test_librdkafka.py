"""AsyncPostProducer(client="confluent") against the real broker: where callbacks run, what
the caller may and may not do, and that it writes what the kafka-python path writes."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from lab_kit.harness.checker import KafkaCallWatch
from lab_kit.posts import Workload
from lab_kit.producer import (
    AsyncPostProducer,
    BackpressureError,
    BrokerUnavailableError,
)
from lab_kit.producer.callbacks import CollectingHandler, UserCallback
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.timeout(180)


def test_every_callback_runs_on_the_lab_poll_thread_once(bootstrap, client_config, topic):
    posts = Workload(seed=12).posts(1500)
    collect = CollectingHandler()
    with AsyncPostProducer(bootstrap, topic, client="confluent", handlers=[collect]) as p:
        futures = [p.submit(post) for post in posts]
        assert p.flush(timeout=60)
    frame = collect.frame()
    assert len(frame) == len(posts) and frame.post_id.is_unique
    assert set(frame.thread) == {"lab-librdkafka-poll"}  # never the caller's
    assert {f.result(0).outcome for f in futures} == {"acked"}
    landed = [json.loads(r.value)["post_id"] for r in read_all(client_config, topic)]
    assert sorted(landed) == sorted(post.post_id for post in posts)


def test_a_users_posts_land_where_kafka_python_puts_them(bootstrap, client_config, topic):
    """librdkafka hashes keys with murmur2 here, as kafka-python and Java do: one user, one
    partition, whichever client wrote the post."""
    posts = Workload(seed=13, users=40).posts(400)
    for client in ("kafka-python", "confluent"):
        with AsyncPostProducer(bootstrap, topic, client=client) as p:
            for post in posts:
                p.submit(post)
            assert p.flush(timeout=60)
    by_user: dict[bytes, set[int]] = {}
    for r in read_all(client_config, topic):
        by_user.setdefault(r.key, set()).add(r.partition)
    assert len(by_user) > 20 and all(len(parts) == 1 for parts in by_user.values())


def test_the_call_watch_sees_the_librdkafka_client(bootstrap, topic):
    post, other = Workload(seed=14).posts(2)
    with AsyncPostProducer(bootstrap, topic, client="confluent") as p:
        with KafkaCallWatch() as watch:
            p.submit(post).result(timeout=30)
            assert watch.by_method == {"produce_for": 1}
            t = threading.Thread(target=lambda: p.submit(other).result(30))
            t.start()
            t.join(60)
            assert watch.calls == 1  # another thread's call is not this thread's


def test_flush_inside_a_callback_is_refused_not_deadlocked(bootstrap, topic):
    refusals = []

    def flush_here(post, delivery):
        try:
            producer.flush(1)
        except RuntimeError as exc:
            refusals.append(str(exc))

    with AsyncPostProducer(bootstrap, topic, client="confluent",
                           handlers=[UserCallback(on_success=flush_here)]) as producer:
        producer.submit(Workload(seed=15).posts(1)[0]).result(timeout=30)
        assert producer.flush(30)
    assert len(refusals) == 1 and "deadlock" in refusals[0]


def test_the_in_flight_bound_is_the_labs(bootstrap, topic):
    posts = Workload(seed=16).posts(6)
    with AsyncPostProducer(bootstrap, topic, client="confluent", max_in_flight=5,
                           on_full="reject", linger_ms=2000) as p:
        for post in posts[:5]:
            p.submit(post)
        with pytest.raises(BackpressureError):
            p.submit(posts[5])
        assert p.flush(30)
    assert p.metrics.counters()["rejected"] == 1


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_asubmit_resolves_on_the_event_loop(bootstrap, topic, client):
    posts = Workload(seed=17).posts(50)

    async def run(p):
        loop_thread = threading.current_thread()
        deliveries = await asyncio.gather(*(p.asubmit(post) for post in posts))
        return deliveries, threading.current_thread() is loop_thread

    before = threading.active_count()
    with AsyncPostProducer(bootstrap, topic, client=client) as p:
        deliveries, same_thread = asyncio.run(run(p))
        threads_during = threading.active_count()
    assert same_thread and {d.outcome for d in deliveries} == {"acked"}
    assert threads_during - before < 10  # no thread per call: 50 posts, a handful of threads


def test_a_missing_topic_is_named_at_once(bootstrap, topic_name):
    with pytest.raises(BrokerUnavailableError, match="has no metadata"):
        AsyncPostProducer(bootstrap, topic_name + ".missing", client="confluent")


def test_no_broker_is_a_clear_error():
    with pytest.raises(BrokerUnavailableError, match="no Kafka broker answered"):
        AsyncPostProducer("127.0.0.1:9", client="confluent", bootstrap_timeout_ms=1000)
