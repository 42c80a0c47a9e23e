"""Exercises of notebook 09 (the user's side: an asyncio HTTP API).

Both are checked offline. q1 runs the student's ``async def handle(body, submit)`` on an event
loop of its own (in a thread: a notebook's cell already runs inside one), with ``submit``
returning the producer's real :class:`~lab_kit.producer.future.PostFuture`, completed later by
a "sender" thread, as kafka-python's sender thread does; it also records any call into the
loop from that thread (a future completed without ``call_soon_threadsafe``). q2 is a retry
decision for the API's client.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from typing import Any

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.posts import Post
from lab_kit.producer import DeliveryFailed
from lab_kit.producer.client_models import run_in_loop_thread
from lab_kit.producer.future import Delivery, PostFuture

# --- q1: an asyncio handler that awaits the ack without blocking the loop ----------------------

ACK_AFTER_S = 0.2  # the fake broker acks each post this long after submit()
N_AT_ONCE = 12  # requests the check sends at once
FAIL_TEXT = "this post will fail"


class _FakeProducer:
    """``submit(post)`` returns a PostFuture at once; a sender thread settles it
    ``ACK_AFTER_S`` later (acked, or failed for a post whose text is ``FAIL_TEXT``)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._sender = threading.Thread(target=self._run, name="fake-sender", daemon=True)
        self._sender.start()

    def submit(self, post: Any) -> PostFuture:
        if not isinstance(post, Post):
            raise TypeError(f"submit() takes the Post validate_post returned, got "
                            f"{type(post).__name__}")
        pf = PostFuture(post, time.perf_counter())
        with self._lock:
            self.submitted.append(post.post_id)
            self.offsets[post.post_id] = offset = len(self.submitted) - 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._queue.put((pf, offset))
        return pf

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pf, offset = item
            time.sleep(max(0.0, pf.intended_at + ACK_AFTER_S - time.perf_counter()))
            with self._lock:
                self.in_flight -= 1
            if pf.post.text == FAIL_TEXT:
                pf.set_exception(DeliveryFailed(pf.post_id, TimeoutError("no ack in time")))
            else:
                pf.set_result(Delivery(pf.post_id, "acked", "posts", offset % 6, offset))

    def close(self) -> None:
        self._queue.put(None)


async def _heartbeat(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


def _watch_foreign_threads(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Record every ``loop.call_soon`` made from a thread other than the loop's: that is what
    ``fut.set_result`` does when a sender thread completes an asyncio future directly (not
    thread-safe; ``call_soon_threadsafe`` takes another path and is not recorded)."""
    loop_thread, foreign, call_soon = threading.get_ident(), [], loop.call_soon

    def watched(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        if threading.get_ident() != loop_thread:
            foreign.append(threading.current_thread().name)
        return call_soon(callback, *args, context=context)

    loop.call_soon = watched  # type: ignore[method-assign]
    return foreign


async def _exercise(handle: Any, fake: _FakeProducer) -> dict[str, Any]:
    foreign = _watch_foreign_threads(asyncio.get_running_loop())
    bad = [await handle({"text": "no author"}, fake.submit),
           await handle({"user_id": "user-00001", "text": "x" * 6000}, fake.submit)]
    submitted_by_bad = len(fake.submitted)
    gaps: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(gaps, stop))
    bodies = [{"user_id": f"user-{i:05d}", "text": f"post number {i}"} for i in range(N_AT_ONCE)]
    t0 = time.perf_counter()
    good = await asyncio.wait_for(asyncio.gather(*(handle(b, fake.submit) for b in bodies)),
                                  timeout=N_AT_ONCE * ACK_AFTER_S + 10)
    elapsed = time.perf_counter() - t0
    stop.set()
    await beat
    failed = await asyncio.wait_for(
        handle({"user_id": "user-00099", "text": FAIL_TEXT}, fake.submit), timeout=10)
    return {"bad": bad, "submitted_by_bad": submitted_by_bad, "good": good,
            "elapsed": elapsed, "max_gap": max(gaps, default=0.0), "failed": failed,
            "foreign": list(foreign)}


def _run_in_own_loop(coro_fn: Any) -> Any:
    """asyncio.run in a thread: a notebook cell runs inside the kernel's own event loop."""
    try:
        return run_in_loop_thread(coro_fn, timeout=N_AT_ONCE * ACK_AFTER_S + 30)
    except TimeoutError as exc:
        raise CaseFailed("12 posts at once", "your handler did not return within 30 s") from exc


def _pair(got: Any, case: str) -> tuple[int, dict]:
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], dict)):
        raise CaseFailed(case, f"return (status, dict), got {got!r}")
    return got


