"""StreamSocial moderation service: a consumer group member that keeps many posts in moderation
at once.

Data flow (topic names from :mod:`lab_kit.topics`, overridable with ``topics=``)::

    posts --> ModerationService --> moderation.results   (one verdict per post)
                  |   |             timeline.updates     (label "approve")
                  |   |             user.reputation      (label "spam")
                  |   |             admin.notifications  (labels "reject" and "review")
                  |   +-- degraded --> moderation.recheck --> RecheckWorker --> (same outputs,
                  |                                                     source "recheck")
                  +-- unparseable --> posts.dlq

**Asynchronous moderation.** One thread (the *stage loop*) polls, and hands records to the
backend without waiting for the answer:

1. Records are queued per partition. A partition's queued records become a **chunk** (at
   most ``batch_size * concurrency`` records) as soon as the partition has no chunk in
   moderation. The chunk's posts go to the backend in calls of ``batch_size`` posts
   (``POST /moderate/batch``; ``batch_size=1`` uses ``POST /moderate``) on a pool of
   ``concurrency`` threads. Many partitions' chunks are in moderation at once.
2. When every call of a chunk has answered, its results are produced in offset order
   (results + fan-out, recheck, DLQ) and the partition's next chunk may start. One chunk per
   partition at a time keeps every user's results in post order (a user's posts share a
   partition: the key is ``user_id``).
3. Offsets are committed per partition up to the end of the longest contiguous run of chunks
   whose outputs were *all acked* (:mod:`lab_kit.offsets`). A killed member loses nothing and
   the next owner re-processes at most what was in flight (duplicates are counted by the
   checkers, never hidden). If an output fails, the member commits what is safe, replaces its
   producer and re-reads from the first unacked offset.

**Degrading gracefully.** Backend calls go through a ``pybreaker`` circuit breaker; a failing
call (unavailable, timeout, 5xx, garbage) or an open breaker makes the posts of that call use
:func:`lab_kit.rules.fallback_verdict`: the result is ``degraded`` and the post also goes to
``moderation.recheck``. A 429 ("overloaded", answered at once) degrades that call's posts the
same way but does not count against the breaker: the backend is there, just full.

**Load shedding** handles overload by volume: a post that has already waited
``shed_after_ms`` (record timestamp to now; default 1,000 ms, half of the 2 s end-to-end
budget) is moderated by the local rules at once, and the stage keeps shedding until a chunk's
oldest post is younger than half of that. Transitions are in ``service.shed_events``. Only
posts that arrived while the member owned the partition are shed: a backlog found at start-up
or after a rebalance is already late, and degrading it would only double the backend's work
(a recheck per post); it is moderated by the backend.

:class:`RecheckWorker` re-moderates degraded posts with the backend, one batch call at a time,
and only while its service is healthy (breaker closed, not shedding, no overload answer in the
last 2 s; see :meth:`ModerationService.healthy`): it catches up after an overload without
taking capacity from new posts.

Clients: ``client="kafka-python"`` (default, the lessons' client) or ``"confluent"``
(librdkafka; ~6x less CPU per record, see :mod:`lab_kit.stage_clients`).

Run it in a notebook (``service.start()`` / ``service.stop()``), in the current thread
(``service.run(stop_event, max_seconds)``) or as processes of one consumer group::

    python -m lab_kit.moderation --bootstrap 127.0.0.1:9092 --backend-url URL --processes 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pybreaker

from lab_kit import topics as lab_topics
from lab_kit.kafka_settings import check_bootstrap_servers, check_topic_name
from lab_kit.metrics import MetricsRecorder
from lab_kit.moderation.backend.server import (
    BackendBadRequest,
    BackendOverloaded,
    ModerationBackendError,
    ModerationClient,
)
from lab_kit.moderation.clients import CLIENTS, StageClients, check_settings, make_clients
from lab_kit.moderation.offsets import TP, Chunk, OffsetTracker
from lab_kit.moderation.rules import Verdict, fallback_verdict
from lab_kit.posts import Post, PostValidationError
from lab_kit.producer.dead_letters import dlq_record

__all__ = [
    "TOPIC_KEYS",
    "DEFAULT_TOPICS",
    "topic_names",
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

SESSION_TIMEOUT_MS = 6000  # broker minimum: a killed member's partitions move after ~6 s
HEARTBEAT_INTERVAL_MS = 1500
OUTPUT_TIMEOUT_S = 30.0  # max wait for a chunk's acks before it is treated as failed
MAX_BACKOFF_S = 5.0
MAX_EVENTS = 10_000
COMMIT_INTERVAL_S = 0.2
IDLE_POLL_S = 0.2  # nothing in flight: poll this long (stop() stays prompt)
BUSY_POLL_S = 0.005  # calls in flight: come back soon to emit their results
DRAIN_TIMEOUT_S = 5.0  # on rebalance/stop: wait this long for calls in flight
OVERLOAD_QUIET_S = 2.0  # the recheck worker waits this long after an overload answer

#: Producer settings: acks=all; fail a send within seconds rather than minutes. Outputs
#: linger 50 ms: at 10,000 posts/s that makes batches ~10x fuller than 5 ms would, and a
#: produce request costs the broker about as much CPU per batch as per record in it
#: (measured: 17.6 µs of broker CPU per record at linger 5 ms, 8.8 µs at 50 ms). The
#: end-to-end figure (``created_at`` to ``moderated_at``) does not include it.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 50,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 25_000,
    "bootstrap_timeout_ms": 3000,  # no broker: fail fast, retry with back-off (stop stays prompt)
}


def topic_names(prefix: str = "", **overrides: str) -> dict[str, str]:
    """The topic mapping (keys :data:`TOPIC_KEYS`), each name prefixed, then ``overrides``.

    >>> topic_names("t1-")["results"]
    't1-moderation.results'
    """
    unknown = set(overrides) - set(TOPIC_KEYS)
    if unknown:
        raise ValueError(f"unknown topic keys {sorted(unknown)}; known: {TOPIC_KEYS}")
    return {k: overrides.get(k, f"{prefix}{v}") for k, v in DEFAULT_TOPICS.items()}


def _user_kafka_config(bootstrap_servers: str | list[str] | None,
                       client_config: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(client_config or {})
    if bootstrap_servers is not None:
        cfg["bootstrap_servers"] = bootstrap_servers
    return cfg


def _kafka_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg``, with the lab broker's settings under it when it names no bootstrap servers
    (that starts the lab's broker if none runs)."""
    if "bootstrap_servers" not in cfg:
        from lab_kit import broker

        cfg = {**broker.ensure().client_config(), **cfg}
    return cfg


