"""Delivery handlers: what happens when Kafka answers for a post.

kafka-python runs delivery callbacks on its **sender thread**, the one thread that does all of
the producer's network I/O. Two consequences every handler here respects:

1. A slow callback stalls *every* delivery behind it (see :func:`blocking_callback_experiment`).
   Heavy work (HTTP calls, disk, sleeps) is handed to a worker: wrap the handler in
   :class:`Offloaded`.
2. kafka-python logs and swallows an exception raised in a callback. ``AsyncPostProducer``
   catches it first, counts it (``callback_errors``) and keeps the last ones in
   ``producer.callback_errors``, so a broken callback is visible, not lost.

A handler is any object with ``on_delivery(post, delivery)`` and ``on_failure(post, error)``;
:class:`DeliveryHandler` is the base with no-op methods. Metrics and dead-letter routing are
built into the producer (they must never be forgotten); retries are kafka-python's own
(``retries=inf`` within ``delivery_timeout_ms``, ordered and de-duplicated by idempotence),
and past that the durable spool takes over: retrying again from a callback would break
per-user order and, after an expired batch, go to a client that no longer sends.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from lab_kit.posts import Post
from lab_kit.producer.async_producer import AsyncPostProducer

log = logging.getLogger(__name__)


class DeliveryHandler:
    """Base handler: override what you need. ``name`` shows up in error reports."""

    name = "handler"

    def on_delivery(self, post: Post, delivery: Any) -> None:
        pass

    def on_failure(self, post: Post, error: BaseException) -> None:
        pass


class LoggingHandler(DeliveryHandler):
    """Log failures at WARNING (with the post id) and deliveries at DEBUG."""

    name = "logging"

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or log

    def on_delivery(self, post: Post, delivery: Any) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("post %s -> %s[%s]@%s", post.post_id, delivery.topic,
                           delivery.partition, delivery.offset)

    def on_failure(self, post: Post, error: BaseException) -> None:
        self.log.warning("post %s failed: %s: %s", post.post_id, type(error).__name__, error)


class UserCallback(DeliveryHandler):
    """Wrap plain functions: ``UserCallback(on_success=f, on_error=g)``."""

    def __init__(self, on_success: Callable | None = None, on_error: Callable | None = None,
                 name: str = "user"):
        self._ok, self._err, self.name = on_success, on_error, name

    def on_delivery(self, post: Post, delivery: Any) -> None:
        if self._ok is not None:
            self._ok(post, delivery)

    def on_failure(self, post: Post, error: BaseException) -> None:
        if self._err is not None:
            self._err(post, error)


class CollectingHandler(DeliveryHandler):
    """Keep every delivery (thread-safe) for a table in a notebook: partition, offset, thread."""

    name = "collect"

    def __init__(self, limit: int = 100_000):
        self.rows: list[dict] = []
        self.limit = limit
        self._lock = threading.Lock()

    def on_delivery(self, post: Post, delivery: Any) -> None:
        self._add(post, "acked", delivery.partition, delivery.offset, None)

    def on_failure(self, post: Post, error: BaseException) -> None:
        self._add(post, "failed", None, None, type(error).__name__)

    def _add(self, post, outcome, partition, offset, error) -> None:
        with self._lock:
            if len(self.rows) < self.limit:
                self.rows.append({"post_id": post.post_id, "user_id": post.user_id,
                                  "outcome": outcome, "partition": partition, "offset": offset,
                                  "error": error, "thread": threading.current_thread().name})

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame(self.rows)


class Offloaded(DeliveryHandler):
    """Run another handler on a worker thread, so the sender thread never waits for it.

    The queue is unbounded: at lab scale that is fine, and ``pending`` shows if the worker
    falls behind. Exceptions in the wrapped handler are counted in ``errors``.
    """

    def __init__(self, handler: Any, workers: int = 1):
        self.handler = handler
        self.name = f"offloaded({getattr(handler, 'name', type(handler).__name__)})"
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lab-cb")
        self._pending = 0
        self._lock = threading.Lock()
        self.errors: list[str] = []

    @property
    def pending(self) -> int:
        return self._pending

    def _run(self, method: str, *args: Any) -> None:
        try:
            getattr(self.handler, method)(*args)
        except Exception as exc:  # noqa: BLE001 - counted, never lost
            self.errors.append(repr(exc))
        finally:
            with self._lock:
                self._pending -= 1

    def _submit(self, method: str, *args: Any) -> None:
        with self._lock:
            self._pending += 1
        self._pool.submit(self._run, method, *args)

    def on_delivery(self, post: Post, delivery: Any) -> None:
        self._submit("on_delivery", post, delivery)

    def on_failure(self, post: Post, error: BaseException) -> None:
        self._submit("on_failure", post, error)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)


class SlowHandler(DeliveryHandler):
    """A handler that does "heavy work" (sleeps) — the pitfall when run on the sender thread."""

    def __init__(self, seconds: float = 0.01, every: int = 1):
        self.seconds, self.every, self.name, self._n = seconds, every, "slow", 0

    def on_delivery(self, post: Post, delivery: Any) -> None:
        self._n += 1
        if self._n % self.every == 0:
            time.sleep(self.seconds)


class RaisingHandler(DeliveryHandler):
    """Raises on every delivery: shows that a broken callback is counted, not lost."""

    name = "raising"

    def on_delivery(self, post: Post, delivery: Any) -> None:
        raise ValueError(f"bug in a user callback while handling {post.post_id}")


def blocking_callback_experiment(bootstrap_servers: str, topic: str, posts: list[Post],
                                 sleep_s: float = 0.005, **kafka_config: Any) -> pd.DataFrame:
    """The same posts three ways: no extra work, work ON the sender thread, work offloaded.

    Returns one row per variant with ack p50/p99 (ms) and throughput: the sender-thread
    variant delays every ack behind the sleeping callback.
    """

    rows = []
    variants = {
        "no callback work": [],
        f"sleep {sleep_s * 1000:.0f} ms on sender thread": [SlowHandler(sleep_s)],
        f"sleep {sleep_s * 1000:.0f} ms offloaded": [Offloaded(SlowHandler(sleep_s))],
    }
    for label, handlers in variants.items():
        with AsyncPostProducer(bootstrap_servers, topic, handlers=handlers,
                               **kafka_config) as producer:
            t0 = time.perf_counter()
            for post in posts:
                producer.submit(post)
            producer.flush(timeout=120)
            elapsed = time.perf_counter() - t0
            ack = producer.metrics.summary_ms("ack")
        for h in handlers:
            if isinstance(h, Offloaded):
                h.close(wait=False)
        rows.append({"variant": label, "posts": len(posts), "msgs_per_s": len(posts) / elapsed,
                     "ack_p50_ms": ack["p50_ms"], "ack_p99_ms": ack["p99_ms"]})
    return pd.DataFrame(rows)


def flush_inside_callback_demo(bootstrap_servers: str, topic: str, post: Post,
                               **kafka_config: Any) -> str:
    """Call ``flush()`` from inside a delivery callback and report what happens.

    ``AsyncPostProducer`` refuses with a clear RuntimeError (the sender thread would wait for
    itself). Returns the message the callback caught.
    """

    caught: list[str] = []
    done = threading.Event()

    def bad_callback(p: Post, delivery: Any) -> None:
        try:
            producer.flush(timeout=5)
            caught.append("flush returned (no deadlock guard!)")
        except RuntimeError as exc:
            caught.append(str(exc))
        finally:
            done.set()

    producer = AsyncPostProducer(bootstrap_servers, topic,
                                 handlers=[UserCallback(on_success=bad_callback)], **kafka_config)
    with producer:
        producer.submit(post)
        done.wait(timeout=30)
    return caught[0] if caught else "callback never ran"
