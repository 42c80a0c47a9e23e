"""Exercises of notebook 01 (blocking vs non-blocking sends)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.posts import Workload

# --- q1: a percentile from raw latencies (nearest rank) -------------------------------------


def _latency_cases() -> list[tuple[str, list[float], float]]:
    """(name, latencies in ms, p): small samples first, where off-by-one errors show."""
    rng = np.random.default_rng(7)
    ten = [float(v) for v in rng.permutation(np.arange(1, 11) * 1.5)]
    hundred = [float(v) for v in rng.permutation(np.arange(1, 101) * 0.25)]
    skewed = [round(float(v), 4) for v in rng.lognormal(mean=0.0, sigma=1.0, size=1000)]
    cases = [("1 value", [4.2], 50), ("1 value", [4.2], 99),
             ("2 values", [0.8, 0.3], 50), ("2 values", [0.8, 0.3], 99),
             ("3 values, unsorted", [2.0, 0.5, 1.0], 50),
             ("7 values", [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0], 99),
             ("10 values", ten, 50), ("10 values", ten, 90), ("10 values", ten, 99),
             ("100 values", hundred, 50), ("100 values", hundred, 99),
             ("100 values", hundred, 100),
             ("1000 skewed values", skewed, 50), ("1000 skewed values", skewed, 99)]
    return [(f"{name}, p{p:g}", values, p) for name, values, p in cases]


def nearest_rank(values: list[float], p: float) -> float:
    """The reference: numpy's ``inverted_cdf`` method is the nearest-rank definition."""
    return float(np.percentile(np.asarray(values, dtype=float), p, method="inverted_cdf"))


def _check_percentile(percentile: Any) -> int:
    cases = _latency_cases()
    for name, values, p in cases:
        given = list(values)
        want = nearest_rank(values, p)
        got = percentile(given, p)
        if given != values:
            raise CaseFailed(name, "your function reordered the list it was given: the caller "
                                   "still needs it as it was; sort a copy (sorted(latencies))")
        if got is None or not np.isclose(float(got), want, rtol=0, atol=1e-12):
            near = sorted(values)
            detail = f"you said {got!r}, expected {want!r}"
            if len(near) <= 10:
                detail += f" (sorted: {near})"
            raise CaseFailed(name, detail + ": the p-th percentile is the smallest value with "
                                            "at least p % of the values at or below it")
    return len(cases)


def _solution_q1(latencies, p):
    import math

    values = sorted(latencies)  # a sorted copy: the caller's list stays as it was
    rank = max(1, math.ceil(p / 100 * len(values)))  # 1-based: smallest k with k/n >= p/100
    return values[rank - 1]


def _wrong_q1_off_by_one(latencies, p):
    values = sorted(latencies)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def _wrong_q1_interpolates(latencies, p):
    return float(np.percentile(latencies, p))  # numpy's default: linear interpolation


def _wrong_q1_sorts_in_place(latencies, p):
    import math

    latencies.sort()  # the right value, but the caller's list is reordered
    return latencies[max(1, math.ceil(p / 100 * len(latencies))) - 1]


q1 = Exercise(
    name="01.q1 a percentile from raw latencies",
    task="percentile(latencies, p) returns the nearest-rank p-th percentile: the smallest "
         "latency with at least p % of the latencies at or below it",
    checker=_check_percentile,
    hint_text="sort a copy; with n values the answer is the k-th smallest, k = ceil(p/100 * "
              "n) (at least 1); Python lists count from 0",
    solution_obj=_solution_q1,
    wrong=(_wrong_q1_off_by_one, _wrong_q1_interpolates, _wrong_q1_sorts_in_place))


# --- q2: an asynchronous send loop, on the real broker ----------------------------------------

N_POSTS = 100
LINGER_MS = 20  # the check's producer waits this long to fill a batch, so acks come after it


