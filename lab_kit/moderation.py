"""StreamSocial moderation service: a Kafka consumer group member that moderates posts.

Data flow (topic names from :mod:`lab_kit.topics`, overridable with ``topics=``)::

    posts --> ModerationService --> moderation.results   (one verdict per post)
                  |   |             timeline.updates     (label "approve")
                  |   |             user.reputation      (label "spam")
                  |   |             admin.notifications  (labels "reject" and "review")
                  |   +-- degraded --> moderation.recheck --> RecheckWorker --> (same outputs,
                  |                                                     source "recheck")
                  +-- unparseable --> posts.dlq

* **Backend calls go through a circuit breaker** (`pybreaker`): every
  :class:`~lab_kit.moderation_backend.ModerationBackendError` (unavailable, timeout, 5xx,
  garbage) counts as a failure; after ``breaker_fail_max`` consecutive failures the breaker
  opens and calls are not even attempted for ``breaker_reset_s``; then one trial call is let
  through (half-open) and closes the breaker if it succeeds. Transitions are lazy (they
  happen on the next post), as in pybreaker. Every transition is recorded in
  ``service.breaker_events`` and marked in the metrics. While the call fails or the breaker
  is open, :func:`lab_kit.rules.fallback_verdict` decides: the result is ``degraded`` and
  the post also goes to ``moderation.recheck``.
* **At-least-once**: outputs are sent asynchronously on one ``KafkaProducer`` (acks=all);
  a batch's offsets are committed only after *every* output of that batch was acked. If one
  failed, nothing is committed, the producer is closed and recreated (kafka-python's
  idempotent producer can stay wedged after an error) and the consumer seeks back to the
  start of the batch: the batch is processed again (duplicates, never loss).
* :class:`RecheckWorker` re-moderates degraded posts with the full backend once it answers
  again; while the backend fails it commits nothing past the failing post and backs off.

Run it in a notebook (``service.start()`` / ``service.stop()``), in the current thread
(``service.run(stop_event, max_seconds)``) or as its own process::

    python -m lab_kit.moderation --bootstrap 127.0.0.1:9092 --backend-url http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pybreaker
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from . import topics as lab_topics
from .audit import dlq_record
from .metrics import MetricsRecorder
from .moderation_backend import BackendBadRequest, ModerationBackendError, ModerationClient
from .posts import Post, PostValidationError
from .rules import Verdict, fallback_verdict

__all__ = [
    "TOPIC_KEYS",
    "DEFAULT_TOPICS",
    "topic_names",
    "BatchOutcome",
    "ModerationService",
    "RecheckWorker",
    "moderation_results",
    "main",
]

log = logging.getLogger(__name__)

#: Keys of the ``topics=`` mapping, and the lab's default topic names.
TOPIC_KEYS = ("posts", "results", "timeline", "reputation", "admin", "recheck", "dlq")
DEFAULT_TOPICS: dict[str, str] = {
    "posts": lab_topics.POSTS,
    "results": lab_topics.MODERATION_RESULTS,
    "timeline": lab_topics.TIMELINE_UPDATES,
    "reputation": lab_topics.USER_REPUTATION,
    "admin": lab_topics.ADMIN_NOTIFICATIONS,
    "recheck": lab_topics.MODERATION_RECHECK,
    "dlq": lab_topics.POSTS_DLQ,
}

POLL_TIMEOUT_MS = 200  # short, so stop() is prompt
SESSION_TIMEOUT_MS = 6000  # broker minimum: a killed member's partitions move after ~6 s
HEARTBEAT_INTERVAL_MS = 1500
OUTPUT_TIMEOUT_S = 30.0  # max wait for a batch's acks before it is treated as failed
MAX_BACKOFF_S = 5.0
MAX_BREAKER_EVENTS = 10_000

#: Producer settings: acks=all; fail a send within seconds rather than minutes.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 5,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 25_000,
    "bootstrap_timeout_ms": 3000,  # no broker: fail fast, retry with back-off (stop stays prompt)
}
#: Consumer settings besides group/offset handling (``client_config`` may override them).
CONSUMER_DEFAULTS: dict[str, Any] = {"bootstrap_timeout_ms": 3000}


def topic_names(prefix: str = "", **overrides: str) -> dict[str, str]:
    """The topic mapping (keys :data:`TOPIC_KEYS`), each name prefixed, then ``overrides``.

    >>> topic_names("t1-")["results"]
    't1-moderation.results'
    """
    unknown = set(overrides) - set(TOPIC_KEYS)
    if unknown:
        raise ValueError(f"unknown topic keys {sorted(unknown)}; known: {TOPIC_KEYS}")
    return {k: overrides.get(k, f"{prefix}{v}") for k, v in DEFAULT_TOPICS.items()}


def _resolve_topics(topics: Mapping[str, str] | None) -> dict[str, str]:
    return topic_names(**dict(topics or {}))


def _kafka_config(bootstrap_servers: str | list[str] | None,
                  client_config: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(client_config or {})
    if bootstrap_servers is not None:
        cfg["bootstrap_servers"] = bootstrap_servers
    if not cfg.get("bootstrap_servers"):
        from . import broker

        cfg = {**broker.ensure().client_config(), **cfg}
    return cfg


def _json(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _raw_post_id(raw: bytes | None) -> str | None:
    """Best effort: the post_id of an invalid record, for the DLQ entry."""
    try:
        doc = json.loads(bytes(raw or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    pid = doc.get("post_id") if isinstance(doc, dict) else None
    return pid if isinstance(pid, str) else None


def _header(record: Any, name: str) -> str | None:
    for key, value in getattr(record, "headers", None) or ():
        if key == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


@dataclass
class BatchOutcome:
    """What :meth:`ModerationService.process_batch` did with one batch of records.

    Offsets are per partition: ``first`` = first offset in the batch, ``end`` = last + 1,
    ``done`` = the offset after the last record handled (a prefix of the batch: handling
    stops early when asked to stop, or in the recheck worker when the backend fails).
    ``outputs_ok`` is True when every output record was acked by Kafka: only then may
    ``done`` be committed.
    """

    records: int = 0
    handled: int = 0
    sent: int = 0
    acked: int = 0
    failed: int = 0
    outputs_ok: bool = True
    backend_failed: bool = False
    error: str | None = None
    first: dict[TopicPartition, int] = field(default_factory=dict)
    end: dict[TopicPartition, int] = field(default_factory=dict)
    done: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets safe to commit (empty unless every output was acked)."""
        if not self.outputs_ok:
            return {}
        return {tp: off for tp, off in self.done.items() if off > self.first[tp]}

    @property
    def complete(self) -> bool:
        """Every record handled and every output acked."""
        return self.outputs_ok and self.handled == self.records


