"""Where and when does my callback run? Three client models, side by side (notebook 11).

* **kafka-python** (``AsyncPostProducer``): ``send()`` appends to a batch; the client's own
  **sender thread** does the network I/O and runs every callback.
* **confluent** (``AsyncPostProducer(client="confluent")``): librdkafka's C threads do the
  I/O, but a delivery report is served only inside ``poll()`` / ``flush()``, on the thread
  that calls them: here the lab's poll thread (``lab-librdkafka-poll``, :mod:`.librdkafka`).
* **asyncio** (``await producer.asubmit(post)`` on the kafka-python producer): the sender
  thread runs the callback, which only hands the outcome to the event loop
  (``call_soon_threadsafe``); the coroutine resumes on the **loop's thread**.

And the ways each model goes wrong when it is used without its rules: a raw librdkafka
producer that never polls (:func:`missing_poll`), a send to a topic with no metadata
(:func:`send_with_no_metadata`), a producer dropped without ``flush()``
(:func:`close_without_flush`); what each model costs per post (:func:`cost_per_model`), and
confluent-kafka's own ``AIOProducer`` (:func:`aio_producer_batching`).

Every experiment runs against the real broker, bounds each loop in count and time, and
returns a pandas DataFrame. "Lost" is counted by reading the topic back: the experiments
that need it take ``read_back(topic) -> post ids`` (the notebook passes the read-back
checker's ``post_ids_in``, which lives above this folder).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from lab_kit.kafka_settings import librdkafka_config
from lab_kit.metrics import CpuMeter
from lab_kit.posts import Post
from lab_kit.producer.async_producer import AsyncPostProducer
from lab_kit.producer.librdkafka import RDKAFKA_LOG, confluent_kafka

MODELS = ("kafka-python", "confluent", "asyncio")
LOOP_THREAD = "lab-asyncio-loop"  # the thread an experiment's event loop runs on
WAIT_S = 30.0  # the longest any experiment waits for acks or a report
ReadBack = Callable[[str], Iterable[str]]

def raw_config(bootstrap: str, extra: dict | None = None, **props: Any) -> dict[str, Any]:
    """librdkafka properties for a raw ``confluent_kafka.Producer`` on the lab's broker:
    ``extra`` in kafka-python names (an external cluster's security settings), ``props`` in
    librdkafka's own names (``linger.ms``, ...)."""
    cfg = librdkafka_config({"bootstrap_servers": bootstrap, **(extra or {})})
    return {**cfg, "logger": RDKAFKA_LOG, **props}


def run_in_loop_thread(make: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """``asyncio.run(make())`` on a thread of its own (``lab-asyncio-loop``): a notebook's
    kernel already runs a loop on the main thread, where ``asyncio.run`` is refused."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(make())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name=LOOP_THREAD, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the event loop's work did not finish within {timeout:g} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def fresh_copies(posts: Iterable[Post]) -> list[Post]:
    """The same posts under new ids, so each model's copy is found on its own when read back."""
    return [dataclasses.replace(p, post_id=uuid.uuid4().hex) for p in posts]


class Stamps:
    """A delivery handler that notes, per post, when its callback ran and on which thread."""

    def __init__(self) -> None:
        self.at: dict[str, tuple[float, str]] = {}

    def on_delivery(self, post: Post, delivery: Any) -> None:
        self.at[post.post_id] = (time.perf_counter(), threading.current_thread().name)

    def on_failure(self, post: Post, error: BaseException) -> None:
        self.at[post.post_id] = (time.perf_counter(), f"failed: {type(error).__name__}")

    def thread_of(self, post: Post) -> str | None:
        """The thread that ran ``post``'s callback (None: no callback yet)."""
        return self.at.get(post.post_id, (None, None))[1]


async def loop_thread() -> str:
    """The thread the running event loop runs its callbacks on: read inside a callback the
    loop itself runs (``call_soon``), not assumed from where the caller happens to be."""
    loop = asyncio.get_running_loop()
    seen = loop.create_future()
    loop.call_soon(lambda: seen.set_result(threading.current_thread().name))
    return await seen


def _warm_up_post() -> Post:
    """The one post every model sends (and waits for) before its timed posts: the first
    send pays for connections and the producer id, the timed ones should not."""
    return Post(user_id="user-00000", text="warm-up")


def _producer(bootstrap: str, topic: str, client: str, extra: dict | None,
              handlers: Iterable[Any] = ()) -> AsyncPostProducer:
    return AsyncPostProducer(bootstrap, topic, client=client, handlers=list(handlers),
                             dlq_topic=None, **(extra or {}))


# --- a. the three models, one timeline --------------------------------------------------------
def _threaded_timeline(bootstrap: str, topic: str, posts: list[Post], client: str,
                       extra: dict | None) -> list[dict]:
    stamps = Stamps()
    submitted: list[float] = []
    with _producer(bootstrap, topic, client, extra, [stamps]) as producer:
        producer.submit(_warm_up_post()).result(WAIT_S)  # delivered before the timed posts
        producer.flush(WAIT_S)
        for post in posts:
            submitted.append(time.perf_counter())
            producer.submit(post)
        producer.flush(WAIT_S)
    t0 = submitted[0]
    rows = []
    for i, (post, sent) in enumerate(zip(posts, submitted, strict=True)):
        at, thread = stamps.at.get(post.post_id, (float("nan"), "no callback"))
        rows.append({"model": client, "i": i, "submitted_at_s": sent - t0,
                     "callback_at_s": at - t0, "callback_thread": thread,
                     "resumed_at_s": float("nan"), "resumed_thread": None})
    return rows


def _asyncio_timeline(bootstrap: str, topic: str, posts: list[Post], extra: dict | None,
                      batch: int) -> list[dict]:
    stamps = Stamps()
    producer = _producer(bootstrap, topic, "kafka-python", extra, [stamps])
    submitted: list[float] = [0.0] * len(posts)
    resumed: list[tuple[float, str]] = [(0.0, "")] * len(posts)

    async def one(i: int, post: Post) -> None:
        submitted[i] = time.perf_counter()
        await producer.asubmit(post)  # the lesson's line: no thread per call
        resumed[i] = (time.perf_counter(), threading.current_thread().name)

    async def all_posts() -> None:
        await producer.asubmit(_warm_up_post())  # delivered before the timed posts
        await asyncio.get_running_loop().run_in_executor(None, producer.flush, WAIT_S)
        for start in range(0, len(posts), batch):
            chunk = range(start, min(start + batch, len(posts)))
            await asyncio.wait_for(asyncio.gather(*(one(i, posts[i]) for i in chunk)), WAIT_S)

    try:
        run_in_loop_thread(all_posts, timeout=WAIT_S * (1 + len(posts) // batch))
    finally:
        producer.close(10)
    t0 = submitted[0]
    rows = []
    for i, post in enumerate(posts):
        at, thread = stamps.at.get(post.post_id, (float("nan"), "no callback"))
        rows.append({"model": "asyncio", "i": i, "submitted_at_s": submitted[i] - t0,
                     "callback_at_s": at - t0, "callback_thread": thread,
                     "resumed_at_s": resumed[i][0] - t0, "resumed_thread": resumed[i][1]})
    return rows


def callback_timeline(bootstrap: str, topic: str, posts: list[Post], extra: dict | None = None,
                      batch: int = 100) -> pd.DataFrame:
    """The same posts through the three models (asyncio: ``asubmit`` on the kafka-python
    producer, ``batch`` posts gathered at a time, on a loop thread of its own). Each model
    first delivers one warm-up post (connections, producer id), so that the timeline
    compares the models and not their cold starts.

    One row per post and model: ``submitted_at_s`` and ``callback_at_s`` (seconds since the
    model's first submit), ``callback_thread``; for asyncio also ``resumed_at_s`` and
    ``resumed_thread``, where the ``await`` came back."""
    rows = _threaded_timeline(bootstrap, topic, posts, "kafka-python", extra)
    rows += _threaded_timeline(bootstrap, topic, posts, "confluent", extra)
    rows += _asyncio_timeline(bootstrap, topic, posts, extra, batch)
    return pd.DataFrame(rows)


# --- b. a raw librdkafka producer that never polls ---------------------------------------------
def missing_poll(bootstrap: str, topic: str, n: int, queue_max: int = 100,
                 extra: dict | None = None, wait_s: float = 1.0,
                 read_back: ReadBack | None = None) -> pd.DataFrame:
    """A raw ``confluent_kafka.Producer`` with ``queue.buffering.max.messages=queue_max``
    produces ``n`` posts with ``on_delivery`` and never polls; ``wait_s`` later it tries one
    more ``produce()``; then ``flush()``. One row per phase: produce calls made in that
    phase, accepted, ``BufferError`` raised, ``first_buffer_error_at`` (the index, among
    *this phase's* produce calls, of the first one that raised), callbacks fired so far (and
    on which threads), and ``len_producer``: everything waiting in the producer (records not
    yet acked, reports not yet served, and callbacks of librdkafka's own waiting for
    ``poll()``: an error, a statistic, a log line). With ``read_back``, ``on_topic`` is how
    many of the accepted posts were read back from the topic during the pause (before any
    ``poll()`` or ``flush()``) and after ``flush()``."""
    ck = confluent_kafka()
    fired: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        fired.append(threading.current_thread().name)

    producer = ck.Producer(raw_config(bootstrap, extra, **{
        "queue.buffering.max.messages": queue_max, "linger.ms": 5}))
    rows: list[dict] = []

    def row(phase: str, calls: int, accepted: int, errors: int, first: int | None) -> None:
        rows.append({"phase": phase, "produce_calls": calls, "accepted": accepted,
                     "buffer_errors": errors, "first_buffer_error_at": first,
                     "callbacks": len(fired), "callback_threads": ",".join(sorted(set(fired))),
                     "len_producer": len(producer)})

    def on_topic() -> int | None:  # how many accepted posts the broker has (read back)
        return None if read_back is None else len(set(read_back(topic)) & set(kept))

    accepted, errors, first, kept = 0, 0, None, []
    for i, post in enumerate(Post(user_id=f"user-{i % 10:05d}", text=f"post {i}")
                             for i in range(n)):
        try:
            producer.produce(topic, post.to_json_bytes(), post.key_bytes(),
                             on_delivery=on_delivery)
            accepted += 1
            kept.append(post.post_id)
        except BufferError:  # "Local: Queue full": no poll() ever made room
            errors += 1
            first = i if first is None else first
    row("produce n, never poll()", n, accepted, errors, first)
    time.sleep(wait_s)  # the broker acks meanwhile; nobody serves the reports
    during_pause = on_topic()  # read by a consumer of its own: no poll() of this producer
    try:  # a record without a post_id: the read-back skips it
        producer.produce(topic, b"{}", b"user-00000", on_delivery=on_delivery)
        row(f"{wait_s:g} s later: one more produce()", 1, 1, 0, None)
    except BufferError:
        row(f"{wait_s:g} s later: one more produce()", 1, 0, 1, 0)  # call 0 of this phase
    rows[-1]["on_topic"] = during_pause
    producer.flush(WAIT_S)  # serves every report, on this (the calling) thread
    row("flush()", 0, 0, 0, None)
    rows[-1]["on_topic"] = on_topic()
    out = pd.DataFrame(rows)
    out["first_buffer_error_at"] = out["first_buffer_error_at"].astype("Int64")
    out["on_topic"] = out["on_topic"].astype("Int64")
    return out


# --- c. a send to a topic with no metadata ------------------------------------------------------
def _kafka_python_no_metadata(bootstrap: str, topic: str, max_block_ms: int,
                              extra: dict | None) -> dict:
    client = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=max_block_ms,
                           **(extra or {}))
    t0 = time.perf_counter()
    try:
        client.send(topic, b"{}", key=b"user-00001")
        raised = "nothing"
    except KafkaTimeoutError as exc:  # "Failed to update metadata after ..."
        raised = f"{type(exc).__name__} ({str(exc).split(': ', 1)[-1]})"
    blocked = time.perf_counter() - t0
    client.close(timeout=1)
    return {"client": "kafka-python", "call": f"send() (max_block_ms={max_block_ms})",
            "call_blocked_s": blocked, "call_raised": raised, "caller_thread":
            threading.current_thread().name, "report": None, "report_after_s": float("nan"),
            "report_thread": None}


def _confluent_no_metadata(bootstrap: str, topic: str, extra: dict | None,
                           propagation_ms: int, timeout_ms: int) -> dict:
    ck = confluent_kafka()
    reports: list[tuple[float, str, str]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        reports.append((time.perf_counter(), err.name() if err else "delivered",
                        threading.current_thread().name))

    producer = ck.Producer(raw_config(bootstrap, extra, **{
        "topic.metadata.propagation.max.ms": propagation_ms,
        "message.timeout.ms": timeout_ms}))
    t0 = time.perf_counter()
    producer.produce(topic, b"{}", b"user-00001", on_delivery=on_delivery)
    blocked = time.perf_counter() - t0
    deadline = t0 + timeout_ms / 1000 + 10
    while not reports and time.perf_counter() < deadline:  # the poll loop serves the report
        producer.poll(0.1)
    producer.flush(1)
    at, name, thread = reports[0] if reports else (float("nan"), "no report in time", None)
    return {"client": "confluent", "call": "produce()", "call_blocked_s": blocked,
            "call_raised": "nothing", "caller_thread": threading.current_thread().name,
            "report": name, "report_after_s": at - t0, "report_thread": thread}


def send_with_no_metadata(bootstrap: str, max_block_ms: int = 2000, extra: dict | None = None,
                          propagation_ms: int = 1000, timeout_ms: int = 3000) -> pd.DataFrame:
    """A send to a topic that does not exist (the lab's brokers create none on first use).
    kafka-python's ``send()`` blocks the caller up to ``max_block_ms`` waiting for metadata,
    then raises ``KafkaTimeoutError``; confluent's ``produce()`` returns at once and the error
    comes later, in the delivery report (``topic.metadata.propagation.max.ms`` and
    ``message.timeout.ms`` made small, so it comes within seconds)."""
    topic = f"lab.no-such-topic.{uuid.uuid4().hex[:8]}"
    return pd.DataFrame([
        _kafka_python_no_metadata(bootstrap, topic, max_block_ms, extra),
        _confluent_no_metadata(bootstrap, topic, extra, propagation_ms, timeout_ms)])


# --- d. dropping a producer without flush() -----------------------------------------------------
def _numbered(prefix: str, n: int) -> list[Post]:
    return [Post(user_id=f"user-{i % 10:05d}", text=f"{prefix} {i}",
                 post_id=f"{prefix}-{uuid.uuid4().hex}") for i in range(n)]


class _Counter:
    """A delivery callback that only counts the reports it is given (success or error)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *_outcome: Any) -> None:
        self.n += 1


def _confluent_drop(bootstrap: str, topic: str, posts: list[Post], flush: bool,
                    linger_ms: int, extra: dict | None) -> tuple[int, int]:
    reports = _Counter()  # on_delivery for every record: would anyone be told?
    producer = confluent_kafka().Producer(raw_config(bootstrap, extra, **{
        "linger.ms": linger_ms, "on_delivery": reports}))
    for post in posts:
        producer.produce(topic, post.to_json_bytes(), post.key_bytes())
    held = len(producer)
    if flush:
        producer.flush(WAIT_S)
    del producer  # the last reference: librdkafka's destroy runs now
    gc.collect()
    return held, reports.n


def _kafka_python_close(bootstrap: str, topic: str, posts: list[Post], linger_ms: int,
                        extra: dict | None) -> tuple[int, int]:
    reports = _Counter()  # a callback and errback on every future
    client = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, **(extra or {}))
    client.partitions_for(topic)  # metadata first: send() must not wait for it here
    futures = [client.send(topic, post.to_json_bytes(), key=post.key_bytes()).add_both(reports)
               for post in posts]
    held = sum(not f.is_done for f in futures)
    client.close()  # flushes first (a timeout that passes raises KafkaTimeoutError)
    return held, reports.n


def close_without_flush(bootstrap: str, topic: str, n: int, read_back: ReadBack,
                        extra: dict | None = None, linger_ms: int = 2000) -> pd.DataFrame:
    """``n`` posts per variant, held in the client by ``linger_ms``, then the producer ends:
    confluent dropped without / after ``flush()``; kafka-python ``close()`` (it flushes: in
    3.0 every ``close`` does, and raises ``KafkaTimeoutError`` if its timeout passes first).
    ``held_before_end``: records still in the client just before it ended (so each variant
    ended with posts to lose); ``reports``: delivery reports the program was given (a
    counting ``on_delivery`` / future callback on every record), by the time the producer
    was gone; ``delivered`` / ``lost`` come from reading ``topic`` back."""
    variants = {
        "confluent: del, no flush()": lambda ps: _confluent_drop(
            bootstrap, topic, ps, False, linger_ms, extra),
        "confluent: flush(), then del": lambda ps: _confluent_drop(
            bootstrap, topic, ps, True, linger_ms, extra),
        "kafka-python: close()": lambda ps: _kafka_python_close(
            bootstrap, topic, ps, linger_ms, extra),
    }
    sent: dict[str, tuple[list[Post], int, int, float]] = {}
    for i, (name, run) in enumerate(variants.items()):
        posts = _numbered(f"v{i}", n)
        t0 = time.perf_counter()
        held, reports = run(posts)
        sent[name] = (posts, held, reports, time.perf_counter() - t0)
    landed = set(read_back(topic))
    rows = []
    for name, (posts, held, reports, took) in sent.items():
        delivered = sum(p.post_id in landed for p in posts)
        rows.append({"variant": name, "accepted": len(posts), "held_before_end": held,
                     "end_took_s": took, "reports": reports, "delivered": delivered,
                     "lost": len(posts) - delivered})
    return pd.DataFrame(rows)


# --- e. what each model costs per post ----------------------------------------------------------
def _threaded_cost(bootstrap: str, topic: str, posts: list[Post], client: str,
                   extra: dict | None) -> dict:
    with _producer(bootstrap, topic, client, extra) as producer:
        producer.submit(_warm_up_post()).result(WAIT_S)
        cpu = CpuMeter().start()
        t0 = time.perf_counter()
        for post in posts:
            producer.submit(post)
        producer.flush(WAIT_S)
        elapsed = time.perf_counter() - t0
        return {"model": client, "posts": len(posts), "seconds": elapsed,
                "posts_per_s": len(posts) / elapsed, **cpu.fields(len(posts), elapsed)}


def _asyncio_cost(bootstrap: str, topic: str, posts: list[Post], extra: dict | None,
                  batch: int) -> dict:
    producer = _producer(bootstrap, topic, "kafka-python", extra)

    async def measure() -> dict:
        await producer.asubmit(_warm_up_post())
        cpu = CpuMeter().start()  # on the loop's thread: the caller, here
        t0 = time.perf_counter()
        for start in range(0, len(posts), batch):
            await asyncio.wait_for(asyncio.gather(
                *(producer.asubmit(p) for p in posts[start:start + batch])), WAIT_S)
        elapsed = time.perf_counter() - t0
        return {"model": "asyncio", "posts": len(posts), "seconds": elapsed,
                "posts_per_s": len(posts) / elapsed, **cpu.fields(len(posts), elapsed)}

    try:
        return run_in_loop_thread(measure, timeout=WAIT_S * (2 + len(posts) // batch))
    finally:
        producer.close(10)


def cost_per_model(bootstrap: str, topic: str, posts: list[Post], read_back: ReadBack,
                   extra: dict | None = None, batch: int = 500) -> pd.DataFrame:
    """The same posts (fresh ids per model) through each model: ``posts_per_s`` and CPU µs
    per post, the caller's thread vs the background (:class:`~lab_kit.metrics.CpuMeter`);
    ``delivered`` / ``lost`` by reading ``topic`` back. asyncio gathers ``batch`` posts at a
    time (the other two submit without waiting at all)."""
    rows, copies = [], {}
    for model in MODELS:
        copies[model] = fresh_copies(posts)
        if model == "asyncio":
            rows.append(_asyncio_cost(bootstrap, topic, copies[model], extra, batch))
        else:
            rows.append(_threaded_cost(bootstrap, topic, copies[model], model, extra))
    landed = set(read_back(topic))
    for row in rows:
        delivered = sum(p.post_id in landed for p in copies[row["model"]])
        row.update(delivered=delivered, lost=row["posts"] - delivered)
    return pd.DataFrame(rows).set_index("model")


# --- f. confluent-kafka's own AIOProducer -------------------------------------------------------
async def _aio_run(bootstrap: str, topic: str, posts: list[Post], buffer_timeout: float,
                   extra: dict | None) -> dict:
    # imported on use: confluent_kafka.aio exists from confluent-kafka 2.13 on
    from confluent_kafka.aio import AIOProducer

    producer = AIOProducer(raw_config(bootstrap, extra), buffer_timeout=buffer_timeout)
    try:
        latencies = []

        async def one(post: Post) -> None:
            t0 = time.perf_counter()
            delivered = await producer.produce(topic, post.to_json_bytes(), post.key_bytes())
            await delivered  # produce() returns a future: the delivery, once its batch went
            latencies.append(time.perf_counter() - t0)

        await asyncio.wait_for(asyncio.gather(*(one(p) for p in posts)),
                               buffer_timeout + WAIT_S)
        try:
            await producer.produce(topic, b"{}", b"user-00000", headers=[("trace", b"1")])
            headers = "accepted"
        except NotImplementedError as exc:
            headers = f"NotImplementedError: {str(exc).split('.')[0]}"
        return {"latencies": latencies, "headers": headers}
    finally:
        await producer.close()


def aio_producer_batching(bootstrap: str, topic: str, posts: list[Post],
                          buffer_timeout: float = 1.0, extra: dict | None = None
                          ) -> pd.DataFrame:
    """confluent-kafka's ``AIOProducer`` (``confluent_kafka.aio``) next to ``asubmit`` on
    the lab's producer, with fewer posts than its ``batch_size`` (1000 by default): its
    buffer goes out every ``buffer_timeout`` seconds. Per model: ack latency percentiles
    and what a ``produce()`` with headers does."""
    aio = run_in_loop_thread(lambda: _aio_run(bootstrap, topic, fresh_copies(posts),
                                              buffer_timeout, extra))
    lab = _producer(bootstrap, topic, "kafka-python", extra)
    latencies: list[float] = []

    async def one(post: Post) -> None:
        t0 = time.perf_counter()
        await lab.asubmit(post)
        latencies.append(time.perf_counter() - t0)

    async def all_posts() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(p) for p in fresh_copies(posts))), WAIT_S)

    try:
        run_in_loop_thread(all_posts)
    finally:
        lab.close(10)
    rows = []
    for model, lat, headers in (
            (f"AIOProducer (buffer_timeout={buffer_timeout:g})", aio["latencies"],
             aio["headers"]),
            ("asubmit (kafka-python)", latencies, "not tried")):
        s = pd.Series(lat) * 1000
        rows.append({"model": model, "posts": len(lat), "ack_p50_ms": s.quantile(0.5),
                     "ack_p99_ms": s.quantile(0.99), "headers": headers})
    return pd.DataFrame(rows).set_index("model")