def _check_kafka_settings(client: str, kafka_config: Mapping[str, Any], *, group_id: str,
                          topics: Mapping[str, str], max_poll_records: int) -> None:
    """Every Kafka setting a stage will build its clients with (see :meth:`_Stage._new_clients`)
    and every topic name, checked before anything starts: ``ValueError`` naming the first bad
    one. kafka-python would refuse most of them only after connecting, or not at all (then
    posts are consumed and never settle)."""
    for key, name in topics.items():
        check_topic_name(name, f"topics[{key!r}]")
    check_settings(client, kafka_config, group_id=group_id, max_poll_records=max_poll_records,
                   session_timeout_ms=SESSION_TIMEOUT_MS,
                   heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                   producer_settings=PRODUCER_DEFAULTS)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one per call


def _json(doc: dict) -> bytes:
    return _ENCODER.encode(doc).encode("utf-8")


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


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


class _Dead:
    """A record that could not be parsed: it goes to the DLQ with the reason."""

    __slots__ = ("record", "reason", "field")

    def __init__(self, record: Any, reason: str, field: str | None) -> None:
        self.record, self.reason, self.field = record, reason, field


# =========================================================================================
# The stage loop: poll -> chunks -> backend calls -> outputs -> commits
# =========================================================================================


class _Stage:
    """A consumer group member that moderates chunks of records concurrently, at least once.

    Subclasses say how a chunk is moderated (:meth:`_begin`: start calls, or decide at once)
    and what a finished chunk produces (:meth:`_finish_chunk`).
    """

    kind = "stage"
    _COUNTERS: tuple[str, ...] = ()

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None,
        *,
        group_id: str,
        source_key: str,
        topics: Mapping[str, str] | None,
        batch_size: int,
        concurrency: int,
        max_poll_records: int,
        metrics: MetricsRecorder | None,
        client_config: Mapping[str, Any] | None,
        client: str,
        output_timeout_s: float,
        max_backoff_s: float,
        max_buffered: int | None,
    ) -> None:
        self.batch_size = _check_int("batch_size", batch_size, 1, 1000)
        self.concurrency = _check_int("concurrency", concurrency, 1, 256)
        self.max_poll_records = _check_int("max_poll_records", max_poll_records, 1, 100_000)
        self.output_timeout_s = _check_float("output_timeout_s", output_timeout_s, 0.1, 600)
        self.max_backoff_s = _check_float("max_backoff_s", max_backoff_s, 0.0, 600)
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
        self.client_name = client
        self.chunk_records = self.batch_size * self.concurrency
        self.max_buffered = _check_int(
            "max_buffered", max_buffered if max_buffered is not None
            else max(4 * self.chunk_records, 5 * self.max_poll_records, 2000), 1, 10_000_000)
        self.topics = topic_names(**dict(topics or {}))
        self.source_topic = self.topics[source_key]
        self.group_id = group_id
        # Kafka settings: checked as given (before the lab's broker may be started for
        # them), and again with the broker's own settings added
        user_cfg = _user_kafka_config(bootstrap_servers, client_config)
        _check_kafka_settings(client, user_cfg, group_id=group_id, topics=self.topics,
                              max_poll_records=self.max_poll_records)
        self._kafka_cfg = _kafka_config(user_cfg)
        if self._kafka_cfg is not user_cfg:
            _check_kafka_settings(client, self._kafka_cfg, group_id=group_id,
                                  topics=self.topics, max_poll_records=self.max_poll_records)
        self.metrics = metrics if metrics is not None else MetricsRecorder()
        self._lock = threading.Lock()
        base = ("consumed", "results", "degraded", "rechecked", "dlq", "sent", "acked",
                "failed", "chunks", "commits", "commit_failures", "batch_retries",
                "rebalances", "producer_rebuilds", "backend_calls", "backend_failures",
                "approve", "review", "reject", "spam")
        self._counters: dict[str, int] = dict.fromkeys(base + self._COUNTERS, 0)
        self._clients: StageClients | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._queues: dict[TP, deque] = {}
        self._current: dict[TP, Chunk] = {}  # the chunk in moderation, per partition
        self._retry_at: dict[TP, float] = {}
        self._buffered = 0
        self._paused = False
        self._tracker = OffsetTracker()
        self._watched: list[Chunk] = []  # sealed chunks whose outputs are not settled yet
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._active_stop: threading.Event = self._stop_event
        self._thread: threading.Thread | None = None
        self._running = False
        self._resume_at: dict[TP, int] = {}  # where to go back to after a rebalance
        self.last_error: str | None = None
        self.assignment: list[int] = []  # partitions of the source topic we own now
        self.oldest_age_s = 0.0  # age of the oldest post handed to moderation last

    # -- counters --------------------------------------------------------------------------

    def _incr(self, name: str, n: int = 1, *, metric: bool = True) -> None:
        if not n:
            return
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n
        if metric:
            self.metrics.incr(name, n)

    def _add(self, counts: Mapping[str, int], metric: tuple[str, ...] = ()) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counters[name] = self._counters.get(name, 0) + n
        for name in metric:
            if counts.get(name):
                self.metrics.incr(name, counts[name])

    def stats(self) -> dict[str, Any]:
        """Counters (``sent``/``results``/... count records handed to the producer, so a
        re-processed chunk counts twice; ``acked``/``failed`` are settled outputs)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            out["assignment"] = list(self.assignment)
        out["running"] = self.is_running()
        out["last_error"] = self.last_error
        out["client"] = self.client_name
        out["in_flight"] = self._tracker.in_flight()
        out["buffered"] = self._buffered
        return out

    def is_running(self) -> bool:
        return self._running

    # -- clients and rebalances ------------------------------------------------------------

    def _new_clients(self) -> StageClients:
        return make_clients(
            self.client_name, self._kafka_cfg, group_id=self.group_id,
            topic=self.source_topic, max_poll_records=self.max_poll_records,
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            producer_settings=PRODUCER_DEFAULTS, on_assign=self._on_assign,
            on_revoke=self._on_revoke)

    def _on_assign(self, assigned: list[TP]) -> None:
        self._incr("rebalances", metric=False)
        parts = sorted(p for _t, p in assigned)
        with self._lock:
            self.assignment = parts
        clients = self._clients
        if clients is not None and assigned:
            # kafka-python keeps the position and the paused flag of a partition that stays
            # assigned: resume it, and go back to what was forgotten at the revoke
            clients.resume(assigned)
            for tp, off in self._resume_at.items():
                if tp in assigned:
                    clients.seek(tp, off)
        self._resume_at = {}
        self._paused = False
        log.info("%s: group %s assigned %s partitions %s", self.kind, self.group_id,
                 self.source_topic, parts)

    def _on_revoke(self, revoked: list[TP]) -> None:
        """Finish what is in flight (bounded), commit it, forget the rest: the partitions'
        next owner starts at the committed offsets."""
        self._drain(DRAIN_TIMEOUT_S)
        self._resume_at = self._restart_points()
        self._forget(None)
        with self._lock:
            self.assignment = []

    def _restart_points(self) -> dict[TP, int]:
        """Per partition: the first offset not yet handled to the end (acked)."""
        points = self._tracker.restart_points()
        for tp, q in self._queues.items():
            if q and tp not in points:
                points[tp] = q[0].offset
        return points

    def _forget(self, tps: list[TP] | None) -> None:
        for tp in list(self._queues) if tps is None else tps:
            self._buffered -= len(self._queues.pop(tp, ()))
        for tp in list(self._current) if tps is None else tps:
            self._current.pop(tp, None)
            self._retry_at.pop(tp, None)
        self._tracker.forget(tps)
        self._watched = [c for c in self._watched if c.tp in self._queues]
        if tps is None:
            self._buffered = 0
            self._watched = []

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None,
            max_seconds: float | None = None) -> dict[str, Any]:
        """Consume until ``stop_event`` is set or ``max_seconds`` passed; returns stats()."""
        stop = stop_event if stop_event is not None else self._stop_event
        self._active_stop = stop
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        backoff = 0.0
        self._running = True
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"lab-{self.kind}")
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if backoff and stop.wait(backoff if deadline is None else
                                         min(backoff, max(0.0, deadline - time.monotonic()))):
                    break
                try:
                    if self._clients is None:
                        self._clients = self._new_clients()
                    backoff = 0.0 if self._step() else \
                        min(self.max_backoff_s, max(0.5, backoff * 2))
                except Exception as exc:  # noqa: BLE001 - broker away: retry, bounded
                    self.last_error = f"poll: {type(exc).__name__}: {exc}"
                    log.warning("%s: %s", self.kind, self.last_error)
                    backoff = min(self.max_backoff_s, max(0.5, backoff * 2))
        finally:
            with contextlib.suppress(Exception):
                if self._clients is not None:
                    self._drain(DRAIN_TIMEOUT_S)
            self._close_clients()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._running = False
            self._active_stop = self._stop_event
        return self.stats()

    def _step(self) -> bool:
        """One turn of the loop; False asks for a back-off (an output failed)."""
        clients = self._clients
        assert clients is not None
        busy = bool(self._current) or bool(self._watched)
        records = clients.poll(BUSY_POLL_S if busy else IDLE_POLL_S)
        for r in records:
            tp = (r.topic, r.partition)
            q = self._queues.get(tp)
            if q is None:
                q = self._queues[tp] = deque()
            q.append(r)
        self._buffered += len(records)
        clients.serve()
        self._collect()
        self._dispatch()
        self._backpressure()
        ok = self._settle()
        self._commit()
        return ok

    def _backpressure(self) -> None:
        """Stop fetching while too many records wait; fetch again at half of that."""
        clients = self._clients
        if clients is None or not self.assignment:
            return
        want = self._buffered > self.max_buffered or (
            self._paused and self._buffered > self.max_buffered // 2)
        if want != self._paused:
            tps = [(self.source_topic, p) for p in self.assignment]
            (clients.pause if want else clients.resume)(tps)
            self._paused = want

    def _dispatch(self) -> None:
        """Start a chunk on every partition that has records and none in moderation."""
        if self._running and self._active_stop.is_set():
            return
        now = time.monotonic()
        self._before_dispatch()
        for tp, q in self._queues.items():
            if tp in self._current:
                chunk = self._current[tp]
                if not chunk.calls and self._needs_calls(chunk) \
                        and self._retry_at.get(tp, 0) <= now:
                    self._retry_at.pop(tp, None)
                    self._begin(chunk)  # a recheck chunk: gated, or its call failed
                continue
            if not q:
                continue
            n = min(len(q), self.chunk_records)
            records = [q.popleft() for _ in range(n)]
            self._buffered -= n
            chunk = self._tracker.add(Chunk(tp, records))
            self._current[tp] = chunk
            self._incr("consumed", n)
            self._incr("chunks", metric=False)
            chunk.items = [self._parse(r) for r in records]
            self._begin(chunk)

    def _collect(self) -> None:
        """Finish every chunk whose backend calls have all answered."""
        for tp, chunk in list(self._current.items()):
            if chunk.calls and not all(f.done() for f in chunk.calls):
                continue
            if chunk.calls or not self._needs_calls(chunk):
                if self._finish_chunk(chunk):
                    del self._current[tp]

    def _needs_calls(self, chunk: Chunk) -> bool:
        return False

    def _before_dispatch(self) -> None:
        """Once per dispatch round, before chunks are formed."""

    def _calls_pending(self) -> bool:
        return any(c.calls and not all(f.done() for f in c.calls)
                   for c in self._current.values())

    def _submit(self, fn: Any, *args: Any) -> Future:
        assert self._pool is not None
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(lambda _f: self._wake.set())
        return fut

    # -- outputs, acks and commits ---------------------------------------------------------

    def _send(self, chunk: Chunk, topic_key: str, key: bytes | None, value: bytes,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        assert self._clients is not None
        self._clients.send(self.topics[topic_key], key, value, headers, chunk)

    def _seal(self, chunk: Chunk) -> None:
        chunk.seal()
        self._watched.append(chunk)
        self._incr("sent", chunk.outputs, metric=False)

    def _settle(self) -> bool:
        """Count settled outputs; an output that failed or never settled rewinds."""
        if not self._watched:
            return True
        now = time.monotonic()
        still, settled, failed = [], [], None
        for c in self._watched:
            if c.settled:
                settled.append(c)
                if c.failed and failed is None:
                    failed = c
            elif c.sealed_at is not None and now - c.sealed_at > self.output_timeout_s:
                c.error = c.error or TimeoutError(f"no ack within {self.output_timeout_s:g}s")
                settled.append(c)
                failed = failed or c
            else:
                still.append(c)
        self._watched = still
        acked = sum(c.outputs for c in settled if not c.failed)
        self._incr("acked", acked)
        if failed is not None:
            self._incr("failed", sum(c.outputs for c in settled if c.failed))
            self.metrics.record_error(type(failed.error).__name__)
            self._rewind(f"output: {type(failed.error).__name__}: {failed.error}")
            return False
        return True

    _last_commit = 0.0

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        offsets = self._tracker.committable()
        if not offsets or self._clients is None:
            return
        try:
            self._clients.commit(offsets)
            self._incr("commits", metric=False)
        except Exception as exc:  # noqa: BLE001 - rebalance: the new owner re-does it
            self._incr("commit_failures", metric=False)
            self.last_error = f"commit: {type(exc).__name__}: {exc}"

    def _rewind(self, reason: str) -> None:
        """An output failed: commit what is safe, replace the producer, re-read the rest."""
        self.last_error = reason
        self._incr("batch_retries", metric=False)
        log.warning("%s: outputs failed (%s); re-processing from the first unacked offset",
                    self.kind, reason)
        self._commit(force=True)
        points = self._restart_points()
        clients = self._clients
        self._forget(None)
        if clients is not None:
            clients.rebuild_producer()
            self._incr("producer_rebuilds", metric=False)
            for tp, off in points.items():
                try:
                    clients.seek(tp, off)
                except Exception:  # noqa: BLE001 - cannot seek: rejoin from the commits
                    clients.close_consumer()
                    self._clients = None
                    break

    def _drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the calls in flight, produce their results, wait for the acks
        (bounded) and commit what is safe."""
        deadline = time.monotonic() + timeout_s
        while self._calls_pending() and time.monotonic() < deadline:
            self._wake.wait(0.01)
            self._wake.clear()
        self._collect()
        if self._clients is not None:
            self._clients.flush(max(0.5, deadline - time.monotonic()))
            self._clients.serve()
        self._settle()
        self._commit(force=True)

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, None
        if clients is not None:
            clients.close_consumer()
            clients.close_producer(5.0)

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self, record: Any) -> Post | _Dead:
        try:
            return Post.from_json_bytes(record.value, check_size=False)
        except PostValidationError as exc:
            return _Dead(record, f"invalid post: {exc}", exc.field)
        except Exception as exc:  # noqa: BLE001 - anything else odd about the record
            return _Dead(record, f"invalid post: value: {type(exc).__name__}: {exc}", "value")

    def _dead_letter(self, chunk: Chunk, record: Any, reason: str,
                     field_name: str | None) -> None:
        raw = record.value
        key, value, headers = dlq_record(None, reason, source_topic=record.topic,
                                         raw=bytes(raw) if raw is not None else None,
                                         post_id=_raw_post_id(raw))
        headers = [*headers, ("source_partition", str(record.partition).encode()),
                   ("source_offset", str(record.offset).encode())]
        if field_name:
            headers.append(("field", field_name.encode()))
        self._send(chunk, "dlq", key if key is not None else record.key, value, headers)

    def _emit(self, chunk: Chunk, post: Post, verdict: Verdict, *, source: str,
              degraded: bool, extra: Mapping[str, Any] | None = None) -> None:
        """Produce the result to ``moderation.results`` and fan it out by label."""
        key = post.key_bytes()
        label = verdict.label
        result = {
            "post_id": post.post_id,
            "user_id": post.user_id,
            "label": label,
            "score": verdict.score,
            "reasons": list(verdict.reasons),
            "degraded": degraded,
            "created_at": post.created_at,
            "moderated_at": time.time(),
            "source": source,
            **(extra or {}),
        }
        self._send(chunk, "results", key, _json(result))
        if label == "approve":
            self._send(chunk, "timeline", key, _json({
                "post_id": post.post_id, "user_id": post.user_id, "text": post.text,
                "degraded": degraded, "source": source}))
        elif label == "spam":
            self._send(chunk, "reputation", key, _json({
                "user_id": post.user_id, "post_id": post.post_id, "signal": "spam",
                "score": verdict.score, "degraded": degraded, "source": source}))
        else:  # reject, review
            self._send(chunk, "admin", key, _json({
                "post_id": post.post_id, "user_id": post.user_id, "label": label,
                "reasons": list(verdict.reasons), "degraded": degraded, "source": source}))

    # -- subclass hooks --------------------------------------------------------------------

    def _begin(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def _finish_chunk(self, chunk: Chunk) -> bool:
        """Produce the chunk's outputs; False = not now (it stays the partition's chunk)."""
        raise NotImplementedError

    # -- running in a thread ---------------------------------------------------------------

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
        """Stop the loop (if running) and close the Kafka and backend clients."""
        self.stop(timeout)
        if not self.is_running():
            self._close_clients()
        self._close_backend_clients()

    def _close_backend_clients(self) -> None:
        pass

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# =========================================================================================
# Backend calls: one client per pool thread, a batch call or a single call
# =========================================================================================


class _Backend:
    """Calls the moderation backend from the stage's pool threads (one client each)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[ModerationClient] = []
        self._lock = threading.Lock()

    def client(self) -> ModerationClient:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = ModerationClient(self.url, timeout_s=self.timeout_s)
            with self._lock:
                self._all.append(c)
        return c

    def moderate(self, posts: list[Post]) -> list[Any]:
        """One call: a :class:`ModerationResult` or a ``BackendBadRequest`` per post."""
        c = self.client()
        if len(posts) == 1:
            p = posts[0]
            try:
                return [c.moderate(p.post_id, p.user_id, p.text)]
            except BackendBadRequest as exc:
                return [exc]
        return c.moderate_batch([(p.post_id, p.user_id, p.text) for p in posts])

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()


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


def _outcome(exc: BaseException | None) -> None:
    """Replays a call's outcome for the breaker: raises its error, or returns."""
    if exc is not None:
        raise exc


class ModerationService(_Stage):
    """Consume ``posts``, moderate many at once (backend behind a circuit breaker, local
    rules when it fails or when the stage is behind), produce results + fan-out, commit only
    past acked outputs. See the module docstring.

    ``breaker_events`` lists every breaker transition as ``{"t": epoch_s, "from", "to"}``;
    ``shed_events`` every load-shedding transition as ``{"t", "shedding", "age_s"}``.
    """

    kind = "moderation"
    _COUNTERS = ("breaker_opens", "breaker_rejections", "bad_requests", "overloaded", "shed")

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None,
        backend_url: str,
        *,
        group_id: str = "moderation",
        topics: Mapping[str, str] | None = None,
        batch_size: int = 100,
        concurrency: int = 4,
        shed_after_ms: float | None = 1000.0,
        backend_timeout_s: float = 0.5,
        breaker_fail_max: int = 5,
        breaker_reset_s: float = 5.0,
        max_poll_records: int = 500,
        metrics: MetricsRecorder | None = None,
        client_config: Mapping[str, Any] | None = None,
        client: str = "kafka-python",
        output_timeout_s: float = OUTPUT_TIMEOUT_S,
        max_buffered: int | None = None,
    ) -> None:
        super().__init__(bootstrap_servers, group_id=group_id, source_key="posts",
                         topics=topics, batch_size=batch_size, concurrency=concurrency,
                         max_poll_records=max_poll_records, metrics=metrics,
                         client_config=client_config, client=client,
                         output_timeout_s=output_timeout_s, max_backoff_s=MAX_BACKOFF_S,
                         max_buffered=max_buffered)
        _check_float("backend_timeout_s", backend_timeout_s, 0.001, 600)
        _check_int("breaker_fail_max", breaker_fail_max, 1, 1_000_000)
        _check_float("breaker_reset_s", breaker_reset_s, 0.0, 3600)
        self.shed_after_s = None if not shed_after_ms else \
            _check_float("shed_after_ms", shed_after_ms, 1, 3_600_000) / 1000.0
        self.backend_url = backend_url
        self._backend = _Backend(backend_url, backend_timeout_s)
        self.breaker_events: list[dict[str, Any]] = []
        self.shed_events: list[dict[str, Any]] = []
        self.shedding = False
        self._assigned_at = time.time()
        self._last_overload = -1e9
        self._last_chunk_at = -1e9
        self._breaker_window = False
        self._breaker_lock = threading.Lock()
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=breaker_fail_max,
            reset_timeout=breaker_reset_s,
            # a wrong request of ours, or "too many posts right now" (429, answered at once),
            # are not signs of an outage: those posts fall back, the breaker stays closed
            exclude=[BackendBadRequest, BackendOverloaded],
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
        out["shedding"] = self.shedding
        return out

    def healthy(self) -> bool:
        """Not shedding, no overload answer lately, and the breaker closed: the recheck
        worker may use the backend without taking capacity from new posts.

        An open breaker only moves on when a post tries it; with no posts coming it would
        keep the recheck worker waiting forever, so after ``reset_timeout`` without a chunk
        the worker's own calls probe the backend (they back off when it still fails)."""
        now = time.monotonic()
        if self.shedding or now - self._last_overload <= OVERLOAD_QUIET_S:
            return False
        if self.breaker.current_state == pybreaker.STATE_CLOSED:
            return True
        return now - self._last_chunk_at > self.breaker.reset_timeout

    # -- breaker and shedding --------------------------------------------------------------

    def _on_breaker_change(self, old: str | None, new: str) -> None:
        with self._lock:
            self.breaker_events.append({"t": time.time(), "from": old, "to": new})
            del self.breaker_events[:-MAX_EVENTS]
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

    def _on_assign(self, assigned: list[TP]) -> None:
        self._assigned_at = time.time()
        super()._on_assign(assigned)

    def _on_backend_failure(self, exc: BaseException) -> None:
        self._incr("backend_failures")
        self.metrics.record_error(type(exc).__name__)

    def _before_dispatch(self) -> None:
        """One shedding decision per round, on the oldest post waiting in any partition (a
        per-chunk decision would flap between partitions of different ages)."""
        if self.shed_after_s is None:
            return
        heads = [q[0].timestamp for q in self._queues.values() if q]
        heads = [ts / 1000.0 for ts in heads if ts and ts / 1000.0 >= self._assigned_at]
        if heads:
            self._shed(max(0.0, time.time() - min(heads)))

    def _shed(self, age_s: float) -> bool:
        """Load shedding with hysteresis on the age of the oldest waiting post."""
        self.oldest_age_s = age_s
        limit = self.shed_after_s
        if limit is None:
            return False
        stay = age_s > limit / 2 if self.shedding else age_s <= limit
        if stay:
            return self.shedding
        self.shedding = not self.shedding
        with self._lock:
            self.shed_events.append({"t": time.time(), "shedding": self.shedding,
                                     "age_s": round(age_s, 3)})
            del self.shed_events[:-MAX_EVENTS]
        (self.metrics.open_window if self.shedding else self.metrics.close_window)("shedding")
        log.info("moderation: load shedding %s (oldest post waited %.2f s)",
                 "on" if self.shedding else "off", age_s)
        return self.shedding

    # -- a chunk ---------------------------------------------------------------------------

    def _call_backend(self, posts: list[Post]) -> list[Any]:
        self._incr("backend_calls")
        t0 = time.perf_counter()
        try:
            return self._backend.moderate(posts)
        finally:
            self.metrics.record_latency("backend", time.perf_counter() - t0)

    def _call(self, posts: list[Post]) -> tuple[str, Any]:
        """On a pool thread: ``("ok", results)`` or ``("fail", cause)``."""
        try:
            return "ok", self._through_breaker(self._call_backend, posts)
        except pybreaker.CircuitBreakerError:
            self._incr("breaker_rejections", len(posts), metric=False)
            return "fail", "breaker_open"
        except BackendOverloaded:
            self._last_overload = time.monotonic()
            self._incr("overloaded", metric=False)
            return "fail", "BackendOverloaded"
        except ModerationBackendError as exc:
            if isinstance(exc, BackendBadRequest):
                self._incr("bad_requests", metric=False)
            return "fail", type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a client bug must not stop moderation
            self.last_error = f"backend: {type(exc).__name__}: {exc}"
            return "fail", type(exc).__name__

    def _through_breaker(self, fn: Any, *args: Any) -> Any:
        """``breaker.call(fn, *args)``, but concurrent while the breaker is closed.

        pybreaker holds its lock for the whole call, so calls through one breaker run one at
        a time. While it is closed, the call runs outside it and only its outcome is
        reported through ``breaker.call`` (under our lock, so no transition slips between
        the state check and the report). Open or half-open, the call goes through the
        breaker itself: rejected, or the one trial call.
        """
        if self.breaker.current_state != pybreaker.STATE_CLOSED:
            return self.breaker.call(fn, *args)
        try:
            result, outcome = fn(*args), None
        except Exception as exc:  # noqa: BLE001 - reported to the breaker, then re-raised
            result, outcome = None, exc
        with self._breaker_lock:
            if self.breaker.current_state == pybreaker.STATE_CLOSED:
                with contextlib.suppress(Exception):
                    self.breaker.call(_outcome, outcome)
        if outcome is not None:
            raise outcome
        return result

    def _begin(self, chunk: Chunk) -> None:
        posts = [it for it in chunk.items if isinstance(it, Post)]
        self._last_chunk_at = time.monotonic()
        if not posts:
            return
        # shed only posts that arrived while this member owned the partition: a backlog it
        # found (a start, a rebalance) is already late, and degrading it would only double
        # the backend's work (a recheck per post)
        if self.shedding and (chunk.records[0].timestamp or 0) / 1000.0 >= self._assigned_at:
            chunk.note = "shed"
            return
        bs = self.batch_size
        chunk.calls = [self._submit(self._call, posts[i:i + bs])
                       for i in range(0, len(posts), bs)]

    def _verdicts(self, chunk: Chunk) -> list[tuple[Verdict, str | None]]:
        """Per post of the chunk: (verdict, fallback cause or None)."""
        posts = [it for it in chunk.items if isinstance(it, Post)]
        if chunk.note == "shed":
            return [(fallback_verdict(p.user_id, p.text), "shed") for p in posts]
        out: list[tuple[Verdict, str | None]] = []
        bs = self.batch_size
        for i, fut in enumerate(chunk.calls):
            part = posts[i * bs:(i + 1) * bs]
            status, value = fut.result()
            if status == "ok":
                for p, res in zip(part, value, strict=True):
                    if isinstance(res, BaseException):  # this post was refused
                        self._incr("bad_requests", metric=False)
                        out.append((fallback_verdict(p.user_id, p.text), type(res).__name__))
                    else:
                        out.append((res.verdict, None))
            else:
                out += [(fallback_verdict(p.user_id, p.text), value) for p in part]
        return out

    def _finish_chunk(self, chunk: Chunk) -> bool:
        verdicts = iter(self._verdicts(chunk))
        counts = dict.fromkeys(("results", "degraded", "rechecked", "dlq", "shed", "approve",
                                "review", "reject", "spam"), 0)
        for item in chunk.items:
            if isinstance(item, _Dead):
                self._dead_letter(chunk, item.record, item.reason, item.field)
                counts["dlq"] += 1
                continue
            verdict, cause = next(verdicts)
            degraded = cause is not None
            self._emit(chunk, item, verdict, source="fallback" if degraded else "backend",
                       degraded=degraded, extra={"fallback_cause": cause} if degraded else None)
            counts["results"] += 1
            counts[verdict.label] += 1
            if degraded:
                counts["degraded"] += 1
                counts["rechecked"] += 1
                counts["shed"] += cause == "shed"
                self._send(chunk, "recheck", item.key_bytes(), item.to_json_bytes(), [
                    ("fallback_label", verdict.label.encode()),
                    ("fallback_cause", str(cause).encode()),
                    ("source_topic", chunk.tp[0].encode()),
                ])
        self._seal(chunk)
        self._add(counts, metric=("results", "degraded", "rechecked", "dlq", "shed"))
        return True

    def _close_backend_clients(self) -> None:
        self._backend.close()


