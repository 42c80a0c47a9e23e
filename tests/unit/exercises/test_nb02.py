"""Notebook 02's exercise 3, the parts that need no broker: the case that hands the errback a
refusal for good other than a size error, and the read-back of the dead letters. The whole
check runs on the broker in tests/broker/exercises/test_live_checks.py.

The DLQ producer here only records what the errback sends: the case tests the errback's
decision (dead letter or retry), not Kafka."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lab_kit.exercises import nb02
from lab_kit.exercises.core import CaseFailed
from lab_kit.posts import Post


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, topic, key=None, value=None, **_kwargs):
        self.sent.append((topic, key, value))


def _other_refusal(answer):
    recorder = _Recorder()
    dlq, retry_later = nb02._WatchedProducer(recorder), []
    post = nb02._other_refusal_case(answer, dlq, "dlq", retry_later)
    return post, recorder, retry_later


def test_an_errback_that_dead_letters_only_size_errors_is_refused():
    with pytest.raises(CaseFailed) as failed:
        _other_refusal(nb02._wrong_q3_size_only)
    assert failed.value.case.startswith("another refusal for good")
    assert "exc.retriable" in failed.value.detail
    assert nb02._wrong_q3_size_only in nb02.q3.wrong


def test_the_solution_dead_letters_the_other_refusal():
    post, recorder, retry_later = _other_refusal(nb02._solution_q3)
    assert retry_later == []
    [(topic, _key, value)] = recorder.sent
    body = json.loads(value)
    assert topic == "dlq" and body["post_id"] == post.post_id
    assert body["error_type"] == "TopicAuthorizationFailedError"


def _records(*bodies):
    return [SimpleNamespace(value=json.dumps(b).encode()) for b in bodies]


def test_the_read_back_wants_one_small_dead_letter_per_refused_post():
    post = Post(user_id="user-00044", text="A post")
    ok = {"post_id": post.post_id, "error_type": "TopicAuthorizationFailedError"}
    nb02._check_dead_letter(_records(ok, {"post_id": "other"}), post,
                            "TopicAuthorizationFailedError")
    with pytest.raises(CaseFailed, match="found 0 dead letters"):
        nb02._check_dead_letter(_records({"post_id": "other"}), post, "X")
    with pytest.raises(CaseFailed, match="must say why"):
        nb02._check_dead_letter(_records(ok), post, "MessageSizeTooLargeError")
    whole = {**ok, "text": "A very long story. " * 250}
    with pytest.raises(CaseFailed, match="whole post"):
        nb02._check_dead_letter(_records(whole), post, "TopicAuthorizationFailedError")
