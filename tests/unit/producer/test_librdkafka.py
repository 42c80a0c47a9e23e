"""librdkafka behind AsyncPostProducer, without a broker: errors, settings, options."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from kafka import errors as kerrors

from lab_kit.kafka_settings import librdkafka_config
from lab_kit.producer import AsyncPostProducer
from lab_kit.producer.failover import Action, decide_on_error
from lab_kit.producer.librdkafka import (
    LocalClientError,
    exception_for,
    producer_properties,
)


@pytest.mark.parametrize("code, cls, retriable", [
    (KafkaError._MSG_TIMED_OUT, kerrors.KafkaTimeoutError, True),
    (KafkaError.MSG_SIZE_TOO_LARGE, kerrors.MessageSizeTooLargeError, False),
    (KafkaError.NOT_LEADER_FOR_PARTITION, kerrors.NotLeaderForPartitionError, True),
    (KafkaError.NOT_ENOUGH_REPLICAS, kerrors.NotEnoughReplicasError, True),
    (KafkaError._TRANSPORT, kerrors.KafkaConnectionError, True),
    (KafkaError._PURGE_INFLIGHT, kerrors.IllegalStateError, False),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, kerrors.TopicAuthorizationFailedError, False),
])
def test_librdkafka_errors_become_the_classes_kafka_python_raises(code, cls, retriable):
    exc = exception_for(KafkaError(code))
    assert type(exc) is cls
    assert bool(getattr(exc, "retriable", False)) is retriable


def test_a_local_error_keeps_librdkafkas_verdict():
    exc = exception_for(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    assert isinstance(exc, LocalClientError) and exc.fatal and not exc.retriable
    assert "_FATAL" in str(exc)


def test_the_failover_decides_the_same_for_a_mapped_error():
    """A delivery timeout from librdkafka is what kafka-python's is to decide_on_error."""
    exc = exception_for(KafkaError(KafkaError._MSG_TIMED_OUT))
    decision = decide_on_error(retriable=exc.retriable,
                               timed_out=isinstance(exc, kerrors.KafkaTimeoutError),
                               from_current_client=True, has_spool=True)
    assert decision.action is Action.SPOOL and decision.replace_client and decision.outage


def test_settings_translate_with_kafka_pythons_defaults():
    props = producer_properties({"bootstrap_servers": ["127.0.0.1:1", "127.0.0.1:2"],
                                 "linger_ms": 5, "bootstrap_timeout_ms": 3000}, 10_000)
    assert props["bootstrap.servers"] == "127.0.0.1:1,127.0.0.1:2"
    assert props["linger.ms"] == 5 and "bootstrap_timeout_ms" not in props
    assert props["enable.idempotence"] is True and props["acks"] == "all"
    assert props["message.max.bytes"] == 1_048_576  # kafka-python's max_request_size
    assert props["delivery.timeout.ms"] == 120_000  # kafka-python's, not librdkafka's 300 s
    assert props["partitioner"] == "murmur2_random"  # a user's partition as kafka-python's
    assert props["queue.buffering.max.messages"] >= 10_000  # the lab's bound comes first


def test_a_setting_librdkafka_lacks_is_named():
    with pytest.raises(ValueError, match="^buffer_memory: no confluent-kafka equivalent"):
        librdkafka_config({"buffer_memory": 1 << 20}, producer=True)
    with pytest.raises(ValueError, match="^buffer_memory"):
        AsyncPostProducer("127.0.0.1:1", client="confluent", buffer_memory=1 << 20)


def test_an_unknown_client_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^client: 'librdkafka' is not one of"):
        AsyncPostProducer("127.0.0.1:1", client="librdkafka")
