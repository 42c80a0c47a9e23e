"""The Kafka clients of the moderation stage, behind one small interface, in two flavours.

The moderation stage (:mod:`lab_kit.moderation`) needs a consumer (poll, pause/resume, seek,
commit, rebalance callbacks) and a producer (send with a delivery callback, flush, close).
Two implementations:

* ``"kafka-python"`` (:class:`KafkaPythonClients`): the client the lessons use. Pure Python:
  about 11 µs of CPU per consumed record and ~30 µs per produced one on the lab machine.
* ``"confluent"`` (:class:`ConfluentClients`): confluent-kafka (librdkafka, C): about 1.5 µs
  per consumed and ~5 µs per produced record. At 10,000 posts/s, with two outputs per post,
  that is the difference between ~0.7 and ~0.1 of a core for the clients alone, on a 2-core
  machine shared with the broker, the backend and the producer under test.

The stage works with records that have ``topic, partition, offset, timestamp (ms), key,
value, headers`` attributes (kafka-python's ``ConsumerRecord``, or :class:`Rec`), and with
partitions as ``(topic, partition)`` tuples. Delivery results go to ``chunk.output_done(err)``
(:class:`lab_kit.moderation.offsets.Chunk`): on kafka-python's sender thread, or for confluent in
:meth:`ConfluentClients.serve` on the stage's own thread.

**Transactions** (the stage's ``guarantee="exactly-once"``): built with a ``transactional_id``
in ``producer_settings``, the producer initializes its transactions when it is built, and
:meth:`StageClients.begin`, :meth:`StageClients.commit_transaction` (the consumed offsets
and the outputs in one commit, fenced by the group's generation: KIP-447) and
:meth:`StageClients.abort` wrap the client's own calls, each bounded in time. The consumer
always reads ``read_committed``: the recheck worker must not act on an aborted output.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from kafka import KafkaConsumer, KafkaProducer

from lab_kit.kafka_settings import (
    LIBRDKAFKA_PRODUCER_KEYS,
    check_consumer_settings,
    check_producer_settings,
    librdkafka_config,
)
from lab_kit.moderation.offsets import TP
from lab_kit.producer.kafka_quirks import end_transaction, force_close

__all__ = ["CLIENTS", "DEFAULT_CLIENT", "GroupMembershipLost", "Rec", "StageClients",
           "KafkaPythonClients", "ConfluentClients", "make_clients", "consumer_settings",
           "producer_config", "check_settings"]

CLIENTS = ("kafka-python", "confluent")
#: The client of the service *process* (``python -m lab_kit.moderation``, and the benches and
#: drills that start it): librdkafka, which costs the stage a fraction of kafka-python's CPU
#: per record. A :class:`~lab_kit.moderation.service.ModerationService` built in a notebook
#: keeps kafka-python, the client the lessons teach.
DEFAULT_CLIENT = "confluent"
#: Fewer, fuller fetches: each fetch request costs the broker CPU of its own; waiting 50 ms
#: at most for 64 KiB is well inside the 2 s end-to-end budget.
FETCH_MIN_BYTES = 65536
FETCH_MAX_WAIT_MS = 50
BOOTSTRAP_TIMEOUT_MS = 3000  # no broker: the consumer's constructor fails within 3 s
TXN_TIMEOUT_S = 10.0  # longest wait for a transaction's commit or abort before giving up


def consumer_settings(kafka_config: Mapping[str, Any], *, group_id: str,
                      max_poll_records: int, session_timeout_ms: int,
                      heartbeat_interval_ms: int) -> dict[str, Any]:
    """The stage consumer's settings in kafka-python names: ``kafka_config`` (bootstrap,
    security) plus what the stage sets itself. :class:`ConfluentClients` translates the same
    values. A setting the stage sets itself may not come in ``kafka_config`` as well."""
    own = {"group_id": group_id, "enable_auto_commit": False, "auto_offset_reset": "earliest",
           "max_poll_records": max_poll_records, "session_timeout_ms": session_timeout_ms,
           "heartbeat_interval_ms": heartbeat_interval_ms, "fetch_min_bytes": FETCH_MIN_BYTES,
           "fetch_max_wait_ms": FETCH_MAX_WAIT_MS, "isolation_level": "read_committed"}
    for name in own:
        if name in kafka_config:
            raise ValueError(f"{name}: set by the moderation stage itself, not in the client "
                             f"settings (got {name}={kafka_config[name]!r} there)")
    return {"bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **kafka_config, **own}


def producer_config(kafka_config: Mapping[str, Any],
                    producer_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The stage producer's settings in kafka-python names (``kafka_config`` wins)."""
    return {**producer_settings, **kafka_config}


