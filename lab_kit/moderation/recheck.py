"""The recheck worker: re-moderates the posts the service degraded, when the backend is free.

:class:`RecheckWorker` consumes ``moderation.recheck`` and re-moderates each degraded post
with the backend, one batch call at a time, and only while its service is healthy (breaker
closed, not shedding, no overload answer in the last 2 s; see
:meth:`lab_kit.moderation.service.ModerationService.healthy`) and no member of the group has
degraded a post lately (``moderation.recheck``'s end offsets, as its fetches see them, still
for ``GROUP_QUIET_S``). The gates look at the recent past: right after an overload its first
batch calls still compete with new posts for the backend's capacity, and a new post refused
then (429) closes the gate again for ``OVERLOAD_QUIET_S`` (notebook 08's overload figure
shows both).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lab_kit.metrics import MetricsRecorder
from lab_kit.moderation.backend import BackendBadRequest
from lab_kit.moderation.offsets import TP, Chunk
from lab_kit.moderation.service import Backend
from lab_kit.moderation.settings import (
    GROUP_QUIET_S,
    MAX_BACKOFF_S,
    OUTPUT_TIMEOUT_S,
    RECHECK_END_CHECK_S,
    check_float,
)
from lab_kit.moderation.stage import Dead, Stage, header
from lab_kit.posts import Post

__all__ = ["RecheckWorker"]


class RecheckWorker(Stage):
    """Consume ``moderation.recheck`` and re-moderate each degraded post with the backend.

    Produces a new result (``source: "recheck"``, ``degraded: false``, ``previous_label``
    = the fallback's label) with the same fan-out. One batch call at a time. When the
    backend fails, the chunk waits (0.5 s doubling to ``max_backoff_s``) and is tried again:
    nothing past it is committed. ``gate`` (e.g. ``service.healthy``) says when the worker
    may call the backend at all, so catching up never starves new posts; on top of it the
    worker waits while ``moderation.recheck`` grows (some member, maybe another process,
    degrades posts: it has no capacity to spare either).
    """

    kind = "recheck"
    _COUNTERS = ("backend_retries", "bad_requests", "gated", "gated_by_group")

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
        guarantee: str = "at-least-once",
    ) -> None:
        super().__init__(bootstrap_servers, group_id=group_id, source_key="recheck",
                         topics=topics, batch_size=batch_size, concurrency=1,
                         max_poll_records=max_poll_records, metrics=metrics,
                         client_config=client_config, client=client,
                         output_timeout_s=output_timeout_s, max_backoff_s=max_backoff_s,
                         max_buffered=None, guarantee=guarantee)
        check_float("backend_timeout_s", backend_timeout_s, 0.001, 600)
        self.backend_url = backend_url
        self._backend = Backend(backend_url, backend_timeout_s)
        self.gate = gate
        self._retry_backoff = 0.0
        self._gated_since: float | None = None
        # moderation.recheck's end per owned partition, as last read
        self._recheck_end: dict[TP, int] = {}
        self._end_read_at = -float("inf")
        self._end_moved_at = -float("inf")

    def _may_start(self) -> bool:
        if (self.gate is None or self.gate()) and self._group_quiet():
            self._gated_since = None
            return True
        if self._gated_since is None:
            self._gated_since = time.monotonic()
            self._incr("gated", metric=False)
        return False

    def _group_quiet(self) -> bool:
        """No member degraded a post for ``GROUP_QUIET_S``: the end offset of no recheck
        partition this worker owns (whoever wrote there: posts are keyed by user, so a
        shedding peer writes to every partition) has grown, as the worker's own fetches saw
        them. Partition by partition, between two reads: a partition gained at a rebalance (or
        fetched for the first time) is a baseline, not a move.
        Read at most every ``RECHECK_END_CHECK_S``; no request, so it never blocks the
        worker; a failed read leaves the last answer."""
        now = time.monotonic()
        clients = self._clients
        if clients is not None and now - self._end_read_at >= RECHECK_END_CHECK_S:
            self._end_read_at = now
            try:
                ends = clients.fetched_end()
            except Exception:  # noqa: BLE001 - e.g. mid-rebalance: the service's gate holds
                pass
            else:
                last = self._recheck_end
                if any(end > last[tp] for tp, end in ends.items() if tp in last):
                    self._end_moved_at = now
                self._recheck_end = ends
        if now - self._end_moved_at < GROUP_QUIET_S:
            if self._gated_since is None:
                self._incr("gated_by_group", metric=False)
            return False
        return True

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
            if isinstance(item, Dead):
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
                       extra={"previous_label": header(rec, "fallback_label")})
            counts["results"] += 1
            counts[res.label] += 1
        self._seal(chunk)
        self._add(counts, metric=("results", "dlq"))
        return True

    def _close_backend_clients(self) -> None:
        self._backend.close()
