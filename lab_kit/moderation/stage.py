"""StreamSocial moderation stage: a consumer group member that keeps many posts in moderation
at once. Open this file first: the data flow and the stage loop are here; the service
(:mod:`lab_kit.moderation.service`) and the recheck worker (:mod:`lab_kit.moderation.recheck`)
only say how a chunk is moderated and what it produces.

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
   moderation. The posts go to the backend in calls of up to ``batch_size`` posts
   (``POST /moderate/batch``; ``batch_size=1`` uses ``POST /moderate``) on a pool of
   ``concurrency`` threads; the moderation service fills a call with the posts of every
   chunk started in the same round, whatever their partition. Many partitions' chunks are
   in moderation at once.
2. When every call of a chunk has answered, its results are produced in offset order
   (results + fan-out, recheck, DLQ) and the partition's next chunk may start. One chunk per
   partition at a time keeps every user's results in post order (a user's posts share a
   partition: the key is ``user_id``).
3. Offsets are committed per partition up to the end of the longest contiguous run of chunks
   whose outputs were *all acked* (:mod:`lab_kit.moderation.offsets`). A killed member loses
   nothing and the next owner re-processes at most what was in flight (duplicates are counted
   by the checkers, never hidden). If an output fails, the member commits what is safe,
   replaces its producer and re-reads from the first unacked offset.

**Exactly once** (``guarantee="exactly-once"``). Step 3 changes: the outputs a member produces
in an interval (``TRANSACTION_INTERVAL_S``) and the offsets they came from go in one Kafka
transaction. At the end of the interval the member flushes, and commits the transaction
with the end of the acked prefix of every partition (``send_offsets_to_transaction``, fenced
by the group's generation: a member that lost its partitions cannot commit). If anything
fails (an output, the commit), the transaction is aborted, the producer rebuilt and every
partition re-read from the offsets of the last committed transaction. Readers that use
``read_committed`` see each post's outputs once; a member killed mid-transaction leaves it
open until the broker aborts it (``TRANSACTION_TIMEOUT_MS``), and those readers wait until
then. What a transaction cannot cover: the call to the moderation backend (a side effect
outside Kafka), which a re-read makes again.

Clients: ``client="kafka-python"`` (the default of a stage built in a notebook: the lessons'
client) or ``"confluent"`` (librdkafka; ~6x less CPU per record, see
:mod:`lab_kit.moderation.clients`), the default of the service process
(``python -m lab_kit.moderation``, :data:`~lab_kit.moderation.clients.DEFAULT_CLIENT`).

Run it in a notebook (``service.start()`` / ``service.stop()``), in the current thread
(``service.run(stop_event, max_seconds)``) or as processes of one consumer group::

    python -m lab_kit.moderation --bootstrap 127.0.0.1:9092 --backend-url URL --processes 2
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lab_kit import json_codec
from lab_kit.metrics import MetricsRecorder
from lab_kit.moderation.clients import CLIENTS, StageClients, make_clients
from lab_kit.moderation.offsets import TP, Chunk, OffsetTracker
from lab_kit.moderation.profile import StageProfile
from lab_kit.moderation.rules import Verdict
from lab_kit.moderation.settings import (
    BUSY_POLL_S,
    COMMIT_INTERVAL_S,
    DRAIN_TIMEOUT_S,
    HEARTBEAT_INTERVAL_MS,
    IDLE_POLL_S,
    PAUSE_AFTER_FULL_S,
    PRODUCER_DEFAULTS,
    SESSION_TIMEOUT_MS,
    TRANSACTION_INTERVAL_S,
    TRANSACTION_TIMEOUT_MS,
    check_float,
    check_guarantee,
    check_int,
    check_kafka_settings,
    kafka_config,
    topic_names,
    user_kafka_config,
)
from lab_kit.posts import Post, PostValidationError
from lab_kit.producer.dead_letters import dlq_record
from lab_kit.producer.encoding import decode

__all__ = ["Stage", "Dead", "header"]

log = logging.getLogger(__name__)

_json = json_codec.dumps  # every output of the stage: compact UTF-8 JSON


def _raw_post_id(raw: bytes | None) -> str | None:
    """Best effort: the post_id of an invalid record, for the DLQ entry."""
    try:
        doc = json.loads(bytes(raw or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    pid = doc.get("post_id") if isinstance(doc, dict) else None
    return pid if isinstance(pid, str) else None


def header(record: Any, name: str) -> str | None:
    """The value of ``record``'s header ``name``, decoded, or None."""
    for key, value in getattr(record, "headers", None) or ():
        if key == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