def check_settings(name: str, kafka_config: Mapping[str, Any], *, group_id: str,
                   max_poll_records: int, session_timeout_ms: int, heartbeat_interval_ms: int,
                   producer_settings: Mapping[str, Any]) -> None:
    """Every setting the ``name`` clients would be built with, checked now (no network, no
    thread): ``ValueError`` naming the first bad one. The checks use kafka-python's names
    and rules (:mod:`lab_kit.kafka_settings`) for both flavours; for ``"confluent"`` the
    translation to librdkafka properties is tried too."""
    if name not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, got {name!r}")
    if not isinstance(group_id, str) or not group_id.strip():
        raise ValueError(f"group_id: must be a non-empty string, got {group_id!r}")
    consumer = consumer_settings(
        kafka_config, group_id=group_id, max_poll_records=max_poll_records,
        session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms)
    for key in kafka_config:
        in_consumer, in_producer = (key in KafkaConsumer.DEFAULT_CONFIG,
                                    key in KafkaProducer.DEFAULT_CONFIG)
        if in_consumer != in_producer:
            raise ValueError(f"{key}: a kafka-python {'producer' if in_producer else 'consumer'}"
                             f"-only setting; the stage's client settings go to both its "
                             f"consumer and its producer")
    check_consumer_settings(consumer)
    check_producer_settings(producer_config(kafka_config, producer_settings))
    if name == "confluent":
        confluent_config(kafka_config)


class GroupMembershipLost(RuntimeError):
    """The member is not in its group right now: it may not commit offsets."""


class Rec(NamedTuple):
    """A consumed record, the shape of kafka-python's ``ConsumerRecord`` the stage uses."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch (producer create time)
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class StageClients:
    """One consumer (subscribed to one topic) and one producer. See the module docstring."""

    name = "?"

    def __init__(self, kafka_config: Mapping[str, Any], *, group_id: str, topic: str,
                 max_poll_records: int, session_timeout_ms: int, heartbeat_interval_ms: int,
                 producer_settings: Mapping[str, Any],
                 on_assign: Callable[[list[TP]], None],
                 on_revoke: Callable[[list[TP]], None]) -> None:
        self.kafka_config = dict(kafka_config)
        self.group_id = group_id
        self.topic = topic
        self.max_poll_records = max_poll_records
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.producer_settings = dict(producer_settings)
        self.on_assign = on_assign
        self.on_revoke = on_revoke

    # consumer
    def poll(self, timeout_s: float) -> list[Any]: raise NotImplementedError
    def pause(self, tps: Iterable[TP]) -> None: raise NotImplementedError
    def resume(self, tps: Iterable[TP]) -> None: raise NotImplementedError
    def seek(self, tp: TP, offset: int) -> None: raise NotImplementedError
    def commit(self, offsets: Mapping[TP, int]) -> None: raise NotImplementedError
    def close_consumer(self) -> None: raise NotImplementedError
    def fetched_end(self) -> dict[TP, int]:
        """The high watermark of each partition this consumer owns, as its own fetches last
        saw it (no request: each fetch response carries them); a partition not fetched yet
        is left out. Records any producer wrote count, a peer member's too."""
        raise NotImplementedError
    # producer
    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None, chunk: Any) -> None:
        raise NotImplementedError
    def serve(self) -> None:
        """Run pending delivery callbacks (confluent); a no-op for kafka-python."""
    def flush(self, timeout_s: float) -> bool: raise NotImplementedError
    def rebuild_producer(self) -> None: raise NotImplementedError
    def close_producer(self, timeout_s: float) -> None: raise NotImplementedError
    # transactions (a transactional_id in producer_settings)
    @property
    def transactional(self) -> bool:
        return self.producer_settings.get("transactional_id") is not None
    def begin(self) -> None: raise NotImplementedError
    def commit_transaction(self, offsets: Mapping[TP, int]) -> None:
        """Add ``offsets`` (the consumer group's, next offset to read per partition) to the
        open transaction and commit it; raises if either step fails or times out."""
        raise NotImplementedError
    def abort(self) -> None: raise NotImplementedError


