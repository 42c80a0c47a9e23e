"""The producer's shared state under fire: several threads submit while acks arrive and the
failover state flips, against the real broker. Nothing may be lost or settled twice."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from lab_kit.harness.readback import audit
from lab_kit.posts import Post
from lab_kit.producer import AsyncPostProducer, State
from lab_kit.producer.callbacks import DeliveryHandler
from lab_kit.topics import ensure_topics

pytestmark = pytest.mark.timeout(300)

THREADS, PER_THREAD = 4, 1500


class CountingHandler(DeliveryHandler):
    name = "counting"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def on_delivery(self, post, delivery) -> None:
        with self.lock:
            self.delivered[post.post_id] += 1

    def on_failure(self, post, error) -> None:
        with self.lock:
            self.failed[post.post_id] += 1


def test_submit_acks_and_state_flips_from_many_threads(client_config, topic_name, tmp_path):
    ensure_topics(client_config, names=(topic_name, topic_name + ".dlq"),
                  partitions={topic_name: 3})
    rng = random.Random(7)
    answers = {"up": True}

    def flaky_probe() -> bool:  # the health thread sees the broker come and go, fast
        if rng.random() < 0.3:
            answers["up"] = not answers["up"]
        return answers["up"]

    handler = CountingHandler()
    settled: Counter[str] = Counter()
    settled_lock = threading.Lock()
    states_seen: set[State] = set()

    def count_settled(pf) -> None:
        with settled_lock:
            settled[pf.post_id] += 1

    producer = AsyncPostProducer(
        client_config["bootstrap_servers"], topic_name, dlq_topic=topic_name + ".dlq",
        spool_path=str(tmp_path / "spool.db"), max_in_flight=300, handlers=[handler],
        probe_interval_s=0.01, health_probe=flaky_probe,
        **{k: v for k, v in client_config.items() if k != "bootstrap_servers"})
    submitted: list[list[str]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def submitter(i: int) -> None:
        try:
            for n in range(PER_THREAD):
                post = Post(user_id=f"u{i}-{n % 7}", text=f"thread {i} post {n}")
                producer.submit(post).add_done_callback(count_settled)
                submitted[i].append(post.post_id)
                states_seen.add(producer.state)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    answers["up"] = True
    rng.seed(0)  # keep flipping while the rest settles: close() must still cope
    assert producer.flush(60)
    report = producer.close(timeout=60)

    ids = [pid for part in submitted for pid in part]
    assert not errors, errors
    assert len(ids) == len(set(ids)) == THREADS * PER_THREAD
    assert {State.SENDING, State.SPOOLING} <= states_seen | {producer.state}, states_seen
    counters = producer.metrics.counters()
    assert counters.get("spooled", 0) > 0, "the flips never sent a post to the spool"
    # every future settled exactly once, as acked or spooled; no handler ran twice
    assert set(settled) == set(ids) and max(settled.values()) == 1
    assert max(handler.delivered.values(), default=0) == 1
    assert not handler.failed
    assert counters["acked"] + counters["spooled"] == len(ids)
    assert report.lost == 0 and report.spooled_pending == 0
    # and what the topic holds: every post, none lost (duplicates from replays are counted)
    result = audit(client_config, topic_name, ids, dlq_topic=topic_name + ".dlq")
    assert result.lost == 0, result.lost_ids[:10]
    assert result.dead_lettered == 0
