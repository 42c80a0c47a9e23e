"""Exercises of notebook 11 (where does my callback run?).

* ``q1`` (live): ``serve_reports(producer, topic, posts)`` with a raw librdkafka producer whose
  queue is small: handle ``BufferError`` by polling, then flush; every post delivered, and
  reported, once. The student's function runs under a time limit (:func:`_serve_within`):
  a loop that retries without ``poll()`` would otherwise never end.
* ``q2`` (live): ``to_awaitable(post_future, loop)``: a ``PostFuture`` as an
  ``asyncio.Future``, completed with ``call_soon_threadsafe`` from the sender thread, with
  the post's ``Delivery`` or, for a post that failed, its exception (:func:`_failing_post_case`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from typing import Any

from kafka.errors import KafkaTimeoutError

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.harness.readback import post_ids_in
from lab_kit.posts import Post, Workload
from lab_kit.producer import AsyncPostProducer, DeliveryFailed, PostFuture
from lab_kit.producer.client_models import LOOP_THREAD, raw_config, run_in_loop_thread
from lab_kit.topics import ensure_topics

# --- q1: a produce loop that serves its own delivery reports ---------------------------------

QUEUE_MAX = 20  # the check's producer: queue.buffering.max.messages (a setting)
N_POSTS = 200
TIME_LIMIT_S = 20.0  # the student's function is stopped after this (a limit of the check)
GRACE_S = 10.0  # ... and given up on this much later if it calls the producer no more


class _TimeUp(BaseException):
    """Raised into the student's code by the check's producer once the time limit passed (a
    BaseException: ``except BufferError`` or ``except Exception`` in a loop does not eat it)."""


@functools.cache
def _timed_producer_class() -> type:
    # imported on use: the offline exercises of the lab need no confluent-kafka
    from confluent_kafka import Producer

    class TimedProducer(Producer):
        """A raw ``confluent_kafka.Producer`` (a subclass: the student's code gets a real one)
        whose ``produce()``, ``poll()`` and ``flush()`` raise :class:`_TimeUp` once
        ``deadline`` (``time.monotonic()``) has passed. It counts the BufferErrors it
        raised and the calls that serve reports, to say why a loop never ended."""

        deadline = math.inf
        buffer_errors = 0
        serves = 0  # poll() and flush() calls: each serves delivery reports

        def _in_time(self) -> None:
            if time.monotonic() > self.deadline:
                raise _TimeUp

        def produce(self, *args: Any, **kwargs: Any) -> None:
            self._in_time()
            try:
                return super().produce(*args, **kwargs)
            except BufferError:
                self.buffer_errors += 1
                raise

        def poll(self, *args: Any, **kwargs: Any) -> int:
            self._in_time()
            self.serves += 1
            return super().poll(*args, **kwargs)

        def flush(self, *args: Any, **kwargs: Any) -> int:
            self._in_time()
            self.serves += 1
            return super().flush(*args, **kwargs)

        def clean_up(self, timeout: float) -> int:
            """The check's own ``flush()``, past any deadline."""
            return super().flush(timeout)

    return TimedProducer


def _serve_within(serve_reports: Any, producer: Any, topic: str, posts: list, limit_s: float,
                  case: str) -> None:
    """Run ``serve_reports(producer, topic, posts)`` on a thread of its own, with ``producer``
    (a :func:`_timed_producer_class`) stopping it after ``limit_s``. Raises
    :class:`CaseFailed` for a loop that never ended or a ``BufferError`` that escaped, and
    re-raises anything else the function raised (``NotImplementedError``: no answer yet)."""
    out: dict[str, BaseException] = {}

    def run() -> None:
        try:
            serve_reports(producer, topic, posts)
        except BaseException as exc:  # noqa: BLE001 - judged on the checker's thread
            out["error"] = exc

    producer.deadline = time.monotonic() + limit_s
    worker = threading.Thread(target=run, name="lab-check-serve-reports", daemon=True)
    worker.start()
    worker.join(limit_s + GRACE_S)
    if worker.is_alive():
        raise CaseFailed(case, f"your function had not returned after {limit_s + GRACE_S:g} s "
                               "(a limit of the check) and no longer calls produce(), poll() "
                               "or flush(): look for a loop that never ends")
    error = out.get("error")
    if isinstance(error, _TimeUp):
        if producer.buffer_errors and not producer.serves:
            raise CaseFailed(case, "your loop never served reports: BufferError forever "
                                   f"({producer.buffer_errors} times in {limit_s:g} s, a limit "
                                   "of the check) and not one poll(); call poll() in the except "
                                   "so that reports are served and the queue makes room")
        raise CaseFailed(case, f"your function was still running after {limit_s:g} s (a limit "
                               f"of the check; BufferError {producer.buffer_errors} times, "
                               f"poll()/flush() {producer.serves} times): every post should "
                               "take one produce(), or a few when the queue is full")
    if isinstance(error, BufferError):
        raise CaseFailed(case, f"BufferError escaped your function ({error}): the queue is "
                               "full of reports nobody served")
    if error is not None:
        raise error


class _Reports:
    """The check's default delivery callback (``on_delivery`` in the config): counts reports
    and their errors; the student's code never sees it."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is None:
            self.ok += 1
        else:
            self.errors.append(err.name())


def _check_serve_reports(serve_reports: Any, *, lab: Any) -> int:
    topic = f"lab.ex.reports.{time.time_ns() % 10**9}"
    ensure_topics(lab.client_config, names=(topic,), partitions={topic: 3})
    reports = _Reports()
    producer = _timed_producer_class()(raw_config(lab.bootstrap_servers, lab.extra, **{
        "queue.buffering.max.messages": QUEUE_MAX, "on_delivery": reports}))
    posts = Workload(seed=111).posts(N_POSTS)
    case = f"{N_POSTS} posts, a local queue of {QUEUE_MAX}"
    try:
        _serve_within(serve_reports, producer, topic, posts, TIME_LIMIT_S, case)
    finally:
        left = len(producer)
        producer.clean_up(30)  # the check's own flush: nothing stays behind
    if left:
        raise CaseFailed(case, f"{left} records were still in the producer when your function "
                               "returned: flush() before you return")
    if reports.errors:
        raise CaseFailed(case, f"delivery reports with errors: {reports.errors[:3]}")
    landed = set(post_ids_in(lab.client_config, topic, timeout_s=30))
    missing = [p.post_id for p in posts if p.post_id not in landed]
    if missing:
        raise CaseFailed(case, f"{len(missing)} of {N_POSTS} posts never landed in the topic "
                               "(read back): a post that met BufferError must be produced "
                               "again, not dropped")
    if reports.ok != N_POSTS:  # the check's on_delivery (in the config) counted them
        raise CaseFailed(case, f"{reports.ok} delivery reports for {N_POSTS} posts: produce "
                               "each post once, again only after a BufferError (and leave "
                               "on_delivery out of produce(): the check's callback counts)")
    return 1


def _solution_q1(producer, topic, posts):
    for post in posts:
        while True:
            try:
                producer.produce(topic, post.to_json_bytes(), post.key_bytes())
                break
            except BufferError:  # the queue is full of served-by-nobody reports
                producer.poll(0.1)  # serve some (callbacks run here), making room; retry
        producer.poll(0)  # serve whatever is ready, without waiting
    producer.flush(30)  # the rest: sent, acked, reported


def _wrong_q1_never_polls(producer, topic, posts):
    for post in posts:
        producer.produce(topic, post.to_json_bytes(), post.key_bytes())
    producer.flush(30)


def _wrong_q1_drops(producer, topic, posts):
    for post in posts:
        try:
            producer.produce(topic, post.to_json_bytes(), post.key_bytes())
        except BufferError:
            producer.poll(0.1)  # makes room, but this post is gone
    producer.flush(30)


def _wrong_q1_retries_without_poll(producer, topic, posts):
    for post in posts:
        while True:
            try:
                producer.produce(topic, post.to_json_bytes(), post.key_bytes())
                break
            except BufferError:
                pass  # nothing serves a report, so nothing ever makes room: forever
    producer.flush(30)


def _wrong_q1_sends_twice(producer, topic, posts):
    for post in posts:
        while True:
            try:
                producer.produce(topic, post.to_json_bytes(), post.key_bytes())
                producer.produce(topic, post.to_json_bytes(), post.key_bytes())  # "to be safe"
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(30)


def _wrong_q1_no_flush(producer, topic, posts):
    for post in posts:
        while True:
            try:
                producer.produce(topic, post.to_json_bytes(), post.key_bytes())
                break
            except BufferError:
                producer.poll(0.1)


q1 = Exercise(
    name="11.q1 serve your own delivery reports",
    task="serve_reports(producer, topic, posts): produce every post with a raw confluent "
         "Producer whose queue holds 20 records; on BufferError poll() and produce it again; "
         "flush() before returning",
    checker=_check_serve_reports,
    hint_text="wrap produce() in try/except BufferError; in the except, producer.poll(0.1) "
              "serves reports (and frees their places), then try the same post again; end "
              "with producer.flush(30)",
    solution_obj=_solution_q1,
    wrong=(_wrong_q1_never_polls, _wrong_q1_drops, _wrong_q1_no_flush,
           _wrong_q1_retries_without_poll, _wrong_q1_sends_twice), needs_broker=True)


# --- q2: a PostFuture as an asyncio.Future ---------------------------------------------------

N_AWAITED = 20
WAKE_TIMEOUT_S = 5.0  # far longer than an ack on the lab's broker takes (a limit)


async def _await_all(to_awaitable: Any, producer: AsyncPostProducer, posts: list) -> dict:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)  # call_soon from another thread raises, instead of working by luck
    pfs = [producer.submit(p) for p in posts]
    futs = [to_awaitable(pf, loop) for pf in pfs]
    done_on_return = sum(pf.done() for pf in pfs)
    if not all(isinstance(f, asyncio.Future) for f in futs):
        return {"not_future": repr(futs[0])}
    woken: list[int] = []  # the loop runs a future's callbacks only if it was woken for them
    for f in futs:
        f.add_done_callback(lambda _f: woken.append(1))
    await asyncio.wait(futs, timeout=WAKE_TIMEOUT_S)
    if len(woken) < len(futs):
        return {"timeout": len(futs) - len(woken), "done_on_return": done_on_return}
    results = [f.result() for f in futs]
    # a future that is done already: to_awaitable must still give an answer
    again = await asyncio.wait_for(to_awaitable(pfs[0], loop), 5)
    return {"results": results, "again": again, "done_on_return": done_on_return,
            "thread": threading.current_thread().name}


async def _await_failed(to_awaitable: Any) -> dict:
    """One post that fails: its ``PostFuture`` settles with ``DeliveryFailed`` on a thread of
    its own (as the client's callback thread would settle it), after ``to_awaitable``
    returned; the loop is in debug mode, and errors raised in its callbacks are kept."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop_errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(
        f"{type(ctx.get('exception')).__name__} in a callback on the loop"
        if ctx.get("exception") else ctx.get("message", "")))
    post = Post(user_id="user-00112", text="a post that fails")
    pf = PostFuture(post, time.perf_counter())
    error = DeliveryFailed(post.post_id, KafkaTimeoutError("the check's own failure"))
    failer = threading.Timer(0.05, pf.set_exception, [error])  # soon after the call below
    failer.name = "lab-check-failer"
    failer.start()
    try:
        fut = to_awaitable(pf, loop)
    finally:
        failer.join()  # pf is failed by now (a blocking answer saw it raise)
    if not isinstance(fut, asyncio.Future):
        return {"not_future": repr(fut)}
    done, _ = await asyncio.wait([fut], timeout=WAKE_TIMEOUT_S)
    if not done:
        return {"timeout": True, "loop_errors": loop_errors}
    if fut.cancelled():
        return {"cancelled": True}
    exc = fut.exception()
    return {"exception": exc, "result": None if exc else fut.result(), "expected": error}


