"""Exercises of notebook 00 (start here: a first asynchronous send, and what "lost" means)."""

from __future__ import annotations

import json
import time
from typing import Any

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.posts import Post

# --- q1: a first send with a callback, run by the real client on the real broker ------------

LINGER_MS = 50  # the check's producer waits this long to fill a batch: a send cannot be done
#                 before it unless the answer waited for it (get() or flush())


def _read_one(lab: Any, partition: int, offset: int, timeout_s: float = 15.0) -> Any:
    """The record at (posts, partition, offset), read back from the topic."""
    from kafka import KafkaConsumer, TopicPartition  # a consumer only for the read-back

    cfg = {k: v for k, v in lab.client_config.items() if k in KafkaConsumer.DEFAULT_CONFIG}
    consumer = KafkaConsumer(**cfg, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition("posts", partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=1).values():
                if records:
                    return records[0]
        return None
    finally:
        consumer.close()


def _check_first_send(send_first: Any, *, lab: Any) -> int:
    """``send_first(producer, post, acks)`` sends the post, attaches a callback that appends
    ``(partition, offset)`` to ``acks``, and returns the future without waiting."""
    from kafka import KafkaProducer  # the check sends through the very client the lesson uses

    producer = KafkaProducer(**lab.client_config, linger_ms=LINGER_MS)
    try:
        producer.partitions_for("posts")  # metadata now, so that send() itself never waits
        post = Post(user_id="user-00042", text="My first asynchronous post!")
        acks: list = []
        t0 = time.perf_counter()
        future = send_first(producer, post, acks)
        took_ms = (time.perf_counter() - t0) * 1000
        if not hasattr(future, "add_callback"):
            raise CaseFailed("return value", f"send_first returned {future!r}: return the "
                                             "future that producer.send() gave you")
        if future.is_done:
            raise CaseFailed("returns at once", f"the future was already done when send_first "
                                                f"returned ({took_ms:.0f} ms): it waited for "
                                                "the ack (get() or flush())")
        producer.flush(timeout=30)
        metadata = future.get(timeout=0)
    finally:
        producer.close(timeout=5)
    want = (metadata.partition, metadata.offset)
    if [tuple(a) if isinstance(a, (list, tuple)) else a for a in acks] != [want]:
        raise CaseFailed("the callback", f"acks holds {acks!r}, expected [{want}]: the "
                                         "callback appends (metadata.partition, "
                                         "metadata.offset), once")
    record = _read_one(lab, *want)
    if record is None:
        raise CaseFailed("read back", f"nothing found at partition {want[0]}, offset "
                                      f"{want[1]} of posts")
    if record.key != post.key_bytes():
        raise CaseFailed("the key", f"the record's key is {record.key!r}: send with "
                                    "key=post.key_bytes(), so a user's posts share a partition")
    if json.loads(record.value).get("post_id") != post.post_id:
        raise CaseFailed("read back", "the record at that offset is not your post: send "
                                      "value=post.to_json_bytes()")
    return 3


def _solution_q1(producer, post, acks):
    def on_ack(metadata):  # runs later, on the client's sender thread: record and return
        acks.append((metadata.partition, metadata.offset))

    future = producer.send("posts", key=post.key_bytes(), value=post.to_json_bytes())
    future.add_callback(on_ack)
    return future  # at once: no get(), no flush()


def _wrong_q1_waits(producer, post, acks):
    future = producer.send("posts", key=post.key_bytes(), value=post.to_json_bytes())
    metadata = future.get(timeout=10)  # the blocking way: the caller waits for the ack
    acks.append((metadata.partition, metadata.offset))
    return future


def _wrong_q1_no_key(producer, post, acks):
    future = producer.send("posts", value=post.to_json_bytes())
    future.add_callback(lambda md: acks.append((md.partition, md.offset)))
    return future


q1 = Exercise(
    name="00.q1 a first send with a callback",
    task="send_first(producer, post, acks): send the post to 'posts' (key and value from the "
         "post), attach a callback that appends (partition, offset) to acks, return the future "
         "at once",
    checker=_check_first_send,
    hint_text="producer.send('posts', key=post.key_bytes(), value=post.to_json_bytes()) "
              "returns a future; future.add_callback(f) calls f(metadata) with .partition and "
              ".offset; return the future without calling get() or flush()",
    solution_obj=_solution_q1, wrong=(_wrong_q1_waits, _wrong_q1_no_key), needs_broker=True)


# --- q2: one vocabulary for what happened to a post -----------------------------------------

OUTCOMES = ("not accepted", "delivered", "duplicate", "left in spool", "lost")

#: (accepted, acknowledged, in_spool_at_end, times_read_back) -> outcome, and why
_CASES = [
    ((False, False, False, 0), "not accepted",
     "refused at submit() (bad input, backpressure): nothing was promised"),
    ((True, True, False, 1), "delivered", "read back once from the topic"),
    ((True, True, False, 0), "lost",
     "acknowledged, yet never read back (one node's page cache, then a power cut)"),
    ((True, False, False, 1), "delivered",
     "the ack never reached the producer, but the record is on the topic"),
    ((True, False, True, 0), "left in spool",
     "still on the producer's disk at the end: report it as such, never as delivered or "
     "lost 0"),
    ((True, True, False, 2), "duplicate", "read back twice (a re-send after a lost ack)"),
    ((True, False, False, 0), "lost", "accepted, not in a spool, never read back"),
    ((True, False, True, 1), "delivered",
     "on the topic already (the spool's copy may add a duplicate later)"),
    ((True, True, False, 3), "duplicate", "read back three times: more than once"),
    ((True, True, True, 0), "left in spool",
     "acknowledged, not on the topic, but still in the spool (spooled at close(), its ack "
     "came later): a replay can still deliver it, so it is not lost"),
]


def _check_outcome(outcome: Any) -> int:
    for args, want, why in _CASES:
        got = outcome(*args)
        if got != want:
            names = "accepted={}, acknowledged={}, in_spool_at_end={}, times_read_back={}"
            raise CaseFailed(names.format(*args),
                             f"you said {got!r}, expected {want!r}: {why}")
    return len(_CASES)


def _solution_q2(accepted, acknowledged, in_spool_at_end, times_read_back):
    if not accepted:
        return "not accepted"
    if times_read_back >= 2:
        return "duplicate"
    if times_read_back == 1:
        return "delivered"  # what the topic holds decides, not the producer's ack
    if in_spool_at_end:
        return "left in spool"
    return "lost"


def _wrong_q2_trusts_acks(accepted, acknowledged, in_spool_at_end, times_read_back):
    if not accepted:
        return "not accepted"
    if acknowledged:
        return "delivered"  # the producer's counter, not the topic
    return "left in spool" if in_spool_at_end else "lost"


def _wrong_q2_spool_is_lost(accepted, acknowledged, in_spool_at_end, times_read_back):
    if not accepted:
        return "not accepted"
    if times_read_back >= 2:
        return "duplicate"
    return "delivered" if times_read_back == 1 else "lost"


def _wrong_q2_twice_only(accepted, acknowledged, in_spool_at_end, times_read_back):
    if not accepted:
        return "not accepted"
    if times_read_back == 2:  # twice, but not three times
        return "duplicate"
    if times_read_back == 1:
        return "delivered"
    return "left in spool" if in_spool_at_end else "lost"


def _wrong_q2_acked_unread_is_lost(accepted, acknowledged, in_spool_at_end, times_read_back):
    if not accepted:
        return "not accepted"
    if times_read_back >= 2:
        return "duplicate"
    if times_read_back == 1:
        return "delivered"
    if acknowledged:
        return "lost"  # acked, never read back: lost, even with a copy still in the spool
    return "left in spool" if in_spool_at_end else "lost"


q2 = Exercise(
    name="00.q2 what happened to this post?",
    task="outcome(accepted, acknowledged, in_spool_at_end, times_read_back) returns one of "
         "'not accepted', 'delivered', 'duplicate', 'left in spool', 'lost'",
    checker=_check_outcome,
    hint_text="decide from what was read back from the topic, not from the ack: read back "
              "once = delivered, more = duplicate; never read back = left in spool if it is "
              "still there, else lost; a post that was never accepted is neither",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_trusts_acks, _wrong_q2_spool_is_lost, _wrong_q2_twice_only,
           _wrong_q2_acked_unread_is_lost))