def _check_send_all(send_all: Any, *, lab: Any) -> int:
    """``send_all(producer, posts)`` sends every post and returns their futures, unwaited."""
    from kafka import KafkaProducer  # the check sends through the very client the lesson uses

    posts = Workload(seed=11).posts(N_POSTS)
    producer = KafkaProducer(**lab.client_config, linger_ms=LINGER_MS)
    try:
        producer.partitions_for("posts")  # metadata now, so that send() itself never waits
        t0 = time.perf_counter()
        futures = send_all(producer, posts)
        took_ms = (time.perf_counter() - t0) * 1000
        futures = None if futures is None else list(futures)
        if futures is None or len(futures) != N_POSTS:
            got = "None" if futures is None else f"{len(futures)} items"
            raise CaseFailed(f"{N_POSTS} posts", f"send_all returned {got}: return a list "
                                                 "with the future of every post, in order")
        if not all(hasattr(f, "add_callback") for f in futures):
            raise CaseFailed("the futures", "return what producer.send() returned for each "
                                            "post (not its result)")
        done_at_return = sum(1 for f in futures if f.is_done)
        # A loop that never waits hands all its posts over within a few ms, before the first
        # batch's linger_ms is even up: at most a few can be done. Half or more done means
        # it waited for acks along the way (get() or flush()), if not for the last one.
        if done_at_return > N_POSTS // 2:
            raise CaseFailed("returns before the acks",
                             f"{done_at_return} of {N_POSTS} futures were already done when "
                             f"send_all returned ({took_ms:.0f} ms): it waited for acks "
                             f"(get() or flush()) along the way")
        metadata = []
        for i, f in enumerate(futures):
            try:
                metadata.append(f.get(timeout=30))
            except Exception as exc:  # noqa: BLE001 - a failed future is the case that failed
                raise CaseFailed("every future succeeds",
                                 f"post {i} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        producer.close(timeout=5)
    for i, (md, post) in enumerate(zip(metadata, posts, strict=True)):
        if md.topic != "posts":
            raise CaseFailed("the topic", f"post {i} went to {md.topic!r}, not 'posts'")
        if md.serialized_key_size != len(post.key_bytes()):
            raise CaseFailed("the keys", f"post {i} was sent without its key: key="
                                         "post.key_bytes() keeps a user's posts in order, on "
                                         "one partition")
    return 3


def _solution_q2(producer, posts):
    # no get(), no flush(): each send() appends to a batch and returns its future at once
    return [producer.send("posts", key=p.key_bytes(), value=p.to_json_bytes()) for p in posts]


def _wrong_q2_blocking(producer, posts):
    futures = []
    for p in posts:
        f = producer.send("posts", key=p.key_bytes(), value=p.to_json_bytes())
        f.get(timeout=10)  # waits for this post's ack before sending the next one
        futures.append(f)
    return futures


def _wrong_q2_waits_for_most(producer, posts):
    futures = [producer.send("posts", key=p.key_bytes(), value=p.to_json_bytes())
               for p in posts]
    for f in futures[:-1]:
        f.get(timeout=10)  # every ack but the last one's: "not all done" would pass this
    return futures


def _wrong_q2_no_key(producer, posts):
    return [producer.send("posts", value=p.to_json_bytes()) for p in posts]


q2 = Exercise(
    name="01.q2 an asynchronous send loop",
    task="send_all(producer, posts) sends every post to 'posts' (key and value from the post) "
         "and returns the list of futures without waiting for any ack",
    checker=_check_send_all,
    hint_text="one producer.send('posts', key=p.key_bytes(), value=p.to_json_bytes()) per post, "
              "collected in a list; no .get() and no flush() inside the loop or after it",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_blocking, _wrong_q2_waits_for_most, _wrong_q2_no_key), needs_broker=True)


recap = Quiz("01 recap", [
    Question("One thread sends with send().get(); each send waits one round trip R. At most "
             "how many posts per second can that thread send?",
             {"a": "1 / R", "b": "it depends on batch_size", "c": "no limit: Kafka is fast"},
             "a", "Each post waits for the previous one's ack: one post per round trip."),
    Question("The asynchronous run used C µs of CPU per post. What bounds its throughput in "
             "one Python process?",
             {"a": "the broker's round trip", "b": "about 1,000,000 / C posts/s: the GIL runs "
              "one thread at a time", "c": "the network's bandwidth"}, "b",
             "Async hides the round trip; what is left is CPU per post, on about one core."),
    Question("kafka-python 3.0, default settings: send() to a topic whose metadata the "
             "producer does not have, and no broker answers. What happens?",
             {"a": "send() returns a future that fails later",
              "b": "send() raises at once",
              "c": "send() blocks up to max_block_ms (60 s by default), then raises "
                   "KafkaTimeoutError"}, "c",
             "send() waits for the topic's metadata first; set max_block_ms where a caller "
             "must not wait that long."),
    Question("Why was the async mode's ack latency higher than the blocking round trip?",
             {"a": "thousands of posts were handed over at once and queued in batches",
              "b": "the async producer is slower",
              "c": "acks=all only applies to async sends"}, "a",
             "As fast as possible means a queue; notebook 04 measures at a fixed rate instead."),
    Question("The p99 of 1,000 latencies, by nearest rank, is...",
             {"a": "the mean of the slowest 10", "b": "the 990th smallest value",
              "c": "the largest value"}, "b",
             "k = ceil(0.99 × 1000) = 990: at least 99 % of the values are at or below it."),
])

EXERCISES = [q1, q2]