def _failing_post_case(to_awaitable: Any) -> None:
    """The case of a post that fails: the awaited future must raise the post's own exception.
    Needs no broker (a ``PostFuture`` failed by the check); raises :class:`CaseFailed`."""
    case = "a post that fails (DeliveryFailed)"
    out = run_in_loop_thread(lambda: _await_failed(to_awaitable), 30)
    if "not_future" in out:
        raise CaseFailed(case, f"to_awaitable returned {out['not_future']}, not an "
                               "asyncio.Future (loop.create_future())")
    if "timeout" in out:
        seen = f" ({out['loop_errors'][0]})" if out["loop_errors"] else ""
        raise CaseFailed(case, f"the await never came back{seen}: for a failed post "
                               "pf.result(0) raises; check pf.exception(0) and settle the "
                               "future with fut.set_exception(...)")
    if "cancelled" in out:
        raise CaseFailed(case, "the future was cancelled: set the post's exception on it")
    if out["exception"] is None:
        raise CaseFailed(case, f"the await gave {out['result']!r} for a post that failed: it "
                               "must raise the post's exception (fut.set_exception)")
    if out["exception"] is not out["expected"]:
        raise CaseFailed(case, f"the await raised {type(out['exception']).__name__}: "
                               f"{out['exception']}, not the post's own DeliveryFailed "
                               "(pf.exception(0))")


