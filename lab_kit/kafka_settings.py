"""kafka-python client settings, checked for name, type and range before a client is built.

kafka-python checks little of what it is given, and late: an unknown compression codec, an
idempotence conflict or ``delivery_timeout_ms`` below ``linger_ms + request_timeout_ms`` are
only refused after the client has connected to the bootstrap servers, and a value of the
wrong type (``acks="two"``, ``linger_ms=-5``) is often not refused at all: the producer then
accepts records that never settle. This module refuses them at once, without any network:

>>> check_producer_settings({"bootstrap_servers": "127.0.0.1:9092", "linger_ms": -5})
Traceback (most recent call last):
...
ValueError: linger_ms: must be an integer >= 0, got -5

Every message starts with the setting's name, then what is allowed, then what was given.

The rules are a table (:data:`PRODUCER_RULES`, :data:`CONSUMER_RULES`: name -> type and
range or choices) for the settings that matter in the lab; any other name must be one of
kafka-python's own (``KafkaProducer.DEFAULT_CONFIG`` / ``KafkaConsumer.DEFAULT_CONFIG``) and
its value is left to kafka-python. Then the checks kafka-python itself makes between
settings (see :func:`check_producer_settings` and :func:`check_consumer_settings`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer

__all__ = ["Rule", "PRODUCER_RULES", "CONSUMER_RULES", "check_producer_settings",
           "check_consumer_settings", "check_bootstrap_servers", "check_topic_name"]

INT32_MAX = 2**31 - 1  # sizes and timeouts that go on the wire are int32 in the protocol

M = TypeVar("M", bound=Mapping[str, Any])


@dataclass(frozen=True)
class Rule:
    """A setting's allowed values: ``ok(value)`` says yes or no, ``allowed`` says what in
    words (it follows "must be" in the error message)."""

    allowed: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int in Python


def integer(low: int, high: int | None = None) -> Rule:
    if high is None:
        return Rule(f"an integer >= {low}", lambda v: _is_int(v) and v >= low)
    return Rule(f"an integer in [{low}, {high}]", lambda v: _is_int(v) and low <= v <= high)


def one_of(*choices: Any, shown: str | None = None) -> Rule:
    """Exactly one of ``choices``: equal AND of the same type (``True`` is not ``1``)."""
    def ok(v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in choices)

    return Rule(f"one of {shown or ', '.join(map(repr, choices))}", ok)


BOOLEAN = Rule("True or False", lambda v: isinstance(v, bool))
NAME = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
NAME_OR_NONE = Rule("None or a non-empty string",
                    lambda v: v is None or (isinstance(v, str) and v.strip() != ""))
RETRIES = Rule("an integer >= 0 or float('inf')",
               lambda v: (_is_int(v) and v >= 0) or (isinstance(v, float) and v == math.inf))


def _server_ok(server: Any) -> bool:
    """``host:port`` with a port in 1..65535 (``[::1]:9092`` for IPv6), or a bare ``host``
    (kafka-python then uses port 9092)."""
    if not isinstance(server, str):
        return False
    server = server.strip()
    if not server or any(c.isspace() for c in server):
        return False
    if server.startswith("["):  # [ipv6]:port
        host, _, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None if not rest else "bad"
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:  # a bare host (or a bare IPv6 address)
        host, port = server, None
    return bool(host) and (port is None or (port.isdigit() and 1 <= int(port) <= 65535))


def _servers_ok(v: Any) -> bool:
    if isinstance(v, str):
        v = v.split(",")
    if not isinstance(v, list | tuple) or not v:
        return False
    return all(_server_ok(s) for s in v)


BOOTSTRAP_SERVERS = Rule("'host:port' (port 1-65535; 9092 if left out), several joined by "
                         "commas or in a list", _servers_ok)

#: Settings of both clients. ``bootstrap_timeout_ms`` is kafka-python 3's own (how long the
#: constructor waits for the first broker); the lab sets it to fail fast without a broker.
COMMON_RULES: dict[str, Rule] = {
    "bootstrap_servers": BOOTSTRAP_SERVERS,
    "client_id": NAME_OR_NONE,
    "security_protocol": one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl_mechanism": one_of(None, "PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256",
                             "SCRAM-SHA-512"),
    "request_timeout_ms": integer(1, INT32_MAX),
    "retry_backoff_ms": integer(0),
    "bootstrap_timeout_ms": integer(1),
    "metadata_max_age_ms": integer(0),
    "connections_max_idle_ms": integer(1),
    "max_in_flight_requests_per_connection": integer(1),
}

PRODUCER_RULES: dict[str, Rule] = {
    **COMMON_RULES,
    "acks": one_of(0, 1, -1, "all", shown="0, 1, 'all' (or -1)"),
    "linger_ms": integer(0),
    "batch_size": integer(0, INT32_MAX),  # 0: no batching
    "max_request_size": integer(1, INT32_MAX),
    "compression_type": one_of(None, "gzip", "snappy", "lz4", "zstd"),
    "retries": RETRIES,
    "delivery_timeout_ms": integer(1),
    "max_block_ms": integer(0),
    "enable_idempotence": BOOLEAN,
    "transactional_id": NAME_OR_NONE,
}

CONSUMER_RULES: dict[str, Rule] = {
    **COMMON_RULES,
    "group_id": NAME_OR_NONE,
    "auto_offset_reset": one_of("earliest", "latest", "none"),
    "enable_auto_commit": BOOLEAN,
    "auto_commit_interval_ms": integer(1),
    "max_poll_records": integer(1),
    "max_poll_interval_ms": integer(1, INT32_MAX),
    "session_timeout_ms": integer(1, INT32_MAX),
    "heartbeat_interval_ms": integer(1, INT32_MAX),
    "fetch_min_bytes": integer(0, INT32_MAX),
    "fetch_max_wait_ms": integer(0, INT32_MAX),
    "fetch_max_bytes": integer(1, INT32_MAX),
    "max_partition_fetch_bytes": integer(1, INT32_MAX),
    "isolation_level": one_of("read_uncommitted", "read_committed"),
}

#: Names people bring from other clients or older kafka-python versions, and what to do.
_HINTS = {
    "buffer_memory": "kafka-python 3 has no buffer_memory setting",
}

_COMPRESSION_PACKAGE = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}


def _check_names(config: Mapping[str, Any], known: Mapping[str, Any], client: str) -> None:
    for name in config:
        if name in known:
            continue
        if not isinstance(name, str):
            raise ValueError(f"{name!r}: setting names are strings")
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = _HINTS.get(name) or (f"did you mean {close[0]}?" if close else "")
        raise ValueError(f"{name}: not a kafka-python {client} setting"
                         + (f" ({hint})" if hint else ""))


def _check_values(config: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    for name, value in config.items():
        rule = rules.get(name)
        if rule is not None and not rule.ok(value):
            raise ValueError(f"{name}: must be {rule.allowed}, got {value!r}")


def _value(config: Mapping[str, Any], defaults: Mapping[str, Any], name: str) -> tuple[Any, str]:
    """The value kafka-python will use, and how to show it ("the default 500" if not given)."""
    if name in config:
        return config[name], f"{config[name]!r}"
    return defaults[name], f"the default {defaults[name]!r}"


def check_bootstrap_servers(servers: Any) -> Any:
    """``servers`` unchanged if it is ``"host:port[,host:port...]"`` or a non-empty list of
    ``"host:port"`` (port 1-65535; a bare ``host`` means port 9092, as in kafka-python);
    otherwise ``ValueError`` naming ``bootstrap_servers``."""
    _check_values({"bootstrap_servers": servers}, COMMON_RULES)
    return servers


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def check_topic_name(name: Any, what: str = "topic") -> str:
    """``name`` unchanged if Kafka accepts it as a topic name (1-249 characters of
    ``a-z A-Z 0-9 . _ -``, not ``.`` or ``..``); otherwise ``ValueError`` naming ``what``."""
    if not isinstance(name, str) or not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{what}: must be a Kafka topic name (1-249 characters of "
                         f"a-z A-Z 0-9 . _ -), got {name!r}")
    return name


def check_producer_settings(config: M) -> M:
    """Check the keyword arguments of one ``kafka.KafkaProducer(**config)`` call.

    Contract:

    * ``config`` is the complete mapping about to be passed to ``KafkaProducer`` (lab
      defaults merged in, ``bootstrap_servers`` included if it is passed); settings not in
      it are kafka-python's defaults (``KafkaProducer.DEFAULT_CONFIG``).
    * Returns ``config`` itself, unchanged (no defaults filled in, nothing converted), so
      ``KafkaProducer(**check_producer_settings(cfg))`` reads naturally.
    * Raises ``ValueError("<setting>: <what is allowed>, got <value>")`` for the first bad
      setting: a name kafka-python does not know (with a close match as a hint), a value
      outside :data:`PRODUCER_RULES`, or a combination kafka-python refuses:

      - ``enable_idempotence=True`` given explicitly (or a ``transactional_id``) with
        ``acks`` other than ``'all'``/-1, ``retries=0`` or
        ``max_in_flight_requests_per_connection > 5`` (kafka/producer/kafka.py: raises
        ``KafkaConfigurationError`` only after connecting; with idempotence left at its
        default it silently turns idempotence off instead, and so do we: no error);
      - ``transactional_id`` with ``enable_idempotence=False``;
      - ``delivery_timeout_ms < linger_ms + request_timeout_ms``
        (kafka/producer/record_accumulator.py, also after connecting);
      - a ``compression_type`` whose library is not installed (kafka-python: ``RuntimeError``
        after connecting).

    * Pure and cheap: no network, no threads, no logging. Safe to call in a constructor
      before anything starts, and again on every rebuild.
    """
    _check_names(config, KafkaProducer.DEFAULT_CONFIG, "KafkaProducer")
    _check_values(config, PRODUCER_RULES)
    defaults = KafkaProducer.DEFAULT_CONFIG

    codec = config.get("compression_type")
    if codec in _COMPRESSION_PACKAGE:
        import kafka.codec

        if not getattr(kafka.codec, f"has_{codec}")():
            package = _COMPRESSION_PACKAGE[codec]
            raise ValueError(f"compression_type: {codec!r} needs the {package} package, "
                             f"which is not installed (pip install 'kafka-python[{codec}]')")

    transactional = config.get("transactional_id") is not None
    if transactional and config.get("enable_idempotence") is False:
        raise ValueError("transactional_id: needs enable_idempotence=True, got "
                         f"enable_idempotence=False with transactional_id "
                         f"{config['transactional_id']!r}")
    if config.get("enable_idempotence") is True or transactional:
        why = "enable_idempotence=True" if not transactional else "a transactional_id"
        if "acks" in config and config["acks"] not in ("all", -1):
            raise ValueError(f"acks: must be 'all' (or -1) with {why}, got {config['acks']!r}")
        if config.get("retries") == 0:
            raise ValueError(f"retries: must be > 0 with {why}, got 0")
        inflight = config.get("max_in_flight_requests_per_connection", 0)
        if inflight > 5:
            raise ValueError(f"max_in_flight_requests_per_connection: must be <= 5 with "
                             f"{why}, got {inflight}")

    delivery, d_shown = _value(config, defaults, "delivery_timeout_ms")
    linger, l_shown = _value(config, defaults, "linger_ms")
    request, r_shown = _value(config, defaults, "request_timeout_ms")
    if delivery < linger + request:
        raise ValueError(f"delivery_timeout_ms: must be >= linger_ms + request_timeout_ms "
                         f"({l_shown} + {r_shown} = {linger + request}), got {d_shown}")
    return config


def check_consumer_settings(config: M) -> M:
    """Check the keyword arguments of one ``kafka.KafkaConsumer(**config)`` call.

    Same contract as :func:`check_producer_settings`, with :data:`CONSUMER_RULES` and the
    combinations kafka-python's consumer refuses:

    - ``fetch_max_wait_ms < request_timeout_ms < connections_max_idle_ms``
      (kafka/consumer/group.py, ``KafkaConfigurationError`` before connecting);
    - with a ``group_id``: ``heartbeat_interval_ms < session_timeout_ms``
      (kafka/coordinator/heartbeat.py, ``KafkaConfigurationError`` after connecting).

    ``auto_offset_reset`` must be ``'earliest'``, ``'latest'`` or ``'none'``: kafka-python
    turns any other string into "none" with a log warning, so a typo means "raise when there
    is no committed offset" instead of the intended reset.
    """
    _check_names(config, KafkaConsumer.DEFAULT_CONFIG, "KafkaConsumer")
    _check_values(config, CONSUMER_RULES)
    defaults = KafkaConsumer.DEFAULT_CONFIG

    wait, w_shown = _value(config, defaults, "fetch_max_wait_ms")
    request, r_shown = _value(config, defaults, "request_timeout_ms")
    idle, i_shown = _value(config, defaults, "connections_max_idle_ms")
    if not wait < request < idle:
        raise ValueError(f"request_timeout_ms: must be greater than fetch_max_wait_ms "
                         f"({w_shown}) and less than connections_max_idle_ms ({i_shown}), "
                         f"got {r_shown}")
    if config.get("group_id") is not None:
        heartbeat, h_shown = _value(config, defaults, "heartbeat_interval_ms")
        session, s_shown = _value(config, defaults, "session_timeout_ms")
        if heartbeat >= session:
            raise ValueError(f"heartbeat_interval_ms: must be less than session_timeout_ms "
                             f"({s_shown}), got {h_shown}")
    return config


# --- the same settings in librdkafka's names (confluent-kafka) ------------------------------
#: kafka-python setting -> librdkafka property, for the settings both clients share.
LIBRDKAFKA_CLIENT_KEYS = {
    "bootstrap_servers": "bootstrap.servers",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "client_id": "client.id",
}
#: ... and for the producer's own settings.
LIBRDKAFKA_PRODUCER_KEYS = {
    "acks": "acks", "linger_ms": "linger.ms", "request_timeout_ms": "request.timeout.ms",
    "delivery_timeout_ms": "delivery.timeout.ms", "compression_type": "compression.type",
    "batch_size": "batch.size", "transactional_id": "transactional.id",
    "transaction_timeout_ms": "transaction.timeout.ms",
    "enable_idempotence": "enable.idempotence", "retries": "retries",
    "retry_backoff_ms": "retry.backoff.ms", "max_request_size": "message.max.bytes",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
}
#: kafka-python settings with no librdkafka counterpart that the lab may still pass: the lab
#: reads ``bootstrap_timeout_ms`` itself; librdkafka's ``produce()`` never blocks
#: (``max_block_ms``) and negotiates API versions itself (``api_version``).
LIBRDKAFKA_IGNORED = {"bootstrap_timeout_ms", "max_block_ms", "api_version"}


def librdkafka_config(kafka_config: Mapping[str, Any], *, producer: bool = False,
                      ignore: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The lab's kafka-python style settings as librdkafka properties; ``ValueError`` naming
    a setting the lab cannot translate. ``producer=True`` also translates the producer's own
    settings; names in ``ignore`` are left out unchecked.

    >>> librdkafka_config({"bootstrap_servers": ["127.0.0.1:9092"], "linger_ms": 5},
    ...                   producer=True)
    {'bootstrap.servers': '127.0.0.1:9092', 'linger.ms': 5}
    """
    known = {**LIBRDKAFKA_CLIENT_KEYS, **(LIBRDKAFKA_PRODUCER_KEYS if producer else {})}
    out: dict[str, Any] = {}
    for key, value in kafka_config.items():
        if key in LIBRDKAFKA_IGNORED or key in ignore:
            continue
        if key not in known:
            raise ValueError(f"{key}: no confluent-kafka equivalent in the lab (known: "
                             f"{', '.join(sorted(known))}); use client='kafka-python'")
        if key == "bootstrap_servers" and not isinstance(value, str):
            value = ",".join(value)
        out[known[key]] = value
    return out
