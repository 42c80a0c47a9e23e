"""AsyncPostProducer and the callback handlers against the real broker."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lab_kit.posts import Post, PostValidationError, Workload
from lab_kit.producer import (
    CLIENTS,
    AsyncPostProducer,
    BackpressureError,
    BrokerUnavailableError,
    DeliveryFailed,
)
from lab_kit.producer.callbacks import (
    CollectingHandler,
    RaisingHandler,
    UserCallback,
    blocking_callback_experiment,
    flush_inside_callback_demo,
)
from tests.kafka_helpers import create_topic, read_all

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def posts():
    return Workload(seed=11).posts(2000)


def test_submit_returns_before_the_ack_and_the_callback_comes_later(bootstrap, topic, posts):
    seen_threads = []
    # linger 1 s: the margin that keeps the ack out of the next two lines on a loaded machine
    with AsyncPostProducer(bootstrap, topic, linger_ms=1000) as producer:
        future = producer.submit(posts[0])
        assert not future.done()  # the broker has not even seen it yet
        future.add_done_callback(lambda f: seen_threads.append(threading.current_thread()))
        delivery = future.result(timeout=30)
    assert delivery.outcome == "acked" and delivery.offset is not None
    assert delivery.ack_latency_s >= 0.9  # a lower bound: a loaded machine only adds
    assert seen_threads and seen_threads[0] is not threading.main_thread()
    assert producer.metrics.counters()["acked"] == producer.metrics.counters()["submitted"] == 1


def test_exactly_one_callback_per_post(bootstrap, topic, posts, client_config):
    collect = CollectingHandler()
    done = []
    with AsyncPostProducer(bootstrap, topic, handlers=[collect]) as producer:
        for p in posts:
            producer.submit(p).add_done_callback(done.append)
        assert producer.flush(timeout=60)
    frame = collect.frame()
    assert len(frame) == len(posts) == len(done)
    assert frame.post_id.is_unique and set(frame.post_id) == {p.post_id for p in posts}
    assert (frame.outcome == "acked").all()
    # on the client's one sender thread; kafka-python runs a callback at once, in the caller,
    # when the ack beat add_callback() (seen on a loaded machine): never on any other thread
    senders = {t for t in frame.thread if t != threading.current_thread().name}
    assert len(senders) == 1 and next(iter(senders)).endswith("network-thread"), senders
    assert (frame.thread != threading.current_thread().name).mean() > 0.5
    landed = [json.loads(r.value)["post_id"] for r in read_all(client_config, topic)]
    assert sorted(landed) == sorted(p.post_id for p in posts)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_post_the_broker_refuses_as_too_large_ends_in_errback_and_dlq(
        bootstrap, client_config, topic_name, client):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    small, dlq = topic_name, topic_name + ".dlq"
    admin = KafkaAdminClient(**client_config)
    admin.create_topics([NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "1024"})])
    admin.close()
    create_topic(client_config, dlq)
    big = Post(user_id="u-big", text="a long rant " * 300)  # ~3.6 kB: valid, but > 1024
    ok = Post(user_id="u-ok", text="short and sweet")
    errors = []
    # max_block_s: without a spool, a post submitted while a refused batch's posts are re-sent
    # alone waits for them (the "block" policy), then is refused (BackpressureError: not
    # accepted). Posts sent to the client being replaced are such a batch: on a busy machine
    # the default 50 ms wait refused some of the 20 below. This test is about delivery after
    # the rebuild, so it lets them wait; the refusal itself is test_order_paths' subject.
    with AsyncPostProducer(bootstrap, small, dlq_topic=dlq, linger_ms=0, client=client,
                           max_block_s=10.0,
                           handlers=[UserCallback(on_error=lambda p, e: errors.append(e))]
                           ) as producer:
        f_big, f_ok = producer.submit(big), producer.submit(ok)
        assert producer.flush(timeout=30)  # kafka-python's own flush raises here (quirk 8)
        exc = f_big.exception(timeout=30)
        # the small post shared the refused batch (and kafka-python's idempotent client
        # fails every later send after it): it is re-sent alone and acked
        assert f_ok.result(timeout=30).outcome == "acked"
        later = [producer.submit(Post(user_id="u-ok", text=f"after {i}")) for i in range(20)]
        assert all(f.result(timeout=30).outcome == "acked" for f in later)
        assert producer.metrics.counters()["client_rebuilds"] >= 1
    assert isinstance(exc, DeliveryFailed) and exc.dead_lettered
    assert type(exc.error).__name__ == "MessageSizeTooLargeError"
    assert len(errors) == 1
    assert producer.metrics.counters()["dead_lettered"] == 1
    records = read_all(client_config, dlq)
    assert len(records) == 1
    body = json.loads(records[0].value)
    assert body["post_id"] == big.post_id and body["error_type"] == "MessageSizeTooLargeError"
    assert body["source_topic"] == small and body["size_bytes"] > 1024
    assert dict(records[0].headers)["error_type"] == b"MessageSizeTooLargeError"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_spooled_batch_refused_for_one_post_delivers_its_mates(
        bootstrap, client_config, topic_name, tmp_path, client):
    """Replay sends the spool in batches; the broker refuses a whole batch when one record
    in it is too large for the topic. The mates are re-sent alone and delivered, in order;
    only the big post is dead-lettered."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from lab_kit.producer.spool import Spool

    small, dlq = topic_name, topic_name + ".dlq"
    admin = KafkaAdminClient(**client_config)
    admin.create_topics([NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "1024"})])
    admin.close()
    create_topic(client_config, dlq)
    posts = [Post(user_id="u-1", text=f"short post {i}") for i in range(5)]
    posts[2] = Post(user_id="u-1", text="a long rant " * 300)  # ~3.6 kB: over 1024
    spool = Spool(str(tmp_path / "spool.db"))  # what a crashed producer left behind
    spool.append_many((small, p.key_bytes(), p.to_json_bytes(), p.post_id, i)
                      for i, p in enumerate(posts))
    spool.close()
    with AsyncPostProducer(bootstrap, small, dlq_topic=dlq, spool_path=str(tmp_path / "spool.db"),
                           linger_ms=50, client=client) as producer:
        assert producer.drain_spool(timeout=60) == 0
        counters = producer.metrics.counters()
    landed = [json.loads(r.value)["post_id"] for r in read_all(client_config, small)]
    assert landed == [p.post_id for i, p in enumerate(posts) if i != 2]
    dead = [json.loads(r.value)["post_id"] for r in read_all(client_config, dlq)]
    assert dead == [posts[2].post_id]
    assert counters["replayed"] == 4 and counters["dead_lettered"] == 1