def _check_handler(handle: Any) -> int:
    if not inspect.iscoroutinefunction(handle):
        raise CaseFailed("async def", "handle must be a coroutine function (async def)")
    fake = _FakeProducer()
    try:
        r = _run_in_own_loop(lambda: _exercise(handle, fake))
    finally:
        fake.close()
    for got, field in zip(r["bad"], ("user_id", "text"), strict=True):
        status, body = _pair(got, f"a post with a bad {field}")
        if status != 422 or body.get("field") != field or "error" not in body:
            raise CaseFailed(f"a post with a bad {field}",
                             f"you answered {got!r}, expected (422, {{'field': '{field}', "
                             f"'error': ...}})")
    if r["submitted_by_bad"]:
        raise CaseFailed("bad posts", "an invalid post reached submit(): validate first")
    if fake.max_in_flight < N_AT_ONCE * 2 // 3:
        raise CaseFailed(f"{N_AT_ONCE} posts at once",
                         f"only {fake.max_in_flight} of {N_AT_ONCE} posts were waiting for "
                         f"their ack at the same time, and the event loop stood still for "
                         f"{r['max_gap'] * 1000:.0f} ms: your handler blocks the loop while it "
                         f"waits ({r['elapsed']:.1f} s for what takes {ACK_AFTER_S:g} s when the "
                         f"waits overlap)")
    for i, got in enumerate(r["good"]):
        status, body = _pair(got, f"post {i}")
        pid = body.get("post_id")
        if status != 201 or pid not in fake.offsets or body.get("offset") != fake.offsets[pid] \
                or body.get("partition") != fake.offsets[pid] % 6:
            raise CaseFailed(f"post {i} (acked)", f"you answered {got!r}, expected (201, "
                                                  f"{{'post_id', 'partition', 'offset'}}) from "
                                                  f"the Delivery")
    if r["foreign"]:
        raise CaseFailed("which thread completes the asyncio future",
                         f"the event loop was called from the thread {r['foreign'][0]!r}, not "
                         f"its own: an asyncio future's set_result/set_exception must run on "
                         f"the loop's thread; from the producer's callback, hand it over with "
                         f"loop.call_soon_threadsafe (section 3)")
    status, body = _pair(r["failed"], "a post whose delivery failed")
    if status != 502 or "error" not in body:
        raise CaseFailed("a post whose delivery failed",
                         f"you answered {r['failed']!r}, expected (502, {{'error': ...}})")
    return 2 + N_AT_ONCE + 1


async def _solution_q1(body, submit):
    # imports inside: solution() shows this function's source, and it must run as shown
    import asyncio

    from lab_kit.posts import PostValidationError, validate_post  # (same reason)

    try:
        post = validate_post(body)  # on the loop: quick, no I/O
    except PostValidationError as exc:
        return 422, {"error": str(exc), "field": exc.field}
    pf = submit(post)  # returns at once; the ack comes on the sender thread
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(done):  # on the loop's thread
        if not fut.cancelled():
            exc = done.exception(0)
            fut.set_exception(exc) if exc else fut.set_result(done.result(0))

    pf.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
    try:
        d = await fut  # the loop serves other requests meanwhile
    except Exception as exc:  # noqa: BLE001 - the delivery failed
        return 502, {"error": str(exc)}
    return 201, {"post_id": d.post_id, "partition": d.partition, "offset": d.offset}


async def _wrong_q1_blocks(body, submit):
    from lab_kit.posts import PostValidationError, validate_post  # as a student would write it

    try:
        post = validate_post(body)
    except PostValidationError as exc:
        return 422, {"error": str(exc), "field": exc.field}
    try:
        d = submit(post).result(timeout=5)  # THE MISTAKE: blocks the event loop
    except Exception as exc:  # noqa: BLE001
        return 502, {"error": str(exc)}
    return 201, {"post_id": d.post_id, "partition": d.partition, "offset": d.offset}


async def _wrong_q1_no_validation(body, submit):
    from lab_kit.posts import Post  # as a student would write it

    post = Post(user_id=str(body.get("user_id")), text=str(body.get("text")))  # unchecked
    try:
        d = await asyncio.to_thread(submit(post).result)
    except Exception as exc:  # noqa: BLE001
        return 502, {"error": str(exc)}
    return 201, {"post_id": d.post_id, "partition": d.partition, "offset": d.offset}


