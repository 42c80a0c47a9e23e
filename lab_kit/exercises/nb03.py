"""Exercises of notebook 03 (the moderation pipeline).

* ``q1`` (offline): a spam rule, ``classify(text)``, checked against the lab's own rules.
* ``q2`` (offline): the commit rule of the moderation stage (and of Confluent's Parallel
  Consumer): per partition, commit 1 + the highest offset up to which *every* record is done.
* ``q3`` (live): a consumer of ``moderation.results`` that counts verdicts, each post once
  (at-least-once delivery may hand it a post's result twice).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.harness.readback import read_topic
from lab_kit.moderation.rules import score_post_fields
from lab_kit.topics import ensure_topics

# --- q1: a spam rule ------------------------------------------------------------------------

SPAM_CASES = (
    "Lovely sunset at the beach today",
    "FREE FREE FREE",
    "Free coffee at the office",
    "see http://example.com/sunset",
    "click http://cheap-pills.example/win",
    "two links: http://a.example and https://b.example",
    "freedom and freebies",
    "BUY NOW while it lasts",
    "winners click here",
    "Cheap flights and free snacks",
    "https://shop.example buy now",
)


def _lab_says(text: str) -> str:
    """The lab's full rules (no blocklist word, no shouting in these cases): spam or ok."""
    label, _score, _reasons = score_post_fields("user-1", text)
    return "spam" if label == "spam" else "ok"


def _check_classify(classify: Any) -> int:
    for text in SPAM_CASES:
        want = _lab_says(text)
        got = classify(text)
        if got != want:
            raise CaseFailed(repr(text), f"you said {got!r}, the lab's rules say {want!r}")
    return len(SPAM_CASES)


def _solution_q1(text):
    import re  # the solution is shown on its own: it brings its import

    links = len(re.findall(r"https?://\S+", text, re.IGNORECASE))
    terms = len(re.findall(r"\b(free|click|buy\s+now|cheap|winner)s?\b", text, re.IGNORECASE))
    return "spam" if 0.4 * links + 0.3 * terms >= 0.6 else "ok"


def _wrong_q1_substring(text):
    low = text.lower()  # counts "free" inside "freedom": not whole words
    score = 0.4 * low.count("://") + 0.3 * sum(
        low.count(t) for t in ("free", "click", "buy now", "cheap", "winner"))
    return "spam" if score >= 0.6 else "ok"


def _wrong_q1_strict(text):
    import re  # the solution is shown on its own: it brings its import

    links = len(re.findall(r"https?://\S+", text, re.IGNORECASE))
    terms = len(re.findall(r"\b(free|click|buy\s+now|cheap|winner)s?\b", text, re.IGNORECASE))
    return "spam" if 0.4 * links + 0.3 * terms > 0.6 else "ok"  # the threshold is inclusive


q1 = Exercise(
    name="03.q1 a spam rule",
    task="classify(text) returns 'spam' when 0.4 per link + 0.3 per spam phrase >= 0.6, "
         "else 'ok'",
    checker=_check_classify,
    hint_text="count whole words, any case: re.findall(r'\\b(free|click|buy\\s+now|cheap|"
              "winner)s?\\b', text, re.IGNORECASE); links: r'https?://\\S+'; the threshold "
              "0.6 is included",
    solution_obj=_solution_q1, wrong=(_wrong_q1_substring, _wrong_q1_strict))


# --- q2: the commit rule --------------------------------------------------------------------

# (completed per partition, committed per partition, expected, why)
COMMIT_CASES = [
    ({0: [0, 1, 2]}, {0: 0}, {0: 3}, "all done: commit the next one to read"),
    ({0: [0, 1, 3, 4]}, {0: 0}, {0: 2}, "offset 2 is still in flight: committing past it "
                                        "would skip it after a crash"),
    ({0: [1, 2, 3]}, {0: 0}, {0: 0}, "offset 0 is not done: nothing may be committed"),
    ({0: [5, 6, 8]}, {0: 5}, {0: 7}, "start from what is committed already"),
    ({0: [1, 2, 3, 4]}, {0: 3}, {0: 5}, "offsets below the committed one are old news"),
    ({0: [4, 2, 3, 0, 1]}, {0: 0}, {0: 5}, "completions arrive in any order"),
    ({0: [0, 1], 1: [], 2: [10, 11, 13]}, {0: 0, 1: 0, 2: 10}, {0: 2, 1: 0, 2: 12},
     "each partition on its own"),
    ({0: [0]}, {0: 0, 1: 7}, {0: 1, 1: 7}, "a partition with nothing completed keeps its "
                                           "offset"),
]


def _check_commit(to_commit: Any) -> int:
    for completed, committed, want, why in COMMIT_CASES:
        got = to_commit({p: list(o) for p, o in completed.items()}, dict(committed))
        if got != want:
            raise CaseFailed(f"completed={completed}, committed={committed}",
                             f"you said {got!r}, expected {want!r} ({why})")
    return len(COMMIT_CASES)


def _solution_q2(completed, committed):
    out = {}
    for partition, start in committed.items():
        done = set(completed.get(partition, ()))
        offset = start
        while offset in done:  # walk the contiguous run of completed offsets
            offset += 1
        out[partition] = offset
    return out


def _wrong_q2_highest(completed, committed):
    # the highest completed offset + 1: skips a record still in flight below it
    return {p: max([start - 1, *completed.get(p, ())]) + 1 for p, start in committed.items()}