@pytest.mark.parametrize("bad, field", [
    ({"text": "no user"}, "user_id"),
    ({"user_id": "u1", "text": "   "}, "text"),
    ({"user_id": 42, "text": "wrong type"}, "user_id"),
    ({"user_id": "u1", "text": "x" * 5001}, "text"),
    ({"user_id": "u1", "text": "lone \ud800 surrogate"}, "text"),
    ({"user_id": "u1", "text": "hi", "mood": "happy"}, "mood"),
    (Post(user_id="u1", text="bad \udfff surrogate"), "text"),
])
def test_validation_errors_name_the_field_and_nothing_is_accepted(bootstrap, topic, bad, field):
    with AsyncPostProducer(bootstrap, topic) as producer:
        with pytest.raises(PostValidationError) as info:
            producer.submit(bad)
        assert info.value.field == field and field in str(info.value)
        assert producer.metrics.counters()["submitted"] == 0


def test_size_over_max_request_size_is_a_validation_error(bootstrap, topic):
    with AsyncPostProducer(bootstrap, topic, max_request_size=2048) as producer:
        with pytest.raises(PostValidationError) as info:
            producer.submit({"user_id": "u1", "text": "y" * 3000})
    assert info.value.field == "size" and info.value.limit == 2048
    assert "2048" in str(info.value)


def test_close_delivers_everything_that_was_accepted(bootstrap, topic, posts, client_config):
    producer = AsyncPostProducer(bootstrap, topic, linger_ms=100)
    futures = [producer.submit(p) for p in posts]
    report = producer.close(timeout=60)  # right away: most posts are still in batches
    assert report.accepted == len(posts) and report.acked == len(posts)
    assert report.lost == 0 and report.failed_ids == [] and report.undelivered_ids == []
    assert all(f.done() and f.result().outcome == "acked" for f in futures)
    assert len(read_all(client_config, topic)) == len(posts)


def test_in_flight_bound_rejects_and_blocks(bootstrap, topic, posts):
    with AsyncPostProducer(bootstrap, topic, max_in_flight=50, on_full="reject",
                           linger_ms=1000, batch_size=1_000_000) as producer:
        accepted, rejected = 0, []
        for p in posts[:60]:
            try:
                producer.submit(p)
                accepted += 1
            except BackpressureError as exc:
                rejected.append(exc)
            assert producer.in_flight <= 50
        assert accepted == 50 and len(rejected) == 10
        assert rejected[0].field == "max_in_flight" and rejected[0].limit == 50
        assert producer.metrics.counters()["rejected"] == 10
    with AsyncPostProducer(bootstrap, topic, max_in_flight=5, on_full="block",
                           max_block_s=0.05, linger_ms=1000, batch_size=1_000_000) as producer:
        for p in posts[:5]:
            producer.submit(p)
        with pytest.raises(BackpressureError, match="waited"):
            producer.submit(posts[5])