def _check_to_awaitable(to_awaitable: Any, *, lab: Any) -> int:
    posts = Workload(seed=112).posts(N_AWAITED)
    # linger_ms: the acks come after to_awaitable returned, unless it waited for them
    producer = AsyncPostProducer(lab.bootstrap_servers, "posts", linger_ms=200,
                                 dlq_topic=None, **lab.extra)
    try:
        out = run_in_loop_thread(lambda: _await_all(to_awaitable, producer, posts), 60)
    finally:
        producer.close(10)
    case = f"{N_AWAITED} posts submitted, then awaited"
    if "not_future" in out:
        raise CaseFailed(case, f"to_awaitable returned {out['not_future']}, not an "
                               "asyncio.Future (loop.create_future())")
    if out["done_on_return"]:
        raise CaseFailed(case, "the posts were acked before to_awaitable returned: it waited "
                               "for them (result()?) and blocked the event loop meanwhile")
    if "timeout" in out:
        raise CaseFailed(case, "the await never came back: the result was set on the sender "
                               "thread, so the loop was never woken (asyncio futures are not "
                               "thread-safe); hand it over with loop.call_soon_threadsafe")
    outcomes = [getattr(d, "outcome", d) for d in out["results"]]
    if outcomes != ["acked"] * N_AWAITED:
        raise CaseFailed(case, f"awaited {outcomes[:2]}..., expected the Delivery of each post "
                               "(outcome 'acked')")
    if getattr(out["again"], "outcome", None) != "acked":
        raise CaseFailed("a PostFuture that is done already", f"got {out['again']!r}")
    _failing_post_case(to_awaitable)
    return 3


