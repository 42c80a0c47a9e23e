"""The dashboard's load generator: posts submitted at a target rate from a background thread.

:class:`LoadGenerator` feeds an :class:`~lab_kit.producer.AsyncPostProducer` at a target rate.
It is an *open loop*: every post has an intended send time on a fixed schedule, and ack latency
is measured from that time, so a stalled producer shows up as latency instead of silently
lowering the load. The rate is re-read on every tick, so moving the slider changes the load at
once. One :class:`~lab_kit.metrics.MetricsRecorder` lives as long as the generator: its curves
run across producer restarts and carry a mark for every fault. When a run ends, its posts are
**read back** from the topic (and the DLQ) from the offsets the run started at
(:func:`lab_kit.harness.readback.audit`): ``lost`` comes from that read, never from the
producer's counters, and is ``None`` until a run has been checked. No UI here: the dashboard
(:class:`lab_kit.widgets.Dashboard`) drives it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from lab_kit import broker as lab_broker
from lab_kit.harness.readback import AuditReport, audit, end_offsets
from lab_kit.metrics import MetricsRecorder
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer, BackpressureError, CloseReport
from lab_kit.producer.spool import Spool

__all__ = ["LoadGenerator"]

TICK_S = 0.005  # the generator wakes at least this often to re-read the rate
MAX_BATCH = 500  # posts submitted between two checks of the stop flag
MAX_CATCH_UP_S = 2.0  # slots later than this are skipped (and counted), not burst out at once


class LoadGenerator:
    """Submit workload posts at ``rate`` posts/s from a background thread (open loop).

    ``start()`` creates a producer and the thread; ``stop()`` ends the thread, which flushes and
    closes the producer: :attr:`last_report` says what became of every accepted post (``lost``
    should be 0). A run also ends by itself after ``max_seconds`` or ``max_posts``.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None = None,
        topic: str = "posts",
        *,
        rate: float = 1000,
        acks: str | int = "all",
        linger_ms: int = 5,
        max_in_flight: int = 10_000,
        spool_path: str | None = None,
        max_seconds: float = 600,
        max_posts: int | None = None,
        seed: int = 42,
        close_timeout_s: float = 10.0,
        kafka_config: dict[str, Any] | None = None,
        audit_timeout_s: float = 60.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.acks = acks
        self.linger_ms = int(linger_ms)
        self.max_in_flight = max_in_flight
        self.spool_path = spool_path
        self.max_seconds = float(max_seconds)
        self.max_posts = max_posts
        self.close_timeout_s = close_timeout_s
        self.kafka_config = dict(kafka_config or {})
        self.metrics = MetricsRecorder()  # shared by every producer this generator creates
        self.producer: AsyncPostProducer | None = None
        self.last_report: CloseReport | None = None
        self.last_audit: AuditReport | None = None  # the last run's posts, read back
        self.audit_error: str | None = None
        self.audit_timeout_s = audit_timeout_s
        self._run_ids: list[str] = []  # post ids accepted in the current run
        self._since: dict[str, dict[int, int]] | None = {}  # end offsets at the run's start
        self.posts_sent = 0  # accepted by submit(), over all runs
        self.skipped = 0  # schedule slots dropped because the generator fell too far behind
        self.ended: str | None = None  # why the last run ended
        self.error: str | None = None
        self._posts = Workload(seed).iter_posts()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.set_rate(rate)

    # -- controls ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_rate(self, rate: float) -> None:
        """Change the target rate; a running generator picks it up on its next tick."""
        if not rate > 0:
            raise ValueError(f"rate: must be > 0 posts/s, got {rate!r}")
        self.rate = float(rate)

    def _new_producer(self) -> AsyncPostProducer:
        extra = dict(self.kafka_config)
        if self.acks != "all":
            extra["enable_idempotence"] = False  # idempotence needs acks="all"
        return AsyncPostProducer(
            self.bootstrap_servers, self.topic, acks=self.acks, linger_ms=self.linger_ms,
            max_in_flight=self.max_in_flight, spool_path=self.spool_path,
            metrics=self.metrics, **extra,
        )

    def start(self) -> None:
        """Create a producer with the current settings and start submitting (no-op if running)."""
        if self.running:
            return
        self._finish_run()  # a run that ended by itself: collect its report
        producer = self._new_producer()  # raises at once if no broker answers (no spool)
        self.last_audit = self.audit_error = None
        try:  # where this run begins on the (shared) topics: the checker reads from here
            self._since = end_offsets(self._client_config(),
                                      [producer.topic, producer.dlq_topic or producer.topic])
        except Exception as exc:  # noqa: BLE001 - e.g. started during an outage (spool)
            self._since = None
            self.audit_error = f"start offsets unknown ({type(exc).__name__}: {exc})"
        self.producer = producer
        self._run_ids = []
        self.error = self.ended = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self.producer, self._stop),
                                        name="lab-load-generator", daemon=True)
        self._thread.start()

    def _client_config(self) -> dict[str, Any]:
        """Settings for the checker's consumer: the producer's bootstrap and security."""
        if self.bootstrap_servers is None:
            return lab_broker.ensure().client_config()
        return {**self.kafka_config, "bootstrap_servers": self.bootstrap_servers}

    def stop(self) -> CloseReport | None:
        """Stop submitting, flush and close the producer (replaying its spool first while the
        broker answers), then read the run's posts back; returns the :class:`CloseReport`.
        What was found is in :attr:`last_audit`."""
        self._stop.set()
        self._finish_run()
        return self.last_report

    def _finish_run(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=self.close_timeout_s + 10)
            if self._thread.is_alive():
                self.error = "the generator thread did not stop in time"
            else:
                self._thread = None

    def reconfigure(self, *, acks: str | int | None = None,
                    linger_ms: int | None = None) -> CloseReport | None:
        """Apply new producer settings. A running generator closes its producer (nothing is
        lost: the report says so) and carries on with a new one; the metrics carry on too."""
        was_running = self.running
        report = self.stop() if was_running else None
        if acks is not None:
            self.acks = acks
        if linger_ms is not None:
            self.linger_ms = int(linger_ms)
        self.metrics.mark(f"acks={self.acks} linger={self.linger_ms}ms")
        if was_running:
            self.start()
        return report

    # -- the open loop (background thread) ------------------------------------------------------
    def _run(self, producer: AsyncPostProducer, stop: threading.Event) -> None:
        clock = time.perf_counter
        deadline = clock() + self.max_seconds
        next_at = clock()  # intended time of the next post
        try:
            while not stop.is_set():
                now = clock()
                if now >= deadline:
                    self.ended = f"max_seconds ({self.max_seconds:g} s) reached"
                    break
                interval = 1.0 / self.rate  # re-read every tick: the slider applies live
                if now - next_at > MAX_CATCH_UP_S:  # hopelessly behind: drop the oldest slots
                    n = int((now - next_at - MAX_CATCH_UP_S) / interval) + 1
                    self.skipped += n
                    next_at += n * interval
                for _ in range(MAX_BATCH):  # every slot that is due, up to a batch
                    if next_at > now:
                        break
                    if self.max_posts is not None and self.posts_sent >= self.max_posts:
                        self.ended = f"max_posts ({self.max_posts}) reached"
                        return
                    post = next(self._posts)
                    try:
                        producer.submit(post, intended_at=next_at)
                        self.posts_sent += 1
                        self._run_ids.append(post.post_id)
                    except BackpressureError:
                        pass  # not accepted; the producer counts it as "rejected"
                    next_at += interval
                stop.wait(min(TICK_S, max(0.0, next_at - clock())))
            else:
                self.ended = "stopped"
        except Exception as exc:  # noqa: BLE001 - shown in status(), the run ends
            self.error = f"{type(exc).__name__}: {exc}"
            self.ended = "error"
        finally:
            try:
                self.last_report = producer.close(timeout=self.close_timeout_s)
            except Exception as exc:  # noqa: BLE001
                self.error = f"close failed: {type(exc).__name__}: {exc}"
            self.check_last_run(producer)

    def check_last_run(self, producer: AsyncPostProducer | None = None) -> AuditReport | None:
        """Read the last run's posts back (the checker): found on the topic, in the DLQ,
        still in the spool, or lost; sets and returns :attr:`last_audit`. Runs by itself
        when a run ends; call it again to re-read. A failed read leaves ``last_audit`` None
        and says why in :attr:`audit_error`, never "0 lost"."""
        producer = producer or self.producer
        report = self.last_report
        if producer is None or self._since is None:
            self.last_audit = None  # audit_error says why: no offsets to read from
            return None
        try:
            pending: list[str] = []
            if self.spool_path and report is not None and report.spooled_pending:
                with Spool(self.spool_path) as spool:
                    pending = spool.post_ids()
            dlq = producer.dlq_topic
            if dlq and dlq not in self._since \
                    and not self.metrics.counters().get("dead_lettered", 0):
                dlq = None  # no DLQ topic when the run began, and nothing dead-lettered
            self.last_audit = audit(self._client_config(), producer.topic, self._run_ids,
                                    dlq_topic=dlq, since=self._since, pending_ids=pending,
                                    counters=self.metrics.counters(),
                                    timeout_s=self.audit_timeout_s)
        except Exception as exc:  # noqa: BLE001 - e.g. the broker is down: say so
            self.last_audit = None
            self.audit_error = f"{type(exc).__name__}: {exc}"
        else:
            self.audit_error = None
        return self.last_audit

    # -- numbers -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Current numbers as a plain dict (counters are totals over all runs)."""
        c = self.metrics.counters()
        producer = self.producer
        report = self.last_report
        return {
            "running": self.running,
            "rate": self.rate,
            "acks": self.acks,
            "linger_ms": self.linger_ms,
            "elapsed_s": self.metrics.elapsed(),  # the time axis of the plots
            "submitted": c["submitted"],
            "acked": c["acked"],
            "failed": c["failed"],
            "rejected": c["rejected"],
            "spooled": c["spooled"],
            "replayed": c["replayed"],
            "skipped": self.skipped,
            "in_flight": producer.in_flight if producer is not None else 0,
            "healthy": producer.healthy if producer is not None else None,
            # from reading the last run's posts back; None until a run was checked
            "lost": self.last_audit.lost if self.last_audit is not None else None,
            "audit": self.last_audit.to_dict(max_ids=5) if self.last_audit is not None
            else None,
            "audit_error": self.audit_error,
            "spool_pending": report.spooled_pending if report is not None else None,
            "ended": self.ended,
            "error": self.error,
        }

    def close(self) -> None:
        self.stop()