# =========================================================================================
# Recheck worker
# =========================================================================================


class RecheckWorker(_Stage):
    """Consume ``moderation.recheck`` and re-moderate each degraded post with the backend.

    Produces a new result (``source: "recheck"``, ``degraded: false``, ``previous_label``
    = the fallback's label) with the same fan-out. One batch call at a time. When the
    backend fails, the chunk waits (0.5 s doubling to ``max_backoff_s``) and is tried again:
    nothing past it is committed. ``gate`` (e.g. ``service.healthy``) says when the worker
    may call the backend at all, so catching up never starves new posts.
    """

    kind = "recheck"
    _COUNTERS = ("backend_retries", "bad_requests", "gated")

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None,
        backend_url: str,
        *,
        group_id: str = "moderation-recheck",
        topics: Mapping[str, str] | None = None,
        batch_size: int = 100,
        backend_timeout_s: float = 1.0,
        max_poll_records: int = 500,
        max_backoff_s: float = MAX_BACKOFF_S,
        gate: Any = None,
        metrics: MetricsRecorder | None = None,
        client_config: Mapping[str, Any] | None = None,
        client: str = "kafka-python",
        output_timeout_s: float = OUTPUT_TIMEOUT_S,
    ) -> None:
        super().__init__(bootstrap_servers, group_id=group_id, source_key="recheck",
                         topics=topics, batch_size=batch_size, concurrency=1,
                         max_poll_records=max_poll_records, metrics=metrics,
                         client_config=client_config, client=client,
                         output_timeout_s=output_timeout_s, max_backoff_s=max_backoff_s,
                         max_buffered=None)
        _check_float("backend_timeout_s", backend_timeout_s, 0.001, 600)
        self.backend_url = backend_url
        self._backend = _Backend(backend_url, backend_timeout_s)
        self.gate = gate
        self._retry_backoff = 0.0
        self._gated_since: float | None = None

    def _may_start(self) -> bool:
        if self.gate is None or self.gate():
            self._gated_since = None
            return True
        if self._gated_since is None:
            self._gated_since = time.monotonic()
            self._incr("gated", metric=False)
        return False

    def _needs_calls(self, chunk: Chunk) -> bool:
        return any(isinstance(it, Post) for it in chunk.items)

    def _call(self, posts: list[Post]) -> tuple[str, Any]:
        self._incr("backend_calls")
        t0 = time.perf_counter()
        try:
            return "ok", self._backend.moderate(posts)
        except Exception as exc:  # noqa: BLE001 - backend down/slow/garbage: retry later
            self._incr("backend_failures")
            self.metrics.record_error(type(exc).__name__)
            self.last_error = f"backend: {type(exc).__name__}: {exc}"
            return "fail", type(exc).__name__
        finally:
            self.metrics.record_latency("recheck_backend", time.perf_counter() - t0)

    def _begin(self, chunk: Chunk) -> None:
        posts = [it for it in chunk.items if isinstance(it, Post)]
        if posts and self._may_start():
            bs = self.batch_size
            chunk.calls = [self._submit(self._call, posts[i:i + bs])
                           for i in range(0, len(posts), bs)]

    def _finish_chunk(self, chunk: Chunk) -> bool:
        answers: list[Any] = []
        for fut in chunk.calls:
            status, value = fut.result()
            if status != "ok":
                chunk.calls = []
                self._retry_backoff = min(self.max_backoff_s,
                                          max(0.5, self._retry_backoff * 2))
                self._retry_at[chunk.tp] = time.monotonic() + self._retry_backoff
                self._incr("backend_retries", metric=False)
                return False
            answers += value
        self._retry_backoff = 0.0
        answer = iter(answers)
        counts = dict.fromkeys(("results", "dlq", "bad_requests", "approve", "review",
                                "reject", "spam"), 0)
        for rec, item in zip(chunk.records, chunk.items, strict=True):
            if isinstance(item, _Dead):
                self._dead_letter(chunk, item.record, item.reason, item.field)
                counts["dlq"] += 1
                continue
            res = next(answer)
            if isinstance(res, BackendBadRequest):  # retrying cannot help: dead-letter it
                self._dead_letter(chunk, rec, f"backend rejected the post: {res}", res.field)
                counts["dlq"] += 1
                counts["bad_requests"] += 1
                continue
            self._emit(chunk, item, res.verdict, source="recheck", degraded=False,
                       extra={"previous_label": _header(rec, "fallback_label")})
            counts["results"] += 1
            counts[res.label] += 1
        self._seal(chunk)
        self._add(counts, metric=("results", "dlq"))
        return True

    def _close_backend_clients(self) -> None:
        self._backend.close()


