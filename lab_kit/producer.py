"""``AsyncPostProducer``: hand a StreamSocial post to Kafka without making the user wait.

``submit(post)`` validates the post, hands it to kafka-python's ``KafkaProducer.send`` (which
only appends it to an in-memory batch) and returns a future at once. The delivery callback,
run later on the client's sender thread, records the ack latency, resolves the future and
calls the handlers of :mod:`lab_kit.callbacks`.

What it adds to the plain client, and why:

* **A bound on posts in flight** (``max_in_flight``). kafka-python 3 has no cap on its send
  buffer, so an outage would grow memory without limit. When the bound is reached the
  ``on_full`` policy decides: ``"spool"`` (default when a spool is configured: the post goes
  to disk, the caller does not wait), ``"block"`` (wait up to ``max_block_s``, then raise
  :class:`BackpressureError`) or ``"reject"`` (raise at once). A raised post was never
  accepted, and is counted as ``rejected``.
* **Per-post timing**: ``submit`` duration, and ack latency measured from the post's
  *intended* send time (so an open-loop load test cannot hide queueing delay).
* **Dead letters**: a non-retriable failure (e.g. the broker says the record is too large)
  goes to ``posts.dlq`` with the reason, from a worker thread (never the sender thread).
* **Failover** (``spool_path=``): when the broker is unreachable (health probe fails, or
  acks stall) or a delivery fails retriably past ``delivery_timeout_ms``, posts go to a
  durable SQLite spool without blocking the caller, and are replayed in order when the
  broker answers again, while the producer keeps running. A new producer on the same spool
  replays what a crashed one left. Replays can duplicate a post whose ack was lost; the
  audit counts duplicates by ``post_id``.
* ``close()`` never silently drops an accepted post: what could not be delivered is spooled
  (if there is a spool) or reported by id in the :class:`CloseReport`.

Kafka settings pass through as keyword arguments (``acks``, ``linger_ms``, ``batch_size``,
``compression_type``, ``enable_idempotence``, ...). Lab defaults differ from kafka-python's
in two places, both documented in :data:`LAB_DEFAULTS`: ``linger_ms=5`` (fuller batches for a
few ms) and ``bootstrap_timeout_ms=3000`` (fail fast when no broker answers).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from .audit import dlq_record
from .metrics import MetricsRecorder
from .posts import (
    MAX_MEDIA_URLS,
    MAX_TEXT_CHARS,
    MAX_URL_CHARS,
    MAX_USER_ID_CHARS,
    RECORD_OVERHEAD_BYTES,
    Post,
    PostValidationError,
    validate_post,
)
from .topics import POSTS, POSTS_DLQ

log = logging.getLogger(__name__)

#: kafka-python settings this lab changes (everything else is kafka-python 3's default:
#: acks="all", enable_idempotence=True, retries=inf, delivery_timeout_ms=120000, ...).
LAB_DEFAULTS: dict[str, Any] = {"linger_ms": 5, "bootstrap_timeout_ms": 3000}

ON_FULL_POLICIES = ("spool", "block", "reject")
MODES = ("async", "sync")


class BackpressureError(RuntimeError):
    """Too many posts in flight: the post was NOT accepted (the caller may retry later)."""

    def __init__(self, limit: int, waited_s: float):
        self.field = "max_in_flight"
        self.limit = limit
        super().__init__(
            f"max_in_flight: {limit} posts already in flight (waited {waited_s * 1000:.0f} ms); "
            f"the post was not accepted"
        )


class ProducerClosedError(RuntimeError):
    """submit() after close()."""


class BrokerUnavailableError(RuntimeError):
    """No broker answered and there is no spool to fall back on."""


class DeliveryFailed(Exception):
    """The post was not written to its topic. ``dead_lettered`` says if it reached the DLQ."""

    def __init__(self, post_id: str, error: BaseException, dead_lettered: bool = False):
        self.post_id = post_id
        self.error = error
        self.dead_lettered = dead_lettered
        where = " (sent to the dead-letter topic)" if dead_lettered else ""
        super().__init__(f"post {post_id}: {type(error).__name__}: {error}{where}")


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


_FUTURE_LOCK = threading.Lock()  # guards the lazy creation of a future's Event
_PENDING, _DONE = 0, 1


class PostFuture:
    """The future ``submit()`` returns: ``result()``, ``exception()``, ``done()``,
    ``add_done_callback()`` — like ``concurrent.futures.Future``, but cheaper to create and to
    complete (no lock or condition per post unless someone actually waits on it).

    Completion callbacks run in the thread that completes the future: for an ack that is the
    client's sender thread, so keep them short.
    """

    __slots__ = ("post", "post_id", "intended_at", "generation", "_owner", "_state", "_value",
                 "_exc", "_event", "_callbacks")

    def __init__(self, post: Post, intended_at: float, owner: AsyncPostProducer | None = None):
        self.post = post
        self.post_id = post.post_id
        self.intended_at = intended_at
        self.generation = 0  # which KafkaProducer instance carries it
        self._owner = owner
        self._state = _PENDING
        self._value: Any = None
        self._exc: BaseException | None = None
        self._event: threading.Event | None = None
        self._callbacks: list | None = None

    def done(self) -> bool:
        return self._state == _DONE

    def __call__(self, outcome: Any) -> None:
        """The future is its own callback *and* errback on kafka-python's future: one object
        per post instead of two ``functools.partial`` (less work for the garbage collector).
        kafka-python passes the record metadata on success and the exception on failure."""
        if isinstance(outcome, BaseException):
            self._owner._on_error(self, outcome)
        else:
            self._owner._delivered(self, outcome, time.perf_counter())

    def _complete(self, value: Any, exc: BaseException | None) -> None:
        with _FUTURE_LOCK:
            if self._state == _DONE:
                return
            self._value, self._exc, self._state = value, exc, _DONE
            event, callbacks = self._event, self._callbacks
        if event is not None:
            event.set()
        if callbacks:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:  # noqa: BLE001 - same contract as concurrent.futures
                    log.exception("done-callback of post %s raised", self.post_id)

    def set_result(self, value: Any) -> None:
        self._complete(value, None)

    def set_exception(self, exc: BaseException) -> None:
        self._complete(None, exc)

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


@dataclass
class CloseReport:
    accepted: int
    acked: int
    spooled_pending: int
    dead_lettered: int
    failed_ids: list[str] = field(default_factory=list)
    undelivered_ids: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Accepted posts that are neither on Kafka, nor in the DLQ, nor in the spool."""
        return len(self.failed_ids) + len(self.undelivered_ids)