# =========================================================================================
# Common consumer -> producer loop
# =========================================================================================


class _RebalanceLog(ConsumerRebalanceListener):
    def __init__(self, stage: _Stage) -> None:
        self.stage = stage

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass  # offsets are committed synchronously after every batch: nothing pending

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.stage._on_assigned(set(assigned))


class _Stage:
    """A consumer group member that turns records into output records, at least once."""

    kind = "stage"
    _COUNTERS: tuple[str, ...] = ()

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None,
        *,
        group_id: str,
        source_key: str,
        topics: Mapping[str, str] | None,
        max_poll_records: int,
        metrics: MetricsRecorder | None,
        client_config: Mapping[str, Any] | None,
        output_timeout_s: float = OUTPUT_TIMEOUT_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        if max_poll_records < 1:
            raise ValueError("max_poll_records must be >= 1")
        self.topics = _resolve_topics(topics)
        self.source_topic = self.topics[source_key]
        self.group_id = group_id
        self.max_poll_records = int(max_poll_records)
        self.metrics = metrics if metrics is not None else MetricsRecorder()
        self.output_timeout_s = float(output_timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self._kafka_cfg = _kafka_config(bootstrap_servers, client_config)
        self._lock = threading.Lock()
        base = ("consumed", "results", "degraded", "rechecked", "dlq", "sent", "acked",
                "failed", "batches", "commits", "commit_failures", "batch_retries", "rebalances",
                "producer_rebuilds", "backend_calls", "backend_failures",
                "approve", "review", "reject", "spam")
        self._counters: dict[str, int] = dict.fromkeys(base + self._COUNTERS, 0)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._pending: list[Any] = []
        self._send_error: BaseException | None = None
        self._stop_event = threading.Event()
        self._active_stop: threading.Event = self._stop_event
        self._thread: threading.Thread | None = None
        self._running = False
        self.last_error: str | None = None
        self.assignment: list[int] = []  # partitions of the source topic we own now

    # -- counters --------------------------------------------------------------------------

    def _incr(self, name: str, n: int = 1, *, metric: bool = True) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n
        if metric:
            self.metrics.incr(name, n)

    def stats(self) -> dict[str, Any]:
        """Counters (``sent``/``results``/... count records handed to the producer, so a
        re-processed batch counts twice; ``acked``/``failed`` come from delivery callbacks)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            out["assignment"] = list(self.assignment)
        out["running"] = self.is_running()
        out["last_error"] = self.last_error
        return out

    def is_running(self) -> bool:
        return self._running

    # -- Kafka clients ---------------------------------------------------------------------

    def _new_consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            **{**CONSUMER_DEFAULTS, **self._kafka_cfg},
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_poll_records,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )
        try:
            consumer.subscribe([self.source_topic], listener=_RebalanceLog(self))
            # fetch the topic's partitions BEFORE the first poll joins the group: a leader
            # without them assigns nothing (or notices new metadata later) and kafka-python
            # then needs a second rebalance
            consumer.partitions_for_topic(self.source_topic)
        except BaseException:
            consumer.close(autocommit=False)
            raise
        return consumer

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._incr("rebalances", metric=False)
        parts = sorted(tp.partition for tp in assigned)
        with self._lock:
            self.assignment = parts
        log.info("%s: group %s assigned %s partitions %s", self.kind, self.group_id,
                 self.source_topic, parts)

    def _producer_client(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**{**PRODUCER_DEFAULTS, **self._kafka_cfg})
        return self._producer

    def _rebuild_producer(self) -> None:
        """Close the producer (aborting what it still holds) so the next send makes a new
        one: after an error kafka-python's idempotent producer may never send again."""
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close(timeout=0)
            self._incr("producer_rebuilds", metric=False)

    def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)

    # -- output ----------------------------------------------------------------------------

    def _on_ack(self, _md: Any) -> None:
        self._incr("acked")

    def _on_fail(self, exc: BaseException) -> None:
        self._incr("failed")
        self.metrics.record_error(type(exc).__name__)

    def _send(self, topic_key: str, key: bytes | None, value: bytes,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        """Hand one output record to the producer (async). A synchronous error is kept in
        ``_send_error``: the batch then stops and is not committed."""
        if self._send_error is not None:
            return
        try:
            fut = self._producer_client().send(self.topics[topic_key], key=key, value=value,
                                               headers=headers or None)
        except Exception as exc:  # noqa: BLE001 - KafkaError, no broker, closed producer...
            self._send_error = exc
            self._on_fail(exc)
            return
        fut.add_callback(self._on_ack)
        fut.add_errback(self._on_fail)
        self._pending.append(fut)
        self._incr("sent", metric=False)

    def _await_outputs(self, outcome: BatchOutcome) -> None:
        """Wait (bounded) until every output of the batch is acked or failed."""
        pending, self._pending = self._pending, []
        outcome.sent = len(pending)
        if self._send_error is not None:
            outcome.outputs_ok = False
            outcome.error = f"send: {type(self._send_error).__name__}: {self._send_error}"
        if pending and self._producer is not None:
            deadline = time.monotonic() + self.output_timeout_s
            stopping = False
            while any(not f.is_done for f in pending) and time.monotonic() < deadline:
                if not stopping and self._running and self._active_stop.is_set():
                    stopping = True  # asked to stop: give the acks 2 s more, not 30
                    deadline = min(deadline, time.monotonic() + 2.0)
                try:
                    self._producer.flush(timeout=0.2)
                except KafkaError:
                    pass  # flush timed out: check the clock and try again
                except Exception:  # noqa: BLE001 - e.g. producer closed under us
                    break
        for f in pending:
            if f.is_done and f.succeeded():
                outcome.acked += 1
            else:
                outcome.failed += 1
                if outcome.error is None and f.is_done:
                    outcome.error = f"output: {type(f.exception).__name__}: {f.exception}"
                elif outcome.error is None:
                    outcome.error = "output: no ack in time"
        if outcome.failed:
            outcome.outputs_ok = False
        self._send_error = None

    def _emit(self, post: Post, verdict: Verdict, *, source: str, degraded: bool,
              extra: Mapping[str, Any] | None = None) -> dict:
        """Produce the result to ``moderation.results`` and fan it out by label."""
        key = post.key_bytes()
        result = {
            "post_id": post.post_id,
            "user_id": post.user_id,
            "label": verdict.label,
            "score": verdict.score,
            "reasons": list(verdict.reasons),
            "degraded": degraded,
            "moderated_at": time.time(),
            "source": source,
            **(extra or {}),
        }
        self._send("results", key, _json(result))
        label = verdict.label
        if label == "approve":
            self._send("timeline", key, _json({"post_id": post.post_id, "user_id": post.user_id,
                                               "text": post.text, "degraded": degraded,
                                               "source": source}))
        elif label == "spam":
            self._send("reputation", key, _json({"user_id": post.user_id,
                                                 "post_id": post.post_id, "signal": "spam",
                                                 "score": verdict.score, "degraded": degraded,
                                                 "source": source}))
        else:  # reject, review
            self._send("admin", key, _json({"post_id": post.post_id, "user_id": post.user_id,
                                            "label": label, "reasons": list(verdict.reasons),
                                            "degraded": degraded, "source": source}))
        self._incr("results")
        self._incr(label, metric=False)
        if degraded:
            self._incr("degraded")
        return result

    def _dead_letter(self, record: Any, reason: str, *, field_name: str | None = None) -> None:
        raw = record.value
        key, value, headers = dlq_record(None, reason, source_topic=record.topic,
                                         raw=bytes(raw) if raw is not None else None,
                                         post_id=_raw_post_id(raw))
        headers = [*headers, ("source_partition", str(record.partition).encode()),
                   ("source_offset", str(record.offset).encode())]
        if field_name:
            headers.append(("field", field_name.encode()))
        self._send("dlq", key if key is not None else record.key, value, headers)
        self._incr("dlq")

    def _parse(self, record: Any) -> Post | None:
        """The record's post, or None after dead-lettering it (reason names the field)."""
        try:
            return Post.from_json_bytes(record.value)
        except PostValidationError as exc:
            self._dead_letter(record, f"invalid post: {exc}", field_name=exc.field)
        except Exception as exc:  # noqa: BLE001 - anything else odd about the record
            self._dead_letter(record, f"invalid post: value: {type(exc).__name__}: {exc}",
                              field_name="value")
        return None

    # -- batch -----------------------------------------------------------------------------

    def _handle(self, record: Any) -> bool:
        """Handle one record; False = could not (stop the batch here, retry it later)."""
        raise NotImplementedError

    def process_batch(self, records: Iterable[Any]) -> BatchOutcome:
        """Handle records (ConsumerRecords, per-partition order), send every output and wait
        for their acks. Does not commit: see :attr:`BatchOutcome.commit_offsets`."""
        outcome = BatchOutcome()
        self._pending, self._send_error = [], None
        halted = False
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            outcome.records += 1
            outcome.first.setdefault(tp, r.offset)
            outcome.end[tp] = max(outcome.end.get(tp, r.offset), r.offset + 1)
            if halted:
                continue
            if (self._running and self._active_stop.is_set()) or self._send_error is not None:
                halted = True
                continue
            if not self._handle(r):
                halted = True
                outcome.backend_failed = True
                continue
            outcome.handled += 1
            outcome.done[tp] = r.offset + 1
        self._await_outputs(outcome)
        self._incr("batches", metric=False)
        return outcome

    def _finish(self, outcome: BatchOutcome) -> None:
        """Commit what is safe; seek back to what must be handled again."""
        consumer = self._consumer
        if consumer is None:
            return
        if not outcome.outputs_ok:
            self.last_error = outcome.error
            self._incr("batch_retries", metric=False)
            log.warning("%s: batch not committed (%s); re-processing it", self.kind,
                        outcome.error)
            self._rebuild_producer()
            rewind = dict(outcome.first)
        else:
            offsets = outcome.commit_offsets
            if offsets:
                try:
                    consumer.commit({tp: OffsetAndMetadata(off, "", -1)
                                     for tp, off in offsets.items()})
                    self._incr("commits", metric=False)
                except Exception as exc:  # noqa: BLE001 - rebalance: the new owner re-does it
                    self._incr("commit_failures", metric=False)
                    self.last_error = f"commit: {type(exc).__name__}: {exc}"
            rewind = {tp: outcome.done.get(tp, first) for tp, first in outcome.first.items()
                      if outcome.done.get(tp, first) < outcome.end[tp]}
        for tp, off in rewind.items():
            with contextlib.suppress(Exception):  # partition revoked meanwhile: fine
                consumer.seek(tp, off)

    # -- loop ------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None,
            max_seconds: float | None = None) -> dict[str, Any]:
        """Consume until ``stop_event`` is set or ``max_seconds`` passed; returns stats()."""
        stop = stop_event if stop_event is not None else self._stop_event
        self._active_stop = stop
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        backoff = 0.0
        self._running = True
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if backoff:
                    wait = backoff if deadline is None else \
                        min(backoff, max(0.0, deadline - time.monotonic()))
                    if stop.wait(wait):
                        break
                try:
                    if self._consumer is None:
                        self._consumer = self._new_consumer()
                    polled = self._consumer.poll(timeout_ms=POLL_TIMEOUT_MS,
                                                 max_records=self.max_poll_records)
                except Exception as exc:  # noqa: BLE001 - broker away: retry, bounded
                    self.last_error = f"poll: {type(exc).__name__}: {exc}"
                    backoff = min(self.max_backoff_s, max(0.5, backoff * 2))
                    continue
                records = [r for recs in polled.values() for r in recs]
                if not records:
                    backoff = 0.0
                    continue
                outcome = self.process_batch(records)
                self._finish(outcome)
                if outcome.outputs_ok and not outcome.backend_failed:
                    backoff = 0.0
                else:
                    backoff = min(self.max_backoff_s, max(0.5, backoff * 2))
        finally:
            self._close_clients()
            self._running = False
            self._active_stop = self._stop_event
        return self.stats()

    def start(self, max_seconds: float | None = None) -> _Stage:
        """Run in a daemon thread (notebooks); :meth:`stop` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.kind} is already running")
        self._stop_event.clear()
        self._running = True  # before the thread runs, so is_running() is True at once
        self._thread = threading.Thread(target=self.run, args=(self._stop_event, max_seconds),
                                        name=f"lab-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> bool:
        """Ask the loop to stop and wait up to ``timeout`` s; True if it has stopped."""
        self._stop_event.set()
        self._active_stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float = 15.0) -> None:
        """Stop the loop (if running) and close the Kafka and backend clients; also for
        after direct :meth:`process_batch` calls."""
        self.stop(timeout)
        if not self.is_running():
            self._close_clients()
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# =========================================================================================
# Moderation service
# =========================================================================================


class _BreakerListener(pybreaker.CircuitBreakerListener):
    def __init__(self, service: ModerationService) -> None:
        self.service = service

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.service._on_breaker_change(getattr(old_state, "name", None), new_state.name)

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.service._on_backend_failure(exc)


class ModerationService(_Stage):
    """Consume ``posts``, moderate each post (backend behind a circuit breaker, local
    fallback when it fails), produce results + fan-out, commit only after all acks.

    ``breaker_events`` lists every breaker transition as ``{"t": epoch_s, "from", "to"}``.
    """

    kind = "moderation"
    _COUNTERS = ("breaker_opens", "breaker_rejections", "bad_requests")

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None,
        backend_url: str,
        *,
        group_id: str = "moderation",
        topics: Mapping[str, str] | None = None,
        backend_timeout_s: float = 0.5,
        breaker_fail_max: int = 5,
        breaker_reset_s: float = 5.0,
        max_poll_records: int = 200,
        metrics: MetricsRecorder | None = None,
        client_config: Mapping[str, Any] | None = None,
        output_timeout_s: float = OUTPUT_TIMEOUT_S,
    ) -> None:
        super().__init__(bootstrap_servers, group_id=group_id, source_key="posts",
                         topics=topics, max_poll_records=max_poll_records, metrics=metrics,
                         client_config=client_config, output_timeout_s=output_timeout_s)
        self.backend_url = backend_url
        self.client = ModerationClient(backend_url, timeout_s=backend_timeout_s)
        self.breaker_events: list[dict[str, Any]] = []
        self._breaker_window = False
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=breaker_fail_max,
            reset_timeout=breaker_reset_s,
            exclude=[BackendBadRequest],  # our request was wrong: not a sign of an outage
            listeners=[_BreakerListener(self)],
            throw_new_error_on_trip=False,  # the tripping call raises its own error
            name="moderation-backend",
        )

    @property
    def breaker_state(self) -> str:
        return self.breaker.current_state

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["breaker_state"] = self.breaker.current_state
        out["breaker_fail_counter"] = self.breaker.fail_counter
        return out

    # -- breaker ---------------------------------------------------------------------------

    def _on_breaker_change(self, old: str | None, new: str) -> None:
        with self._lock:
            self.breaker_events.append({"t": time.time(), "from": old, "to": new})
            del self.breaker_events[:-MAX_BREAKER_EVENTS]
        self.metrics.mark(f"breaker {old}->{new}")
        if new == pybreaker.STATE_OPEN:
            self._incr("breaker_opens", metric=False)
            if not self._breaker_window:
                self.metrics.open_window("breaker open")
                self._breaker_window = True
        elif new == pybreaker.STATE_CLOSED and self._breaker_window:
            self.metrics.close_window("breaker open")
            self._breaker_window = False
        log.info("moderation: circuit breaker %s -> %s", old, new)

    def _on_backend_failure(self, exc: BaseException) -> None:
        self._incr("backend_failures")
        self.metrics.record_error(type(exc).__name__)

    def _call_backend(self, post: Post) -> Any:
        self._incr("backend_calls")
        t0 = time.perf_counter()
        try:
            return self.client.moderate(post.post_id, post.user_id, post.text)
        finally:
            self.metrics.record_latency("backend", time.perf_counter() - t0)

    def moderate(self, post: Post) -> tuple[Verdict, str, str | None]:
        """``(verdict, source, cause)``: source ``"backend"``, or ``"fallback"`` with the
        cause (``"breaker_open"`` or the backend error type)."""
        try:
            res = self.breaker.call(self._call_backend, post)
            return res.verdict, "backend", None
        except pybreaker.CircuitBreakerError:
            self._incr("breaker_rejections", metric=False)
            cause = "breaker_open"
        except BackendBadRequest:
            self._incr("bad_requests", metric=False)
            cause = "BackendBadRequest"
        except ModerationBackendError as exc:
            cause = type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a client bug must not stop moderation
            self.last_error = f"backend: {type(exc).__name__}: {exc}"
            cause = type(exc).__name__
        return fallback_verdict(post.user_id, post.text), "fallback", cause

    def _handle(self, record: Any) -> bool:
        self._incr("consumed")
        post = self._parse(record)
        if post is None:
            return True
        verdict, source, cause = self.moderate(post)
        degraded = source == "fallback"
        self._emit(post, verdict, source=source, degraded=degraded,
                   extra={"fallback_cause": cause} if degraded else None)
        if degraded:
            self._send("recheck", post.key_bytes(), post.to_json_bytes(), [
                ("fallback_label", verdict.label.encode()),
                ("fallback_cause", str(cause).encode()),
                ("source_topic", record.topic.encode()),
            ])
            self._incr("rechecked")
        return True


# =========================================================================================
# Recheck worker
# =========================================================================================


class RecheckWorker(_Stage):
    """Consume ``moderation.recheck`` and re-moderate each degraded post with the backend.

    Produces a new result (``source: "recheck"``, ``degraded: false``, ``previous_label``
    = the fallback's label) with the same fan-out. When the backend fails, the batch stops
    at that post: what was handled before it is committed (after its acks), the rest is
    sought back and retried after a back-off (0.5 s doubling to ``max_backoff_s``).
    """

    kind = "recheck"
    _COUNTERS = ("backend_retries", "bad_requests")

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None,
        backend_url: str,
        *,
        group_id: str = "moderation-recheck",
        topics: Mapping[str, str] | None = None,
        backend_timeout_s: float = 1.0,
        max_poll_records: int = 50,
        max_backoff_s: float = MAX_BACKOFF_S,
        metrics: MetricsRecorder | None = None,
        client_config: Mapping[str, Any] | None = None,
        output_timeout_s: float = OUTPUT_TIMEOUT_S,
    ) -> None:
        super().__init__(bootstrap_servers, group_id=group_id, source_key="recheck",
                         topics=topics, max_poll_records=max_poll_records, metrics=metrics,
                         client_config=client_config, output_timeout_s=output_timeout_s,
                         max_backoff_s=max_backoff_s)
        self.backend_url = backend_url
        self.client = ModerationClient(backend_url, timeout_s=backend_timeout_s)

    def _handle(self, record: Any) -> bool:
        post = self._parse(record)
        if post is None:
            self._incr("consumed")
            return True
        self._incr("backend_calls")
        t0 = time.perf_counter()
        try:
            res = self.client.moderate(post.post_id, post.user_id, post.text)
        except BackendBadRequest as exc:  # retrying cannot help: dead-letter it
            self._incr("consumed")
            self._incr("bad_requests", metric=False)
            self._dead_letter(record, f"backend rejected the post: {exc}",
                              field_name=exc.field)
            return True
        except Exception as exc:  # noqa: BLE001 - backend down/slow/garbage: retry later
            self._incr("backend_failures")
            self.metrics.record_error(type(exc).__name__)
            self.last_error = f"backend: {type(exc).__name__}: {exc}"
            return False
        finally:
            self.metrics.record_latency("recheck_backend", time.perf_counter() - t0)
        self._incr("consumed")
        self._emit(post, res.verdict, source="recheck", degraded=False,
                   extra={"previous_label": _header(record, "fallback_label")})
        return True

    def _finish(self, outcome: BatchOutcome) -> None:
        if outcome.backend_failed:
            self._incr("backend_retries", metric=False)
        super()._finish(outcome)


# =========================================================================================
# Reading results back
# =========================================================================================


def moderation_results(cfg: Mapping[str, Any] | str,
                       results_topic: str = lab_topics.MODERATION_RESULTS,
                       timeout_s: float = 30.0) -> dict[str, list[dict]]:
    """Every result in ``results_topic`` (beginning to the end offsets seen at call time),
    grouped by ``post_id`` in log order per partition. Undecodable records are skipped."""
    kcfg = {"bootstrap_servers": cfg} if isinstance(cfg, str) else dict(cfg)
    consumer = KafkaConsumer(**kcfg, enable_auto_commit=False)
    try:
        parts = [TopicPartition(results_topic, p)
                 for p in sorted(consumer.partitions_for_topic(results_topic) or [])]
        out: dict[str, list[dict]] = {}
        if not parts:
            return out
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {results_topic}: short of end offsets after "
                                   f"{timeout_s:g}s")
            for recs in consumer.poll(timeout_ms=300).values():
                for r in recs:
                    try:
                        doc = json.loads(r.value)
                    except (TypeError, ValueError):
                        continue
                    if isinstance(doc, dict) and "post_id" in doc:
                        out.setdefault(str(doc["post_id"]), []).append(doc)
        return out
    finally:
        consumer.close()


# =========================================================================================
# CLI process mode
# =========================================================================================


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab_kit.moderation",
                                description="Run the StreamSocial moderation service "
                                            "(+ recheck worker) until SIGTERM/SIGINT.")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--backend-url", required=True, help="moderation backend URL")
    p.add_argument("--group", default="moderation", help="consumer group of the service")
    p.add_argument("--recheck-group", default=None,
                   help="consumer group of the recheck worker (default: GROUP-recheck)")
    p.add_argument("--no-recheck", action="store_true", help="do not run the recheck worker")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--max-poll-records", type=int, default=200)
    p.add_argument("--backend-timeout", type=float, default=0.5, help="seconds per call")
    p.add_argument("--breaker-fail-max", type=int, default=5)
    p.add_argument("--breaker-reset", type=float, default=5.0, help="seconds open")
    a = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)  # our own rare events: breaker changes, assignments

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    topics = topic_names(a.topic_prefix)
    service = ModerationService(
        a.bootstrap, a.backend_url, group_id=a.group, topics=topics,
        backend_timeout_s=a.backend_timeout, breaker_fail_max=a.breaker_fail_max,
        breaker_reset_s=a.breaker_reset, max_poll_records=a.max_poll_records)
    worker = None
    if not a.no_recheck:
        worker = RecheckWorker(a.bootstrap, a.backend_url,
                               group_id=a.recheck_group or f"{a.group}-recheck", topics=topics)
        worker.start()
    print(f"moderation service pid={os.getpid()} group={a.group} topics={topics['posts']} -> "
          f"{topics['results']}", file=sys.stderr, flush=True)
    try:
        stats = service.run(stop, a.max_seconds)
    finally:
        if worker is not None:
            worker.stop()
    summary = {"service": stats, "recheck": worker.stats() if worker is not None else None}
    print(f"moderation service stopped: {json.dumps(summary, default=str)}", file=sys.stderr,
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