# =========================================================================================
# Reading results back
# =========================================================================================


def moderation_results(cfg: Mapping[str, Any] | str,
                       results_topic: str = lab_topics.MODERATION_RESULTS,
                       timeout_s: float = 30.0) -> dict[str, list[dict]]:
    """Every result in ``results_topic`` (beginning to the end offsets seen at call time),
    grouped by ``post_id`` in log order per partition. Undecodable records are skipped."""
    from kafka import KafkaConsumer, TopicPartition

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
# CLI: one member, or N member processes of one consumer group
# =========================================================================================


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab_kit.moderation",
                                description="Run the StreamSocial moderation service "
                                            "(+ recheck worker) until SIGTERM/SIGINT.")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--backend-url", required=True, help="moderation backend URL")
    p.add_argument("--processes", type=int, default=1,
                   help="member processes of the consumer group (1-32)")
    p.add_argument("--client", choices=CLIENTS, default="kafka-python",
                   help="Kafka client of the service (default kafka-python)")
    p.add_argument("--group", default="moderation", help="consumer group of the service")
    p.add_argument("--recheck-group", default=None,
                   help="consumer group of the recheck worker (default: GROUP-recheck)")
    p.add_argument("--no-recheck", action="store_true", help="do not run the recheck worker")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--batch-size", type=int, default=100, help="posts per backend call")
    p.add_argument("--concurrency", type=int, default=4, help="backend calls in flight")
    p.add_argument("--shed-after-ms", type=float, default=1000.0,
                   help="moderate locally posts older than this (0: never shed)")
    p.add_argument("--max-poll-records", type=int, default=500)
    p.add_argument("--backend-timeout", type=float, default=0.5, help="seconds per call")
    p.add_argument("--breaker-fail-max", type=int, default=5)
    p.add_argument("--breaker-reset", type=float, default=5.0, help="seconds open")
    return p