class Dead:
    """A record that could not be parsed: it goes to the DLQ with the reason."""

    __slots__ = ("record", "reason", "field")

    def __init__(self, record: Any, reason: str, field: str | None) -> None:
        self.record, self.reason, self.field = record, reason, field


class Stage:
    """A consumer group member that moderates chunks of records concurrently, at least once
    (default) or exactly once for ``read_committed`` readers (``guarantee="exactly-once"``).

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
        guarantee: str = "at-least-once",
    ) -> None:
        self.guarantee = check_guarantee(guarantee)
        self.exactly_once = guarantee == "exactly-once"
        self.batch_size = check_int("batch_size", batch_size, 1, 1000)
        self.concurrency = check_int("concurrency", concurrency, 1, 256)
        self.max_poll_records = check_int("max_poll_records", max_poll_records, 1, 100_000)
        self.output_timeout_s = check_float("output_timeout_s", output_timeout_s, 0.1, 600)
        self.max_backoff_s = check_float("max_backoff_s", max_backoff_s, 0.0, 600)
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
        self.client_name = client
        self.chunk_records = self.batch_size * self.concurrency
        self.max_buffered = check_int(
            "max_buffered", max_buffered if max_buffered is not None
            else max(4 * self.chunk_records, 5 * self.max_poll_records, 2000), 1, 10_000_000)
        self.topics = topic_names(**dict(topics or {}))
        self.source_topic = self.topics[source_key]
        self.group_id = group_id
        # Kafka settings: checked as given (before the lab's broker may be started for
        # them), and again with the broker's own settings added
        user_cfg = user_kafka_config(bootstrap_servers, client_config)
        check_kafka_settings(client, user_cfg, group_id=group_id, topics=self.topics,
                              max_poll_records=self.max_poll_records)
        self._kafka_cfg = kafka_config(user_cfg)
        if self._kafka_cfg is not user_cfg:
            check_kafka_settings(client, self._kafka_cfg, group_id=group_id,
                                  topics=self.topics, max_poll_records=self.max_poll_records)
        self.metrics = metrics if metrics is not None else MetricsRecorder()
        self._lock = threading.Lock()
        base = ("consumed", "results", "degraded", "rechecked", "dlq", "sent", "acked",
                "failed", "chunks", "commits", "commit_failures", "batch_retries",
                "rebalances", "producer_rebuilds", "backend_calls", "backend_failures",
                "approve", "review", "reject", "spam", "transactions", "aborts")
        self._counters: dict[str, int] = dict.fromkeys(base + self._COUNTERS, 0)
        self._clients: StageClients | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._queues: dict[TP, deque] = {}
        self._current: dict[TP, Chunk] = {}  # the chunk in moderation, per partition
        self._retry_at: dict[TP, float] = {}
        self._buffered = 0
        self._full = False
        self._full_since = 0.0
        self._paused = False  # full for PAUSE_AFTER_FULL_S: partitions paused, polling again
        self.buffered_peak = 0  # most records ever waiting here (max_buffered + one poll)
        self._tracker = OffsetTracker()
        self._watched: list[Chunk] = []  # sealed chunks whose outputs are not settled yet
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._active_stop: threading.Event = self._stop_event
        self._thread: threading.Thread | None = None
        self._running = False
        # exactly-once: one id per member, kept across producer rebuilds, so that a new
        # producer fences the old one and aborts what it left open
        self.transactional_id = (f"lab-{group_id}-{self.kind}-{uuid.uuid4().hex[:12]}"
                                 if self.exactly_once else None)
        self._txn_open = False
        self._txn_started = 0.0
        self._txn_from: dict[TP, int] = {}  # first offset per partition in the open txn
        self.last_error: str | None = None
        self.assignment: list[int] = []  # partitions of the source topic we own now
        self.profile = StageProfile()  # CPU per phase of the loop (profile.py)
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
        out["guarantee"] = self.guarantee
        out["in_flight"] = self._tracker.in_flight()
        out["buffered"] = self._buffered
        out["buffered_peak"] = self.buffered_peak
        out["profile"] = self.profile.snapshot()
        return out

    def is_running(self) -> bool:
        return self._running

    # -- clients and rebalances ------------------------------------------------------------

    def _new_clients(self) -> StageClients:
        return make_clients(
            self.client_name, self._kafka_cfg, group_id=self.group_id,
            topic=self.source_topic, max_poll_records=self.max_poll_records,
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            producer_settings=self._producer_settings(), on_assign=self._on_assign,
            on_revoke=self._on_revoke)

    def _producer_settings(self) -> dict[str, Any]:
        if not self.exactly_once:
            return dict(PRODUCER_DEFAULTS)
        # a record's delivery may not outlast its transaction (librdkafka refuses it)
        return {**PRODUCER_DEFAULTS, "request_timeout_ms": 5000, "delivery_timeout_ms": 8000,
                "transactional_id": self.transactional_id,
                "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS}

    def _on_assign(self, assigned: list[TP]) -> None:
        self._incr("rebalances", metric=False)
        parts = sorted(p for _t, p in assigned)
        with self._lock:
            self.assignment = parts
        clients = self._clients
        if clients is not None and assigned:
            # kafka-python keeps the paused flag of a partition that stays assigned; its
            # position the clients reset to the group's committed offset (see clients.py)
            clients.resume(assigned)
        self._full = self._paused = False
        log.info("%s: group %s assigned %s partitions %s", self.kind, self.group_id,
                 self.source_topic, parts)

    def _on_revoke(self, revoked: list[TP]) -> None:
        """Finish what is in flight (bounded), commit it, forget the rest: the partitions'
        next owner starts at the committed offsets."""
        self._drain(DRAIN_TIMEOUT_S)
        self._forget(None)
        with self._lock:
            self.assignment = []

    def _restart_points(self) -> dict[TP, int]:
        """Per partition: the first offset not yet handled to the end (acked; exactly-once:
        committed in a transaction)."""
        points = self._tracker.restart_points()
        for tp, off in self._txn_from.items():
            points[tp] = min(points.get(tp, off), off)
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
        self.profile.start()
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
        prof, clock = self.profile, time.thread_time_ns
        t0 = clock()
        if self._full and not self._paused:  # see _backpressure: wait for a call instead
            self._wake.wait(BUSY_POLL_S)
            self._wake.clear()
            records = []
        else:
            records = clients.poll(BUSY_POLL_S if busy else IDLE_POLL_S)
        for r in records:
            tp = (r.topic, r.partition)
            q = self._queues.get(tp)
            if q is None:
                q = self._queues[tp] = deque()
            q.append(r)
        self._buffered += len(records)
        if self._buffered > self.buffered_peak:
            self.buffered_peak = self._buffered
        t1 = clock()
        clients.serve()
        t2 = clock()
        self._collect()
        t3 = clock()
        self._dispatch()  # adds its own decode and dispatch time
        t4 = clock()
        self._backpressure()
        ok = self._settle()
        self._commit()
        t5 = clock()
        for phase, ns in (("consume", t1 - t0), ("delivery_reports", t2 - t1),
                          ("results", t3 - t2), ("commit", t5 - t4)):
            prof.add(phase, ns)
        return ok

    def _backpressure(self) -> None:
        """Stop polling while too many records wait; poll again at half of that.

        Not the clients' ``pause()``: both drop what they have fetched ahead for a paused
        partition and fetch it again after ``resume()``. A stage draining a backlog paused
        and resumed every few hundred records that way, and moderated 3,310 posts/s where
        not polling gives 15,012 (medians of 3, ``bench pipeline --backlog 50000
        --processes 1``; README, "Headroom"). Not polling leaves the records in the client's
        own bounded prefetch queue, ready for the next poll. Only a stage full for
        ``PAUSE_AFTER_FULL_S`` pauses its partitions and polls again, so that its group
        keeps it."""
        full = self._buffered > self.max_buffered or (
            self._full and self._buffered > self.max_buffered // 2)
        if full and not self._full:
            self._full_since = time.monotonic()
        self._full = full
        clients = self._clients
        if clients is None or not self.assignment:
            return
        pause = full and time.monotonic() - self._full_since >= PAUSE_AFTER_FULL_S
        if pause != self._paused:
            tps = [(self.source_topic, p) for p in self.assignment]
            (clients.pause if pause else clients.resume)(tps)
            self._paused = pause

    def _dispatch(self) -> None:
        """Start a chunk on every partition that has records and none in moderation."""
        if self._running and self._active_stop.is_set():
            return
        t0, decode_ns = time.thread_time_ns(), 0
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
            t = time.thread_time_ns()
            chunk.items = [self._parse(r) for r in records]
            decode_ns += time.thread_time_ns() - t
            self._begin(chunk)
        self._end_dispatch()
        self.profile.add("decode", decode_ns)
        self.profile.add("dispatch", time.thread_time_ns() - t0 - decode_ns)

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

    def _end_dispatch(self) -> None:
        """Once per dispatch round, after every new chunk's :meth:`_begin`."""

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
        clients = self._clients
        assert clients is not None
        if self.exactly_once:
            self._txn_from.setdefault(chunk.tp, chunk.first)
            if not self._txn_open:
                try:
                    clients.begin()
                except Exception as exc:  # noqa: BLE001 - no broker, fenced: the chunk fails
                    chunk.expect()
                    chunk.output_done(exc)
                    return
                self._txn_open = True
                self._txn_started = time.monotonic()
        clients.send(self.topics[topic_key], key, value, headers, chunk)

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
        if self.exactly_once:
            self._commit_transaction(force)
            return
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

    def _commit_transaction(self, force: bool) -> None:
        """exactly-once: at the end of the interval, flush, then commit the outputs and the
        offsets they came from in one transaction; abort and re-read if anything fails."""
        clients = self._clients
        if not self._txn_open or clients is None:
            return
        if not force and time.monotonic() - self._txn_started < TRANSACTION_INTERVAL_S:
            return
        clients.flush(self.output_timeout_s)
        clients.serve()
        if not self._settle():
            return  # an output failed: _settle() aborted the transaction
        if self._watched:
            self._rewind(f"transaction: {len(self._watched)} chunks' outputs not acked after "
                        f"a flush of {self.output_timeout_s:g} s")
            return
        offsets = self._tracker.committable()
        try:
            clients.commit_transaction(offsets)
        except Exception as exc:  # noqa: BLE001 - fenced, broker away, timeout: abort
            self._incr("commit_failures", metric=False)
            self._rewind(f"commit: {type(exc).__name__}: {exc}")
            return
        self._txn_open = False
        self._txn_from = {}
        self._incr("transactions", metric=False)
        self._incr("commits", metric=False)

    def _seek_all(self, clients: StageClients, points: Mapping[TP, int]) -> None:
        for tp, off in points.items():
            try:
                clients.seek(tp, off)
            except Exception:  # noqa: BLE001 - cannot seek: rejoin from the commits
                clients.close_consumer()
                self._clients = None
                break

    def _rewind(self, reason: str) -> None:
        """An output (exactly-once: or the commit) failed. At-least-once: commit what is safe;
        exactly-once: abort the open transaction. Then replace the producer (exactly-once:
        same transactional id, it fences the old one) and re-read from the first offset not
        handled to the end (exactly-once: the last committed transaction's)."""
        self.last_error = reason
        self._incr("batch_retries", metric=False)
        if self.exactly_once:
            self._incr("aborts", metric=False)
            log.warning("%s: transaction aborted (%s); re-processing from the last committed "
                        "offsets", self.kind, reason)
        else:
            log.warning("%s: outputs failed (%s); re-processing from the first unacked "
                        "offset", self.kind, reason)
            self._commit(force=True)
        points = self._restart_points()
        clients = self._clients
        self._forget(None)
        self._abort_open(clients)
        if clients is not None:
            clients.rebuild_producer()
            self._incr("producer_rebuilds", metric=False)
            self._seek_all(clients, points)

    def _abort_open(self, clients: StageClients | None) -> None:
        """exactly-once: abort the open transaction now, so readers need not wait for the
        broker's timeout; if that fails, the next producer's init (or the timeout) does."""
        was_open, self._txn_open, self._txn_from = self._txn_open, False, {}
        if not was_open or clients is None:
            return
        try:
            clients.abort()
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("%s: abort failed (%s: %s); the next producer or the broker's "
                        "timeout aborts it", self.kind, type(exc).__name__, exc)

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
        self._abort_open(clients)
        if clients is not None:
            clients.close_consumer()
            clients.close_producer(5.0)

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self, record: Any) -> Post | Dead:
        try:
            return decode(record.value)  # the producer's encode, inverted
        except PostValidationError as exc:
            return Dead(record, f"invalid post: {exc}", exc.field)
        except Exception as exc:  # noqa: BLE001 - anything else odd about the record
            return Dead(record, f"invalid post: value: {type(exc).__name__}: {exc}", "value")

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

    def start(self, max_seconds: float | None = None) -> Stage:
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

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
