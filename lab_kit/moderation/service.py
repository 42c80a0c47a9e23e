"""The moderation service: posts in, verdicts out, through the backend when it can.

:class:`ModerationService` is a :class:`~lab_kit.moderation.stage.Stage` (the stage loop,
chunks and commits are there) that moderates posts with the backend in calls of up to
``batch_size`` posts, ``concurrency`` calls at once (:class:`Backend`: one client per pool
thread). The chunks a dispatch round starts (one per partition at most) share calls: fuller
requests, less CPU per post in the client and in the backend (:meth:`~ModerationService.
_end_dispatch`).

**Degrading gracefully.** Backend calls go through a ``pybreaker`` circuit breaker; a failing
call (unavailable, timeout, 5xx, garbage) or an open breaker makes the posts of that call use
:func:`lab_kit.moderation.rules.fallback_verdict`: the result is ``degraded`` and the post also
goes to ``moderation.recheck``. A 429 ("overloaded", answered at once) degrades that call's
posts the same way but does not count against the breaker: the backend is there, just full.

**Load shedding** handles overload by volume: a post that has already waited
``shed_after_ms`` (record timestamp to now; default 1,000 ms, half of the 2 s end-to-end
budget) is moderated by the local rules at once, and the stage keeps shedding until a chunk's
oldest post is younger than half of that. Transitions are in ``service.shed_events``. Only
posts that arrived while the member owned the partition are shed: a backlog found at start-up
or after a rebalance is already late, and degrading it would only double the backend's work
(a recheck per post); it is moderated by the backend.

The recheck worker (:mod:`lab_kit.moderation.recheck`) asks :meth:`ModerationService.healthy`
before it uses the backend.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import pybreaker

from lab_kit.metrics import MetricsRecorder
from lab_kit.moderation.backend import (
    BackendBadRequest,
    BackendOverloaded,
    ModerationBackendError,
    ModerationClient,
)
from lab_kit.moderation.offsets import TP, Chunk
from lab_kit.moderation.rules import Verdict, fallback_verdict
from lab_kit.moderation.settings import (
    MAX_BACKOFF_S,
    MAX_EVENTS,
    OUTPUT_TIMEOUT_S,
    OVERLOAD_QUIET_S,
    RECHECK_MAX_LIVE_AGE_S,
    check_float,
    check_int,
)
from lab_kit.moderation.stage import Dead, Stage
from lab_kit.posts import Post

__all__ = ["ModerationService", "Backend"]

log = logging.getLogger(__name__)


class Backend:
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


class CallShare:
    """A chunk's share of a backend call: the call's posts ``lo:hi`` are the chunk's (one
    call can carry the posts of several partitions' chunks). ``done()`` and ``result()``
    are the call future's, the results cut to the share."""

    __slots__ = ("future", "lo", "hi")

    def __init__(self, future: Any, lo: int, hi: int) -> None:
        self.future, self.lo, self.hi = future, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> tuple[str, Any]:
        status, value = self.future.result()
        return (status, value[self.lo:self.hi]) if status == "ok" else (status, value)