async def _wrong_q1_sets_from_sender(body, submit):
    from lab_kit.posts import PostValidationError, validate_post  # as a student would write it

    try:
        post = validate_post(body)
    except PostValidationError as exc:
        return 422, {"error": str(exc), "field": exc.field}
    fut = asyncio.get_running_loop().create_future()

    def settle(done):  # THE MISTAKE: runs on the sender thread, not the loop's
        exc = done.exception(0)
        fut.set_exception(exc) if exc else fut.set_result(done.result(0))

    submit(post).add_done_callback(settle)
    try:
        d = await fut
    except Exception as exc:  # noqa: BLE001
        return 502, {"error": str(exc)}
    return 201, {"post_id": d.post_id, "partition": d.partition, "offset": d.offset}


async def _wrong_q1_422_without_error(body, submit):
    from lab_kit.posts import PostValidationError, validate_post  # as a student would write it

    try:
        validate_post(body)
    except PostValidationError as exc:
        return 422, {"field": exc.field}  # the task asks for the error too
    return await _solution_q1(body, submit)


q1 = Exercise(
    name="09.q1 an asyncio handler that awaits the ack",
    task="async def handle(body, submit): 422 for an invalid post; else submit it and await "
         "its ack without blocking the loop: 201 with post_id, partition, offset, or 502",
    checker=_check_handler,
    hint_text="validate_post(body) raises PostValidationError (.field); submit() returns a "
              "PostFuture: bridge it to an asyncio future with add_done_callback + "
              "loop.call_soon_threadsafe (section 3), never .result() inside async def",
    solution_obj=_solution_q1, wrong=(_wrong_q1_blocks, _wrong_q1_no_validation,
                                      _wrong_q1_sets_from_sender,
                                      _wrong_q1_422_without_error))


# --- q2: the client's retry decision -----------------------------------------------------------

MAX_ATTEMPTS = 8
BASE_S, CAP_S = 0.1, 5.0

# (status, attempt, retry_after) -> (decision, delay_s)
_RETRY_CASES = [
    ((202, 1, None), ("done", 0.0)),
    ((201, 8, None), ("done", 0.0)),  # success wins, even on the last attempt
    ((422, 1, None), ("give up", 0.0)),  # the post itself is wrong: a retry is refused again
    ((413, 2, None), ("give up", 0.0)),
    ((400, 1, None), ("give up", 0.0)),
    ((422, 1, 3.0), ("give up", 0.0)),  # Retry-After does not make a bad post good
    ((409, 2, None), ("done", 0.0)),  # a retry's post_id is taken: accepted already
    ((409, 1, None), ("give up", 0.0)),  # a first try's id is taken: someone else's post
    ((503, 1, None), ("retry", 0.1)),
    ((503, 3, None), ("retry", 0.4)),
    ((503, 7, None), ("retry", 5.0)),  # 0.1 * 2**6 = 6.4 s, capped
    ((503, 2, 2.5), ("retry", 2.5)),  # the server said when
    ((429, 1, 1.0), ("retry", 1.0)),
    ((408, 1, None), ("retry", 0.1)),  # the body did not arrive in time: send it again
    ((0, 2, None), ("retry", 0.2)),  # no answer (connection refused, timeout)
    ((502, 4, None), ("retry", 0.8)),
    ((503, 8, None), ("give up", 0.0)),  # out of attempts
    ((0, 9, None), ("give up", 0.0)),
    ((503, 8, 2.0), ("give up", 0.0)),  # out of attempts, whatever Retry-After says
]


def _check_retry(next_step: Any) -> int:
    for (status, attempt, retry_after), want in _RETRY_CASES:
        got = next_step(status, attempt, retry_after)
        case = f"status={status}, attempt={attempt}, retry_after={retry_after}"
        if not isinstance(got, tuple) or len(got) != 2:
            raise CaseFailed(case, f"return a pair (decision, delay_s), got {got!r}")
        if got[0] != want[0] or abs(float(got[1]) - want[1]) > 1e-9:
            raise CaseFailed(case, f"you said {got!r}, expected {want!r}")
    return len(_RETRY_CASES)


def _solution_q2(status, attempt, retry_after=None):
    if 200 <= status < 300 or (status == 409 and attempt > 1):
        return "done", 0.0  # a 409 on a retry: the first try was accepted after all
    if 400 <= status < 500 and status not in (408, 429):
        return "give up", 0.0  # the request itself is wrong: the same answer every time
    if attempt >= 8:
        return "give up", 0.0  # keep the post (and the post_id) for later, tell the user
    if retry_after is not None:
        return "retry", float(retry_after)  # the server knows best when it has room
    return "retry", min(5.0, 0.1 * 2 ** (attempt - 1))  # 0.1, 0.2, 0.4 ... capped at 5 s


