"""The recheck worker's group gate on the real broker: a peer writing to ``moderation.recheck``
(a member shedding or degrading posts) shuts the worker's gate, on both clients, though its
own service says healthy; once the topic is still for ``GROUP_QUIET_S`` the gate opens. The
worker learns the end from its own fetches, so the test polls as the worker's loop would."""

from __future__ import annotations

import time

import pytest

from lab_kit.moderation.recheck import RecheckWorker
from lab_kit.moderation.settings import GROUP_QUIET_S, RECHECK_END_CHECK_S
from lab_kit.posts import Workload
from tests.broker.moderation.test_moderation import produce

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def _poll_until(worker, done, what, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker._clients.poll(0.2)
        if done():
            return
    raise AssertionError(f"timed out polling for {what}: owned "
                         f"{worker._clients.consumer.assignment()}, fetched ends "
                         f"{worker._clients.fetched_end()}")


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_peer_shedding_shuts_the_gate_until_the_topic_is_still(
        client, client_config, topics, group) -> None:
    worker = RecheckWorker(None, "http://127.0.0.1:1", group_id=group, topics=topics,
                           client_config=client_config, client=client, gate=lambda: True)
    worker._clients = worker._new_clients()  # the clients run() would make; no loop here
    try:
        # kafka-python drops a fetch answer that comes after the partition's position moved,
        # and a fetch session names a partition again only when it changes: a partition can
        # go unseen until it gets records (likely what timed out once here, 1 run in 31,
        # when this test waited for all of them). So the "peer" writes to one already seen.
        _poll_until(worker, lambda: bool(worker._clients.fetched_end()), "a first fetch")
        tp, start = next(iter(worker._clients.fetched_end().items()))
        assert worker._group_quiet()  # the first read: nothing has moved yet
        produce(client_config, topics["recheck"], Workload(seed=5).posts(7),
                partition=tp[1])  # "a peer" degrading 7 posts
        _poll_until(worker, lambda: worker._clients.fetched_end().get(tp) == start + 7,
                    f"the 7 records in {tp}")
        time.sleep(RECHECK_END_CHECK_S)
        assert not worker._group_quiet()
        assert worker.stats()["gated_by_group"] == 1
        time.sleep(GROUP_QUIET_S + RECHECK_END_CHECK_S)
        worker._clients.poll(0.2)
        assert worker._group_quiet() and worker._may_start()
    finally:
        worker._clients.close_consumer()
