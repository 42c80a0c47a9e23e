"""The asynchronous moderation stage at work: many posts in flight, per-partition commits,
per-user order, load shedding, process scale-out. Real broker, real backend process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from lab_kit.moderation import ModerationService, moderation_results
from lab_kit.moderation.rules import _normalize
from lab_kit.posts import Post, Workload, malformed_records
from tests.broker.moderation.test_moderation import (
    expected_labels,
    produce,
    wait_results,
    wait_until,
)
from tests.kafka_helpers import read_all

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

CLIENTS = ["kafka-python", "confluent"]


def user_posts(n_users: int, per_user: int, seed: int = 0) -> list[Post]:
    """Posts of a few users, interleaved; text carries the user's sequence number."""
    out = []
    for i in range(per_user):
        for u in range(n_users):
            out.append(Post(user_id=f"user-{seed}-{u}", text=f"post number {i} of {u} today",
                            post_id=f"p-{seed}-{u}-{i:05d}"))
    return out


@pytest.mark.parametrize("client", CLIENTS)
def test_many_posts_in_flight_each_user_in_order_one_result_each(
        client, client_config, topics, backend, group, stages) -> None:
    posts = user_posts(n_users=12, per_user=60, seed=1)
    posts += Workload(seed=61, spam_ratio=0.2, toxic_ratio=0.2).posts(300)
    expected = expected_labels(posts)
    produce(client_config, topics["posts"], posts)
    backend.set_faults(latency_ms=5, jitter_ms=4)  # calls finish out of order
    svc = ModerationService(None, backend.url, group_id=group, topics=topics,
                            client_config=client_config, client=client,
                            batch_size=10, concurrency=6, max_poll_records=100)
    stages.append(svc)
    svc.start()
    results = wait_results(client_config, topics["results"], set(expected), timeout_s=60)
    assert svc.stop(timeout=20)
    # read after stop: a result can be on the topic before its delivery report has been
    # served (librdkafka serves reports in the stage's loop), so a snapshot taken as soon as
    # the results are read may count it sent and not yet acked
    st = svc.stats()

    assert set(results) == set(expected)
    assert all(r["label"] == expected[pid] and not r["degraded"]
               for pid, rs in results.items() for r in rs)
    assert st["backend_calls"] >= len(posts) / 10 and st["chunks"] > 1
    # per-user order: results are keyed by user, so a user's results share a partition and
    # their log order is the order the stage produced them
    seen: dict[str, list[str]] = {}
    for rec in read_all(client_config, topics["results"]):
        doc = json.loads(rec.value)
        if doc["user_id"].startswith("user-1-"):
            seen.setdefault(doc["user_id"], []).append(doc["post_id"])
    assert len(seen) == 12
    for user, ids in seen.items():
        firsts = list(dict.fromkeys(ids))  # a re-processed post may repeat: keep first
        assert firsts == sorted(firsts), f"{user}'s results out of post order"
    # every output acked before its offsets were committed: all consumed are committed
    assert st["acked"] == st["sent"] and st["failed"] == 0


