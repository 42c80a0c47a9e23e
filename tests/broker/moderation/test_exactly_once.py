"""Exactly-once moderation (``guarantee="exactly-once"``): the outputs and the consumed offsets
in one Kafka transaction. Checked the way a downstream service would: a plain kafka-python
consumer with ``isolation_level="read_committed"`` reads the outputs back and finds each post
once, after a member is fenced, and after a member is SIGKILLed mid-transaction. Real broker,
real backend process."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from kafka import KafkaProducer

from lab_kit.moderation import ModerationService, moderation_results
from lab_kit.posts import Workload
from tests.broker.moderation.test_moderation import (
    expected_labels,
    produce,
    wait_results,
    wait_until,
)
from tests.broker.moderation.test_moderation_async import start_members
from tests.kafka_helpers import read_all

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

CLIENTS = ["kafka-python", "confluent"]


def _copies(cfg: dict, topic: str, isolation: str) -> Counter:
    """How many records of each post_id ``topic`` holds, read with ``isolation``."""
    res = moderation_results({**cfg, "isolation_level": isolation}, topic)
    return Counter({pid: len(rs) for pid, rs in res.items()})


def _spam_signals(cfg: dict, topic: str) -> Counter:
    import json

    return Counter(json.loads(r.value)["post_id"]
                   for r in read_all({**cfg, "isolation_level": "read_committed"}, topic))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_fenced_member_aborts_rereads_and_each_post_is_read_once(
        client, client_config, topics, backend, group, stages) -> None:
    posts = Workload(seed=71, spam_ratio=0.3, toxic_ratio=0.2).posts(2000)
    expected = expected_labels(posts)
    backend.set_faults(latency_ms=20)  # keep chunks (and a transaction) in flight
    svc = ModerationService(None, backend.url, group_id=group, topics=topics,
                            client_config=client_config, client=client, batch_size=10,
                            concurrency=4, max_poll_records=100, guarantee="exactly-once")
    stages.append(svc)
    produce(client_config, topics["posts"], posts)
    svc.start()
    wait_until(lambda: svc.stats()["transactions"] >= 2, 60, "two committed transactions")
    # A second producer with the member's transactional id: Kafka bumps the epoch and the
    # member's producer becomes a zombie. Its next transactional call is refused (fenced).
    intruder = KafkaProducer(**client_config, transactional_id=svc.transactional_id)
    intruder.init_transactions()
    intruder.close(timeout=5)
    results = wait_results(client_config, topics["results"], set(expected), timeout_s=120)
    st = svc.stats()
    assert svc.stop(timeout=30)

    assert st["aborts"] >= 1, st  # the fenced transaction was aborted and counted
    assert st["transactions"] >= 3
    assert set(results) == set(expected)
    dups = {pid: len(rs) for pid, rs in results.items() if len(rs) > 1}
    assert not dups, f"{len(dups)} posts with two committed results: {list(dups)[:10]}"
    assert all(rs[0]["label"] == expected[pid] for pid, rs in results.items())
    spam = {pid for pid, label in expected.items() if label == "spam"}
    signals = _spam_signals(client_config, topics["reputation"])
    assert set(signals) == spam and max(signals.values()) == 1  # reputation counts each once
    uncommitted = _copies(client_config, topics["results"], "read_uncommitted")
    print(f"\nfenced ({client}): aborts={st['aborts']} transactions={st['transactions']}; "
          f"a read_uncommitted reader sees {sum(uncommitted.values()) - len(expected)} "
          f"extra results (the aborted ones), read_committed 0")


def _exactly_once_members_at_work(seed, client, client_config, bootstrap, topics, backend,
                                  group, log, request):
    """3,000 posts written, two exactly-once members started from the CLI, and 300 results
    committed: chunks (and a transaction) are in flight from here on."""
    backend.set_faults(latency_ms=40)  # keep chunks in flight when the fault lands
    posts = Workload(seed=seed, spam_ratio=0.2, toxic_ratio=0.2).posts(3000)
    expected = expected_labels(posts)
    produce(client_config, topics["posts"], posts)
    sup, members = start_members(bootstrap, backend.url, group, topics, log, request,
                                 "--client", client, "--guarantee", "exactly-once")
    wait_until(lambda: len(moderation_results(client_config, topics["results"])) >= 300,
               60, "300 committed results", interval_s=0.1,
               details=lambda: log.read_text()[-3000:])
    return posts, expected, sup, members


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_two_members_one_killed_mid_transaction_read_committed_finds_each_post_once(
        client, client_config, bootstrap, topics, backend, group, tmp_path, request) -> None:
    log = tmp_path / "supervisor.log"
    posts, expected, sup, members = _exactly_once_members_at_work(
        72, client, client_config, bootstrap, topics, backend, group, log, request)
    os.kill(members[0], signal.SIGKILL)
    at_kill = len(moderation_results(client_config, topics["results"]))
    assert at_kill < len(posts), "the kill must land mid-run"
    results = wait_results(client_config, topics["results"], set(expected), timeout_s=150)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(60) == 1  # one member died: the supervisor says so
    assert f"member pid={members[0]} exited with -9" in log.read_text()

    assert set(results) == set(expected)  # lost 0
    dups = {pid: len(rs) for pid, rs in results.items() if len(rs) > 1}
    assert not dups, f"{len(dups)} posts with two committed results: {list(dups)[:10]}"
    uncommitted = _copies(client_config, topics["results"], "read_uncommitted")
    print(f"\n2 members ({client}), exactly-once, one killed at {at_kill}/{len(posts)} "
          f"committed results: read_committed duplicates 0; a read_uncommitted reader sees "
          f"{sum(uncommitted.values()) - len(expected)} extra (the killed member's open "
          f"transaction, aborted by the broker)")


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_a_paused_member_comes_back_as_a_zombie_and_is_fenced_by_the_group(
        client, client_config, bootstrap, topics, backend, group, tmp_path, request) -> None:
    """KIP-447: SIGSTOP a member past the session timeout. The group gives its partitions to
    the other member; when the paused one wakes up, its open transaction still holds results
    of those partitions, and its commit carries the old group generation: refused, aborted,
    so a read_committed reader finds each post once."""
    log = tmp_path / "supervisor.log"
    _posts, expected, _sup, members = _exactly_once_members_at_work(
        73, client, client_config, bootstrap, topics, backend, group, log, request)
    assigned = log.read_text().count(" assigned ")
    os.kill(members[0], signal.SIGSTOP)  # a member this test started
    try:
        wait_until(lambda: log.read_text().count(" assigned ") > assigned, 40,
                   "the other member taking over the paused one's partitions")
    finally:
        os.kill(members[0], signal.SIGCONT)
    results = wait_results(client_config, topics["results"], set(expected), timeout_s=150)
    assert set(results) == set(expected)
    dups = {pid: len(rs) for pid, rs in results.items() if len(rs) > 1}
    when = {pid: [time.strftime("%H:%M:%S", time.localtime(r["moderated_at"]))
                  + f".{int(r['moderated_at'] % 1 * 1000):03d}" for r in results[pid]]
            for pid in list(dups)[:5]}
    assert not dups, (f"{len(dups)} posts with two committed results, moderated at {when}\n"
                      f"{log.read_text()[-4000:]}")
    # the fencing itself: if the paused member held an open transaction (its records are
    # what only a read_uncommitted reader sees), the woken member's commit was refused and
    # that transaction aborted. Paused just after a commit, it held none: nothing to fence
    # (seen once in CI: 0 extra records, no abort, duplicates 0).
    aborted = [line for line in log.read_text().splitlines() if "transaction aborted" in line]
    extra = sum(_copies(client_config, topics["results"], "read_uncommitted").values()) \
        - len(expected)
    assert aborted or extra == 0, (f"{extra} records only read_uncommitted sees, and no "
                                   f"member aborted a transaction\n{log.read_text()[-3000:]}")
    print(f"\nzombie member: read_committed duplicates 0; read_uncommitted sees {extra} "
          f"extra; log says: {[line[-160:] for line in aborted][:3]}")