recap = Quiz("00 recap", [
    Question("producer.send() has just returned a future. What do you know about the post?",
             {"a": "it is acknowledged by the broker",
              "b": "it is accepted: in the client's memory, not confirmed yet",
              "c": "it is durable on disk"}, "b",
             "send() only appends to a batch in memory; the ack comes later, in a callback."),
    Question("On which thread did the delivery callback run in this notebook?",
             {"a": "the client's sender (network) thread", "b": "the notebook's main thread",
              "c": "a new thread per callback"}, "a",
             "kafka-python runs callbacks on its one sender thread, between network I/O."),
    Question("A post was acknowledged (acks=all) by this lab's single broker. The machine then "
             "lost power and the checker does not find the post. What is it?",
             {"a": "delivered: it was acknowledged", "b": "left in spool", "c": "lost"}, "c",
             "lost = accepted and never read back; one node's ack is one copy in its page "
             "cache, not yet on disk."),
    Question("At the end of a drill 50 posts are still in the producer's spool file. What "
             "should the report say?",
             {"a": "lost 0",
              "b": "left in spool 50, apart from lost (what is neither read back nor spooled)",
              "c": "lost 50"},
             "b",
             "Posts left in a spool are reported as such, never folded into 'lost 0'."),
])

EXERCISES = [q1, q2]
