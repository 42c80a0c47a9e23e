"""What ``submit()`` hands back: a :class:`PostFuture`, which settles into a :class:`Delivery`
(acked or spooled) or raises :class:`~lab_kit.producer.errors.DeliveryFailed`.

The future is also the callback the client calls when the broker answers: one object per post
serves as both callback and errback for kafka-python (:meth:`PostFuture.__call__`) and as
librdkafka's delivery report (:meth:`PostFuture.delivery_report`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from lab_kit.posts import Post
from lab_kit.producer.librdkafka import exception_for
from lab_kit.producer.spool import next_submit_order

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Delivery:
    """How a post ended: ``acked`` (on the topic) or ``spooled`` (on disk, replayed later).

    Read it, don't change it. (Not a frozen dataclass: one is built per ack, on the sender
    thread, and a frozen one costs four times as much to build.)
    """

    post_id: str
    outcome: str
    topic: str
    partition: int | None = None
    offset: int | None = None
    ack_latency_s: float | None = None


class DeliveryListener(Protocol):
    """Who hears about a post's answer from Kafka: the producer facade."""

    def on_ack(self, pf: PostFuture, metadata: Any, now: float) -> None: ...

    def on_record_acked(self, pf: PostFuture, topic: str, partition: int, offset: int,
                        now: float) -> None: ...

    def on_send_error(self, pf: PostFuture, exc: BaseException) -> None: ...


# One lock for all futures, taken only to complete one or to wait on it. A lock (or an
# Event) per post would cost more than the rest of submit(): most futures are never waited on.
_FUTURE_LOCK = threading.Lock()
_PENDING, _DONE = 0, 1


class PostFuture:
    """``result()``, ``exception()``, ``done()``, ``add_done_callback()``: the interface of
    ``concurrent.futures.Future``, cheaper to create and to complete (no lock or condition per
    post unless someone actually waits on it).

    Done-callbacks run in the thread that completes the future: for an ack that is the
    client's sender thread, so keep them short.
    """

    __slots__ = ("post", "post_id", "intended_at", "generation", "order", "_listener",
                 "_state", "_value", "_exc", "_event", "_callbacks")

    def __init__(self, post: Post, intended_at: float, listener: DeliveryListener | None = None):
        self.post = post
        self.post_id = post.post_id
        self.intended_at = intended_at
        self.generation = 0  # which KafkaProducer instance carries it
        self.order = next_submit_order()  # where it sorts in the spool, whenever it goes there
        self._listener = listener
        self._state = _PENDING
        self._value: Any = None
        self._exc: BaseException | None = None
        self._event: threading.Event | None = None
        self._callbacks: list | None = None

    def __call__(self, outcome: Any) -> None:
        """kafka-python's future calls this with the record metadata on success and with the
        exception on failure: the future is its own callback *and* errback (one object per
        post instead of two ``functools.partial``, less work for the garbage collector)."""
        if isinstance(outcome, BaseException):
            self._listener.on_send_error(self, outcome)
        else:
            self._listener.on_record_acked(self, outcome.topic, outcome.partition,
                                           outcome.offset, time.perf_counter())

    def delivery_report(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery callback (``on_delivery``), served on the lab's poll thread
        (:mod:`~lab_kit.producer.librdkafka`): the same two outcomes as :meth:`__call__`."""
        if err is None:
            self._listener.on_record_acked(self, msg.topic(), msg.partition(), msg.offset(),
                                           time.perf_counter())
        else:
            self._listener.on_send_error(self, exception_for(err))

    def done(self) -> bool:
        return self._state == _DONE

    def set_result(self, value: Any) -> bool:
        """Settle with a value; False if the future was settled already (nothing changes).
        Once per ack: written out in full, like :meth:`set_exception`, one call less."""
        with _FUTURE_LOCK:
            if self._state == _DONE:
                return False
            self._value, self._state = value, _DONE
            event, callbacks = self._event, self._callbacks
        if event is not None or callbacks:
            self._notify(event, callbacks)
        return True

    def set_exception(self, exc: BaseException) -> bool:
        """Settle with an error; False if the future was settled already (nothing changes)."""
        with _FUTURE_LOCK:
            if self._state == _DONE:
                return False
            self._exc, self._state = exc, _DONE
            event, callbacks = self._event, self._callbacks
        self._notify(event, callbacks)
        return True

    def result(self, timeout: float | None = None) -> Any:
        """The :class:`Delivery`; raises :class:`DeliveryFailed` if the post failed."""
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exc

    def add_done_callback(self, fn: Any) -> None:
        with _FUTURE_LOCK:
            if self._state != _DONE:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def _notify(self, event: threading.Event | None, callbacks: list | None) -> None:
        """Wake who waits, then run the done-callbacks (once, after the future settled)."""
        if event is not None:
            event.set()
        if callbacks:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:  # noqa: BLE001 - same contract as concurrent.futures
                    log.exception("done-callback of post %s raised", self.post_id)

    def _wait(self, timeout: float | None) -> None:
        if self._state == _DONE:
            return
        with _FUTURE_LOCK:
            if self._state == _DONE:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise TimeoutError(f"post {self.post_id} not settled within {timeout} s")


class InFlight(dict):
    """The futures handed to the Kafka client and not settled yet, oldest first (a dict from
    future to ``None``: insertion order is submit order).

    Touched by the callers' threads (add), the client's callback thread (discard on an
    answer), the worker and the health thread (oldest age, snapshot). No lock: with the GIL,
    adding (``in_flight[pf] = None``), discarding (``pop(pf, None)``), ``len`` and ``list``
    are each one C call, so they are atomic (a future hashes by identity: no Python code
    runs inside them), and every caller uses them directly; the readers below work on a
    snapshot. A lock here cost two acquisitions per post, on two threads.
    """

    __slots__ = ()

    def oldest_age(self) -> float:
        """Seconds since the oldest post in flight was meant to be sent (0 if none). Read
        from a snapshot: another thread may change the dict between ``iter()`` and ``next()``
        (this runs once per health probe, not per post)."""
        oldest = next(iter(self.snapshot()), None)
        return 0.0 if oldest is None else time.perf_counter() - oldest.intended_at

    def held_by_older_clients(self, generation: int) -> int:
        """How many posts in flight an older client generation than ``generation`` holds."""
        return sum(1 for pf in self.snapshot() if pf.generation < generation)

    def snapshot(self) -> list[PostFuture]:
        return list(self)  # one C call: atomic under the GIL
