"""confluent-kafka (librdkafka, in C) behind the interface the producer uses from kafka-python.

``AsyncPostProducer(client="confluent")`` builds a :class:`LibrdkafkaClient` where it would
build a ``KafkaProducer``. The two clients answer "where and when does my callback run?"
differently, and that is the lesson of notebook 11:

* kafka-python runs a **sender thread** of its own: ``send()`` appends to a batch and returns
  a future; the sender thread runs its callbacks when the broker answers.
* librdkafka runs its own C threads for the network, but a **delivery report is only served
  inside ``poll()`` or ``flush()``**, on the thread that calls them. A program that never
  polls gets no callbacks at all, and its local queue fills up until ``produce()`` raises
  ``BufferError: Local: Queue full``.

So the lab owns one **poll thread** per client (``lab-librdkafka-poll``): it calls
``poll()`` in a loop, and every delivery report, and with it every callback a student
registers, runs there and nowhere else. :meth:`LibrdkafkaClient.flush` does not call
librdkafka's ``flush()`` (that would serve reports on the caller's thread): it waits until
the poll thread has served them all.

What else is mapped, so that the failover and its tests are the same for both clients:

* **Errors** (:func:`exception_for`): a broker's error code becomes the very ``kafka.errors``
  class kafka-python raises for it (``MessageSizeTooLargeError``, ``NotLeaderForPartitionError``,
  ...); librdkafka's local ones become ``KafkaTimeoutError`` (``_MSG_TIMED_OUT``: the delivery
  timeout passed), ``KafkaConnectionError`` (transport) or :class:`LocalClientError`, whose
  ``retriable`` and ``fatal`` come from librdkafka itself. A purged record (a client dropped
  by the failover) fails like a force-closed kafka-python client's: not retriable.
* **The in-flight bound** is the lab's (``max_in_flight``): librdkafka's own queue is made
  larger, so ``BufferError`` is a safety net here, handled by waiting for the poll thread.
* **Bootstrap**: librdkafka's constructor never fails for want of a broker; the client asks
  for the topic's metadata within ``bootstrap_timeout_ms`` and raises ``KafkaTimeoutError``
  (no broker) or :class:`~.kafka_quirks.TopicMetadataTimeout` (no such topic), as
  kafka-python's constructor and :func:`~.kafka_quirks.warm_metadata` do.
* **Force close**: ``purge()`` fails what the client holds (their callbacks run).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from kafka import errors as kerrors

from lab_kit.kafka_settings import LIBRDKAFKA_PRODUCER_KEYS, librdkafka_config

log = logging.getLogger(__name__)
#: librdkafka's own log lines ("Connect to ... failed") go here, on the polling thread,
#: instead of straight to stderr (a notebook cell's output)
RDKAFKA_LOG = logging.getLogger("lab_kit.librdkafka")

POLL_TIMEOUT_S = 0.05  # the poll thread's longest sleep when no report is waiting
QUEUE_FULL_WAIT_S = 5.0  # how long a send waits for room in librdkafka's queue, then fails
DEFAULT_MAX_REQUEST_SIZE = 1_048_576  # kafka-python's max_request_size, for the same limit
DEFAULT_DELIVERY_TIMEOUT_MS = 120_000  # kafka-python's (librdkafka's own is 300,000)


def confluent_kafka() -> Any:
    """The ``confluent_kafka`` module, imported on first use (the kafka-python path of the lab
    does not need it), or an ``ImportError`` that says how to get it."""
    try:
        import confluent_kafka
    except ImportError as exc:
        raise ImportError("client='confluent' needs the confluent-kafka package: "
                          "pip install confluent-kafka (environment.yml has it)") from exc
    return confluent_kafka


class Acked(NamedTuple):
    """Where a record landed: the three attributes of kafka-python's ``RecordMetadata`` the
    producer reads."""

    topic: str
    partition: int
    offset: int


class LocalClientError(kerrors.KafkaError):
    """A librdkafka error of its own (not a broker's), e.g. ``_TRANSPORT``; ``retriable`` and
    ``fatal`` are librdkafka's verdict."""

    def __init__(self, name: str, message: str, *, retriable: bool, fatal: bool = False):
        super().__init__(f"{name}: {message}")
        self.name, self.retriable, self.fatal = name, retriable, fatal


def exception_for(err: Any) -> BaseException:
    """librdkafka's ``KafkaError`` as the exception kafka-python would have given."""
    ck = confluent_kafka()
    code = err.code()
    E = ck.KafkaError
    if code == E._MSG_TIMED_OUT:
        return kerrors.KafkaTimeoutError(f"delivery timeout passed ({err.str()})")
    if code == E.MSG_SIZE_TOO_LARGE:
        return kerrors.MessageSizeTooLargeError(err.str())
    if code in (E._TRANSPORT, E._ALL_BROKERS_DOWN):
        return kerrors.KafkaConnectionError(err.str())
    if code in (E._PURGE_QUEUE, E._PURGE_INFLIGHT):  # like a force-closed kafka-python client
        return kerrors.IllegalStateError(f"client dropped: {err.str()}")
    if code > 0 and not err.fatal():  # a broker error code: the class kafka-python uses
        return kerrors.for_code(code)(err.str())
    return LocalClientError(err.name(), err.str(), retriable=bool(err.retriable()),
                            fatal=bool(err.fatal()))


class RecordFuture:
    """What :meth:`LibrdkafkaClient.send` returns: the part of kafka-python's
    ``FutureRecordMetadata`` the lab uses (``get``, ``is_done``, ``succeeded``, ``exception``,
    ``add_callback``, ``add_errback``). Settled on the poll thread."""

    __slots__ = ("is_done", "value", "exception", "_event", "_lock", "_callbacks")

    def __init__(self) -> None:
        self.is_done = False
        self.value: Any = None
        self.exception: BaseException | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[tuple[bool, Callable[[Any], None]]] = []

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def add_callback(self, fn: Callable[[Any], None]) -> RecordFuture:
        return self._add(True, fn)

    def add_errback(self, fn: Callable[[Any], None]) -> RecordFuture:
        return self._add(False, fn)

    def _add(self, on_success: bool, fn: Callable[[Any], None]) -> RecordFuture:
        with self._lock:
            if not self.is_done:
                self._callbacks.append((on_success, fn))
                return self
        if on_success == (self.exception is None):
            fn(self.value if on_success else self.exception)
        return self

    def get(self, timeout: float | None = None) -> Any:
        if not self._event.wait(timeout):
            raise kerrors.KafkaTimeoutError(f"no delivery report within {timeout} s")
        if self.exception is not None:
            raise self.exception
        return self.value

    def report(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery callback (on the poll thread)."""
        with self._lock:
            if err is None:
                self.value = Acked(msg.topic(), msg.partition(), msg.offset())
            else:
                self.exception = exception_for(err)
            self.is_done = True
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        for on_success, fn in callbacks:
            if on_success == (self.exception is None):
                fn(self.value if on_success else self.exception)


def producer_properties(kafka_config: dict[str, Any], queue_messages: int) -> dict[str, Any]:
    """librdkafka properties for the lab's (kafka-python named, checked) producer settings,
    with kafka-python's defaults where the two clients differ: idempotence on, the same
    largest request and delivery timeout."""
    props = librdkafka_config(kafka_config, producer=True)
    names = LIBRDKAFKA_PRODUCER_KEYS
    props.setdefault(names["enable_idempotence"], True)
    props.setdefault(names["max_request_size"], DEFAULT_MAX_REQUEST_SIZE)
    props.setdefault(names["delivery_timeout_ms"], DEFAULT_DELIVERY_TIMEOUT_MS)
    props.setdefault(names["acks"], "all")
    # murmur2, as kafka-python and Java: a user's posts land on the same partition whichever
    # client wrote them (librdkafka's own default hashes keys with CRC32)
    props["partitioner"] = "murmur2_random"
    props["logger"] = RDKAFKA_LOG
    # the lab's max_in_flight is the bound; librdkafka's queue (100,000 by default) is larger
    props["queue.buffering.max.messages"] = max(100_000, 2 * queue_messages)
    return props


class LibrdkafkaClient:
    """A ``confluent_kafka.Producer`` with the lab's poll thread, used where the producer
    would use a ``KafkaProducer``: ``send``, ``flush``, ``close``, ``partitions_for``,
    ``metrics``, plus :meth:`produce_for` (the hot path) and :meth:`force_close`."""

    def __init__(self, kafka_config: dict[str, Any], *, topic: str | None = None,
                 queue_messages: int = 10_000):
        ck = confluent_kafka()
        props = producer_properties(kafka_config, queue_messages)
        self._producer = ck.Producer(props)
        # after stop: every record still gets its report, at the latest when its delivery
        # timeout passes; the poll thread serves them until then
        self._drain_s = props["delivery.timeout.ms"] / 1000 + 5
        self._stop = threading.Event()
        self.poll_thread = threading.Thread(target=self._serve, name="lab-librdkafka-poll",
                                            daemon=True)
        self.poll_thread.start()
        if topic is not None:
            self._bootstrap(topic, kafka_config.get("bootstrap_timeout_ms", 3000) / 1000)

    def _bootstrap(self, topic: str, timeout_s: float) -> None:
        """Raise as kafka-python would when no broker answers (``KafkaTimeoutError``) or the
        topic has no metadata (``TopicMetadataTimeout``); the client is closed first."""
        # a lazy import: kafka_quirks' force_close/is_sender_thread know this module
        from lab_kit.producer.kafka_quirks import TopicMetadataTimeout
        ck = confluent_kafka()
        try:
            md = self._producer.list_topics(topic, timeout=timeout_s)
        except ck.KafkaException as exc:
            self.force_close()
            raise kerrors.KafkaTimeoutError(f"no broker answered within {timeout_s:g} s: "
                                            f"{exc}") from exc
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            self.force_close()
            raise TopicMetadataTimeout(
                f"topic {topic!r} has no metadata on the broker: it does not exist, and the "
                f"lab's brokers create no topic on first use; create it with `python -m "
                f"lab_kit topics` or lab_kit.topics.ensure_topics (or it has no leader now)")

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._poll()
        # stopped: serve what is left (purged records, records a dead broker holds), so that
        # no callback is lost; then librdkafka's own threads stop too
        deadline = time.monotonic() + self._drain_s
        while len(self._producer) and time.monotonic() < deadline:
            self._poll()
        if not len(self._producer):
            self._producer.close()

    def _poll(self) -> None:
        """One ``poll()``. A callback that raises makes ``poll()`` raise; the thread must
        outlive it, or no later report would ever be served."""
        try:
            self._producer.poll(POLL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - logged; the producer's own callbacks catch theirs
            log.exception("a delivery callback raised on the poll thread")

    # --- sending ------------------------------------------------------------------------------
    def produce_for(self, topic: str, key: bytes | None, value: bytes,
                    on_delivery: Callable[[Any, Any], None]) -> None:
        """``produce()`` with ``on_delivery(err, msg)`` run later on the poll thread. A full
        local queue (``BufferError``) waits for the poll thread to make room, at most
        ``QUEUE_FULL_WAIT_S``, then raises ``KafkaTimeoutError``."""
        try:
            self._producer.produce(topic, value, key, on_delivery=on_delivery)
        except BufferError:
            self._produce_when_room(topic, key, value, on_delivery, None)

    def _produce_when_room(self, topic: str, key: bytes | None, value: bytes,
                           on_delivery: Callable[[Any, Any], None], headers: Any) -> None:
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while True:
            time.sleep(0.001)  # the poll thread serves reports meanwhile, making room
            try:
                self._producer.produce(topic, value, key, on_delivery=on_delivery,
                                       headers=headers)
                return
            except BufferError as exc:
                if time.monotonic() > deadline:
                    raise kerrors.KafkaTimeoutError(
                        f"librdkafka's queue stayed full for {QUEUE_FULL_WAIT_S:g} s") from exc

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> RecordFuture:
        """kafka-python's ``send``: a future settled on the poll thread."""
        future = RecordFuture()
        try:
            self._producer.produce(topic, value, key, on_delivery=future.report,
                                   headers=headers)
        except BufferError:
            self._produce_when_room(topic, key, value, future.report, headers)
        except confluent_kafka().KafkaException as exc:
            raise exception_for(exc.args[0]) from exc
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record is settled and its report served by the poll thread;
        ``KafkaTimeoutError`` after ``timeout`` s, as kafka-python's ``flush``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._producer):
            if deadline is not None and time.monotonic() > deadline:
                raise kerrors.KafkaTimeoutError(
                    f"{len(self._producer)} records not settled within {timeout} s")
            time.sleep(0.002)

    def close(self, timeout: float | None = None) -> None:
        """Flush (``KafkaTimeoutError`` after ``timeout`` s), then stop the poll thread. It
        serves what is left before it ends, and stops librdkafka's threads (they would go on
        reconnecting to a broker that is gone)."""
        try:
            self.flush(timeout)
        finally:
            self._stop.set()
            if threading.current_thread() is not self.poll_thread:
                self.poll_thread.join(1)

    def force_close(self) -> None:
        """Fail every record the client holds now (their callbacks run), then stop."""
        try:
            self._producer.purge(True, True)
        except Exception:  # noqa: BLE001 - purging a broken client: stop it anyway
            pass
        self._stop.set()  # the poll thread serves the purged records' reports, then ends
        if threading.current_thread() is not self.poll_thread:
            self.poll_thread.join(1)

    # --- what callers read --------------------------------------------------------------------
    def partitions_for(self, topic: str, timeout_s: float = 5.0) -> set[int]:
        md = self._producer.list_topics(topic, timeout=timeout_s)
        meta = md.topics.get(topic)
        return set() if meta is None or meta.error is not None else set(meta.partitions)

    def metrics(self) -> dict[str, Any]:
        """librdkafka reports statistics as JSON in a callback (``statistics.interval.ms``);
        the lab reads only the length of its queue here."""
        return {"librdkafka": {"queue_length": len(self._producer)}}

    def __len__(self) -> int:
        return len(self._producer)
