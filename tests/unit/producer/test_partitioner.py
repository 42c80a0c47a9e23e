"""The lab's partitioner picks the partition kafka-python's default would, for every key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import DefaultPartitioner

from lab_kit.producer.partitioner import KeyHashPartitioner


class Cluster:
    """The two questions a partitioner asks of kafka-python's ClusterMetadata."""

    def __init__(self, partitions: set[int]):
        self._partitions = partitions

    def topics(self) -> set[str]:
        return {"posts"}

    def partitions_for_topic(self, topic):
        return set(self._partitions) if topic == "posts" else None

    def available_partitions_for_topic(self, topic):
        return set(self._partitions) if topic == "posts" else None


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=20),
       partitions=st.sets(st.integers(0, 200), min_size=1, max_size=64))
def test_same_partition_as_kafka_python_for_every_key(keys, partitions):
    ours, theirs = KeyHashPartitioner(max_keys=8), DefaultPartitioner()
    cluster = Cluster(partitions)
    for key in keys + keys:  # the second time from the remembered hash
        assert (ours.partition("posts", key, key, b"v", b"v", cluster)
                == theirs.partition("posts", key, key, b"v", b"v", cluster))


def test_a_user_keeps_their_partition_and_the_memory_is_bounded():
    ours, cluster = KeyHashPartitioner(max_keys=100), Cluster(set(range(6)))
    first = {f"user-{i}".encode(): ours.partition("posts", None, f"user-{i}".encode(), None,
                                                  b"v", cluster) for i in range(1000)}
    assert len(ours._hashes) <= 100
    assert all(ours.partition("posts", None, k, None, b"v", cluster) == p
               for k, p in first.items())
    assert len(set(first.values())) == 6  # 1,000 users spread over all six


def test_without_a_key_or_a_topic_it_behaves_as_kafka_python():
    ours, cluster = KeyHashPartitioner(), Cluster({0, 1, 2})
    assert ours.partition("posts", None, None, b"v", b"v", cluster) in {0, 1, 2}
    with pytest.raises(ValueError, match="not found"):
        ours.partition("other", b"k", b"k", b"v", b"v", cluster)
