"""Exercises of notebook 02 (futures, callbacks and errbacks).

* ``q1`` (live): a delivery callback, run by kafka-python's sender thread on the real broker.
* ``q2`` (offline): retry or dead-letter, from the error's class.
* ``q3`` (live): an errback that routes a post the broker refuses to a dead-letter topic,
  and keeps a post that only timed out for a later retry; a third case hands it another
  refusal for good (an authorization error) itself, so the rule must be ``exc.retriable``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import kafka.errors as kerr

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.harness.readback import read_topic
from lab_kit.posts import Post, Workload
from lab_kit.topics import ensure_topics

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

# (error, what to do with the post, why): errors as kafka-python 3.0 raises them
_CASES = [
    (kerr.MessageSizeTooLargeError(), "dead-letter", "the record itself is too large"),
    (kerr.NotEnoughReplicasError(), "retry", "fewer in-sync replicas than min.insync.replicas, "
                                             "for now"),
    (kerr.NotLeaderForPartitionError(), "retry", "the partition's leader moved"),
    (kerr.KafkaTimeoutError("Expiring 1 record(s) for posts-0: 120000 ms has passed since "
                            "batch creation"), "retry",
     "delivery_timeout_ms passed: the post is fine, Kafka was not reachable in time"),
    (kerr.KafkaConnectionError("connection refused"), "retry", "the broker was unreachable"),
    (kerr.RecordListTooLargeError(), "dead-letter", "the batch is too large for the broker"),
    (kerr.TopicAuthorizationFailedError(), "dead-letter", "no right to write: asking again "
                                                          "changes nothing"),
    (kerr.InvalidRecordError(), "dead-letter", "the broker's validation refused the record"),
    (ValueError("cannot serialize"), "dead-letter", "not a Kafka error at all: the post's own "
                                                    "fault"),
]


def _check_decision(decide: Any) -> int:
    for error, want, why in _CASES:
        got = decide(error)
        if got != want:
            raise CaseFailed(type(error).__name__,
                             f"you said {got!r}, expected {want!r} ({why})")
    return len(_CASES)


def _solution_q2(error):
    # kafka-python marks the errors worth retrying: RetriableError and its subclasses
    return "retry" if getattr(error, "retriable", False) else "dead-letter"


def _wrong_q2(error):
    return "retry"


def _wrong_q2_broker_said_no(error):
    # "the broker answered with an error, so the post is bad": wrong for NOT_ENOUGH_REPLICAS
    return "dead-letter" if isinstance(error, kerr.BrokerResponseError) else "retry"


q2 = Exercise(
    name="02.q2 retry or dead-letter",
    task="decide(error) returns 'retry' for an error worth retrying, else 'dead-letter'",
    checker=_check_decision,
    hint_text="kafka-python's errors carry a class attribute .retriable; an exception that is "
              "not a Kafka error has none",
    solution_obj=_solution_q2, wrong=(_wrong_q2, _wrong_q2_broker_said_no))


# --- q3: an errback that routes a refused post to the dead-letter topic ---------------------

LONG_TEXT = "A very long story. " * 250  # larger than the scratch topic's max.message.bytes
SMALL_TOPIC_MAX_BYTES = "2048"


class _WatchedProducer:
    """The DLQ producer handed to the student's errback: a real ``KafkaProducer`` that notes
    whether the errback waited (``.get()`` on a send's future, or ``flush()``)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.sends = 0
        self.waited: str | None = None

    def send(self, *args: Any, **kwargs: Any) -> Any:
        self.sends += 1
        return _WatchedFuture(self._real.send(*args, **kwargs), self)

    def flush(self, *args: Any, **kwargs: Any) -> Any:
        self.waited = self.waited or "flush()"
        return self._real.flush(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _WatchedFuture:
    def __init__(self, real: Any, owner: _WatchedProducer) -> None:
        self._real, self._owner = real, owner

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self._owner.waited = self._owner.waited or ".get() on the dead letter's future"
        return self._real.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _scratch_topic(lab: Any, prefix: str, **configs: str) -> str:
    name = f"{prefix}.{uuid.uuid4().hex[:8]}"
    ensure_topics(lab.client_config, names=(name,), partitions={name: 1},
                  configs={name: configs})
    return name


def _run_errback(on_error: Any, exc_holder: list) -> tuple[Any, threading.Event]:
    """Wrap the student's errback: catch what it raises (kafka-python would log and swallow
    it), and say when it returned."""
    done = threading.Event()

    def wrapped(exc: BaseException) -> None:
        try:
            on_error(exc)
        except Exception as raised:  # noqa: BLE001 - reported as the failed case
            exc_holder.append(raised)
        finally:
            done.set()
    return wrapped, done


def _refused_case(make_errback: Any, lab: Any, dlq: _WatchedProducer, dlq_topic: str,
                  retry_later: list) -> Post:
    """Case 1: the broker refuses the long post (topic max.message.bytes=2048)."""
    from kafka import KafkaProducer  # the check sends through the very client the lesson uses

    small = _scratch_topic(lab, "lab.ex.small", **{"max.message.bytes": SMALL_TOPIC_MAX_BYTES})
    post = Post(user_id="user-00042", text=LONG_TEXT)
    on_error = make_errback(post, dlq, dlq_topic, retry_later)
    if not callable(on_error):
        raise CaseFailed("make_errback(...)", f"returned {on_error!r}, not a function")
    raised: list = []
    wrapped, done = _run_errback(on_error, raised)
    main = KafkaProducer(**lab.client_config)
    try:
        main.send(small, key=post.key_bytes(), value=post.to_json_bytes()).add_errback(wrapped)
        if not done.wait(30):
            raise CaseFailed("a post the broker refuses", "the errback did not run in 30 s")
    finally:
        main.close(timeout=5)
    case = "a post the broker refuses (MessageSizeTooLargeError)"
    if raised:
        raise CaseFailed(case, f"your errback raised {raised[0]!r} (kafka-python would have "
                               "logged and swallowed it: the post would be gone)")
    if dlq.waited:
        raise CaseFailed(case, f"your errback waited ({dlq.waited}) on the producer's sender "
                               "thread: send the dead letter and return")
    if retry_later:
        raise CaseFailed(case, "a refusal for good is not worth a retry: it went to "
                               "retry_later")
    if dlq.sends != 1:
        raise CaseFailed(case, f"your errback sent {dlq.sends} records to the DLQ, expected 1")
    return post


def _timed_out_case(make_errback: Any, lab: Any, dlq: _WatchedProducer, dlq_topic: str,
                    retry_later: list) -> Post:
    """Case 2: a post that waits in the client longer than delivery_timeout_ms (its sender
    thread held up by a slow callback) fails with KafkaTimeoutError: retriable."""
    from kafka import KafkaProducer  # the check sends through the very client the lesson uses

    post = Post(user_id="user-00043", text="A perfectly fine post")
    raised: list = []
    wrapped, done = _run_errback(make_errback(post, dlq, dlq_topic, retry_later), raised)
    client = KafkaProducer(**lab.client_config, delivery_timeout_ms=2000,
                           request_timeout_ms=1000)
    busy = threading.Event()

    def slow_callback(_metadata: Any) -> None:
        busy.set()
        time.sleep(3.0)  # holds the sender thread past delivery_timeout_ms

    try:
        client.send("posts", key=b"user-00043", value=b'{"warm":"up"}').add_callback(
            slow_callback)
        busy.wait(30)
        client.send("posts", key=post.key_bytes(), value=post.to_json_bytes()).add_errback(
            wrapped)
        if not done.wait(30):
            raise CaseFailed("a post whose delivery timed out", "the errback did not run")
    finally:
        client.close(timeout=10)
    case = "a post whose delivery timed out (KafkaTimeoutError, retriable)"
    if raised:
        raise CaseFailed(case, f"your errback raised {raised[0]!r}")
    if dlq.sends != 1:
        raise CaseFailed(case, "the post is fine, Kafka only timed out: it must not go to the "
                               "dead-letter topic")
    if retry_later != [post]:
        raise CaseFailed(case, f"retry_later holds {retry_later!r}, expected [the post]")
    return post


def _other_refusal_case(make_errback: Any, dlq: Any, dlq_topic: str,
                        retry_later: list) -> Post:
    """Case 3: another refusal for good, handed to the errback as the client would hand it
    (``TopicAuthorizationFailedError``: not retriable, not about size). An errback that
    dead-letters only ``MessageSizeTooLargeError`` would keep this post for a retry that can
    never succeed: the rule is ``exc.retriable``, not one error class."""
    post = Post(user_id="user-00044", text="A post this client has no right to write")
    sends_before, retries_before = dlq.sends, len(retry_later)
    raised: list = []
    wrapped, _done = _run_errback(make_errback(post, dlq, dlq_topic, retry_later), raised)
    wrapped(kerr.TopicAuthorizationFailedError())
    case = "another refusal for good (TopicAuthorizationFailedError, not retriable)"
    if raised:
        raise CaseFailed(case, f"your errback raised {raised[0]!r}")
    if len(retry_later) != retries_before:
        raise CaseFailed(case, "asking again changes nothing, yet it went to retry_later: "
                               "branch on exc.retriable, not on the error's class")
    if dlq.sends != sends_before + 1:
        raise CaseFailed(case, f"your errback sent {dlq.sends - sends_before} records to the "
                               "DLQ, expected 1")
    return post


def _check_dead_letter(records: list, post: Post, error_type: str) -> None:
    case = "reading the dead-letter topic back"
    bodies = []
    for record in records:
        try:
            bodies.append(json.loads(record.value))
        except (TypeError, ValueError):
            raise CaseFailed(case, f"a dead letter is not JSON: {record.value[:60]!r}") \
                from None
    mine = [b for b in bodies if isinstance(b, dict) and b.get("post_id") == post.post_id]
    if len(mine) != 1:
        raise CaseFailed(case, f"found {len(mine)} dead letters with post_id {post.post_id!r}, "
                               f"expected 1: {bodies!r}"[:300])
    body = mine[0]
    if body.get("error_type") != error_type:
        raise CaseFailed(case, f"the dead letter must say why: error_type {error_type!r}, got "
                               f"{body.get('error_type')!r}")
    if len(json.dumps(body)) > 1024:
        raise CaseFailed(case, "the dead letter holds the whole post: a record refused for its "
                               "size would be refused again; keep the id and the reason")


def _check_errback(make_errback: Any, *, lab: Any) -> int:
    """``make_errback(post, dlq, dlq_topic, retry_later)`` returns ``on_error(exc)``."""
    from kafka import KafkaProducer  # the check sends through the very client the lesson uses

    dlq_topic = _scratch_topic(lab, "lab.ex.dlq")
    real = KafkaProducer(**lab.client_config, enable_idempotence=False, linger_ms=0)
    dlq = _WatchedProducer(real)
    retry_later: list = []
    try:
        refused = _refused_case(make_errback, lab, dlq, dlq_topic, retry_later)
        _timed_out_case(make_errback, lab, dlq, dlq_topic, retry_later)
        forbidden = _other_refusal_case(make_errback, dlq, dlq_topic, retry_later)
        real.flush(timeout=10)
    finally:
        real.close(timeout=5)
    records = read_topic(lab.client_config, dlq_topic, timeout_s=20)
    if len(records) != 2:
        raise CaseFailed("reading the dead-letter topic back",
                         f"found {len(records)} records, expected 2")
    _check_dead_letter(records, refused, "MessageSizeTooLargeError")
    _check_dead_letter(records, forbidden, "TopicAuthorizationFailedError")
    return 4


def _solution_q3(post, dlq, dlq_topic, retry_later):
    import json  # the solution is shown on its own: it brings its import

    def on_error(exc):  # runs on the producer's sender thread: decide, hand off, return
        if getattr(exc, "retriable", False):
            retry_later.append(post)  # the post is fine; Kafka was not (in time)
            return
        dead_letter = {"post_id": post.post_id, "user_id": post.user_id,
                       "error_type": type(exc).__name__, "reason": str(exc)}
        # a second producer: after this refusal the idempotent main client fails every send
        dlq.send(dlq_topic, key=post.key_bytes(), value=json.dumps(dead_letter).encode())
    return on_error


def _wrong_q3_everything(post, dlq, dlq_topic, retry_later):
    def on_error(exc):  # dead-letters a post that only timed out
        dlq.send(dlq_topic, key=post.key_bytes(), value=json.dumps(
            {"post_id": post.post_id, "error_type": type(exc).__name__}).encode())
    return on_error


def _wrong_q3_waits(post, dlq, dlq_topic, retry_later):
    def on_error(exc):
        if getattr(exc, "retriable", False):
            retry_later.append(post)
            return
        dlq.send(dlq_topic, value=json.dumps(
            {"post_id": post.post_id, "error_type": type(exc).__name__}).encode()
        ).get(timeout=10)  # blocks the sender thread for a round trip
    return on_error


def _wrong_q3_whole_post(post, dlq, dlq_topic, retry_later):
    def on_error(exc):
        if getattr(exc, "retriable", False):
            retry_later.append(post)
            return
        dlq.send(dlq_topic, value=json.dumps(
            {**post.to_dict(), "error_type": type(exc).__name__}).encode())
    return on_error


def _wrong_q3_size_only(post, dlq, dlq_topic, retry_later):
    def on_error(exc):  # dead-letters the one refusal the lesson showed, retries the rest
        if isinstance(exc, kerr.MessageSizeTooLargeError):
            dlq.send(dlq_topic, key=post.key_bytes(), value=json.dumps(
                {"post_id": post.post_id, "error_type": type(exc).__name__}).encode())
        else:
            retry_later.append(post)
    return on_error


q3 = Exercise(
    name="02.q3 an errback that dead-letters",
    task="make_errback(post, dlq, dlq_topic, retry_later) returns on_error(exc): a refusal for "
         "good → a small JSON dead letter (post_id, error_type) sent with dlq to dlq_topic, "
         "without waiting; a retriable error → retry_later.append(post)",
    checker=_check_errback,
    hint_text="branch on exc.retriable; the dead letter is json.dumps({'post_id': ..., "
              "'error_type': type(exc).__name__}).encode(), sent with dlq.send(dlq_topic, ...) "
              "and no .get(): the errback runs on the sender thread",
    solution_obj=_solution_q3,
    wrong=(_wrong_q3_everything, _wrong_q3_waits, _wrong_q3_whole_post, _wrong_q3_size_only),
    needs_broker=True)


recap = Quiz("02 recap", [
    Question("On which thread does kafka-python run a delivery callback?",
             {"a": "the thread that called send()", "b": "the producer's sender thread",
              "c": "a new thread per callback"}, "b",
             "The sender thread runs every callback, between network I/O: keep them short."),
    Question("A callback sleeps 3 ms per post. What slows down?",
             {"a": "only that post's ack", "b": "every ack behind it", "c": "nothing"}, "b",
             "The sender thread is busy in your callback, so every later ack waits."),
    Question("A record is larger than the producer's own max_request_size. What happens?",
             {"a": "send() raises MessageSizeTooLargeError in your thread; nothing is sent",
              "b": "the broker refuses it and the errback runs",
              "c": "the client splits it into smaller records"}, "a",
             "The client checks the record's size in send() and refuses it before it reaches "
             "a batch: no future, no errback."),
    Question("The broker refused a post for its size. What does kafka-python 3.0's "
             "idempotent producer do with the posts sent after it?",
             {"a": "sends them as usual", "b": "retries the refused post until "
              "delivery_timeout_ms", "c": "fails every one with the same "
              "MessageSizeTooLargeError, until you create a new producer"}, "c",
             "A non-retriable error puts its transaction manager in a fatal state: the sender "
             "aborts every batch with that error. A new KafkaProducer is the way out."),
    Question("What does an errback see when delivery_timeout_ms passes before the post is "
             "acked?",
             {"a": "nothing: with retries=inf the client retries forever",
              "b": "KafkaTimeoutError (retriable): the client gave up; the post is fine, and "
                   "may even have been written",
              "c": "MessageSizeTooLargeError"}, "b",
             "retries=inf is bounded by delivery_timeout_ms (default 120000 ms), counted from "
             "send(): then the batch expires with KafkaTimeoutError('Expiring N record(s)...')."),
])

EXERCISES = [q1, q2, q3]