def test_a_chunk_with_poison_records_and_good_posts_loses_none(
        client_config, topics, backend, group, stages) -> None:
    from kafka import KafkaProducer

    good = Workload(seed=62).posts(20)
    raw = malformed_records(4, seed=3)
    p = KafkaProducer(**client_config, acks="all")
    for i, post in enumerate(good):  # poison records between good posts of one partition
        p.send(topics["posts"], key=post.key_bytes(), value=post.to_json_bytes(), partition=0)
        if i % 5 == 2:
            p.send(topics["posts"], value=raw[i // 5], partition=0)
    p.flush(15)
    p.close()
    svc = ModerationService(None, backend.url, group_id=group, topics=topics,
                            client_config=client_config, batch_size=50)
    stages.append(svc)
    svc.start()
    results = wait_results(client_config, topics["results"], {x.post_id for x in good}, 30)
    wait_until(lambda: len(read_all(client_config, topics["dlq"])) >= 4, 20, "4 DLQ entries")
    assert svc.stop(timeout=20)
    assert all(not r["degraded"] for rs in results.values() for r in rs)
    offsets = sorted(int(dict(r.headers)["source_offset"])
                     for r in read_all(client_config, topics["dlq"]))
    assert offsets == [3, 9, 15, 21]  # each poison record, by its own offset
    assert svc.stats()["dlq"] == 4


class _WatchedPolls(ModerationService):
    """Counts the polls the stage makes while it is full (its backpressure)."""

    polls = polls_while_full = 0

    def _new_clients(self):
        clients = super()._new_clients()
        poll = clients.poll

        def watched(timeout_s):
            self.polls += 1
            self.polls_while_full += self._full
            return poll(timeout_s)

        clients.poll = watched
        return clients


@pytest.mark.parametrize("client", CLIENTS)
def test_a_backlog_bigger_than_the_buffer_is_drained_without_polling_while_full(
        client, client_config, topics, backend, group, stages) -> None:
    """Backpressure stops polling, not fetching: both clients drop what they have fetched
    ahead for a paused partition and fetch it again after resume. The buffer stays bounded
    (max_buffered + one poll), every post gets its result, and no poll happens while full."""
    posts = Workload(seed=65).posts(3000)
    produce(client_config, topics["posts"], posts)
    svc = _WatchedPolls(None, backend.url, group_id=group, topics=topics,
                        client_config=client_config, client=client, batch_size=20,
                        concurrency=2, max_poll_records=100, max_buffered=200)
    stages.append(svc)
    svc.start()
    results = wait_results(client_config, topics["results"], {p.post_id for p in posts}, 90)
    assert svc.stop(timeout=20)
    st = svc.stats()
    assert len(results) == len(posts)
    assert svc.max_buffered < st["buffered_peak"] <= svc.max_buffered + 100  # it filled up
    assert svc.polls > 0 and svc.polls_while_full == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stage_full_for_long_pauses_its_partitions_and_polls_again(
        client, client_config, topics, backend, group, stages, monkeypatch) -> None:
    """A stage that stops polling for max.poll.interval.ms is dropped from its group; one
    full for PAUSE_AFTER_FULL_S (0.3 s here) pauses its partitions and polls again, and the
    buffer stays bounded while it does."""
    monkeypatch.setattr("lab_kit.moderation.stage.PAUSE_AFTER_FULL_S", 0.3)
    posts = Workload(seed=66).posts(1000)
    produce(client_config, topics["posts"], posts)
    backend.set_faults(latency_ms=800)  # every call waits 0.8 s: the buffer stays full
    svc = _WatchedPolls(None, backend.url, group_id=group, topics=topics,
                        client_config=client_config, client=client, batch_size=20,
                        concurrency=2, max_poll_records=100, max_buffered=200,
                        backend_timeout_s=5.0, shed_after_ms=None)
    stages.append(svc)
    svc.start()
    wait_until(lambda: svc.polls_while_full > 0, 30, "a poll while full, partitions paused",
               details=lambda: str(svc.stats()))
    backend.reset_faults()
    results = wait_results(client_config, topics["results"], {p.post_id for p in posts}, 90)
    assert svc.stop(timeout=20)
    st = svc.stats()
    assert len(results) == len(posts)
    assert all(not r["degraded"] for rs in results.values() for r in rs)
    assert st["buffered_peak"] <= svc.max_buffered + 100


def test_load_shedding_switches_on_when_behind_and_off_when_caught_up(
        client_config, topics, backend, group, stages) -> None:
    svc = ModerationService(None, backend.url, group_id=group, topics=topics,
                            client_config=client_config, batch_size=20, concurrency=1,
                            shed_after_ms=400, backend_timeout_s=5.0, max_poll_records=20)
    stages.append(svc)
    svc.start()
    wait_until(lambda: svc.assignment, 30, "partitions assigned")
    backend.set_faults(latency_ms=700)  # each call waits 0.7 s: live posts fall behind
    slow = Workload(seed=63).posts(400)
    for i in range(0, len(slow), 40):  # a live stream: 40 posts every 0.1 s
        produce(client_config, topics["posts"], slow[i:i + 40])
        time.sleep(0.1)
    wait_until(lambda: svc.shed_events, 30, "load shedding to switch on",
               details=lambda: f"{svc.stats()} age={svc.oldest_age_s}")
    backend.reset_faults()
    wait_results(client_config, topics["results"], {p.post_id for p in slow}, 60)
    fresh = Workload(seed=64).posts(60)
    for i in range(0, len(fresh), 10):
        produce(client_config, topics["posts"], fresh[i:i + 10])
        time.sleep(0.1)
    results = wait_results(client_config, topics["results"], {p.post_id for p in fresh}, 30)
    assert svc.stop(timeout=20)

    events = [e["shedding"] for e in svc.shed_events]
    assert events[:2] == [True, False], svc.shed_events
    everything = moderation_results(client_config, topics["results"])
    shed = [rs[0] for pid, rs in everything.items() if rs[0].get("fallback_cause") == "shed"]
    assert shed and all(r["degraded"] and r["source"] == "fallback" for r in shed)
    assert svc.stats()["shed"] == len(shed) and svc.stats()["rechecked"] >= len(shed)
    # caught up: the last posts went to the backend again
    late = [results[p.post_id][0] for p in fresh if results[p.post_id][0]["degraded"]]
    assert not late, (late[:3], svc.shed_events)
    recheck_ids = {json.loads(r.value)["post_id"]
                   for r in read_all(client_config, topics["recheck"])}
    assert {r["post_id"] for r in shed} <= recheck_ids


def _members(supervisor_log: str) -> list[int]:
    for line in supervisor_log.splitlines():
        if line.startswith("moderation supervisor pid="):
            return [int(x) for x in line.split("members=")[1].split(",")]
    return []


def start_members(bootstrap: str, backend_url: str, group: str, topics: dict, log,
                  request, *args: str) -> tuple[subprocess.Popen, list[int]]:
    """Two members from the CLI (a supervisor in a session of its own, killed at the end of
    the test), chunks of 5 posts x 4 calls, no recheck worker; returns the supervisor and the
    member pids."""
    prefix = topics["posts"].removesuffix("posts")
    cmd = [sys.executable, "-m", "lab_kit.moderation", "--bootstrap", bootstrap,
           "--backend-url", backend_url, "--group", group, "--topic-prefix", prefix,
           "--processes", "2", "--batch-size", "5", "--concurrency", "4", "--no-recheck",
           *args]
    with open(log, "ab") as f:
        sup = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                               start_new_session=True)

    def cleanup() -> None:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(10)

    request.addfinalizer(cleanup)
    return sup, wait_until(lambda: _members(log.read_text()), 20, "member pids")


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_two_processes_a_member_killed_mid_flight_every_post_gets_a_result(
        client, client_config, bootstrap, topics, backend, group, tmp_path, request) -> None:
    backend.set_faults(latency_ms=40)  # keep chunks in flight when the kill lands
    posts = Workload(seed=65, spam_ratio=0.2, toxic_ratio=0.2).posts(3000)
    expected = expected_labels(posts)
    produce(client_config, topics["posts"], posts)
    log = tmp_path / "supervisor.log"
    sup, members = start_members(bootstrap, backend.url, group, topics, log, request,
                                 "--client", client)
    wait_until(lambda: len(moderation_results(client_config, topics["results"])) >= 300,
               60, "300 results", interval_s=0.1, details=lambda: log.read_text()[-3000:])
    os.kill(members[0], signal.SIGKILL)
    at_kill = len(moderation_results(client_config, topics["results"]))
    assert at_kill < len(posts), "the kill must land mid-run"
    results = wait_results(client_config, topics["results"], set(expected), timeout_s=120)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 1  # one member died: the supervisor says so
    text = log.read_text()
    assert f"member pid={members[0]} exited with -9" in text
    assert text.count("moderation service stopped") == 1  # the survivor stopped cleanly

    assert set(results) == set(expected)
    wrong = [(pid, expected[pid], [(r["label"], r.get("source"), r.get("degraded"))
                                   for r in rs])
             for pid, rs in results.items() if any(r["label"] != expected[pid] for r in rs)]
    # A known side effect outside Kafka (issue 20): the backend's repeat rule remembers the
    # posts it has seen. The killed member may have sent a user's later post to it before the
    # survivor re-sends the earlier, uncommitted one; the backend then calls the earlier one
    # the repeat (the labels of the two swap). Only such posts may differ; any other wrong
    # label fails.
    texts = Counter((p.user_id, _normalize(p.text)) for p in posts)
    by_id = {p.post_id: p for p in posts}
    swapped = [w for w in wrong if texts[(by_id[w[0]].user_id, _normalize(by_id[w[0]].text))] > 1]
    assert wrong == swapped, f"{len(wrong)} posts with a result unlike the rules': {wrong[:10]}"
    dups = sum(len(v) - 1 for v in results.values())
    print(f"\n2 processes ({client}), member killed at {at_kill}/{len(posts)}: "
          f"duplicates={dups}, repeat verdicts swapped by the re-send={len(swapped)}")


def test_cli_refuses_bad_values_before_starting(tmp_path) -> None:
    for flag, value, word in (("--processes", "0", "--processes"),
                              ("--batch-size", "5000", "--batch-size"),
                              ("--concurrency", "0", "--concurrency"),
                              ("--shed-after-ms", "-1", "--shed-after-ms")):
        out = subprocess.run([sys.executable, "-m", "lab_kit.moderation", "--bootstrap",
                              "127.0.0.1:1", "--backend-url", "http://127.0.0.1:1", flag,
                              value], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert word in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_settings_are_checked_when_the_service_is_built() -> None:
    for kwargs, name in (({"batch_size": 0}, "batch_size"), ({"concurrency": 1000},
                                                              "concurrency"),
                         ({"client": "kafka"}, "client"), ({"shed_after_ms": -5},
                                                           "shed_after_ms")):
        with pytest.raises(ValueError, match=name):
            ModerationService("127.0.0.1:1", "http://127.0.0.1:1", **kwargs)