def _check_args(a: argparse.Namespace) -> None:
    """Every value checked before anything starts (one clear line, exit 2)."""
    _check_int("--processes", a.processes, 1, 32)
    _check_int("--batch-size", a.batch_size, 1, 1000)
    _check_int("--concurrency", a.concurrency, 1, 256)
    _check_int("--max-poll-records", a.max_poll_records, 1, 100_000)
    _check_float("--shed-after-ms", a.shed_after_ms, 0, 3_600_000)
    _check_float("--backend-timeout", a.backend_timeout, 0.001, 600)
    _check_int("--breaker-fail-max", a.breaker_fail_max, 1, 1_000_000)
    _check_float("--breaker-reset", a.breaker_reset, 0, 3600)
    if a.max_seconds is not None:
        _check_float("--max-seconds", a.max_seconds, 0.001, 7 * 86400)
    # the Kafka settings too, before any member process starts
    topics = topic_names(a.topic_prefix)
    for flag, check in (("--bootstrap", lambda: check_bootstrap_servers(a.bootstrap)),
                        ("--topic-prefix", lambda: [check_topic_name(t, f"topics[{k!r}]")
                                                    for k, t in topics.items()])):
        try:
            check()
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    for flag, group in (("--group", a.group),
                        ("--recheck-group", a.recheck_group or f"{a.group}-recheck")):
        if not group.strip():
            raise ValueError(f"{flag}: must be a non-empty consumer group name, got {group!r}")
        _check_kafka_settings(a.client, {"bootstrap_servers": a.bootstrap}, group_id=group,
                              topics=topics, max_poll_records=a.max_poll_records)