def _wrong_q2_off_by_one(completed, committed):
    out = {}
    for partition, start in committed.items():
        done = set(completed.get(partition, ()))
        offset = start
        while offset + 1 in done:
            offset += 1
        out[partition] = offset  # the last completed offset, not the next one to read
    return out


q2 = Exercise(
    name="03.q2 the commit rule",
    task="to_commit(completed, committed) returns, per partition of committed, the offset to "
         "commit: 1 + the highest offset o such that every offset from committed[p] to o is "
         "completed (committed[p] unchanged if it is not)",
    checker=_check_commit,
    hint_text="per partition, start at committed[p] and step forward while the offset is in "
              "the completed set; Kafka's committed offset is the next record to read",
    solution_obj=_solution_q2, wrong=(_wrong_q2_highest, _wrong_q2_off_by_one))


# --- q3: count verdicts from a results topic, each post once --------------------------------

# (post_id, label) of the results the check writes; the first five come twice, as after a
# crash that re-processed them (at-least-once)
_RESULTS = [(f"p-ex-{i:03d}", label) for i, label in enumerate(
    ["approve"] * 12 + ["spam"] * 5 + ["reject"] * 3 + ["review"] * 2)]
_REPLAYED = _RESULTS[10:15]  # approve, approve, spam, spam, spam


def _write_results(lab: Any) -> str:
    from kafka import KafkaProducer  # the check writes through the very client the lesson uses

    topic = f"lab.ex.results.{uuid.uuid4().hex[:8]}"
    ensure_topics(lab.client_config, names=(topic,), partitions={topic: 3})
    producer = KafkaProducer(**lab.client_config)
    try:
        for i, (post_id, label) in enumerate(_RESULTS + _REPLAYED):
            user = f"user-{i % 4:05d}"
            value = {"post_id": post_id, "user_id": user, "label": label, "score": 0.0,
                     "reasons": [], "degraded": False, "source": "backend"}
            producer.send(topic, key=user.encode(), value=json.dumps(value).encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    return topic


def _check_counter(make_handler: Any, *, lab: Any) -> int:
    counts: dict = {}
    handle = make_handler(counts)
    if not callable(handle):
        raise CaseFailed("make_handler(counts)", f"returned {handle!r}, not a function")
    records = read_topic(lab.client_config, _write_results(lab), timeout_s=30)
    for record in records:  # as a consumer loop would hand them over
        handle(record)
    want = dict(Counter(label for _post_id, label in _RESULTS))
    got = {k: v for k, v in counts.items() if v}
    case = f"{len(records)} results, {len(_REPLAYED)} of them a second time"
    if got != want:
        total = sum(v for v in got.values() if isinstance(v, int))
        more = " (a post counted twice?)" if total > len(_RESULTS) else ""
        raise CaseFailed(case, f"counts {got}, expected {want}{more}")
    return 1


def _solution_q3(counts):
    import json  # the solution is shown on its own: it brings its import

    seen = set()  # post ids already counted: at-least-once may deliver a result twice

    def handle(record):
        result = json.loads(record.value)
        if result["post_id"] in seen:
            return
        seen.add(result["post_id"])
        counts[result["label"]] = counts.get(result["label"], 0) + 1
    return handle


def _wrong_q3_counts_every_record(counts):
    def handle(record):
        label = json.loads(record.value)["label"]
        counts[label] = counts.get(label, 0) + 1
    return handle


q3 = Exercise(
    name="03.q3 count verdicts, each post once",
    task="make_handler(counts) returns handle(record) for records of moderation.results: "
         "counts[label] += 1 once per post_id, however often its result arrives",
    checker=_check_counter,
    hint_text="record.value is JSON bytes with post_id and label; keep a set of the post ids "
              "already counted",
    solution_obj=_solution_q3, wrong=(_wrong_q3_counts_every_record,), needs_broker=True)


recap = Quiz("03 recap", [
    Question("Records 0 to 9 of a partition are in moderation. The outputs of 0-3 and 5-9 are "
             "acked; 4 is still in flight. Which offset may the service commit?",
             {"a": "10", "b": "4", "c": "none until all ten are done"}, "b",
             "Kafka's committed offset is the next record to read: 4. Committing 10 would "
             "skip record 4 if the service died now."),
    Question("The service is killed with chunks in flight. What happens to their posts?",
             {"a": "they are lost", "b": "the next owner of the partition re-processes them: "
              "duplicate results are possible, none is lost", "c": "they are skipped"}, "b",
             "At-least-once: the commit never passes an unacked record, so they are read "
             "again; a consumer of the results counts each post once."),
    Question("A record on posts is not JSON. What does the service do?",
             {"a": "retries it until it parses", "b": "drops it silently",
              "c": "writes a small dead letter to posts.dlq with the reason, and moves on"},
             "c", "Retrying would block its partition forever; dropping it would hide a bug."),
    Question("Why does a dead letter keep a preview of the text and not the whole post?",
             {"a": "a record refused for its size would be refused again in the DLQ",
              "b": "to save disk space", "c": "Kafka forbids copying records"}, "a",
             "The id, the user and the reason are what an operator needs."),
    Question("You edit lab_kit/moderation/rules.py and run the notebook's cells again. Why "
             "does the backend still answer as before?",
             {"a": "the backend is a separate process, already running, that loaded the rules "
                   "when it started", "b": "Kafka caches the verdicts",
              "c": "the rules are compiled into the broker"}, "a",
             "ModerationBackend.ensure() reuses the running process; test a rule as a "
             "function (exercise 1), or restart the backend."),
])

EXERCISES = [q1, q2, q3]