def test_block_policy_waits_for_a_slot_to_free(bootstrap, topic, posts):
    """``block``: a submit past the bound returns only after an earlier post's ack freed a
    slot, and in-flight never exceeds the bound. Checked by cause and effect, not by timing:
    an ack's time is read before its slot is released, so the k-th submit (k >= bound) can
    only return after at least k - bound + 1 acks were timed."""
    bound = 5
    samples: list[int] = []
    stop = threading.Event()
    with AsyncPostProducer(bootstrap, topic, max_in_flight=bound, on_full="block",
                           max_block_s=30, linger_ms=20) as producer:
        def sample() -> None:  # in-flight as another thread sees it, all along
            while not stop.wait(0.0005):
                samples.append(producer.in_flight)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        futures, returned_at = [], []
        for p in posts[:60]:  # waits for acks, never raises
            futures.append(producer.submit(p))
            returned_at.append(time.perf_counter())
            samples.append(producer.in_flight)
        producer.flush(30)
        stop.set()
        sampler.join(5)
    deliveries = [f.result() for f in futures]
    assert all(d.outcome == "acked" for d in deliveries)
    assert producer.metrics.counters()["acked"] == producer.metrics.counters()["submitted"] == 60
    assert producer.metrics.counters()["rejected"] == 0
    assert len(samples) > 60 and max(samples) <= bound
    acked_at = sorted(f.intended_at + d.ack_latency_s for f, d in zip(futures, deliveries,
                                                                     strict=True))
    for k in range(bound, 60):
        acks_before = sum(1 for t in acked_at if t <= returned_at[k])
        assert acks_before >= k - bound + 1, f"submit {k} returned after only {acks_before} acks"


def _per_user_positions(records, posts) -> dict[str, list[int]]:
    order = {p.post_id: i for i, p in enumerate(posts)}
    per_user: dict[str, list[int]] = {}
    for r in records:  # one key, one partition: read order is log order per user
        per_user.setdefault(r.key.decode(), []).append(order[json.loads(r.value)["post_id"]])
    return per_user


def test_overflow_spool_delivers_every_post_in_per_user_order(bootstrap, client_config, topic,
                                                              tmp_path):
    """``on_full="spool"``: past the in-flight bound posts go to disk, and newer posts queue
    behind them there, so none overtakes an overflow-spooled post of the same user."""
    posts = Workload(seed=13, users=8).posts(3000)
    with AsyncPostProducer(bootstrap, topic, max_in_flight=20, on_full="spool",
                           spool_path=str(tmp_path / "overflow.db"), probe_interval_s=0.1,
                           linger_ms=2) as producer:
        futures = [producer.submit(p) for p in posts]
        assert producer.in_flight <= 20
        assert producer.drain_spool(timeout=90) == 0
        assert producer.flush(60)
    counters = producer.metrics.counters()
    assert counters["spooled"] > 0, "the bound was never reached: nothing was tested"
    assert counters["replayed"] == counters["spooled"]
    assert counters["acked"] + counters["spooled"] == counters["submitted"] == len(posts)
    assert {f.result().outcome for f in futures} == {"acked", "spooled"}
    records = read_all(client_config, topic)
    landed = sorted(json.loads(r.value)["post_id"] for r in records)
    assert landed == sorted(p.post_id for p in posts)  # every id, exactly once
    per_user = _per_user_positions(records, posts)
    assert max(len(v) for v in per_user.values()) > 100  # users with many posts
    out_of_order = {u: v for u, v in per_user.items() if v != sorted(v)}
    assert not out_of_order, f"posts overtook older ones of {sorted(out_of_order)}"


def _bytes_on_disk(cfg: dict, topic: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**cfg)
    try:
        dirs = admin.describe_log_dirs([topic])
    finally:
        admin.close()
    return sum(p["partition_size"] for broker in dirs for d in broker["log_dirs"]
               for t in d["topics"] if t["name"] == topic for p in t["partitions"])