# =========================================================================================
# kafka-python
# =========================================================================================


class KafkaPythonClients(StageClients):
    name = "kafka-python"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from kafka import ConsumerRebalanceListener

        outer = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                outer.on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                outer._from_commits = list(assigned)  # done in poll(): see there
                outer.on_assign([(tp.topic, tp.partition) for tp in assigned])

        self.consumer = KafkaConsumer(**consumer_settings(
            self.kafka_config, group_id=self.group_id, max_poll_records=self.max_poll_records,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms))
        try:
            self.consumer.subscribe([self.topic], listener=_Listener())
            # learn the topic's partitions BEFORE the first poll joins the group: a leader
            # without them assigns nothing and kafka-python then needs a second rebalance
            self.consumer.partitions_for_topic(self.topic)
        except BaseException:
            self.consumer.close(autocommit=False)
            raise
        self._producer: Any = None
        self._from_commits: list[Any] = []  # partitions assigned, not yet moved to commits

    def _start_from_commit(self, tp: Any) -> bool:
        """A newly assigned partition starts at the group's committed offset. kafka-python
        keeps the position of a partition this member held before the rebalance, even when the
        member had been thrown out of the group meanwhile (paused past the session timeout: a
        zombie) and another member moved the partition on. Found by the zombie test: the woken
        member re-moderated from its stale position, 1,180 duplicate results under
        exactly-once. librdkafka starts an assignment from the committed offsets itself.
        Called from :meth:`poll` on the stage's thread: kafka-python 3 runs the rebalance
        listener on its IO thread, where a blocking call (``committed()``) is refused.
        False if the committed offset could not be read: the next poll tries again (and drops
        the partition's records until then)."""
        try:
            committed = self.consumer.committed(tp)
        except Exception:  # noqa: BLE001 - coordinator moving: next poll
            return False
        if committed is None:
            self.consumer.seek_to_beginning(tp)  # nothing committed: auto_offset_reset
        else:
            self.consumer.seek(tp, committed)
        return True

    @staticmethod
    def _tp(tp: TP) -> Any:
        from kafka import TopicPartition

        return TopicPartition(tp[0], tp[1])

    def poll(self, timeout_s: float) -> list[Any]:
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000),
                                    max_records=self.max_poll_records)
        if self._from_commits:  # a rebalance: these partitions' records may come from stale
            moving = set(self._from_commits)  # positions; drop them, move, read again
            self._from_commits = [tp for tp in self._from_commits
                                  if not self._start_from_commit(tp)]
            polled = {tp: recs for tp, recs in polled.items() if tp not in moving}
        return [r for recs in polled.values() for r in recs]

    def pause(self, tps: Iterable[TP]) -> None:
        self.consumer.pause(*[self._tp(tp) for tp in tps])

    def resume(self, tps: Iterable[TP]) -> None:
        self.consumer.resume(*[self._tp(tp) for tp in tps])

    def seek(self, tp: TP, offset: int) -> None:
        self.consumer.seek(self._tp(tp), offset)

    def commit(self, offsets: Mapping[TP, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit({self._tp(tp): OffsetAndMetadata(off, "", -1)
                              for tp, off in offsets.items()})

    def close_consumer(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close(autocommit=False)

    def fetched_end(self) -> dict[TP, int]:
        ends = {(tp.topic, tp.partition): self.consumer.highwater(tp)
                for tp in self.consumer.assignment()}
        return {tp: e for tp, e in ends.items() if e is not None}

    def _producer_client(self) -> Any:
        if self._producer is None:
            producer = KafkaProducer(**producer_config(self.kafka_config,
                                                       self.producer_settings))
            if self.transactional:
                try:
                    producer.init_transactions()  # fences (and aborts) an older epoch's
                except BaseException:
                    force_close(producer)
                    raise
            self._producer = producer
        return self._producer

    def begin(self) -> None:
        self._producer_client().begin_transaction()

    def commit_transaction(self, offsets: Mapping[TP, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        metadata = self.consumer.group_metadata()
        if offsets and (metadata.generation_id < 0 or not metadata.member_id):
            # A member the group dropped (paused past the session timeout) reports no
            # generation until it rejoins, and the broker does not check a transactional
            # offset commit that carries none (generation -1 is the pre-KIP-447 form). Found by
            # the zombie test: the woken member committed its stale work this way, 77
            # duplicate results. Such a transaction must abort.
            raise GroupMembershipLost(
                f"group {self.group_id}: this member has no generation (it was dropped from "
                f"the group); its transaction may not commit offsets")
        end_transaction(self._producer_client(), True, TXN_TIMEOUT_S,
                        offsets={self._tp(tp): OffsetAndMetadata(off, "", -1)
                                 for tp, off in offsets.items()},
                        group_metadata=metadata)

    def abort(self) -> None:
        if self._producer is not None:
            end_transaction(self._producer, False, TXN_TIMEOUT_S)

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None, chunk: Any) -> None:
        chunk.expect()
        try:
            fut = self._producer_client().send(topic, key=key, value=value,
                                               headers=headers or None)
        except Exception as exc:  # noqa: BLE001 - KafkaError, no broker, closed producer
            chunk.output_done(exc)
            return
        fut.add_both(_settle, chunk)

    def flush(self, timeout_s: float) -> bool:
        if self._producer is None:
            return True
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
            return True
        except KafkaError:
            return False

    def rebuild_producer(self) -> None:
        """Abort what the producer holds and drop it: after an error kafka-python's
        idempotent producer may never send again (the workaround shared with the producer:
        :func:`lab_kit.producer.kafka_quirks.force_close`)."""
        old, self._producer = self._producer, None
        if old is not None:
            force_close(old)

    def close_producer(self, timeout_s: float) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            try:
                old.close(timeout=timeout_s)
            except Exception:  # noqa: BLE001
                force_close(old)


def _settle(chunk: Any, result: Any) -> None:
    chunk.output_done(result if isinstance(result, BaseException) else None)


# =========================================================================================
# confluent-kafka
# =========================================================================================

def confluent_config(kafka_config: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's client settings (bootstrap, security) as librdkafka properties.

    >>> confluent_config({"bootstrap_servers": "127.0.0.1:9092"})
    {'bootstrap.servers': '127.0.0.1:9092'}
    """
    return librdkafka_config(kafka_config, ignore={"enable_idempotence"})


class ConfluentClients(StageClients):
    name = "confluent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            import confluent_kafka as ck
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError("client='confluent' needs confluent-kafka: "
                             "pip install '.[confluent]'") from exc
        self._ck = ck
        self._base = confluent_config(self.kafka_config)
        self.consumer = ck.Consumer({
            **self._base, "group.id": self.group_id, "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "enable.partition.eof": False,
            "fetch.min.bytes": FETCH_MIN_BYTES, "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
            "isolation.level": "read_committed",
        })
        self._assigning: set[TP] = set()
        self.consumer.subscribe(
            [self.topic], on_assign=self._assigned,
            on_revoke=lambda _c, parts: self.on_revoke([(p.topic, p.partition)
                                                        for p in parts]))
        self._producer: Any = None
        self.last_error: str | None = None

    def _assigned(self, _consumer: Any, parts: list[Any]) -> None:
        # assign now (not after the callback) so a paused flag left from before can be
        # cleared; positions come from the committed offsets
        self.consumer.assign(parts)
        with contextlib.suppress(Exception):
            self.consumer.resume(parts)
        self._assigning = {(p.topic, p.partition) for p in parts}
        try:
            self.on_assign(sorted(self._assigning))
        finally:
            self._assigning = set()

    def _tps(self, tps: Iterable[TP], offsets: Mapping[TP, int] | None = None) -> list[Any]:
        ck = self._ck
        if offsets is not None:
            return [ck.TopicPartition(t, p, offsets[(t, p)]) for t, p in tps]
        return [ck.TopicPartition(t, p) for t, p in tps]

    def poll(self, timeout_s: float) -> list[Any]:
        msgs = self.consumer.consume(num_messages=self.max_poll_records, timeout=timeout_s)
        out = []
        for m in msgs:
            err = m.error()
            if err is not None:
                self.last_error = str(err)
                if err.fatal():
                    raise self._ck.KafkaException(err)
                continue
            out.append(Rec(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(),
                           m.value(), m.headers() or []))
        return out

    def pause(self, tps: Iterable[TP]) -> None:
        self.consumer.pause(self._tps(tps))

    def resume(self, tps: Iterable[TP]) -> None:
        tps = [tp for tp in tps if tp not in self._assigning]  # resumed on assignment
        if tps:
            self.consumer.resume(self._tps(tps))

    def seek(self, tp: TP, offset: int) -> None:
        if tp in self._assigning:
            # inside on_assign the partition is not fetched yet: librdkafka starts it from
            # the committed offset, which the revoke committed; nothing to move
            return
        self.consumer.seek(self._ck.TopicPartition(tp[0], tp[1], offset))

    def commit(self, offsets: Mapping[TP, int]) -> None:
        self.consumer.commit(offsets=self._tps(offsets, offsets), asynchronous=False)

    def close_consumer(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()

    def fetched_end(self) -> dict[TP, int]:
        ends = {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, cached=True)[1]
                for tp in self.consumer.assignment()}
        # OFFSET_INVALID (-1001) before the partition's first fetch
        return {tp: e for tp, e in ends.items() if e >= 0}

    def _producer_client(self) -> Any:
        if self._producer is None:
            settings = {LIBRDKAFKA_PRODUCER_KEYS[k]: v
                        for k, v in self.producer_settings.items()
                        if k in LIBRDKAFKA_PRODUCER_KEYS and k != "enable_idempotence"}
            producer = self._ck.Producer({**self._base, **settings,
                                          "enable.idempotence": True})
            if self.transactional:
                producer.init_transactions(TXN_TIMEOUT_S)  # fences an older epoch's
            self._producer = producer
        return self._producer

    def begin(self) -> None:
        self._producer_client().begin_transaction()

    def commit_transaction(self, offsets: Mapping[TP, int]) -> None:
        producer = self._producer_client()
        metadata = self.consumer.consumer_group_metadata()
        tps = self._tps(offsets, offsets)

        def commit() -> None:
            if offsets:
                producer.send_offsets_to_transaction(tps, metadata, TXN_TIMEOUT_S)
            producer.commit_transaction(TXN_TIMEOUT_S)

        _bounded(commit, "commit the transaction")

    def abort(self) -> None:
        producer = self._producer
        if producer is not None:
            _bounded(lambda: producer.abort_transaction(TXN_TIMEOUT_S), "abort the transaction")

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None, chunk: Any) -> None:
        producer = self._producer_client()
        chunk.expect()
        cb = chunk.output_done
        deadline = None
        while True:
            try:
                producer.produce(topic, value, key, headers=headers or None,
                                 on_delivery=lambda err, _msg, cb=cb: cb(
                                     None if err is None else self._ck.KafkaException(err)))
                return
            except BufferError:  # the local queue is full: serve callbacks, then retry
                deadline = deadline or time.monotonic() + 10
                if time.monotonic() > deadline:
                    chunk.output_done(BufferError("producer queue full for 10 s"))
                    return
                producer.poll(0.05)
            except Exception as exc:  # noqa: BLE001 - KafkaException, bad topic ...
                chunk.output_done(exc)
                return

    def serve(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    def flush(self, timeout_s: float) -> bool:
        if self._producer is None:
            return True
        return self._producer.flush(timeout_s) == 0

    def rebuild_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.purge(True, True)  # fail what it still holds (their callbacks run)
                old.poll(0)

    def close_producer(self, timeout_s: float) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.flush(timeout_s)


def _bounded(call: Callable[[], None], what: str) -> None:
    """Run a blocking librdkafka transaction call on a helper thread and wait at most
    ``TXN_TIMEOUT_S`` + 2 s for it. Seen here: ``send_offsets_to_transaction`` did not return
    (minutes, despite its own 10 s timeout) while a node that led the group's coordinators
    was killed during a rebalance. A call that does not return raises ``TimeoutError``; the
    stage then drops the producer, and the next one (same ``transactional.id``) fences it."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, name="lab-txn-call", daemon=True)
    t.start()
    t.join(TXN_TIMEOUT_S + 2.0)
    if t.is_alive():
        raise TimeoutError(f"confluent: could not {what} within {TXN_TIMEOUT_S + 2.0:g} s")
    if "error" in box:
        raise box["error"]


def make_clients(name: str, *args: Any, **kwargs: Any) -> StageClients:
    if name == "kafka-python":
        return KafkaPythonClients(*args, **kwargs)
    if name == "confluent":
        return ConfluentClients(*args, **kwargs)
    raise ValueError(f"client must be one of {CLIENTS}, got {name!r}")