def _wrong_q2_retries_everything(status, attempt, retry_after=None):
    if 200 <= status < 300:
        return "done", 0.0
    if attempt >= 8:
        return "give up", 0.0
    return "retry", retry_after if retry_after is not None else min(5.0, 0.1 * 2 ** (attempt - 1))


def _wrong_q2_ignores_retry_after(status, attempt, retry_after=None):
    if 200 <= status < 300 or (status == 409 and attempt > 1):
        return "done", 0.0
    if 400 <= status < 500 and status not in (408, 429) or attempt >= 8:
        return "give up", 0.0
    return "retry", min(5.0, 0.1 * 2 ** (attempt - 1))


def _wrong_q2_409_gives_up(status, attempt, retry_after=None):
    """The rules without the 409 one: a retry whose first try was accepted is given up."""
    if 200 <= status < 300:
        return "done", 0.0
    if 400 <= status < 500 and status not in (408, 429) or attempt >= 8:
        return "give up", 0.0
    if retry_after is not None:
        return "retry", float(retry_after)
    return "retry", min(5.0, 0.1 * 2 ** (attempt - 1))


def _wrong_q2_408_gives_up(status, attempt, retry_after=None):
    """408 taken for a wrong post: it is a timeout, the same post may pass next time."""
    if 200 <= status < 300 or (status == 409 and attempt > 1):
        return "done", 0.0
    if 400 <= status < 500 and status != 429 or attempt >= 8:
        return "give up", 0.0
    if retry_after is not None:
        return "retry", float(retry_after)
    return "retry", min(5.0, 0.1 * 2 ** (attempt - 1))


def _wrong_q2_retry_after_first(status, attempt, retry_after=None):
    """Retry-After read before the attempt limit: a server that always sends it is retried
    for ever."""
    if 200 <= status < 300 or (status == 409 and attempt > 1):
        return "done", 0.0
    if 400 <= status < 500 and status not in (408, 429):
        return "give up", 0.0
    if retry_after is not None:
        return "retry", float(retry_after)
    if attempt >= 8:
        return "give up", 0.0
    return "retry", min(5.0, 0.1 * 2 ** (attempt - 1))


q2 = Exercise(
    name="09.q2 retry, wait, or give up",
    task="next_step(status, attempt, retry_after) returns ('done' | 'retry' | 'give up', "
         "delay_s) for the API's client",
    checker=_check_retry,
    hint_text="2xx, or 409 on a retry: done. Other 4xx but 408/429: give up (the post is "
              "wrong). From attempt 8: give up. Else retry after Retry-After if given, "
              "else 0.1 * 2**(attempt-1) s, at most 5 s",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_retries_everything, _wrong_q2_ignores_retry_after,
           _wrong_q2_409_gives_up, _wrong_q2_408_gives_up, _wrong_q2_retry_after_first))


recap = Quiz("09 recap", [
    Question("An asyncio handler calls producer.send(...).get(). Who waits for the ack?",
             {"a": "only the request that sent it",
              "b": "every request on that event loop",
              "c": "nobody: .get() yields to the loop"}, "b",
             ".get() is not an await: the loop's one thread stands still until the ack."),
    Question("What bounds a blocking send().get() per event loop, with the lab's producer?",
             {"a": "one loopback round trip only",
              "b": "linger_ms + the round trip per post: at most 1 / (linger + round trip)",
              "c": "the number of HTTP connections"}, "b",
             "The batch of one post waits linger_ms before it leaves, then the round trip; "
             "the next request starts only after that."),
    Question("In the asyncio bridge, which thread sets the asyncio future's result?",
             {"a": "kafka-python's sender thread, directly",
              "b": "the event loop's thread, scheduled with loop.call_soon_threadsafe",
              "c": "a worker thread of run_in_executor"}, "b",
             "The sender thread only schedules settle() on the loop: the one safe door in."),
    Question("Why does the load generator time each request from its intended send time?",
             {"a": "so a stalled server cannot hide its queue (coordinated omission)",
              "b": "it is cheaper to compute", "c": "HTTP/1.1 requires it"}, "a",
             "A closed-loop client waits and sends less when the server stalls; the users "
             "would not."),
    Question("POST /posts answered 202. The post is ...",
             {"a": "accepted: Kafka may not have acknowledged it yet",
              "b": "delivered: a consumer read it", "c": "durable on three replicas"}, "a",
             "202 says accepted; GET /posts/{id} says when it is acked (or spooled), and only "
             "reading the topic back says delivered."),
])

EXERCISES = [q1, q2]