def test_compression_really_compresses(bootstrap, client_config, topic_name):
    """Notebook 06's claim, at the broker: the same posts take fewer bytes in the log with
    each codec, and every post reads back intact (the consumer decompresses them)."""
    posts = Workload(seed=21).posts(1500)
    ids = sorted(p.post_id for p in posts)
    on_disk, rates = {}, {}
    for codec in ("none", "gzip", "lz4", "zstd"):
        topic = f"{topic_name}.{codec}"
        create_topic(client_config, topic, partitions=1)
        extra = {} if codec == "none" else {"compression_type": codec}
        with AsyncPostProducer(bootstrap, topic, linger_ms=20, batch_size=65_536,
                               **extra) as producer:
            for p in posts:
                producer.submit(p)
            assert producer.flush(60)
            rates[codec] = producer.client_metrics()["producer-metrics"][
                "compression-rate-avg"]
        assert producer.metrics.counters()["acked"] == len(posts)
        assert sorted(json.loads(r.value)["post_id"]
                      for r in read_all(client_config, topic)) == ids
        on_disk[codec] = _bytes_on_disk(client_config, topic)
    plain = on_disk["none"]
    assert plain > sum(len(p.to_json_bytes()) for p in posts)  # every post is in the log
    for codec in ("gzip", "lz4", "zstd"):
        assert on_disk[codec] < 0.8 * plain, (codec, on_disk)
        assert 0 < rates[codec] < 0.8, (codec, rates)
    print(f"\nbytes in the log: {on_disk}; client compression-rate-avg: {rates}")


def test_kafka_call_watch_counts_client_calls_on_its_thread_only(bootstrap, topic, posts):
    """The instrument behind "nothing waited on Kafka while spooling" must see a call."""
    from kafka import KafkaProducer

    from lab_kit.harness.checker import WATCHED_METHODS, KafkaCallWatch

    originals = {name: KafkaProducer.__dict__[name] for name in WATCHED_METHODS}
    with AsyncPostProducer(bootstrap, topic) as producer:
        with KafkaCallWatch() as watch:
            producer.submit(posts[0]).result(timeout=30)  # client.send() on this thread
            assert watch.calls == 1 and watch.by_method == {"send": 1}
            other = threading.Thread(target=lambda: producer.submit(posts[1]).result(30))
            other.start()
            other.join(60)
            assert watch.calls == 1  # another thread's send is not this thread's
            assert producer.flush(30)
            assert watch.by_method["flush"] == 1
            spare = KafkaProducer(bootstrap_servers=bootstrap)
            spare.close()  # a real close: counted
            assert watch.by_method["close"] == 1
            spare.close()  # closed already (what __del__ does after a force close): returns
            assert watch.by_method["close"] == 1  # at once, so not a call that could wait
    assert {name: KafkaProducer.__dict__[name] for name in WATCHED_METHODS} == originals


def test_a_raising_user_callback_is_counted_not_lost(bootstrap, topic, posts):
    with AsyncPostProducer(bootstrap, topic, handlers=[RaisingHandler()]) as producer:
        futures = [producer.submit(p) for p in posts[:100]]
        producer.flush(30)
    assert producer.metrics.counters()["callback_errors"] == 100
    assert len(producer.callback_errors) == 100
    post_id, handler, error = producer.callback_errors[0]
    assert handler == "raising" and "ValueError" in error
    assert all(f.result().outcome == "acked" for f in futures)  # delivery itself unharmed


def test_sync_mode_waits_for_each_ack(bootstrap, topic, posts):
    with AsyncPostProducer(bootstrap, topic, mode="sync", linger_ms=0) as producer:
        future = producer.submit(posts[0])
        assert future.done() and future.result().offset is not None
        delivery = producer.submit_sync(posts[1])
        assert delivery.outcome == "acked"
    assert producer.metrics.counters()["acked"] == 2


def test_flush_inside_a_callback_is_refused_with_a_reason(bootstrap, topic, posts):
    message = flush_inside_callback_demo(bootstrap, topic, posts[0])
    assert "deadlock" in message and "sender thread" in message


def test_a_blocking_callback_stalls_every_ack(bootstrap, topic, posts):
    df = blocking_callback_experiment(bootstrap, topic, posts[:300], sleep_s=0.005)
    by = dict(zip(df.variant, df.ack_p50_ms, strict=True))
    plain, blocking, offloaded = df.variant
    assert by[blocking] > 3 * by[plain]
    assert by[offloaded] < by[blocking]


def test_no_broker_and_no_spool_fails_fast_with_a_hint():
    with pytest.raises(BrokerUnavailableError, match="broker up"):
        AsyncPostProducer("127.0.0.1:9", "posts", bootstrap_timeout_ms=1000)


def test_bad_producer_options_are_named():
    with pytest.raises(ValueError, match="max_in_flight"):
        AsyncPostProducer("127.0.0.1:9", max_in_flight=0)
    with pytest.raises(ValueError, match="on_full"):
        AsyncPostProducer("127.0.0.1:9", on_full="drop")
    with pytest.raises(ValueError, match="mode"):
        AsyncPostProducer("127.0.0.1:9", mode="fast")