def force_close(client: KafkaProducer) -> None:
    """Close a kafka-python producer now, failing what it still holds (their errbacks run).

    kafka-python 3.0's ``close(timeout=0)`` raises from its internal ``flush(0)`` before it
    gets to force-closing the sender, so the sender is told directly.
    """
    try:
        client.close(timeout=0)
    except KafkaTimeoutError:
        sender = getattr(client, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5)
        try:
            client.close(timeout=0)  # now only the bookkeeping (metrics, serializers) is left
        except KafkaTimeoutError:
            pass


def _plain_str(v: Any, limit: int) -> bool:
    return type(v) is str and 0 < len(v) <= limit and not v.isspace()


def _plain_post(post: Any) -> bool:
    """Cheap check that a Post needs no full validation (the common case on the hot path).

    Same rules as :func:`validate_post`; anything it is unsure of returns False and gets the
    full check, which raises the precise, field-naming error. UTF-8 validity is checked by
    the JSON encoding that follows.
    """
    if type(post) is not Post:
        return False
    u, t, i = post.user_id, post.text, post.post_id
    if not (type(u) is str and type(t) is str and type(i) is str
            and 0 < len(u) <= MAX_USER_ID_CHARS and 0 < len(t) <= MAX_TEXT_CHARS and i
            and not u.isspace() and not t.isspace() and not i.isspace()):
        return False
    created = post.created_at
    if type(created) is not float or not math.isfinite(created):
        return False
    media, lang, reply_to = post.media_urls, post.lang, post.reply_to
    if media and (type(media) is not tuple or len(media) > MAX_MEDIA_URLS
                  or not all(_plain_str(m, MAX_URL_CHARS) for m in media)):
        return False
    return ((lang is None or _plain_str(lang, 1 << 30))
            and (reply_to is None or _plain_str(reply_to, 1 << 30)))