class ModerationService(Stage):
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
        guarantee: str = "at-least-once",
    ) -> None:
        super().__init__(bootstrap_servers, group_id=group_id, source_key="posts",
                         topics=topics, batch_size=batch_size, concurrency=concurrency,
                         max_poll_records=max_poll_records, metrics=metrics,
                         client_config=client_config, client=client,
                         output_timeout_s=output_timeout_s, max_backoff_s=MAX_BACKOFF_S,
                         max_buffered=max_buffered, guarantee=guarantee)
        check_float("backend_timeout_s", backend_timeout_s, 0.001, 600)
        check_int("breaker_fail_max", breaker_fail_max, 1, 1_000_000)
        check_float("breaker_reset_s", breaker_reset_s, 0.0, 3600)
        self.shed_after_s = None if not shed_after_ms else \
            check_float("shed_after_ms", shed_after_ms, 1, 3_600_000) / 1000.0
        self.backend_url = backend_url
        self._backend = Backend(backend_url, backend_timeout_s)
        self.breaker_events: list[dict[str, Any]] = []
        self.shed_events: list[dict[str, Any]] = []
        self.shedding = False
        self._assigned_at = time.time()
        self._last_overload = -1e9
        self._last_chunk_at = -1e9
        self._to_call: list[tuple[Chunk, list[Post]]] = []  # this round's, see _end_dispatch
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
        """Caught up (not shedding, polling, the oldest waiting post younger than
        ``RECHECK_MAX_LIVE_AGE_S``), no overload answer lately, and the breaker closed: the
        recheck worker may use the backend, as new posts do (the gate reads the recent past,
        so a recheck call can still meet an overload a new post then meets too). "Not
        shedding" alone is not enough: right after shedding stops the service is still
        behind, and rechecking the shed posts then slows it into shedding again.

        An open breaker only moves on when a post tries it; with no posts coming it would
        keep the recheck worker waiting forever, so after ``reset_timeout`` without a chunk
        the worker's own calls probe the backend (they back off when it still fails)."""
        now = time.monotonic()
        if self.shedding or self._full or self.oldest_age_s > RECHECK_MAX_LIVE_AGE_S \
                or now - self._last_overload <= OVERLOAD_QUIET_S:
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
        heads = [q[0].timestamp for q in self._queues.values() if q]
        heads = [ts / 1000.0 for ts in heads if ts and ts / 1000.0 >= self._assigned_at]
        self.oldest_age_s = max(0.0, time.time() - min(heads)) if heads else 0.0
        if heads and self.shed_after_s is not None:
            self._shed(self.oldest_age_s)

    def _shed(self, age_s: float) -> bool:
        """Load shedding with hysteresis on the age of the oldest waiting post (called with
        ``shed_after_s`` set: :meth:`_before_dispatch`)."""
        limit = self.shed_after_s
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
        t0 = time.thread_time_ns()
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
        finally:
            self.profile.add("backend_client", time.thread_time_ns() - t0)

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
        self._to_call.append((chunk, posts))  # called at the end of the round

    def _end_dispatch(self) -> None:
        """The round's new chunks share backend calls: their posts, in order, go in calls
        of up to ``batch_size``, whichever partition they came from. One chunk per partition
        is in moderation at a time, so a call per chunk carried ~46 posts at 10,000 posts/s
        over 6 partitions; every request also costs ~170 µs in this client and ~250 µs in
        the backend's HTTP server (measured with the backend alone), so fuller calls cost
        less CPU per post on both sides. Each chunk keeps its own :class:`CallShare` of
        each call and is finished, and committed, on its own as before."""
        pending, self._to_call = self._to_call, []
        batch: list[tuple[Chunk, Post]] = []
        for chunk, posts in pending:
            for post in posts:
                batch.append((chunk, post))
                if len(batch) == self.batch_size:
                    self._call_for(batch)
                    batch = []
        if batch:
            self._call_for(batch)

    def _call_for(self, batch: list[tuple[Chunk, Post]]) -> None:
        fut = self._submit(self._call, [post for _chunk, post in batch])
        lo = 0
        for i in range(1, len(batch) + 1):
            if i == len(batch) or batch[i][0] is not batch[lo][0]:
                batch[lo][0].calls.append(CallShare(fut, lo, i))
                lo = i

    def _verdicts(self, chunk: Chunk) -> list[tuple[Verdict, str | None]]:
        """Per post of the chunk: (verdict, fallback cause or None)."""
        posts = [it for it in chunk.items if isinstance(it, Post)]
        if chunk.note == "shed":
            return [(fallback_verdict(p.user_id, p.text), "shed") for p in posts]
        out: list[tuple[Verdict, str | None]] = []
        start = 0
        for share in chunk.calls:
            part = posts[start:start + len(share)]
            start += len(share)
            status, value = share.result()
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
            if isinstance(item, Dead):
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
