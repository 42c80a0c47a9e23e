"""``AsyncPostProducer``: hand a StreamSocial post to Kafka without making the user wait.

The lesson, in :meth:`AsyncPostProducer.submit` and :meth:`~AsyncPostProducer._send`::

    kf = client.send(topic, key=key, value=value)  # appends to a batch in memory, returns
    kf.add_callback(pf)                            # later, on the sender thread: the ack
    kf.add_errback(pf)                             # ... or the error

and ``submit`` returns the :class:`~lab_kit.producer.future.PostFuture` at once. What the
producer adds to the plain client, each in its own module of this folder:

* :mod:`.future`: the future and the :class:`Delivery` it settles into; the in-flight set.
* :mod:`.failover`: the state machine ``SENDING → SPOOLING → REPLAYING → SENDING``, the health
  probe, the durable spool and its replay, the stuck-client check.
* :mod:`.dead_letters`: a post Kafka refuses for good goes to ``posts.dlq`` with the reason.
* :mod:`.kafka_quirks`: the kafka-python 3.0 behaviours worked around (also used by the
  moderation stage).
* :mod:`.encoding`: the post → record encoding and its validation fast path.

**Two clients** (``client=``): ``"kafka-python"`` (the default, the lessons' client) or
``"confluent"``: librdkafka (:mod:`.librdkafka`), where the same lesson is::

    client.produce(topic, value, key, on_delivery=pf.delivery_report)  # also returns at once
    # ... and the report is served only inside poll(): by the lab's poll thread

Same futures, callbacks, errors (librdkafka's mapped to kafka-python's classes), in-flight
bound and failover either way.

Threads: the caller runs ``submit`` (validation, ``client.send``, or a spool append while not
``SENDING``). kafka-python's sender thread (or, with librdkafka, the lab's poll thread) runs
the delivery callbacks (:meth:`on_ack`, :meth:`on_send_error`): they only count, settle the
future, call the handlers and queue work.
Two worker threads do what blocks: one spools failed posts and replaces clients, the other
re-sends a post alone and writes dead letters (so the first never waits behind the broker).
With a spool, the health thread probes the broker and replays.

Kafka settings pass through as keyword arguments (``acks``, ``linger_ms``, ``batch_size``,
``compression_type``, ...), checked when the producer is built. Lab defaults differ from
kafka-python's in two places (:data:`LAB_DEFAULTS`): ``linger_ms=5`` (fuller batches for a few
ms) and ``bootstrap_timeout_ms=3000`` (fail fast when no broker answers).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError, UnknownError

from lab_kit import broker
from lab_kit.kafka_settings import check_producer_settings
from lab_kit.metrics import MetricsRecorder
from lab_kit.posts import Post
from lab_kit.producer.dead_letters import DeadLetters
from lab_kit.producer.encoding import encode
from lab_kit.producer.errors import (
    BackpressureError,
    BrokerUnavailableError,
    DeliveryFailed,
    ProducerClosedError,
)
from lab_kit.producer.failover import Action, Failover, State, bootstrap_probe, decide_on_error
from lab_kit.producer.future import Delivery, InFlight, PostFuture
from lab_kit.producer.kafka_quirks import (
    TopicMetadataTimeout,
    force_close,
    is_sender_thread,
    warm_metadata,
)
from lab_kit.producer.librdkafka import LibrdkafkaClient, producer_properties
from lab_kit.producer.partitioner import KeyHashPartitioner
from lab_kit.producer.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, Spool, SpoolError
from lab_kit.topics import POSTS, POSTS_DLQ

log = logging.getLogger(__name__)

#: kafka-python settings this lab changes (everything else is kafka-python 3's default:
#: acks="all", enable_idempotence=True, retries=inf, delivery_timeout_ms=120000, ...).
LAB_DEFAULTS: dict[str, Any] = {"linger_ms": 5, "bootstrap_timeout_ms": 3000}

ON_FULL_POLICIES = ("spool", "block", "reject")
#: The close report names at most this many failed posts (it counts them all).
MAX_FAILED_IDS = 10_000
MODES = ("async", "sync")
#: The Kafka client under the producer: kafka-python (the lessons') or librdkafka.
CLIENTS = ("kafka-python", "confluent")


class AsyncPostProducer:
    """Non-blocking post producer with callbacks, metrics, backpressure and failover.

    * **A bound on posts in flight** (``max_in_flight``). kafka-python 3 has no cap on its send
      buffer, so an outage would grow memory without limit. At the bound, ``on_full`` decides:
      ``"spool"`` (default with a spool: the post goes to disk, the caller does not wait),
      ``"block"`` (wait up to ``max_block_s``, then raise :class:`BackpressureError`) or
      ``"reject"`` (raise at once). A raised post was never accepted (counted as ``rejected``).
    * **A bound on the spool** (``spool_max_rows``, default 1,000,000 posts; ``spool_max_bytes``,
      default 256 MiB; see "Size caps" in :mod:`.spool`): a post that would wait behind the
      spool while it is at its cap raises :class:`~.spool.SpoolFullError` (not accepted).
    * **Per-post timing**: ``submit`` duration, and ack latency measured from the post's
      *intended* send time (an open-loop load test cannot hide queueing delay).
    * **Failover** (``spool_path=``): see :mod:`lab_kit.producer.failover`. A new producer on
      the same spool replays what a crashed one left. Replays can duplicate a post whose ack
      was lost; the audit counts duplicates by ``post_id``.
    * ``close()`` never silently drops an accepted post: what could not be delivered is spooled
      (with a spool) or reported by id in the :class:`CloseReport`.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None = None,
        topic: str = POSTS,
        *,
        mode: str = "async",
        max_in_flight: int = 10_000,
        on_full: str | None = None,
        max_block_s: float = 0.05,
        handlers: Iterable[Any] = (),
        metrics: MetricsRecorder | None = None,
        dlq_topic: str | None = POSTS_DLQ,
        spool_path: str | None = None,
        probe_interval_s: float = 0.5,
        stall_timeout_s: float = 3.0,
        health_probe: Callable[[], bool] | None = None,
        spool_max_rows: int = DEFAULT_MAX_ROWS,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        client: str = "kafka-python",
        **kafka_config: Any,
    ):
        on_full = on_full or ("spool" if spool_path else "block")
        _check_options(mode, max_in_flight, on_full, spool_path, max_block_s, probe_interval_s,
                       stall_timeout_s, client)
        self._kafka_config = _client_settings(bootstrap_servers, kafka_config, client,
                                              max_in_flight)
        bootstrap_servers = self._kafka_config["bootstrap_servers"]
        self.topic = topic
        self.mode = mode
        self._librdkafka = client == "confluent"
        self.max_in_flight = max_in_flight
        self.on_full = on_full
        self.max_block_s = max_block_s
        self.dlq_topic = dlq_topic
        self.handlers = list(handlers)
        self.metrics = metrics or MetricsRecorder()
        self.callback_errors: deque[tuple[str, str, str]] = deque(maxlen=100)
        self.max_request_size = self._kafka_config.get(
            "max_request_size", KafkaProducer.DEFAULT_CONFIG["max_request_size"])
        self._in_flight = InFlight()
        # (post, error, outage?) failed and not spooled yet; guarded by _to_spool_lock
        self._to_spool: list[tuple[PostFuture, BaseException, bool]] = []
        self._to_spool_lock = threading.Lock()
        self._failed_lock = threading.Lock()
        self._failed_ids: deque[str] = deque(maxlen=MAX_FAILED_IDS)  # the newest, named
        self._failed_count = 0  # all of them, counted; both guarded by _failed_lock
        self._resending = 0  # without a spool: lone re-sends not done yet (also _failed_lock)
        self._closed = False
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lab-worker")
        # lone re-sends and dead letters wait for the broker (up to 30 s each): on a worker of
        # their own, so spooling failed posts and replacing the client never queue behind them
        self._dlq_worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="lab-dlq-worker")
        self._dead_letters = DeadLetters(self._kafka_config, topic, dlq_topic)
        self.spool = None
        if spool_path:

            # No checkpoint (an fsync) inside a caller's append: the health thread does them.
            self.spool = Spool(spool_path, autocheckpoint=False, max_rows=spool_max_rows,
                               max_bytes=spool_max_bytes)
        self._clients = ClientSlot(self._new_client, self._worker, self.metrics)
        if self._clients.connect_error is not None and self.spool is None:
            self._worker.shutdown(wait=False)
            self._dlq_worker.shutdown(wait=False)
            if isinstance(self._clients.connect_error, TopicMetadataTimeout):
                raise BrokerUnavailableError(str(self._clients.connect_error)
                                             ) from self._clients.connect_error
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {bootstrap_servers} within "
                f"{self._kafka_config['bootstrap_timeout_ms']} ms; start one with "
                f"`python -m lab_kit broker up`, or pass spool_path= to accept posts "
                f"while it is down") from self._clients.connect_error
        self._failover: Failover | None = None
        if self.spool is not None:
            self._failover = self._start_failover(health_probe, probe_interval_s,
                                                  stall_timeout_s)

    def _start_failover(self, health_probe: Callable[[], bool] | None, probe_interval_s: float,
                        stall_timeout_s: float) -> Failover:
        if self._clients.current[1] is None:
            state = State.SPOOLING  # no broker answered: accept posts on disk from the start
        elif not self.spool.is_empty():
            state = State.REPLAYING  # replay what an earlier (crashed) producer left first
        else:
            state = State.SENDING
        failover = Failover(
            spool=self.spool, topic=self.topic, clients=self._clients,
            in_flight=self._in_flight, metrics=self.metrics,
            dead_letter_spooled=self._dead_letter_spooled,
            resend_spooled=self._dead_letters.resend_spooled,
            probe=health_probe or bootstrap_probe(self._kafka_config),
            probe_interval_s=probe_interval_s, stall_timeout_s=stall_timeout_s, state=state,
            send=self._send)
        failover.start()
        return failover

    def _new_client(self) -> KafkaProducer | LibrdkafkaClient:
        if self._librdkafka:  # bootstraps and reads the topic's metadata, as below
            return LibrdkafkaClient(self._kafka_config, topic=self.topic,
                                    queue_messages=self.max_in_flight)
        client = KafkaProducer(**{"partitioner": KeyHashPartitioner(), **self._kafka_config})
        warm_metadata(client, self.topic)  # so send() never waits for it (kafka_quirks, 4)
        return client

    # --- the lesson: submit, send, and the two callbacks --------------------------------------
    def submit(self, post: Post | dict, *, intended_at: float | None = None) -> PostFuture:
        """Accept a post and return a future at once; the ack arrives later in a callback.

        Raises :class:`PostValidationError` for bad input and :class:`BackpressureError` when
        the in-flight bound is reached under the ``block``/``reject`` policies: in both cases
        the post was not accepted.
        """
        t0 = time.perf_counter()
        if self._closed:
            raise ProducerClosedError("submit() after close()")
        post, key, value = encode(post, self.max_request_size)
        intended_at = t0 if intended_at is None else intended_at
        if self.mode == "sync":
            return self._submit_sync(post, key, value, intended_at)
        pf = PostFuture(post, intended_at, self)
        failover = self._failover
        if failover is None:
            self._send_or_hold(pf, key, value, t0)
        elif not self._counted_if_refused(failover.queue_behind_backlog, pf, key, value):
            try:  # SENDING (read under the failover's lock): straight to the client
                self._send_or_hold(pf, key, value, t0)
            finally:
                failover.sent_directly()
        now = time.perf_counter()
        self.metrics.observe("submitted", "submit", now - t0, now)
        return pf

    async def asubmit(self, post: Post | dict, *, intended_at: float | None = None) -> Delivery:
        """``await producer.asubmit(post)``: :meth:`submit`, then the :class:`Delivery` on the
        running event loop, without a thread per call: the client's callback thread (sender
        or poll thread) hands the outcome to the loop (:mod:`.asyncio_bridge`). Raises what
        ``submit`` raises at once, and ``DeliveryFailed`` if the post failed."""
        # a lazy import: the bridge imports this module
        from lab_kit.producer.asyncio_bridge import wrap_future

        return await wrap_future(self.submit(post, intended_at=intended_at))

    def _send_or_hold(self, pf: PostFuture, key: bytes, value: bytes, t0: float) -> None:
        """Send it, unless ``max_in_flight`` posts are in the client, or (without a spool) a
        refused batch's posts are being re-sent alone: then ``on_full`` says."""
        if len(self._in_flight) < self.max_in_flight and not self._resending:
            self._send(pf, key, value)
        elif self.on_full == "spool":  # it goes on disk, and newer posts behind it
            self._counted_if_refused(self._failover.spool_overflow, pf, key, value)
        elif self.on_full == "block" and self._wait_for_slot(t0 + self.max_block_s):
            self._send(pf, key, value)
        else:
            self.metrics.incr("rejected")
            resending = self._resending
            raise BackpressureError(0 if resending else self.max_in_flight,
                                    time.perf_counter() - t0, resending)

    def _counted_if_refused(self, to_spool: Callable[..., Any], *args: Any) -> Any:
        """A post the spool refuses (full: see "Size caps" in :mod:`.spool`; locked; closed)
        was not accepted: the error goes to the caller, counted as ``rejected``."""
        try:
            return to_spool(*args)
        except SpoolError:
            self.metrics.incr("rejected")
            raise

    def _send(self, pf: PostFuture, key: bytes, value: bytes) -> None:
        """Hand one post to the client: ``send`` returns at once, the answer comes later."""
        generation, client = self._clients.current
        if client is None:  # no client (the broker never answered): straight to the spool
            self._failover.spool_post(pf, key, value)
            return
        pf.generation = generation
        self._in_flight[pf] = None  # InFlight is a dict: one C call, no lock
        try:
            if self._librdkafka:  # the report comes on the lab's poll thread (librdkafka.py)
                client.produce_for(self.topic, key, value, pf.delivery_report)
                return
            kf = client.send(self.topic, value=value, key=key)
        except Exception as exc:  # noqa: BLE001 - e.g. too large, or no metadata in max_block_ms
            self.on_send_error(pf, exc)
            return
        kf.add_callback(pf)  # pf(metadata) -> self.on_ack
        kf.add_errback(pf)  # pf(exception) -> self.on_send_error

    def on_ack(self, pf: PostFuture, metadata: Any, now: float) -> None:
        """The ack (sender thread; worker for a lone re-send): count it, settle the future,
        tell the handlers. Keep it short: every other delivery waits behind it."""
        self.on_record_acked(pf, metadata.topic, metadata.partition, metadata.offset, now)

    def on_record_acked(self, pf: PostFuture, topic: str, partition: int, offset: int,
                        now: float) -> None:
        """:meth:`on_ack` with the record's place given as values (librdkafka's delivery
        report hands them over without building a metadata object per post)."""
        self._in_flight.pop(pf, None)
        latency = now - pf.intended_at
        delivery = Delivery(pf.post_id, "acked", topic, partition, offset, latency)
        if not pf.set_result(delivery):
            return  # settled already (spooled by close()): the spool's replay counts it
        self.metrics.observe("acked", "ack", latency, now)
        for h in self.handlers:
            try:
                h.on_delivery(pf.post, delivery)
            except Exception as exc:  # noqa: BLE001 - a user callback must not break delivery
                self._callback_failed(h, pf, exc)

    def on_send_error(self, pf: PostFuture, exc: BaseException) -> None:
        """A delivery error (sender thread, or the caller for an error raised by ``send``).
        :func:`~lab_kit.producer.failover.decide_on_error` says what happens next; the work
        itself is queued on the worker, never done here."""
        self._in_flight.pop(pf, None)
        if pf.done():  # settled already (e.g. spooled by close()): nothing more to do
            return
        self.metrics.record_error(type(exc).__name__)
        decision = decide_on_error(
            retriable=bool(getattr(exc, "retriable", False)),
            timed_out=isinstance(exc, KafkaTimeoutError),
            from_current_client=pf.generation == self._clients.current[0],
            has_spool=self._failover is not None)
        if decision.replace_client:
            self._replace_client(pf.generation)
        if decision.action is Action.FAIL:
            self._fail(pf, exc)
            return
        self._reroute_coming()  # newer posts queue behind this one (or wait) from now on
        try:
            if decision.action is Action.SPOOL:
                self._queue_for_spool(pf, exc, decision.outage)
            else:
                self._dlq_worker.submit(self._resend_alone, pf, exc)
        except RuntimeError:  # the workers were shut down (a late error after close())
            self._reroute_done(1)
            self._fail(pf, exc)

    def _reroute_coming(self) -> None:
        if self._failover is not None:
            self._failover.reroute_coming()
        else:  # no spool: nowhere to queue; new posts wait (on_full) until it is re-sent
            self._count_resending(1)

    def _reroute_done(self, n: int) -> None:
        if self._failover is not None:
            self._failover.reroute_done(n)
        else:
            self._count_resending(-n)

    def _replace_client(self, generation: int) -> None:
        """Queue the replacement on the worker. Without a spool the posts the old client
        still holds fail only when it is force-closed (queued on the same worker, after the
        replacement), and are then re-sent alone: until then they count as being re-sent, so
        no new post goes through the new client first."""
        try:
            if self._failover is not None or not len(self._in_flight):
                self._worker.submit(self._clients.replace, generation)  # nothing to wait for
                return
            self._count_resending(1)
            self._worker.submit(self._replace_then_release, generation)
        except RuntimeError:  # shut down: close() force-closes every client itself
            pass

    def _replace_then_release(self, generation: int) -> None:
        try:
            self._clients.replace(generation)  # queues the old client's force_close here
        finally:  # released by a task queued behind that force_close
            self._worker.submit(self._count_resending, -1)

    # --- backpressure and the blocking way, for comparison ------------------------------------
    def _wait_for_slot(self, deadline: float) -> bool:
        """The ``block`` policy: poll until a post in flight settles, or the deadline."""
        while len(self._in_flight) >= self.max_in_flight or self._resending:
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.0005)
        return True

    def submit_sync(self, post: Post | dict, timeout: float = 30.0) -> Delivery:
        """The blocking way, for comparison: ``send().get()`` waits for the broker's ack."""
        t0 = time.perf_counter()
        post, key, value = encode(post, self.max_request_size)
        return self._submit_sync(post, key, value, t0, timeout).result()

    def _submit_sync(self, post: Post, key: bytes, value: bytes, t0: float,
                     timeout: float = 30.0) -> PostFuture:
        pf = PostFuture(post, t0)
        self.metrics.incr("submitted")
        try:
            md = self._clients.current[1].send(self.topic, value=value, key=key).get(
                timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and re-raised
            self.metrics.record_error(type(exc).__name__)
            self._record_failed(post.post_id)
            pf.set_exception(DeliveryFailed(post.post_id, exc))
            raise pf.exception() from exc
        now = time.perf_counter()
        self.metrics.record_latency("submit", now - t0, now)
        self.metrics.record_latency("ack", now - t0, now)
        self.metrics.incr("acked", 1, now)
        pf.set_result(Delivery(post.post_id, "acked", md.topic, md.partition, md.offset,
                               now - t0))
        return pf

    # --- worker thread: what blocks -----------------------------------------------------------
    def _resend_alone(self, pf: PostFuture, first_error: BaseException) -> None:
        """Send the post on its own; a non-retriable failure now is its own fault (→ DLQ)."""
        self.metrics.incr("retried")
        try:
            md = self._dead_letters.resend_alone(pf.post)
        except Exception as exc:  # noqa: BLE001 - classified below
            if getattr(exc, "retriable", False) and self._failover is not None:
                self._spool_failed([(pf, exc)], outage=False)
            elif getattr(exc, "retriable", False) or not self.dlq_topic:
                self._fail(pf, exc)
            else:
                self._dead_letter(pf, exc)
        else:
            self.on_ack(pf, md, time.perf_counter())
        finally:
            self._reroute_done(1)

    def _count_resending(self, n: int) -> None:
        with self._failed_lock:
            self._resending += n

    def _queue_for_spool(self, pf: PostFuture, exc: BaseException, outage: bool) -> None:
        """Failed posts are spooled by the worker, those that failed together in one
        transaction: when a client is replaced, hundreds fail at once (one commit each
        would keep the worker busy, and the caller's thread waiting, for a long while)."""
        with self._to_spool_lock:
            self._to_spool.append((pf, exc, outage))
            if len(self._to_spool) > 1:
                return  # a drain is queued already and will take this one too
        try:
            self._worker.submit(self._drain_to_spool)
        except RuntimeError:  # shut down: no drain will come; the caller fails this one
            with self._to_spool_lock:
                self._to_spool.clear()
            raise

    def _drain_to_spool(self) -> None:
        with self._to_spool_lock:
            batch, self._to_spool = self._to_spool, []
        try:
            self._spool_failed([(pf, exc) for pf, exc, _ in batch], any(o for *_, o in batch))
        finally:
            self._reroute_done(len(batch))

    def _spool_failed(self, batch: list[tuple[PostFuture, BaseException]],
                      outage: bool) -> None:
        batch = [(pf, exc) for pf, exc in batch if not pf.done()]
        if not batch:
            return
        try:
            self._failover.spool_failed([pf for pf, _exc in batch], outage)
        except Exception as sp_exc:  # noqa: BLE001
            log.error("could not spool %d posts (%s...): %r", len(batch), batch[0][0].post_id,
                      sp_exc)
            for pf, exc in batch:
                self._fail(pf, exc)

    def _dead_letter(self, pf: PostFuture, exc: BaseException) -> None:
        try:
            self._dead_letters.write(pf.post, exc)
        except Exception as dlq_exc:  # noqa: BLE001
            log.error("could not dead-letter post %s: %r", pf.post_id, dlq_exc)
            self.metrics.incr("dlq_failed")
            self._fail(pf, exc)
            return
        self.metrics.incr("dead_lettered")
        self._fail(pf, exc, dead_lettered=True)

    def _dead_letter_spooled(self, record: Any, exc: BaseException) -> None:
        """Health thread: a spooled record the broker refused for good."""
        self._dead_letters.write_spooled(record, exc)
        self.metrics.incr("dead_lettered")

    def _fail(self, pf: PostFuture, exc: BaseException, dead_lettered: bool = False) -> None:
        if not dead_lettered:
            self.metrics.incr("undeliverable")
            self._record_failed(pf.post_id)
        for h in self.handlers:
            try:
                h.on_failure(pf.post, exc)
            except Exception as cb_exc:  # noqa: BLE001
                self._callback_failed(h, pf, cb_exc)
        pf.set_exception(DeliveryFailed(pf.post_id, exc, dead_lettered))

    def _record_failed(self, post_id: str) -> None:
        with self._failed_lock:
            self._failed_ids.append(post_id)
            self._failed_count += 1

    def _callback_failed(self, handler: Any, pf: PostFuture, exc: BaseException) -> None:
        self.metrics.incr("callback_errors")
        name = getattr(handler, "name", type(handler).__name__)
        self.callback_errors.append((pf.post_id, name, repr(exc)))
        n = self.metrics.counters_fast("callback_errors")
        if n <= 3 or n % 1000 == 0:  # log a few, count them all
            log.warning("delivery handler %s raised for post %s: %r (%d so far; see "
                        "producer.callback_errors)", name, pf.post_id, exc, n)

    # --- what callers read --------------------------------------------------------------------
    @property
    def client(self) -> KafkaProducer | LibrdkafkaClient | None:
        """The underlying client (for ``metrics()`` and experiments): a ``KafkaProducer``, or
        with ``client="confluent"`` a :class:`~.librdkafka.LibrdkafkaClient`."""
        return self._clients.current[1]

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def replay_done_at(self) -> float | None:
        """When the spool and the tail last ran empty after a replay (the metrics' clock), or
        None: no replay yet, or no spool."""
        return None if self._failover is None else self._failover.replay_done_at

    @property
    def acks(self) -> Any:
        """The client's ``acks`` setting (``"all"`` unless given): what an ack promises."""
        return self._kafka_config.get("acks", "all")

    @property
    def state(self) -> State:
        """``SENDING`` without a spool; with one, the failover state."""
        return State.SENDING if self._failover is None else self._failover.state

    @property
    def healthy(self) -> bool:
        """False while posts go to the spool because the broker is unreachable."""
        return self.state is not State.SPOOLING

    def _tail_length(self) -> int:
        return 0 if self._failover is None else self._failover.tail_length

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def kafka_client(self) -> str:
        """Which Kafka client carries the posts: ``"kafka-python"`` or ``"confluent"``."""
        return "confluent" if self._librdkafka else "kafka-python"

    def client_metrics(self) -> dict:
        """kafka-python's own metrics (no percentiles there: see ``self.metrics``)."""
        client = self.client
        return client.metrics() if client is not None else {}

    # --- flush / close ------------------------------------------------------------------------
    def _refuse_on_sender_thread(self, what: str) -> None:
        if is_sender_thread(self.client, self._dead_letters.client):
            raise RuntimeError(
                f"{what}() inside a delivery callback would deadlock: callbacks run on the "
                f"client's sender thread, which {what}() waits for. Hand the work to a worker.")

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every accepted post is acked, spooled or failed. True if all were."""
        self._refuse_on_sender_thread("flush")
        deadline = None if timeout is None else time.monotonic() + timeout
        client = self.client
        if client is not None and self.state is State.SENDING:
            try:
                client.flush(timeout=timeout)
            except (KafkaTimeoutError, UnknownError):  # UnknownError: kafka_quirks, quirk 8
                pass  # the wait below is on the posts themselves
        while len(self._in_flight) or self._tail_length():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        for worker in (self._dlq_worker, self._worker):  # a failed re-send is spooled later
            worker.submit(lambda: None).result(
                timeout=None if deadline is None else max(0.1, deadline - time.monotonic()))
        return True

    def drain_spool(self, timeout: float = 60.0) -> int:
        """Block until the spool is empty (the broker must be up); returns records left.

        Posts the worker thread is about to spool (failed deliveries) are waited for first.
        Posts still in flight are not: :meth:`flush` first if some may still fail.
        """
        if self.spool is None:
            return 0
        deadline = time.monotonic() + timeout
        try:
            self._worker.submit(lambda: None).result(timeout=timeout)
        except (RuntimeError, concurrent.futures.TimeoutError):
            pass  # closed, or the worker is busy: count what is there
        while (not self.spool.is_empty() or self._tail_length()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.spool) + self._tail_length()

    def close(self, timeout: float = 30.0) -> CloseReport:
        """Stop accepting posts, deliver what is in flight, and say what became of each one.

        With a spool and a broker that answers, the spool is replayed first (within
        ``timeout``); what is still in flight after ``timeout`` is spooled, not dropped, and
        what stays in the spool is replayed by the next producer on the same file.
        """
        self._refuse_on_sender_thread("close")
        self._closed = True
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        failover = self._failover
        if (failover is not None and not self.spool.is_empty()
                and (self.healthy or failover.broker_answers())):
            self.drain_spool(timeout=max(0.0, deadline - time.monotonic()))
            self.flush(max(0.1, deadline - time.monotonic()))
        if failover is not None:  # every wait below comes out of the one deadline
            failover.stop(max(0.1, deadline - time.monotonic()))
            for pf in failover.tail_to_spool():  # what waits behind the backlog: on disk
                self._fail(pf, KafkaTimeoutError("the spool refused it at close()"))
        undelivered = self._in_flight.snapshot()
        if failover is not None:  # still not acked after the timeout: keep them on disk
            for pf in undelivered:
                self._in_flight.pop(pf, None)
            not_acked = KafkaTimeoutError("not acked before close()")
            self._spool_failed([(pf, not_acked) for pf in undelivered], False)
        self._clients.closed = True
        client = self.client
        if client is not None:
            if undelivered:
                force_close(client)
            else:
                client.close(timeout=5)
        self._dlq_worker.shutdown(wait=True)
        self._worker.shutdown(wait=True)
        self._dead_letters.close()
        return self._close_report(undelivered)

    def _close_report(self, undelivered: list[PostFuture]) -> CloseReport:
        counters = self.metrics.counters()
        with self._failed_lock:
            failed = list(dict.fromkeys(self._failed_ids))
            failed_count = self._failed_count
        report = CloseReport(
            accepted=counters.get("submitted", 0),
            acked=counters.get("acked", 0),
            spooled_pending=len(self.spool) if self.spool is not None else 0,
            dead_lettered=counters.get("dead_lettered", 0),
            failed_ids=failed, failed_count=failed_count,
            undelivered_ids=[pf.post_id for pf in undelivered
                             if not pf.done() and pf.post_id not in set(failed)])
        if self.spool is not None:
            self.spool.close()
        return report

    def __enter__(self) -> AsyncPostProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.close()


# --- the parts the facade is built from -------------------------------------------------------
@dataclass
class CloseReport:
    accepted: int
    acked: int
    spooled_pending: int
    dead_lettered: int
    failed_ids: list[str] = field(default_factory=list)
    undelivered_ids: list[str] = field(default_factory=list)
    #: every failed post, counted (``failed_ids`` names the newest MAX_FAILED_IDS only)
    failed_count: int = 0

    @property
    def lost(self) -> int:
        """Accepted posts that are neither on Kafka, nor in the DLQ, nor in the spool."""
        return max(self.failed_count, len(self.failed_ids)) + len(self.undelivered_ids)


class ClientSlot:
    """The current ``KafkaProducer`` and its generation, read and replaced as one value.

    ``submit`` reads :attr:`current` without a lock (one attribute read). A replacement (worker
    or health thread, one at a time) builds the new client, then swaps the pair; the old
    client is force-closed on the worker, and its errbacks send what it held again.
    """

    def __init__(self, new_client: Callable[[], KafkaProducer], worker: Any, metrics: Any):
        self._new_client = new_client
        self._worker = worker
        self._metrics = metrics
        self._lock = threading.Lock()
        self.closed = False
        self.connect_error: KafkaTimeoutError | None = None  # why the first client is missing
        try:
            client = new_client()
        except KafkaTimeoutError as exc:
            client, self.connect_error = None, exc
        self.current: tuple[int, KafkaProducer | None] = (1, client)

    def replace(self, generation: int, rebuild: bool = True) -> None:
        """Replace the client of that generation, unless it was replaced already (one bad
        client's errors arrive many times, from the worker and the health thread).
        ``rebuild=False``: leave no client (the broker does not answer: building one would
        only wait for it); the health thread builds one when it answers again."""
        with self._lock:
            current_generation, old = self.current
            if generation != current_generation or self.closed:
                return
            client = None
            try:
                if rebuild:
                    client = self._new_client()
            except KafkaTimeoutError:
                pass
            self.current = (current_generation + 1, client)
            self._metrics.incr("client_rebuilds")
        if old is not None:
            self._worker.submit(force_close, old)


def _client_settings(bootstrap_servers: str | list[str] | None, kafka_config: dict[str, Any],
                     client: str, max_in_flight: int) -> dict[str, Any]:
    """The client's settings, checked: the lab's broker when none is named (started if need
    be), the lab defaults under the caller's settings; for librdkafka, translated once here
    so that a setting it lacks fails now, not at the first send."""
    if bootstrap_servers is None:
        cfg = broker.ensure().client_config()
        bootstrap_servers = cfg.pop("bootstrap_servers")
        kafka_config = {**cfg, **kafka_config}
    config = check_producer_settings(
        {**LAB_DEFAULTS, **kafka_config, "bootstrap_servers": bootstrap_servers})
    if client == "confluent":
        producer_properties(config, max_in_flight)
    return config


def _check_options(mode: str, max_in_flight: Any, on_full: str, spool_path: str | None,
                   max_block_s: Any, probe_interval_s: Any, stall_timeout_s: Any,
                   client: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {MODES}")
    if client not in CLIENTS:
        raise ValueError(f"client: {client!r} is not one of {CLIENTS}")
    if type(max_in_flight) is not int or max_in_flight < 1:
        raise ValueError(f"max_in_flight: must be an integer >= 1, got {max_in_flight!r}")
    if on_full not in ON_FULL_POLICIES:
        raise ValueError(f"on_full: {on_full!r} is not one of {ON_FULL_POLICIES}")
    if on_full == "spool" and not spool_path:
        raise ValueError("on_full: 'spool' needs spool_path=...")
    for name, value in (("max_block_s", max_block_s), ("probe_interval_s", probe_interval_s),
                        ("stall_timeout_s", stall_timeout_s)):
        if type(value) not in (int, float) or not value > 0:
            raise ValueError(f"{name}: must be a number of seconds > 0, got {value!r}")
