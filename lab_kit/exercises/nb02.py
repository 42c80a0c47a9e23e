"""Exercises of notebook 02 (futures, callbacks and errbacks)."""

from __future__ import annotations

from typing import Any

import kafka.errors as kerr

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.posts import Workload

# --- q1: a delivery callback, run by the real client on the real broker ---------------------


def _check_callback(make_callback: Any, *, lab: Any) -> int:
    """``make_callback(store)`` returns a callback for ``future.add_callback``; the callback must
    record ``(partition, offset)`` into ``store`` and return at once."""
    from kafka import KafkaProducer  # the check sends through the very client the lesson uses

    store: list = []
    callback = make_callback(store)
    if not callable(callback):
        raise CaseFailed("make_callback(store)", f"returned {callback!r}, not a function")
    producer = KafkaProducer(**lab.client_config)
    posts = Workload(seed=21).posts(40)
    try:
        futures = []
        for post in posts:
            f = producer.send("posts", key=post.key_bytes(), value=post.to_json_bytes())
            f.add_callback(callback)
            futures.append(f)
        producer.flush(timeout=30)
        metas = [f.get(timeout=0) for f in futures]
    finally:
        producer.close(timeout=5)
    want = sorted((m.partition, m.offset) for m in metas)
    got = sorted(store)
    if len(got) != len(want):
        raise CaseFailed("40 posts sent", f"your callback stored {len(got)} entries, expected 40")
    if got != want:
        raise CaseFailed("40 posts sent", f"stored {got[:2]}..., expected (partition, offset) "
                                          f"pairs such as {want[:2]}")
    return 1


def _solution_q1(store):
    def on_ack(metadata):
        store.append((metadata.partition, metadata.offset))  # record and return: no I/O here
    return on_ack


def _wrong_q1(store):
    def on_ack(metadata):
        store.append((metadata.topic, metadata.offset))
    return on_ack


q1 = Exercise(
    name="02.q1 a delivery callback",
    task="make_callback(store) returns a callback that appends (partition, offset) to store",
    checker=_check_callback,
    hint_text="the callback gets kafka-python's RecordMetadata: .partition and .offset",
    solution_obj=_solution_q1, wrong=(_wrong_q1,), needs_broker=True)


# --- q2: retry or dead-letter, from the error's class ---------------------------------------

_CASES = [
    (kerr.MessageSizeTooLargeError, "dead-letter"),
    (kerr.NotEnoughReplicasError, "retry"),
    (kerr.NotLeaderForPartitionError, "retry"),
    (kerr.KafkaTimeoutError, "retry"),
    (kerr.RecordListTooLargeError, "dead-letter"),
    (kerr.TopicAuthorizationFailedError, "dead-letter"),
]


def _check_decision(decide: Any) -> int:
    for cls, want in _CASES:
        got = decide(cls())
        if got != want:
            raise CaseFailed(cls.__name__, f"you said {got!r}, expected {want!r}")
    return len(_CASES)


def _solution_q2(error):
    return "retry" if getattr(error, "retriable", False) else "dead-letter"


def _wrong_q2(error):
    return "retry"


q2 = Exercise(
    name="02.q2 retry or dead-letter",
    task="decide(error) returns 'retry' for an error worth retrying, else 'dead-letter'",
    checker=_check_decision,
    hint_text="kafka-python's errors carry a class attribute .retriable",
    solution_obj=_solution_q2, wrong=(_wrong_q2,))

recap = Quiz("02 recap", [
    Question("On which thread does kafka-python run a delivery callback?",
             {"a": "the thread that called send()", "b": "the producer's sender thread",
              "c": "a new thread per callback"}, "b",
             "The sender thread runs every callback, between network I/O: keep them short."),
    Question("A callback sleeps 3 ms per post. What slows down?",
             {"a": "only that post's ack", "b": "every ack behind it", "c": "nothing"}, "b",
             "The sender thread is busy in your callback, so every later ack waits."),
    Question("Why does retrying MESSAGE_TOO_LARGE never help?",
             {"a": "the broker is down", "b": "it is a property of the record itself",
              "c": "retries are off by default"}, "b",
             "The same record is refused again; it belongs in the dead-letter topic."),
])

EXERCISES = [q1, q2]