def _supervise(argv: list[str], n: int) -> int:
    """Start ``n`` member processes (same arguments, one member each), forward SIGTERM and
    SIGINT to them, wait for all. Exit 0 when every member stopped cleanly."""
    args = list(argv)
    i = args.index("--processes") if "--processes" in args else -1
    if i >= 0:
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--processes=")]
    cmd = [sys.executable, "-m", "lab_kit.moderation", *args, "--processes", "1"]
    members = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL) for _ in range(n)]
    stopping = threading.Event()

    def _forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for m in members:
            if m.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    print(f"moderation supervisor pid={os.getpid()} members="
          f"{','.join(str(m.pid) for m in members)}", file=sys.stderr, flush=True)
    codes: dict[int, int] = {}
    while len(codes) < n:
        for m in members:
            if m.pid not in codes and m.poll() is not None:
                codes[m.pid] = m.returncode
                if not stopping.is_set():
                    print(f"moderation member pid={m.pid} exited with {m.returncode}; the "
                          f"group's other members take over its partitions",
                          file=sys.stderr, flush=True)
        time.sleep(0.1)
    print(f"moderation supervisor stopped: members {codes}", file=sys.stderr, flush=True)
    return 0 if stopping.is_set() and all(c == 0 for c in codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    try:
        _check_args(a)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.processes > 1:
        return _supervise(argv, a.processes)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)  # our own rare events: breaker, shedding, assignments

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    topics = topic_names(a.topic_prefix)
    try:
        service = ModerationService(
            a.bootstrap, a.backend_url, group_id=a.group, topics=topics,
            batch_size=a.batch_size, concurrency=a.concurrency,
            shed_after_ms=a.shed_after_ms or None, backend_timeout_s=a.backend_timeout,
            breaker_fail_max=a.breaker_fail_max, breaker_reset_s=a.breaker_reset,
            max_poll_records=a.max_poll_records, client=a.client)
        worker = None
        if not a.no_recheck:
            worker = RecheckWorker(a.bootstrap, a.backend_url,
                                   group_id=a.recheck_group or f"{a.group}-recheck",
                                   topics=topics, batch_size=a.batch_size,
                                   gate=service.healthy, client=a.client)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if worker is not None:
        worker.start()
    print(f"moderation service pid={os.getpid()} group={a.group} client={a.client} "
          f"topics={topics['posts']} -> {topics['results']}", file=sys.stderr, flush=True)
    try:
        stats = service.run(stop, a.max_seconds)
    finally:
        if worker is not None:
            worker.stop()
        service.close()
        if worker is not None:
            worker.close()
    summary = {"service": stats, "recheck": worker.stats() if worker is not None else None}
    print(f"moderation service stopped: {json.dumps(summary, default=str)}", file=sys.stderr,
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
