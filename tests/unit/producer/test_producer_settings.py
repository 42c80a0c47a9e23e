"""AsyncPostProducer checks its own options and every Kafka setting before it connects
(no broker here: a bad value must be refused before any network or thread)."""

from __future__ import annotations

import threading

import pytest

from lab_kit.producer import AsyncPostProducer

NOWHERE = "127.0.0.1:1"  # nothing listens: reaching the network would fail differently


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"linger_ms": -5}, "linger_ms"),
        ({"acks": "two"}, "acks"),
        ({"compression_type": "brotli"}, "compression_type"),
        ({"lingr_ms": 5}, "lingr_ms"),
        ({"enable_idempotence": True, "acks": 1}, "acks"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"on_full": "drop"}, "on_full"),
        ({"on_full": "spool"}, "on_full"),  # without a spool_path
        ({"mode": "fast"}, "mode"),
        ({"probe_interval_s": 0}, "probe_interval_s"),
        ({"stall_timeout_s": "3"}, "stall_timeout_s"),
        ({"max_block_s": -1}, "max_block_s"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_starts(kwargs, named):
    threads_before = set(threading.enumerate())
    with pytest.raises(ValueError) as err:
        AsyncPostProducer(NOWHERE, "posts", **kwargs)
    assert str(err.value).startswith(named + ":"), str(err.value)
    assert set(threading.enumerate()) <= threads_before, "a thread was left running"


def test_bad_bootstrap_servers_named():
    with pytest.raises(ValueError, match="^bootstrap_servers:"):
        AsyncPostProducer("127.0.0.1:99999", "posts")
