"""Fixtures the producer's broker tests share."""

from __future__ import annotations

import pytest

from tests.kafka_helpers import create_topic


@pytest.fixture
def topic(client_config, topic_name):
    """A fresh topic of 3 partitions on the shared broker."""
    create_topic(client_config, topic_name, partitions=3)
    return topic_name
