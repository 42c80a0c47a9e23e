"""kafka-python settings checked for name, type and range, without a broker or network."""

from __future__ import annotations

import re

import pytest
from kafka import KafkaConsumer, KafkaProducer

from lab_kit.kafka_settings import (
    CONSUMER_RULES,
    PRODUCER_RULES,
    check_bootstrap_servers,
    check_consumer_settings,
    check_producer_settings,
    check_topic_name,
)


def refused(check, config: dict, message: str) -> None:
    """``check(config)`` raises ValueError whose message starts with ``message``."""
    with pytest.raises(ValueError) as info:
        check(config)
    assert str(info.value).startswith(message), str(info.value)


# --- the messages the issue asks for ----------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"linger_ms": -5}, "linger_ms: must be an integer >= 0, got -5"),
    ({"acks": "two"}, "acks: must be one of 0, 1, 'all' (or -1), got 'two'"),
    ({"compression_type": "brotli"},
     "compression_type: must be one of None, 'gzip', 'snappy', 'lz4', 'zstd', got 'brotli'"),
    ({"lingr_ms": 5}, "lingr_ms: not a kafka-python KafkaProducer setting (did you mean "
                      "linger_ms?)"),
])
def test_messages_name_the_setting_what_is_allowed_and_what_was_given(config, message):
    with pytest.raises(ValueError) as info:
        check_producer_settings(config)
    assert str(info.value) == message


# --- every rule of the tables ---------------------------------------------------------------

def _rules(table: dict) -> list:
    return sorted(table.items())


@pytest.mark.parametrize("name, rule", _rules(PRODUCER_RULES))
def test_every_producer_rule_refuses_a_wrong_type_naming_the_setting(name, rule):
    refused(check_producer_settings, {name: object()}, f"{name}: must be {rule.allowed}, got ")


@pytest.mark.parametrize("name, rule", _rules(CONSUMER_RULES))
def test_every_consumer_rule_refuses_a_wrong_type_naming_the_setting(name, rule):
    refused(check_consumer_settings, {name: object()}, f"{name}: must be {rule.allowed}, got ")


@pytest.mark.parametrize("check, name", [
    *[(check_producer_settings, n) for n, r in _rules(PRODUCER_RULES)
      if r.allowed.startswith("an integer")],
    *[(check_consumer_settings, n) for n, r in _rules(CONSUMER_RULES)
      if r.allowed.startswith("an integer")],
])
def test_integers_refuse_bools_floats_and_values_out_of_range(check, name):
    rules = PRODUCER_RULES if check is check_producer_settings else CONSUMER_RULES
    low, high = re.search(r"(-?\d+)(?:, (\d+)\])?", rules[name].allowed).groups()
    for bad in (True, False, 1.0, "5", int(low) - 1,
                *(() if high is None else (int(high) + 1,))):
        refused(check, {name: bad}, f"{name}: must be an integer")


@pytest.mark.parametrize("check, name, bad", [
    (check_producer_settings, "acks", 2), (check_producer_settings, "acks", "1"),
    (check_producer_settings, "acks", True),  # True == 1, but it is not a setting of 1
    (check_producer_settings, "compression_type", "GZIP"),
    (check_producer_settings, "retries", -1), (check_producer_settings, "retries", 2.5),
    (check_producer_settings, "retries", True),
    (check_producer_settings, "enable_idempotence", 1),
    (check_producer_settings, "enable_idempotence", "true"),
    (check_producer_settings, "client_id", ""),
    (check_producer_settings, "security_protocol", "plaintext"),
    (check_producer_settings, "batch_size", 2**31),
    (check_consumer_settings, "group_id", ""),
    (check_consumer_settings, "group_id", 7),
    (check_consumer_settings, "auto_offset_reset", "earliset"),
    (check_consumer_settings, "auto_offset_reset", "smallest"),
    (check_consumer_settings, "enable_auto_commit", "false"),
    (check_consumer_settings, "isolation_level", "committed"),
    (check_consumer_settings, "max_poll_records", 0),
])
def test_bad_values_are_refused_naming_the_setting(check, name, bad):
    refused(check, {name: bad}, f"{name}: must be ")


@pytest.mark.parametrize("check, name, good", [
    (check_producer_settings, "acks", 0), (check_producer_settings, "acks", 1),
    (check_producer_settings, "acks", -1), (check_producer_settings, "acks", "all"),
    (check_producer_settings, "retries", 0), (check_producer_settings, "retries", float("inf")),
    (check_producer_settings, "compression_type", None),
    (check_producer_settings, "compression_type", "gzip"),
    (check_producer_settings, "client_id", None),
    (check_producer_settings, "linger_ms", 0),
    (check_consumer_settings, "group_id", None),
    (check_consumer_settings, "auto_offset_reset", "none"),
    (check_consumer_settings, "isolation_level", "read_committed"),
])
def test_good_values_pass(check, name, good):
    assert check({name: good}) == {name: good}


