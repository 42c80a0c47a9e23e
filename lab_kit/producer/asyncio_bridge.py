"""The asyncio bridge: ``await submit_async(producer, post)`` without blocking the event loop.

``AsyncPostProducer`` is thread-based: ``submit()`` returns a :class:`~lab_kit.producer.PostFuture`
at once, and kafka-python completes it later on its **sender thread**. An ``async def`` must
never wait on that future with ``result()`` (nor call ``send().get()``): the wait blocks the
event loop's thread, and every other request on that loop waits with it.

The bridge is the one in confluent-kafka-python's ``examples/asyncio_example.py``: for each
post, an ``asyncio.Future`` of the running loop, completed from the delivery callback with
``loop.call_soon_threadsafe`` (the only thread-safe way into a loop).

Which thread runs what:

* **event-loop thread**: ``submit()`` itself (validation, encoding, ``KafkaProducer.send``,
  which only appends to an in-memory batch; or, while the broker is down, one SQLite append
  to the spool) and the ``await``;
* **kafka-python sender thread**: the network I/O, the ack, ``PostFuture``'s completion and
  our done-callback, which only schedules ``_settle`` on the loop;
* **event-loop thread again**: ``_settle`` sets the asyncio future's result, and the
  coroutine waiting on it resumes;
* **the loop's default executor** (a worker thread): ``flush()`` and ``close()``, which
  wait for acks and must not run on the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lab_kit.posts import Post
from lab_kit.producer import AsyncPostProducer, CloseReport, Delivery, PostFuture


def _settle(fut: asyncio.Future, pf: PostFuture) -> None:
    """On the loop's thread: copy the outcome of ``pf`` into ``fut``."""
    if fut.cancelled():
        return
    exc = pf.exception(0)
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(pf.result(0))


def wrap_future(pf: PostFuture, loop: asyncio.AbstractEventLoop | None = None
                ) -> asyncio.Future:
    """An ``asyncio.Future`` on ``loop`` (default: the running one) that completes with ``pf``."""
    loop = loop or asyncio.get_running_loop()
    fut = loop.create_future()
    if pf.done():  # spooled posts and sync submits are settled already
        _settle(fut, pf)
        return fut
    # runs on the thread that completes pf (the sender thread): hand over to the loop
    pf.add_done_callback(lambda done: loop.call_soon_threadsafe(_settle, fut, done))
    return fut


async def submit_async(producer: AsyncPostProducer, post: Post | dict, *,
                       intended_at: float | None = None) -> Delivery:
    """Submit ``post`` and wait for its :class:`Delivery` (``acked`` or ``spooled``) without
    blocking the event loop. Raises what ``submit()`` raises (``PostValidationError``,
    ``BackpressureError``) at once, and ``DeliveryFailed`` if the post failed."""
    return await wrap_future(producer.submit(post, intended_at=intended_at))


async def flush_async(producer: AsyncPostProducer, timeout: float | None = 30.0) -> bool:
    """``producer.flush(timeout)`` on a worker thread: the loop keeps serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, producer.flush, timeout)


async def close_async(producer: AsyncPostProducer, timeout: float = 30.0) -> CloseReport:
    """``producer.close(timeout)`` on a worker thread (flushes, or spools what is left)."""
    return await asyncio.get_running_loop().run_in_executor(None, producer.close, timeout)


class AioPostProducer:
    """``AsyncPostProducer`` with asyncio methods: ``await p.submit_async(post)``,
    ``await p.flush()``, ``await p.close()``; ``p.producer`` is the wrapped producer and
    ``p.submit(post)`` its plain, non-waiting submit."""

    def __init__(self, producer: AsyncPostProducer):
        self.producer = producer

    @classmethod
    async def create(cls, *args: Any, **kwargs: Any) -> AioPostProducer:
        """Build the producer on a worker thread (its constructor may wait for a bootstrap
        connection, up to ``bootstrap_timeout_ms``)."""
        loop = asyncio.get_running_loop()
        producer = await loop.run_in_executor(None, lambda: AsyncPostProducer(*args, **kwargs))
        return cls(producer)

    def submit(self, post: Post | dict, *, intended_at: float | None = None) -> PostFuture:
        return self.producer.submit(post, intended_at=intended_at)

    async def submit_async(self, post: Post | dict, *,
                           intended_at: float | None = None) -> Delivery:
        return await submit_async(self.producer, post, intended_at=intended_at)

    async def flush(self, timeout: float | None = 30.0) -> bool:
        return await flush_async(self.producer, timeout)

    async def close(self, timeout: float = 30.0) -> CloseReport:
        return await close_async(self.producer, timeout)

    async def __aenter__(self) -> AioPostProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
