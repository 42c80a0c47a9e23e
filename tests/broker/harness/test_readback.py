"""The checkers, tested the way Jepsen tests its checkers: a known history, exact answers.

Every "lost 0" in the lab comes from :func:`lab_kit.audit.audit` (posts, DLQ) or from
:func:`lab_kit.drills.checker.check_results` (moderation results). Here real topics are
seeded with a history whose answer is known — one post missing, one duplicated, one
dead-lettered, one delivered by a spool replay, plus records that must be ignored — and the
checkers must report exactly that, ids included. A checker that cannot see a loss would pass
every drill; these tests are what stops it.
"""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from lab_kit.harness.checker import check_results
from lab_kit.harness.readback import audit, end_offsets, post_ids_in, read_topic
from lab_kit.harness.results import first_verdicts
from lab_kit.moderation import moderation_results
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer
from lab_kit.producer.dead_letters import dlq_record
from lab_kit.producer.spool import Spool
from lab_kit.topics import ensure_topics
from tests.kafka_helpers import UnknownTopicError, read_all

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def _send(cfg: dict, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    p = KafkaProducer(**cfg, acks="all")
    try:
        for key, value in records:
            p.send(topic, key=key, value=value)
        p.flush(timeout=30)
    finally:
        p.close(timeout=5)


@pytest.fixture
def history(client_config, topic_name, tmp_path) -> dict:
    """Seed ``topic`` and ``topic.dlq`` with a known history; returns what the answer is.

    * ``ok``: four posts delivered once (the lab's producer, acked);
    * ``dup``: one post on the topic twice (a re-send after a lost ack);
    * ``dead``: one post in the DLQ only (the producer's own DLQ record format);
    * ``missing``: submitted, never written anywhere;
    * ``replayed``: left in a spool file (as by a crashed producer), delivered by the replay
      of a new producer;
    * noise that must be ignored: a record of a post nobody submitted, a record that is not
      JSON, a JSON record without ``post_id``.
    """
    cfg = client_config
    topic, dlq = topic_name, topic_name + ".dlq"
    ensure_topics(cfg, names=(topic, dlq), partitions={topic: 3, dlq: 1})
    posts = Workload(seed=77).posts(8)
    ok, dup, dead, missing, replayed = posts[:4], posts[4], posts[5], posts[6], posts[7]

    with AsyncPostProducer(cfg["bootstrap_servers"], topic, dlq_topic=dlq) as producer:
        assert all(producer.submit(p).result(timeout=30).outcome == "acked" for p in ok)
    _send(cfg, topic, [(dup.key_bytes(), dup.to_json_bytes())] * 2)
    key, value, _headers = dlq_record(dead, "MessageSizeTooLargeError: too big",
                                      source_topic=topic)
    _send(cfg, dlq, [(key, value)])
    _send(cfg, topic, [(b"u-x", json.dumps({"post_id": "p-nobody-submitted"}).encode()),
                       (b"u-x", b"not json at all"),
                       (b"u-x", json.dumps({"text": "no id"}).encode())])

    spool_path = tmp_path / "left-by-a-crash.db"
    with Spool(spool_path) as spool:
        spool.append(topic, replayed.key_bytes(), replayed.to_json_bytes(), replayed.post_id)
    with AsyncPostProducer(cfg["bootstrap_servers"], topic, dlq_topic=dlq,
                           spool_path=str(spool_path), probe_interval_s=0.2) as replayer:
        assert replayer.drain_spool(timeout=60) == 0
        counters = replayer.metrics.counters()
    assert counters["replayed"] == 1

    return {"cfg": cfg, "topic": topic, "dlq": dlq, "posts": posts, "ok": ok, "dup": dup,
            "dead": dead, "missing": missing, "replayed": replayed, "counters": counters,
            "ids": [p.post_id for p in posts]}


# --- the posts checker ------------------------------------------------------------------------
def test_audit_reports_exactly_the_seeded_history(history):
    h = history
    report = audit(h["cfg"], h["topic"], h["ids"], dlq_topic=h["dlq"], counters=h["counters"])
    assert report.submitted == 8
    assert report.lost == 1 and report.lost_ids == [h["missing"].post_id]
    assert report.duplicates == 1 and report.duplicate_ids == [h["dup"].post_id]
    assert report.dead_lettered == 1 and report.dead_lettered_ids == [h["dead"].post_id]
    # delivered once or more: the four ok posts, the duplicated one, the replayed one
    assert report.delivered_unique == 6
    assert report.pending == 0
    assert report.replayed == 1  # the producer's counter, shown alongside
    d = report.to_dict()
    assert d["lost_ids"] == [h["missing"].post_id]
    assert d["dead_lettered_ids"] == [h["dead"].post_id]


def test_audit_without_the_dlq_counts_the_dead_letter_as_lost(history):
    h = history
    report = audit(h["cfg"], h["topic"], h["ids"])
    assert report.lost == 2 and report.dead_lettered == 0
    assert report.lost_ids == sorted([h["missing"].post_id, h["dead"].post_id])


def test_audit_never_trusts_the_producers_counters(history):
    """Counters that claim every post was acked change nothing: lost comes from the topic."""
    h = history
    report = audit(h["cfg"], h["topic"], h["ids"], dlq_topic=h["dlq"],
                   counters={"acked": 8, "submitted": 8, "spooled": 0, "replayed": 0})
    assert report.acked == 8
    assert report.lost == 1 and report.lost_ids == [h["missing"].post_id]


def test_a_post_still_in_a_spool_is_pending_not_lost(history):
    h = history
    report = audit(h["cfg"], h["topic"], h["ids"], dlq_topic=h["dlq"],
                   pending_ids=[h["missing"].post_id, h["ok"][0].post_id, "p-not-submitted"])
    assert report.lost == 0 and report.lost_ids == []
    # an id that also landed is not pending; an id nobody submitted is ignored
    assert report.pending == 1


def test_audit_since_reads_only_what_came_after(history):
    """On a shared topic the checker reads from the offsets taken before a run: a post that
    landed only before them was not delivered by this run."""
    h = history
    cfg, topic, dlq = h["cfg"], h["topic"], h["dlq"]
    since = end_offsets(cfg, [topic, dlq, topic + ".does-not-exist"])
    assert set(since) == {topic, dlq}  # a missing topic is left out (read from the start)
    assert sum(since[topic].values()) == 4 + 2 + 3 + 1
    again = Workload(seed=77).posts(8)[0]  # posts[0] once more, after the start offsets
    _send(cfg, topic, [(again.key_bytes(), again.to_json_bytes())])
    report = audit(cfg, topic, h["ids"], dlq_topic=dlq, since=since)
    assert report.delivered_unique == 1 and report.duplicates == 0
    assert report.dead_lettered == 0  # the DLQ record is before its start offset too
    assert report.lost == 7 and again.post_id not in report.lost_ids


def test_reading_a_topic_that_does_not_exist_is_an_error(client_config, topic_name):
    """Reading nothing must never turn into "lost 0"."""
    with pytest.raises(TimeoutError, match="does it exist"):
        read_topic(client_config, topic_name + ".nope", timeout_s=1.0)
    with pytest.raises(TimeoutError):
        audit(client_config, topic_name + ".nope", ["p-1"], timeout_s=1.0)
    with pytest.raises(TimeoutError):
        post_ids_in(client_config, topic_name + ".nope", timeout_s=1.0)
    with pytest.raises(UnknownTopicError, match="does not exist"):  # the tests' own helper
        read_all(client_config, topic_name + ".nope", exists_timeout_s=1.0)


# --- the moderation results checker -----------------------------------------------------------
def _result(pid: str, *, source: str = "backend", degraded: bool = False,
            at: float = 1.0) -> tuple[bytes, bytes]:
    doc = {"post_id": pid, "user_id": f"u-{pid}", "label": "approve", "score": 0.0,
           "reasons": [], "degraded": degraded, "source": source, "moderated_at": at}
    if degraded:
        doc["fallback_cause"] = "BackendUnavailable"
    return f"u-{pid}".encode(), json.dumps(doc).encode()


def test_results_checker_reports_exactly_the_seeded_history(client_config, topic_name):
    """Submitted: ok, missing, dup, degraded+recheck, degraded without recheck, and one with
    only a recheck result (no verdict of its own: missing). Noise: a result for a post nobody
    submitted, a record that is not JSON."""
    topic = topic_name + ".results"
    ensure_topics(client_config, names=(topic,), partitions={topic: 3})
    _send(client_config, topic, [
        _result("r-ok"),
        _result("r-dup", at=1.0), _result("r-dup", at=2.0),
        _result("r-rechecked", source="fallback", degraded=True),
        _result("r-rechecked", source="recheck", at=5.0),
        _result("r-unrechecked", source="fallback", degraded=True),
        _result("r-only-recheck", source="recheck"),
        _result("r-nobody-submitted"),
        (b"u-x", b"\xff not json"),
    ])
    ids = ["r-ok", "r-missing", "r-dup", "r-rechecked", "r-unrechecked", "r-only-recheck"]
    results = moderation_results(client_config, topic)

    check = check_results(results, ids)
    assert check.results_missing == 2
    assert check.missing_ids == ["r-missing", "r-only-recheck"]
    assert check.results_duplicates == 1 and check.duplicate_ids == ["r-dup"]
    assert check.degraded == 2 and check.rechecked == 1
    assert check.rechecked_missing == 1 and check.unrechecked_ids == ["r-unrechecked"]
    d = check.to_dict()
    assert d["results_missing"] == 2 and d["results_missing_ids"] == check.missing_ids

    firsts, duplicates, missing = first_verdicts(results, ids)
    assert (duplicates, missing) == (1, 2)
    assert set(firsts) == {"r-ok", "r-dup", "r-rechecked", "r-unrechecked"}
    assert firsts["r-dup"]["moderated_at"] == 1.0  # the earliest verdict is the first


def test_results_checker_sees_every_post_missing_when_nothing_was_read(client_config,
                                                                       topic_name):
    topic = topic_name + ".empty-results"
    ensure_topics(client_config, names=(topic,), partitions={topic: 1})
    check = check_results(moderation_results(client_config, topic), ["a", "b"])
    assert check.results_missing == 2 and check.missing_ids == ["a", "b"]