# --- names ----------------------------------------------------------------------------------

def test_unknown_names_are_refused_with_a_hint():
    refused(check_consumer_settings, {"max_pol_records": 10},
            "max_pol_records: not a kafka-python KafkaConsumer setting (did you mean "
            "max_poll_records?)")
    refused(check_producer_settings, {"buffer_memory": 1 << 25},
            "buffer_memory: not a kafka-python KafkaProducer setting (kafka-python 3 has no "
            "buffer_memory setting)")
    with pytest.raises(ValueError) as info:
        check_producer_settings({"zzzz": 1})
    assert str(info.value) == "zzzz: not a kafka-python KafkaProducer setting"


def test_a_setting_of_the_other_client_is_refused():
    refused(check_producer_settings, {"group_id": "g"},
            "group_id: not a kafka-python KafkaProducer setting")
    refused(check_consumer_settings, {"linger_ms": 5},
            "linger_ms: not a kafka-python KafkaConsumer setting")


def test_names_without_a_rule_are_left_to_kafka_python():
    ok = {"ssl_cafile": "/some/ca.pem", "partitioner": object(), "reconnect_backoff_ms": 50}
    assert check_producer_settings(ok) is ok


# --- bootstrap servers ----------------------------------------------------------------------

@pytest.mark.parametrize("servers", [
    "127.0.0.1:9092", "localhost", "a:1,b:65535", "a:9092, b:9093", ["a:1", "b:2"],
    ("kafka-1:9092",), "[::1]:9092",
])
def test_bootstrap_servers_good_shapes(servers):
    assert check_bootstrap_servers(servers) is servers
    assert check_producer_settings({"bootstrap_servers": servers})
    assert check_consumer_settings({"bootstrap_servers": servers})


@pytest.mark.parametrize("servers", [
    "", " ", "h:0", "h:65536", "h:99999", "h:x", "h:", ":9092", "a:1,", "a b:1", "h:-1",
    [], ["a:1", 9092], 9092, None, b"h:1", "[::1]x",
])
def test_bootstrap_servers_bad_shapes_name_the_setting(servers):
    refused(check_bootstrap_servers, servers, "bootstrap_servers: must be 'host:port'")
    refused(check_producer_settings, {"bootstrap_servers": servers}, "bootstrap_servers: ")


def test_topic_names():
    assert check_topic_name("t1-moderation.results") == "t1-moderation.results"
    for bad in ("", ".", "..", "a b", "x" * 250, "posts/1", None):
        with pytest.raises(ValueError, match=r"^topics\['posts'\]: must be a Kafka topic"):
            check_topic_name(bad, "topics['posts']")


# --- combinations kafka-python refuses (after connecting) -----------------------------------

def test_explicit_idempotence_needs_acks_all_retries_and_at_most_5_in_flight():
    base = {"enable_idempotence": True}
    refused(check_producer_settings, {**base, "acks": 1},
            "acks: must be 'all' (or -1) with enable_idempotence=True, got 1")
    refused(check_producer_settings, {**base, "retries": 0},
            "retries: must be > 0 with enable_idempotence=True, got 0")
    refused(check_producer_settings, {**base, "max_in_flight_requests_per_connection": 6},
            "max_in_flight_requests_per_connection: must be <= 5 with enable_idempotence=True")
    refused(check_producer_settings, {"transactional_id": "t", "acks": 0},
            "acks: must be 'all' (or -1) with a transactional_id")
    refused(check_producer_settings, {"transactional_id": "t", "enable_idempotence": False},
            "transactional_id: needs enable_idempotence=True")
    for good in ({**base, "acks": "all"}, {**base, "acks": -1, "retries": 3,
                                            "max_in_flight_requests_per_connection": 5}):
        assert check_producer_settings(good) is good


def test_idempotence_by_default_gives_way_as_in_kafka_python():
    # kafka-python turns the default idempotence off (with a warning) instead of raising
    for ok in ({"acks": 1}, {"retries": 0}, {"max_in_flight_requests_per_connection": 10},
               {"enable_idempotence": False, "acks": 0}):
        assert check_producer_settings(ok) is ok


def test_delivery_timeout_covers_linger_and_request_timeout():
    refused(check_producer_settings, {"delivery_timeout_ms": 1000, "linger_ms": 50},
            "delivery_timeout_ms: must be >= linger_ms + request_timeout_ms (50 + the default "
            "30000 = 30050), got 1000")
    refused(check_producer_settings, {"request_timeout_ms": 200_000},
            "delivery_timeout_ms: must be >= linger_ms + request_timeout_ms (the default 0 + "
            "200000 = 200000), got the default 120000")
    ok = {"delivery_timeout_ms": 30_050, "linger_ms": 50}
    assert check_producer_settings(ok) is ok