def _solution_q2(post_future, loop):
    fut = loop.create_future()

    def settle(pf):  # on the loop's thread: asyncio futures are not thread-safe
        if fut.cancelled():
            return
        if pf.exception(0) is not None:
            fut.set_exception(pf.exception(0))
        else:
            fut.set_result(pf.result(0))

    # runs on the thread that completes post_future (the sender thread): hand over, return
    post_future.add_done_callback(lambda pf: loop.call_soon_threadsafe(settle, pf))
    return fut


def _wrong_q2_sets_from_sender(post_future, loop):
    fut = loop.create_future()
    post_future.add_done_callback(lambda pf: fut.set_result(pf.result(0)))
    return fut


def _wrong_q2_result_only(post_future, loop):
    fut = loop.create_future()
    # a failed post: pf.result(0) raises on the loop, and fut never completes
    post_future.add_done_callback(
        lambda pf: loop.call_soon_threadsafe(lambda: fut.set_result(pf.result(0))))
    return fut


def _wrong_q2_blocks(post_future, loop):
    fut = loop.create_future()
    fut.set_result(post_future.result(10))  # waits for the ack on the loop's thread
    return fut


q2 = Exercise(
    name="11.q2 a PostFuture as an asyncio.Future",
    task="to_awaitable(post_future, loop) returns an asyncio.Future of loop that completes "
         "with the post's Delivery, or fails with the post's exception, set on the loop's "
         "thread",
    checker=_check_to_awaitable,
    hint_text="fut = loop.create_future(); post_future.add_done_callback(lambda pf: "
              "loop.call_soon_threadsafe(settle, pf)); settle sets fut's result from "
              "pf.result(0) (or its exception), on the loop",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_sets_from_sender, _wrong_q2_blocks, _wrong_q2_result_only),
    needs_broker=True)


recap = Quiz("11 recap", [
    Question("With kafka-python, which thread runs a delivery callback?",
             {"a": "the thread that called send()", "b": "the client's sender thread",
              "c": "a thread of the event loop"}, "b",
             "kafka-python's sender thread does the network I/O and runs every callback."),
    Question("A raw confluent_kafka.Producer never calls poll(). What happens?",
             {"a": "callbacks run on librdkafka's own threads anyway",
              "b": "no callback runs; its queue fills with unserved reports until produce() "
                   "raises BufferError",
              "c": "produce() blocks until there is room"}, "b",
             "Reports are served only inside poll()/flush(), on the thread calling them; a "
             "record leaves the queue only once its report is served."),
    Question(f"An `await producer.asubmit(post)` in a coroutine on thread {LOOP_THREAD!r}: "
             "where does the coroutine resume?",
             {"a": "on the sender thread", "b": f"on {LOOP_THREAD!r}, the loop's thread",
              "c": "on a thread of the loop's executor"}, "b",
             "The sender thread only calls loop.call_soon_threadsafe; the loop sets the result "
             "and resumes the coroutine on its own thread."),
    Question("kafka-python's send() to a topic the broker does not have (no auto-create):",
             {"a": "returns a future that fails later",
              "b": "blocks the caller up to max_block_ms, then raises KafkaTimeoutError",
              "c": "creates the topic"}, "b",
             "send() waits for the topic's metadata in the caller's thread; librdkafka's "
             "produce() returns at once and reports the error later."),
    Question("A confluent Producer holding records (linger.ms) is dropped without flush():",
             {"a": "librdkafka sends them first", "b": "they are lost",
              "c": "they are written to disk"}, "b",
             "Destroying the client drops what it still holds: flush() (or the lab's close()) "
             "before a producer goes away."),
])

EXERCISES = [q1, q2]
