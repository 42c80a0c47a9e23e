"""Notebook 11's experiments against the real broker: each shows what its lesson says, and
counts what it must (callbacks, BufferErrors, delivered/lost by reading back)."""

from __future__ import annotations

import pytest

from lab_kit.harness.readback import post_ids_in
from lab_kit.posts import Workload
from lab_kit.producer import client_models as cm

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def read_back(client_config):
    return lambda t: post_ids_in(client_config, t, timeout_s=30)


def test_each_model_runs_its_callbacks_on_its_own_thread(bootstrap, topic):
    df = cm.callback_timeline(bootstrap, topic, Workload(seed=1).posts(120), batch=50)
    threads = df.groupby("model")["callback_thread"].agg(set)
    assert len(df) == 3 * 120
    assert threads["confluent"] == {"lab-librdkafka-poll"}
    assert all(t.startswith("kafka-python-producer") for t in threads["kafka-python"])
    assert all(t.startswith("kafka-python-producer") for t in threads["asyncio"])
    asyncio_rows = df[df.model == "asyncio"]
    assert set(asyncio_rows.resumed_thread) == {cm.LOOP_THREAD}
    assert (asyncio_rows.resumed_at_s > asyncio_rows.submitted_at_s).all()
    assert (df.callback_at_s >= df.submitted_at_s).all()


def test_a_producer_that_never_polls_fills_its_queue_then_flush_serves_all(bootstrap, topic,
                                                                           read_back):
    df = cm.missing_poll(bootstrap, topic, n=150, queue_max=50, wait_s=0.5,
                         read_back=read_back).set_index("phase")
    first, later, flushed = df.iloc[0], df.iloc[1], df.iloc[2]
    assert (first.accepted, first.buffer_errors, first.first_buffer_error_at) == (50, 100, 50)
    assert first.callbacks == 0 and later.callbacks == 0 and later.buffer_errors == 1
    assert later.on_topic == 50  # the broker had every accepted post, yet the queue was full
    assert later.len_producer >= 50
    assert flushed.callbacks == 50 and flushed.len_producer == 0 and flushed.on_topic == 50
    assert flushed.callback_threads == "MainThread"  # flush() served them on its caller


def test_a_send_to_a_missing_topic_blocks_kafka_python_and_not_librdkafka(bootstrap):
    df = cm.send_with_no_metadata(bootstrap, max_block_ms=1000).set_index("client")
    kp, ck = df.loc["kafka-python"], df.loc["confluent"]
    assert kp.call_raised.startswith("KafkaTimeoutError")
    assert 0.9 <= kp.call_blocked_s <= 1.5  # about max_block_ms: the client's own bound
    assert ck.call_raised == "nothing" and ck.call_blocked_s < kp.call_blocked_s
    assert ck.report in ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_MSG_TIMED_OUT")


def test_a_dropped_librdkafka_producer_loses_what_it_held(bootstrap, topic, read_back):
    df = cm.close_without_flush(bootstrap, topic, 100, read_back).set_index("variant")
    assert df.loc["confluent: del, no flush()", "held_before_end"] == 100
    assert df.loc["confluent: del, no flush()", "lost"] == 100
    assert df.loc["confluent: del, no flush()", "reports"] == 0  # nobody was told
    assert df.loc["confluent: flush(), then del", "lost"] == 0
    assert df.loc["confluent: flush(), then del", "reports"] == 100
    assert df.loc["kafka-python: close()", "lost"] == 0
    assert df.loc["kafka-python: close()", "reports"] == 100


def test_cost_per_model_counts_every_post_delivered(bootstrap, topic, read_back):
    df = cm.cost_per_model(bootstrap, topic, Workload(seed=2).posts(600), read_back, batch=200)
    assert list(df.index) == list(cm.MODELS)
    assert (df.delivered == 600).all() and (df.lost == 0).all()
    assert (df.cpu_us_per_post > 0).all()


def test_aio_producer_waits_for_its_buffer_and_refuses_headers(bootstrap, topic):
    df = cm.aio_producer_batching(bootstrap, topic, Workload(seed=3).posts(20),
                                  buffer_timeout=0.5)
    aio, lab = df.iloc[0], df.iloc[1]
    assert aio.posts == 20 and lab.posts == 20
    assert aio.headers.startswith("NotImplementedError")
    assert aio.ack_p50_ms > lab.ack_p50_ms  # relative, side by side in one run