def api_versions_probe(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if a Kafka broker answers an ApiVersions request within ``timeout_s``.

    A TCP connect is not enough: a paused (SIGSTOP) broker still accepts connections in the
    kernel, but answers nothing. So the probe sends a real (tiny) Kafka request.
    """
    client_id = b"lab-kit-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id  # api 18 = ApiVersions
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 8)
            _size, correlation_id = struct.unpack(">ii", header)
            return correlation_id == 7
    except OSError:
        return False


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


class AsyncPostProducer:
    """Non-blocking post producer with callbacks, metrics, backpressure and failover."""

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
        **kafka_config: Any,
    ):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not one of {MODES}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be an integer >= 1, got {max_in_flight!r}")
        on_full = on_full or ("spool" if spool_path else "block")
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full: {on_full!r} is not one of {ON_FULL_POLICIES}")
        if on_full == "spool" and not spool_path:
            raise ValueError("on_full: 'spool' needs spool_path=...")
        if bootstrap_servers is None:
            from . import broker

            cfg = broker.ensure().client_config()
            bootstrap_servers = cfg.pop("bootstrap_servers")
            kafka_config = {**cfg, **kafka_config}
        self.topic = topic
        self.mode = mode
        self.max_in_flight = max_in_flight
        self.on_full = on_full
        self.max_block_s = max_block_s
        self.dlq_topic = dlq_topic
        self.handlers = list(handlers)
        self.metrics = metrics or MetricsRecorder()
        self.callback_errors: deque[tuple[str, str, str]] = deque(maxlen=100)
        self._kafka_config = {**LAB_DEFAULTS, **kafka_config,
                              "bootstrap_servers": bootstrap_servers}
        self.max_request_size = self._kafka_config.get(
            "max_request_size", KafkaProducer.DEFAULT_CONFIG["max_request_size"])
        self._lock = threading.Lock()
        self._in_flight: dict[PostFuture, None] = {}  # insertion order = oldest first
        self._failed_ids: list[str] = []
        self._closed = False
        self._stop = threading.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lab-worker")
        self._generation = 0
        self._client: KafkaProducer | None = None
        self._client_stale = False  # replace the client once the broker answers again
        self._client_lock = threading.Lock()  # one replacement at a time (worker, health)
        self._stalled_since: float | None = None
        self._side_client: KafkaProducer | None = None
        self.healthy = True
        self.spool = None
        self._spooling = False  # True while new posts go to the spool (outage or backlog)
        # held while a post is appended because the producer is spooling, and while the
        # replayer switches back to direct sends: no post can be spooled between its "spool
        # empty" check and the switch (a direct send after it would overtake that post)
        self._switch_lock = threading.Lock()
        self._probe_interval_s = probe_interval_s
        self._stall_timeout_s = stall_timeout_s
        if spool_path:
            from .spool import Spool

            self.spool = Spool(spool_path)
        try:
            self._client = self._new_client()
            self._generation = 1
        except KafkaTimeoutError as exc:
            if self.spool is None:
                self._worker.shutdown(wait=False)
                raise BrokerUnavailableError(
                    f"no Kafka broker answered at {bootstrap_servers} within "
                    f"{self._kafka_config['bootstrap_timeout_ms']} ms; start one with "
                    f"`python -m lab_kit broker up`, or pass spool_path= to accept posts "
                    f"while it is down"
                ) from exc
            self.healthy = False
            self._spooling = True
            self.metrics.open_window("broker unreachable")
        if self.spool is not None:
            if len(self.spool) > 0:
                self._spooling = True  # replay what an earlier (crashed) producer left first
            self._health_thread = threading.Thread(target=self._health_loop, daemon=True,
                                                   name="lab-health-replay")
            self._health_thread.start()

    # --- client ---------------------------------------------------------------------------------
    def _new_client(self) -> KafkaProducer:
        client = KafkaProducer(**self._kafka_config)
        client.partitions_for(self.topic)  # warm the metadata so send() never waits for it
        return client

    def _rebuild_client(self) -> None:
        """Replace the KafkaProducer (after an expired batch, kafka-python's idempotent
        producer stops sending altogether: a fresh producer id is the way out)."""
        old = self._client
        try:
            self._client = self._new_client()
        except KafkaTimeoutError:
            self._client = None
        self._generation += 1
        self.metrics.incr("client_rebuilds")
        if old is not None:
            # abort what the old client still holds: its errbacks re-send those posts
            self._worker.submit(force_close, old)

    @property
    def client(self) -> KafkaProducer | None:
        """The underlying kafka-python producer (for ``metrics()`` and experiments)."""
        return self._client

    # --- submit ---------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _encode(self, post: Post | dict) -> tuple[Post, bytes, bytes]:
        if not _plain_post(post):  # anything unusual gets the full check (precise errors)
            post = validate_post(post, check_size=False)
        try:
            value = post.to_json_bytes()
            key = post.key_bytes()
        except UnicodeEncodeError:  # a lone surrogate: let validation name the field
            validate_post(post, check_size=False)
            raise
        size = len(key) + len(value) + RECORD_OVERHEAD_BYTES
        if size > self.max_request_size:
            raise PostValidationError(
                "size", self.max_request_size,
                f"encoded post is {size} bytes, over max_request_size {self.max_request_size}")
        return post, key, value

    def submit(self, post: Post | dict, *, intended_at: float | None = None) -> PostFuture:
        """Accept a post and return a future at once; the ack arrives later in a callback.

        Raises :class:`PostValidationError` for bad input and :class:`BackpressureError` when
        the in-flight bound is reached under the ``block``/``reject`` policies: in both cases
        the post was not accepted.
        """
        t0 = time.perf_counter()
        if self._closed:
            raise ProducerClosedError("submit() after close()")
        post, key, value = self._encode(post)
        if self.mode == "sync":
            return self._submit_sync(post, key, value, t0 if intended_at is None else intended_at)
        pf = PostFuture(post, t0 if intended_at is None else intended_at, self)
        if self._spooling and self._spool_behind_backlog(pf, key, value):
            pass
        elif len(self._in_flight) < self.max_in_flight:
            self._send(pf, key, value)
        elif self.on_full == "spool":
            self._spool_overflow(pf, key, value)
        elif self.on_full == "block" and self._wait_for_slot(t0 + self.max_block_s):
            self._send(pf, key, value)
        else:
            self.metrics.incr("rejected")
            raise BackpressureError(self.max_in_flight, time.perf_counter() - t0)
        now = time.perf_counter()
        self.metrics.observe("submitted", "submit", now - t0, now)
        return pf

    def _spool_behind_backlog(self, pf: PostFuture, key: bytes, value: bytes) -> bool:
        """While spooling, a post queues behind the backlog, in the spool. False if the
        replayer switched back to direct sends meanwhile (the spool is empty then)."""
        with self._switch_lock:
            if not self._spooling:
                return False
            self._to_spool(pf, key, value)
            return True

    def _spool_overflow(self, pf: PostFuture, key: bytes, value: bytes) -> None:
        """``on_full="spool"``: the post goes to disk, and newer posts queue behind it there
        until the replayer has drained the spool, so none of them overtakes it."""
        with self._switch_lock:
            self._to_spool(pf, key, value)
            self._spooling = True

    def _wait_for_slot(self, deadline: float) -> bool:
        """The ``block`` policy: poll until a post in flight settles, or the deadline."""
        while len(self._in_flight) >= self.max_in_flight:
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.0005)
        return True

    def _send(self, pf: PostFuture, key: bytes, value: bytes) -> None:
        """Hand one post to the client (a slot is already held)."""
        client = self._client
        if client is None:  # no client (broker never answered): straight to the spool
            self._to_spool(pf, key, value)
            return
        pf.generation = self._generation
        self._in_flight[pf] = None
        try:
            kf = client.send(self.topic, value=value, key=key)
        except Exception as exc:  # noqa: BLE001 - e.g. too large, or no metadata in max_block_ms
            self._on_error(pf, exc)
            return
        kf.add_callback(pf)  # pf(metadata) -> self._delivered
        kf.add_errback(pf)  # pf(exception) -> self._on_error

    def submit_sync(self, post: Post | dict, timeout: float = 30.0) -> Delivery:
        """The blocking way, for comparison: ``send().get()`` waits for the broker's ack."""
        t0 = time.perf_counter()
        post, key, value = self._encode(post)
        return self._submit_sync(post, key, value, t0, timeout).result()

    def _submit_sync(self, post: Post, key: bytes, value: bytes, t0: float,
                     timeout: float = 30.0) -> PostFuture:
        pf = PostFuture(post, t0)
        self.metrics.incr("submitted")
        try:
            md = self._client.send(self.topic, value=value, key=key).get(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and re-raised
            self.metrics.record_error(type(exc).__name__)
            self._failed_ids.append(post.post_id)
            pf.set_exception(DeliveryFailed(post.post_id, exc))
            raise pf.exception() from exc
        now = time.perf_counter()
        self.metrics.record_latency("submit", now - t0, now)
        self.metrics.record_latency("ack", now - t0, now)
        self.metrics.incr("acked", 1, now)
        pf.set_result(Delivery(post.post_id, "acked", md.topic, md.partition, md.offset,
                               now - t0))
        return pf

    # --- callbacks (run on the client's sender thread: keep them short) ------------------------
    def _delivered(self, pf: PostFuture, md: Any, now: float) -> None:
        """The ack: count it, complete the future, tell the handlers (sender or worker thread).

        ``pf(metadata)`` calls this straight from kafka-python's future, once per post.
        """
        self._in_flight.pop(pf, None)
        latency = now - pf.intended_at
        self.metrics.observe("acked", "ack", latency, now)
        delivery = Delivery(pf.post_id, "acked", md.topic, md.partition, md.offset, latency)
        pf._complete(delivery, None)
        for h in self.handlers:
            try:
                h.on_delivery(pf.post, delivery)
            except Exception as exc:  # noqa: BLE001 - a user callback must not break delivery
                self._callback_failed(h, pf, exc)

    def _on_error(self, pf: PostFuture, exc: BaseException) -> None:
        """A delivery error from the client (sender thread, or the caller for send() errors).

        kafka-python 3.0's idempotent producer stops sending after an expired batch, and
        after a non-retriable error (e.g. MESSAGE_TOO_LARGE) fails every later send with the
        same error. So: an error from the current client replaces that client (on the worker),
        posts caught on a replaced client are re-sent, and a post that failed non-retriably
        is first re-sent alone (its batch-mates fail with it) before it is dead-lettered.
        """
        self._in_flight.pop(pf, None)
        if pf.done():  # already settled (e.g. spooled by close()): nothing more to do
            return
        self.metrics.record_error(type(exc).__name__)
        retriable = bool(getattr(exc, "retriable", False))
        current = pf.generation == self._generation
        if current and (not retriable or isinstance(exc, KafkaTimeoutError)):
            self._worker.submit(self._replace_client, pf.generation)
        if not current and self.spool is not None:  # its client was replaced: replay it
            self._worker.submit(self._spool_failed, pf, exc)
        elif not current or not retriable:
            self._worker.submit(self._resend_alone, pf, exc)
        elif self.spool is not None:
            self.healthy = False
            self._worker.submit(self._spool_failed, pf, exc)
        else:
            self._fail(pf, exc)

    def _replace_client(self, generation: int) -> None:
        """Replace the client unless that generation was replaced already (errors of one bad
        client arrive many times, from the worker and the health thread)."""
        with self._client_lock:
            if generation == self._generation and not self._closed:
                self._client_stale = False
                self._rebuild_client()

    def _side(self) -> KafkaProducer:
        """A second, non-idempotent client for lone re-sends and dead letters (worker only)."""
        if self._side_client is None:
            self._side_client = KafkaProducer(**{
                **self._kafka_config, "enable_idempotence": False, "linger_ms": 0,
                "retries": 3, "max_in_flight_requests_per_connection": 1})
        return self._side_client

    def _resend_alone(self, pf: PostFuture, first_error: BaseException) -> None:
        """Worker: send the post on its own; a non-retriable failure now is its own fault."""
        post = pf.post
        self.metrics.incr("retried")
        try:
            md = self._side().send(self.topic, key=post.key_bytes(),
                                   value=post.to_json_bytes()).get(timeout=30)
        except Exception as exc:  # noqa: BLE001 - classified below
            if getattr(exc, "retriable", False):
                if self.spool is not None:
                    self._spool_failed(pf, exc)
                else:
                    self._fail(pf, exc)
            elif self.dlq_topic:
                self._dead_letter(pf, exc)
            else:
                self._fail(pf, exc)
            return
        self._delivered(pf, md, time.perf_counter())

    def _callback_failed(self, handler: Any, pf: PostFuture, exc: BaseException) -> None:
        self.metrics.incr("callback_errors")
        name = getattr(handler, "name", type(handler).__name__)
        self.callback_errors.append((pf.post_id, name, repr(exc)))
        n = self.metrics.counters_fast("callback_errors")
        if n <= 3 or n % 1000 == 0:  # log a few, count them all
            log.warning("delivery handler %s raised for post %s: %r (%d so far; see "
                        "producer.callback_errors)", name, pf.post_id, exc, n)

    def _fail(self, pf: PostFuture, exc: BaseException, dead_lettered: bool = False) -> None:
        if not dead_lettered:
            self.metrics.incr("undeliverable")
            with self._lock:
                self._failed_ids.append(pf.post_id)
        for h in self.handlers:
            try:
                h.on_failure(pf.post, exc)
            except Exception as cb_exc:  # noqa: BLE001
                self._callback_failed(h, pf, cb_exc)
        if not pf.done():
            pf.set_exception(DeliveryFailed(pf.post_id, exc, dead_lettered))

    # --- worker thread: dead letters and spooling ------------------------------------------------
    def _dead_letter(self, pf: PostFuture, exc: BaseException) -> None:
        try:
            self._write_dead_letter(dlq_record(pf.post, exc, source_topic=self.topic))
        except Exception as dlq_exc:  # noqa: BLE001
            log.error("could not dead-letter post %s: %r", pf.post_id, dlq_exc)
            self.metrics.incr("dlq_failed")
            self._fail(pf, exc)
            return
        self._fail(pf, exc, dead_lettered=True)

    def _write_dead_letter(self, record: tuple) -> None:
        """Send (key, value, headers) to the DLQ on the side client and wait for the ack."""
        key, value, headers = record
        self._side().send(self.dlq_topic or POSTS_DLQ, key=key, value=value,
                          headers=headers).get(timeout=30)
        self.metrics.incr("dead_lettered")

    def _to_spool(self, pf: PostFuture, key: bytes, value: bytes) -> None:
        """Write an accepted post to the durable spool (on the caller's thread: it returns
        only after SQLite committed, so the post survives a crash of this process)."""
        self.spool.append(self.topic, key, value, pf.post_id)
        self.metrics.incr("spooled")
        pf.set_result(Delivery(pf.post_id, "spooled", self.topic))

    def _spool_failed(self, pf: PostFuture, exc: BaseException) -> None:
        if pf.done():
            return
        post = pf.post
        try:
            self._to_spool(pf, post.key_bytes(), post.to_json_bytes())
        except Exception as sp_exc:  # noqa: BLE001
            log.error("could not spool post %s: %r", post.post_id, sp_exc)
            self._fail(pf, exc)
            return
        with self._switch_lock:
            self._spooling = True  # newer posts queue behind this one, in the spool

    # --- health probe and replay (only with a spool) ---------------------------------------------
    def _probe(self) -> bool:
        if self._kafka_config.get("security_protocol", "PLAINTEXT") != "PLAINTEXT":
            return self._client is not None and self._client.bootstrap_connected()
        servers = self._kafka_config["bootstrap_servers"]
        if isinstance(servers, str):
            servers = servers.split(",")
        for s in servers:
            host, _, port = s.strip().rpartition(":")
            if api_versions_probe(host, int(port), timeout_s=1.0):
                return True
        return False

    def _oldest_in_flight_age(self) -> float:
        try:
            oldest = next(iter(self._in_flight))
        except (StopIteration, RuntimeError):
            return 0.0
        return time.perf_counter() - oldest.intended_at

    def _health_loop(self) -> None:
        while not self._stop.wait(self._probe_interval_s):
            try:
                self._health_step()
            except Exception:  # noqa: BLE001 - the loop must survive; log and go on
                log.exception("health/replay step failed")

    def _health_step(self) -> None:
        answers = self._probe()
        stalled = self._oldest_in_flight_age() >= self._stall_timeout_s
        ok = answers and not stalled
        if answers and stalled:
            # The broker answers, yet posts stay stuck in the client: after an outage
            # kafka-python's idempotent producer can stop making progress. Past twice the
            # stall timeout, replace the client; what it held is spooled and replayed.
            now = time.monotonic()
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since > 2 * self._stall_timeout_s:
                log.warning("broker answers but %d posts are stuck in the client: replacing it",
                            len(self._in_flight))
                self._stalled_since = None
                self.metrics.incr("stuck_client_rebuilds")
                self._replace_client(self._generation)
        else:
            self._stalled_since = None
        if not ok and self.healthy:
            self.healthy = False
            self._spooling = True
            self.metrics.open_window("broker unreachable")
            self.metrics.incr("outages")
        elif ok and not self.healthy:
            self.healthy = True
            self.metrics.close_window("broker unreachable")
        if not self.healthy:
            return
        if self._client is None or self._client_stale:
            self._replace_client(self._generation)
            if self._client is None:
                self.healthy = False
                return
        while len(self.spool) > 0 and not self._stop.is_set() and self.healthy:
            self._replay_batch()
        if self.healthy and self._spooling:
            with self._switch_lock:  # back to direct sends, unless a post just got spooled
                if len(self.spool) == 0:
                    self._spooling = False

    def _replay_batch(self, limit: int = 5000, timeout_s: float = 30.0) -> int:
        """Re-send the oldest spooled posts (in spool order), then ack/nack them in one go.

        A record the broker refuses for good (non-retriable, e.g. too large) leaves the spool
        for the dead-letter topic; one that failed retriably stays for the next round.
        """
        records = self.spool.lease(limit, lease_s=timeout_s * 2)
        if not records:
            return 0
        client = self._client
        futures = []
        for rec in records:
            try:
                kf = client.send(rec.topic, key=rec.key, value=rec.value)
            except Exception as exc:  # noqa: BLE001 - e.g. no metadata yet: retry next round
                log.warning("replay: could not send spooled post %s: %r", rec.post_id, exc)
                break
            futures.append((rec, kf))
        try:
            client.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            pass
        acked, retry, refused = [], [], []
        for rec, kf in futures:
            if kf.succeeded():
                acked.append(rec.seq)
            elif kf.is_done and not getattr(kf.exception, "retriable", True):
                refused.append((rec, kf.exception))
            else:
                retry.append(rec.seq)
        retry += [rec.seq for rec in records[len(futures):]]
        for rec, exc in refused:
            self._dead_letter_spooled(rec, exc)
        self.spool.ack(acked + [rec.seq for rec, _ in refused])
        if retry:
            self.spool.nack(retry)
            self.healthy = False
            self._client_stale = True
            self.metrics.incr("replay_failed", len(retry))
        if refused:
            self._client_stale = True  # kafka-python fails every later send after such an error
        self.metrics.incr("replayed", len(acked))
        return len(acked)

    def _dead_letter_spooled(self, rec: Any, exc: BaseException) -> None:
        try:
            post = Post.from_json_bytes(rec.value)
        except PostValidationError:
            post = None
        self._write_dead_letter(dlq_record(post, exc, source_topic=rec.topic, raw=rec.value,
                                           post_id=rec.post_id))

    # --- flush / close --------------------------------------------------------------------------
    def _guard_sender_thread(self, what: str) -> None:
        current = threading.current_thread()
        clients = (self._client, self._side_client)
        if any(current is getattr(c, "_sender", None) for c in clients if c is not None):
            raise RuntimeError(
                f"{what}() inside a delivery callback would deadlock: callbacks run on the "
                f"client's sender thread, which {what}() waits for. Hand the work to a worker."
            )

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every accepted post is acked, spooled or failed. True if all were."""
        self._guard_sender_thread("flush")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._client is not None and not self._spooling:
            try:
                self._client.flush(timeout=timeout)
            except KafkaTimeoutError:
                pass
        while self._in_flight:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        self._worker.submit(lambda: None).result(
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
        while len(self.spool) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.spool)

    def close(self, timeout: float = 30.0) -> CloseReport:
        """Stop accepting posts, deliver what is in flight, and say what became of each one.

        With a spool and a broker that answers, the spool is replayed first (within
        ``timeout``); what is still in flight after ``timeout`` is spooled, not dropped, and
        what stays in the spool is replayed by the next producer on the same file.
        """
        self._guard_sender_thread("close")
        self._closed = True
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        if self.spool is not None and len(self.spool) > 0 and (self.healthy or self._probe()):
            self.drain_spool(timeout=max(0.0, deadline - time.monotonic()))
            self.flush(max(0.1, deadline - time.monotonic()))
        self._stop.set()
        if self.spool is not None and getattr(self, "_health_thread", None):
            self._health_thread.join(timeout=timeout)
        undelivered = list(self._in_flight)
        for pf in undelivered:  # still not acked after the timeout: keep them on disk
            if self.spool is not None:
                self._in_flight.pop(pf, None)
                self._spool_failed(pf, KafkaTimeoutError("not acked before close()"))
        if self._client is not None:
            if undelivered:
                force_close(self._client)
            else:
                self._client.close(timeout=5)
        self._worker.shutdown(wait=True)
        if self._side_client is not None:
            self._side_client.close(timeout=5)
        counters = self.metrics.counters()
        failed = list(dict.fromkeys(self._failed_ids))
        report = CloseReport(
            accepted=counters.get("submitted", 0),
            acked=counters.get("acked", 0),
            spooled_pending=len(self.spool) if self.spool is not None else 0,
            dead_lettered=counters.get("dead_lettered", 0),
            failed_ids=failed,
            undelivered_ids=[pf.post_id for pf in undelivered
                             if not pf.done() and pf.post_id not in set(failed)],
        )
        if self.spool is not None:
            self.spool.close()
        return report

    def __enter__(self) -> AsyncPostProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.close()

    def client_metrics(self) -> dict:
        """kafka-python's own metrics (no percentiles there: see ``self.metrics``)."""
        return self._client.metrics() if self._client is not None else {}