def test_consumer_timeouts_in_kafka_pythons_order():
    refused(check_consumer_settings, {"request_timeout_ms": 300},
            "request_timeout_ms: must be greater than fetch_max_wait_ms (the default 500)")
    refused(check_consumer_settings, {"fetch_max_wait_ms": 40_000}, "request_timeout_ms: ")
    refused(check_consumer_settings, {"request_timeout_ms": 600_000}, "request_timeout_ms: ")


def test_heartbeat_below_session_timeout_with_a_group_only():
    cfg = {"heartbeat_interval_ms": 6000, "session_timeout_ms": 6000}
    assert check_consumer_settings(cfg) is cfg  # no group: no heartbeat, kafka-python agrees
    refused(check_consumer_settings, {**cfg, "group_id": "g"},
            "heartbeat_interval_ms: must be less than session_timeout_ms (6000), got 6000")
    refused(check_consumer_settings, {"group_id": "g", "heartbeat_interval_ms": 50_000},
            "heartbeat_interval_ms: must be less than session_timeout_ms (the default 45000)")


def test_a_compression_library_that_is_missing_is_named(monkeypatch):
    import kafka.codec

    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    refused(check_producer_settings, {"compression_type": "zstd"},
            "compression_type: 'zstd' needs the zstandard package, which is not installed")
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: True)
    assert check_producer_settings({"compression_type": "zstd"})


# --- good settings pass, unchanged -----------------------------------------------------------

def test_kafka_pythons_own_defaults_pass():
    for check, cls in ((check_producer_settings, KafkaProducer),
                       (check_consumer_settings, KafkaConsumer)):
        cfg = dict(cls.DEFAULT_CONFIG)  # every setting given, as kafka-python's default
        assert check(cfg) is cfg
        assert cfg == cls.DEFAULT_CONFIG  # unchanged


def test_the_labs_own_settings_pass():
    from lab_kit import moderation
    from lab_kit.bench import producers as bench
    from lab_kit.moderation import clients as stage_clients
    from lab_kit.producer import LAB_DEFAULTS

    boot = {"bootstrap_servers": "127.0.0.1:9092"}
    for cfg in (LAB_DEFAULTS, bench.COMMON, moderation.PRODUCER_DEFAULTS,
                stage_clients.producer_config(boot, moderation.PRODUCER_DEFAULTS)):
        assert check_producer_settings(cfg) is cfg
    consumer = stage_clients.consumer_settings(
        boot, group_id="moderation", max_poll_records=500,
        session_timeout_ms=moderation.SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=moderation.HEARTBEAT_INTERVAL_MS)
    assert check_consumer_settings(consumer) is consumer
    for client in stage_clients.CLIENTS:
        stage_clients.check_settings(
            client, boot, group_id="moderation", max_poll_records=500,
            session_timeout_ms=moderation.SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=moderation.HEARTBEAT_INTERVAL_MS,
            producer_settings=moderation.PRODUCER_DEFAULTS)


# --- the moderation stage's own checks (no broker: they refuse before connecting) ------------

@pytest.mark.parametrize("kwargs, message", [
    ({"client_config": {"linger_ms": 5}}, "linger_ms: a kafka-python producer-only setting"),
    ({"client_config": {"group_id": "x"}}, "group_id: set by the moderation stage itself"),
    ({"client_config": {"security_protocol": "TLS"}}, "security_protocol: must be one of"),
    ({"client_config": {"request_timeout_ms": 0}}, "request_timeout_ms: must be an integer"),
    ({"client_config": {"bootstrap_servers": "h:1"}, "bootstrap_servers": None}, None),
    ({"group_id": ""}, "group_id: must be a non-empty string"),
    ({"topics": {"results": "bad name"}}, "topics['results']: must be a Kafka topic name"),
    ({"client": "confluent", "client_config": {"retry_backoff_ms": 5}},
     "retry_backoff_ms: no confluent-kafka equivalent"),
    ({"bootstrap_servers": "localhost:99999"}, "bootstrap_servers: must be 'host:port'"),
    ({"bootstrap_servers": ""}, "bootstrap_servers: must be 'host:port'"),
])
def test_the_moderation_stage_checks_its_kafka_settings_when_built(kwargs, message):
    import threading

    from lab_kit.moderation import ModerationService, RecheckWorker

    kwargs = {"bootstrap_servers": "127.0.0.1:1", **kwargs}
    before = set(threading.enumerate())
    for cls in (ModerationService, RecheckWorker):
        if message is None:
            stage = cls(backend_url="http://127.0.0.1:1", **kwargs)
            assert stage._kafka_cfg["bootstrap_servers"] == "h:1"
            assert not stage.is_running()
            continue
        with pytest.raises(ValueError) as info:
            cls(backend_url="http://127.0.0.1:1", **kwargs)
        assert str(info.value).startswith(message), str(info.value)
    assert set(threading.enumerate()) == before
