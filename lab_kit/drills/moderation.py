"""Moderation drills: the moderation backend fails (killed, or slow) while posts flow.

Workload: posts submitted open-loop through ``AsyncPostProducer``. System under test: the
``ModerationService`` (circuit breaker + fallback rules) and the ``RecheckWorker``. Nemesis:
the backend *process* is killed (``moderation-outage``) or made slow (``moderation-slow``),
then healed. Checker: every post reached ``posts`` (audit by id), every post has a
moderation result, and every post moderated in degraded mode was re-checked after recovery.

``moderation-overload`` (:func:`overload_drill`) has a different shape: no fault at all, just
more posts than the backend can take. The backend has a capacity (``capacity_per_s`` = C,
posts/s; past it, HTTP 429); the service runs as its own process (:class:`OverloadRun`, the
run of ``bench pipeline`` in :mod:`lab_kit.harness.runner`); posts come at 0.5C, then 2C for
the overload window, then 0.5C. Checker: every post has a result, nothing is lost, every post
degraded by the overload is re-checked, and how long after the overload the last recheck
landed.

The results are a :class:`~lab_kit.drills.report.DrillReport` (with
:class:`~lab_kit.drills.report.ModerationChecks`) and an
:class:`~lab_kit.drills.report.OverloadReport`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lab_kit import broker as lab_broker
from lab_kit.drills.report import (
    DrillReport,
    ModerationChecks,
    OverloadReport,
    Phase,
    print_and_save,
)
from lab_kit.drills.workload import DrillSettings, RssSampler, TimedSubmit
from lab_kit.harness.checker import KafkaCallWatch, audit, check_results
from lab_kit.harness.nemesis import Nemesis
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.harness.results import build_timeline
from lab_kit.harness.runner import PipelineRun
from lab_kit.harness.sampler import GroupLag
from lab_kit.lab_env import lab_scale
from lab_kit.machine import run_stamp
from lab_kit.metrics import MetricsRecorder, percentiles_ms
from lab_kit.moderation import ModerationService, RecheckWorker, moderation_results, topic_names
from lab_kit.moderation.backend import ModerationBackend
from lab_kit.output_paths import check_output_path
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer
from lab_kit.topics import ensure_topics

BACKEND_TIMEOUT_S = 0.2
SLOW_LATENCY_MS = 800.0


def _create_topics(cfg: dict, names: dict[str, str]) -> None:
    parts = {name: (3 if key in ("posts", "results", "recheck") else 1)
             for key, name in names.items()}
    ensure_topics(cfg, names=tuple(names.values()), partitions=parts)


def _wait_for_results(cfg: dict, results_topic: str, ids: set[str], timeout_s: float
                      ) -> dict[str, list[dict]]:
    """Poll the results topic until every id has a result and every degraded one a recheck
    (by :func:`check_results`, the drill's checker)."""
    deadline = time.monotonic() + timeout_s
    while True:
        results = moderation_results(cfg, results_topic)
        check = check_results(results, ids)
        if (check.results_missing == 0 and check.rechecked_missing == 0) \
                or time.monotonic() > deadline:
            return results
        time.sleep(1.0)


def moderation_drill(name: str, broker, settings: DrillSettings, *, workdir: Path,
                     progress: bool = False) -> DrillReport:
    """moderation-outage / moderation-slow: the backend process killed or slowed."""
    cfg = broker.client_config()
    stamp = run_stamp()
    names = topic_names(f"drill.{name}.{stamp}.")
    _create_topics(cfg, names)
    metrics = MetricsRecorder()  # the producer's, and the nemesis' windows
    svc_metrics = MetricsRecorder()  # the moderation service's and the recheck worker's
    backend = ModerationBackend(state_dir=workdir / "backend").start()
    extra = broker.extra_config()
    service = ModerationService(cfg["bootstrap_servers"], backend.url, topics=names,
                                group_id=f"drill-moderation-{stamp}",
                                backend_timeout_s=BACKEND_TIMEOUT_S, breaker_fail_max=5,
                                breaker_reset_s=2.0, metrics=svc_metrics, client_config=extra)
    recheck = RecheckWorker(cfg["bootstrap_servers"], backend.url, topics=names,
                            group_id=f"drill-recheck-{stamp}", metrics=svc_metrics,
                            max_backoff_s=2.0, client_config=extra)
    producer = AsyncPostProducer(cfg["bootstrap_servers"], names["posts"],
                                 dlq_topic=names["dlq"], metrics=metrics,
                                 spool_path=str(workdir / f"{name}.spool.db"), **extra)
    if name == "moderation-outage":
        nemesis = Nemesis("moderation backend killed (-9)", backend.kill, backend.restart,
                          settings.lead_s, settings.outage_s, metrics)
    else:
        nemesis = Nemesis(f"moderation backend slow (+{SLOW_LATENCY_MS:.0f} ms)",
                          lambda: backend.set_faults(latency_ms=SLOW_LATENCY_MS),
                          backend.reset_faults, settings.lead_s, settings.outage_s, metrics)
    watch = KafkaCallWatch()
    submit = TimedSubmit(producer, nemesis, watch)
    submitted = submit.submitted

    try:
        with RssSampler() as rss, watch:
            service.start()
            recheck.start()
            nemesis.start()
            run = run_open_loop(submit, Workload(seed=29).iter_posts(), settings.rate,
                                settings.duration_s, max_posts=settings.posts,
                                progress=progress)
            nemesis.join(timeout=settings.lead_s + settings.outage_s + 60)
            producer.flush(timeout=60)
            producer.drain_spool(timeout=60)
            results = _wait_for_results(cfg, names["results"], set(submitted),
                                        timeout_s=max(60.0, 4 * settings.duration_s))
    finally:
        stop_threads = [threading.Thread(target=s.stop, kwargs={"timeout": 20})
                        for s in (service, recheck)]
        for t in stop_threads:
            t.start()
        for t in stop_threads:
            t.join(timeout=30)
        producer.close(timeout=30)
        backend.stop()
    counters = metrics.counters()
    landed = audit(cfg, names["posts"], submitted, dlq_topic=names["dlq"], counters=counters)
    svc = service.stats()
    checks = ModerationChecks(
        results=check_results(results, submitted),
        breaker_events=[{"t_s": round(e["t"] - (time.time() - metrics.elapsed()), 3),
                         "from": e["from"], "to": e["to"]} for e in service.breaker_events],
        service={k: svc.get(k) for k in ("consumed", "results", "degraded", "rechecked",
                                         "backend_calls", "backend_failures", "dlq",
                                         "breaker_opens", "batch_retries")})
    return DrillReport.build(name, broker, settings, run, landed, metrics, nemesis, submit, rss,
                             topic=names["posts"], moderation=checks,
                             consumer_metrics=svc_metrics)


# =========================================================================================
# moderation-overload: more posts than the backend can take, then recovery
# =========================================================================================

#: (name, share of the capacity offered, seconds at LAB_SCALE=1)
OVERLOAD_PHASES = (("before", 0.5, 5.0), ("overload", 2.0, 20.0), ("after", 0.5, 10.0))
OVERLOAD_CAPACITY = 1500.0  # backend capacity_per_s at LAB_SCALE=1
CAPACITY_ENV = "LAB_OVERLOAD_CAPACITY"
#: The service's breaker stays open after an overload until its next call, and the recheck
#: worker waits for a closed breaker: a short reset lets the trial call fall inside the tail
#: phase even at small scale (the other moderation drills use 2 s).
OVERLOAD_SERVICE_ARGS = ("--breaker-reset", "1")
#: The tail must outlast the service catching up with the overload's backlog plus a breaker
#: reset, so that the breaker sees the recovery while posts still come (like the other
#: moderation drills' load outlasts outage + reset); otherwise it can stay open, the recheck
#: worker stays gated, and degraded posts wait for the next post to arrive.
MIN_TAIL_S = 4.0


@dataclass
class OverloadSettings:
    """The overload drill's shape: the backend takes ``capacity_per_s`` posts/s; posts are
    offered at 0.5x that for ``lead_s``, 2x for ``overload_s`` (the marked window), 0.5x for
    ``tail_s``. :meth:`from_env` scales capacity (LAB_SCALE up to 1) and durations."""

    capacity_per_s: float = OVERLOAD_CAPACITY
    lead_s: float = OVERLOAD_PHASES[0][2]
    overload_s: float = OVERLOAD_PHASES[1][2]
    tail_s: float = OVERLOAD_PHASES[2][2]

    @classmethod
    def from_env(cls, lead_s: float | None = None, overload_s: float | None = None
                 ) -> OverloadSettings:
        scale = lab_scale()
        raw = os.environ.get(CAPACITY_ENV)
        if raw:
            try:
                capacity = float(raw)
            except ValueError as exc:
                raise ValueError(f"{CAPACITY_ENV} must be a number of posts/s, "
                                 f"got {raw!r}") from exc
        else:
            capacity = max(50.0, round(OVERLOAD_CAPACITY * min(scale, 1.0)))
        s = cls(capacity_per_s=capacity,
                lead_s=max(1.0, OVERLOAD_PHASES[0][2] * scale),
                overload_s=max(2.0, OVERLOAD_PHASES[1][2] * scale),
                tail_s=max(MIN_TAIL_S, OVERLOAD_PHASES[2][2] * scale))
        if lead_s is not None:
            s.lead_s = lead_s
        if overload_s is not None:
            s.overload_s = overload_s
        return s

    def validate(self) -> None:
        if not 10 <= self.capacity_per_s <= 20_000:
            raise ValueError(f"capacity ({CAPACITY_ENV}) must be between 10 and 20000 posts/s, "
                             f"got {self.capacity_per_s:g}")
        if not 0.5 <= self.lead_s <= 300:
            raise ValueError(f"--lead must be between 0.5 and 300 s, got {self.lead_s:g}")
        if not 0.5 <= self.overload_s <= 300:
            raise ValueError(f"--outage (the overload window) must be between 0.5 and 300 s, "
                             f"got {self.overload_s:g}")

    def phases(self) -> list[tuple[str, float, float]]:
        """[(name, posts/s, seconds)]"""
        seconds = {"before": self.lead_s, "overload": self.overload_s, "after": self.tail_s}
        return [(name, share * self.capacity_per_s, seconds[name])
                for name, share, _ in OVERLOAD_PHASES]


class OverloadRun(PipelineRun):
    """The overload drill's run: the shared pipeline sequence, its load the three phases."""

    topic_base = "drill.moderation-overload."
    tmp_prefix = "lab-drill-"
    delete_topics = False  # left for the reader (the tests delete them)
    measure_cpu = False

    def __init__(self, settings: OverloadSettings, broker, *, workdir: Path | None,
                 progress: bool):
        self.settings = settings
        self.phases = settings.phases()
        load_s = sum(d for _, _, d in self.phases)
        super().__init__(broker, progress=progress, workdir=workdir,
                         max_rows=int(load_s * 5) + 300, drain_timeout_s=60 + 3 * load_s,
                         processes=1, service_args=OVERLOAD_SERVICE_ARGS,
                         backend_settings={"capacity_per_s": settings.capacity_per_s},
                         max_seconds=90 + 4 * load_s + 180)
        self.windows: list[Phase] = []
        self.health: dict = {}
        self.service_events: list[str] = []

    def lag_probes(self) -> dict[str, GroupLag]:
        return {"lag": self.pipe.lag_probe(),
                "recheck_lag": self.pipe.lag_probe("recheck", self._recheck_group())}

    def drain_probes(self) -> list[GroupLag]:
        return [self.pipe.lag_probe(), self.pipe.lag_probe("recheck", self._recheck_group())]

    def _recheck_group(self) -> str:
        return f"{self.pipe.group}-recheck"

    def warm_up_note(self) -> str:
        return (f"moderation-overload: backend capacity {self.settings.capacity_per_s:g} "
                f"posts/s; waiting for the service ...")

    def load(self) -> None:
        posts = Workload(seed=31).iter_posts()
        for name, rate, seconds in self.phases:
            self.say(f"  {name}: {rate:,.0f} posts/s for {seconds:g} s")
            before, start = self.submit.count(), time.time()
            run_open_loop(self.submit, posts, rate, seconds)
            self.windows.append(Phase(name, rate, start_s=round(start - self.t0, 3),
                                      end_s=round(time.time() - self.t0, 3),
                                      submitted=self.submit.count() - before))

    def drain_note(self) -> str:
        return f"submitted {self.submit.count():,}; waiting for every result and recheck ..."

    def stop_service(self) -> dict:
        with contextlib.suppress(Exception):
            self.health = self.pipe.backend.health()
        service_stop = super().stop_service()
        # the service's own rare events (breaker, shedding, assignments), for the reader
        self.service_events = [
            line for line in self.pipe.service.log_tail(1 << 20).splitlines()
            if " __main__ " in line or " lab_kit.moderation" in line][-40:]
        return service_stop

    def audit_timeout_s(self) -> float:
        return 120.0  # audit's default: this drill does not scale it with the posts


def overload_drill(broker=None, settings: OverloadSettings | None = None, *,
                   workdir: Path | None = None, progress: bool = False) -> OverloadReport:
    """Backend capacity C; posts at 0.5C, 2C (the overload), 0.5C; the service as its own
    process (the bench's launcher). Then wait until every post has a result and every
    degraded one a recheck. Checker: results missing, lost (posts topic audit), rechecked."""
    settings = settings or OverloadSettings.from_env()
    settings.validate()
    if broker is None:
        broker = lab_broker.ensure()
    run = OverloadRun(settings, broker, workdir=workdir, progress=progress).execute()
    return _overload_report(run)


def _overload_report(run: OverloadRun) -> OverloadReport:
    ids, results, firsts, t0 = run.ids, run.results, run.firsts, run.t0
    over = next(w for w in run.windows if w.phase == "overload")
    o_start, o_end = t0 + over.start_s, t0 + over.end_s
    degraded = {pid for pid, r in firsts.items() if r.get("degraded")}
    recheck_times: dict[str, float] = {}
    for pid in ids:
        times = [r.get("moderated_at") or 0.0 for r in results.get(pid, ())
                 if r.get("source") == "recheck"]
        if times:
            recheck_times[pid] = min(times)
    rechecked = degraded & set(recheck_times)
    e2e = [r["moderated_at"] - r["created_at"] for r in firsts.values()
           if o_start <= r.get("created_at", 0.0) < o_end]
    p = percentiles_ms(e2e)
    last_recheck = max(recheck_times.values(), default=None)
    causes = Counter(str(firsts[pid].get("fallback_cause")) for pid in degraded)
    return OverloadReport(
        capacity_per_s=run.settings.capacity_per_s,
        offered_rate_overload=round(over.submitted / max(over.end_s - over.start_s, 1e-9), 1),
        phases=run.windows, overload_window=(over.start_s, over.end_s), submitted=len(ids),
        e2e_p50_ms=None if p["p50_ms"] is None else round(p["p50_ms"], 1),
        e2e_p99_ms=None if p["p99_ms"] is None else round(p["p99_ms"], 1),
        degraded=len(degraded), fallback_causes=dict(causes.most_common()),
        rechecked=len(rechecked), rechecked_missing=len(degraded - rechecked),
        results_missing=run.missing, duplicates=run.duplicates, lost=run.lost,
        posts_lost=run.landed.lost,
        recheck_drained_s=None if last_recheck is None else round(last_recheck - o_end, 2),
        drained=run.drained,
        backend={k: run.health.get(k) for k in ("requests", "posts", "rejected_429",
                                                "rejected_503")},
        service_stop=run.service_stop, service_events=run.service_events,
        topic_prefix=run.prefix,
        timeline=build_timeline(run.samples, firsts, t0, lag_keys=("lag", "recheck_lag"),
                                events={"rechecked": list(recheck_times.values())}))


def overload_main(args) -> int:
    """``python -m lab_kit drill moderation-overload``: settings checked before any work."""
    for flag, value in (("--posts", args.posts), ("--rate", args.rate)):
        if value is not None:
            raise ValueError(f"{flag} does not apply to moderation-overload: its rates follow "
                             f"the backend capacity ({CAPACITY_ENV}, default "
                             f"{OVERLOAD_CAPACITY:g} x LAB_SCALE)")
    settings = OverloadSettings.from_env(lead_s=args.lead, overload_s=args.outage)
    settings.validate()
    check_output_path(args.json_path, "--json")
    report = overload_drill(settings=settings, progress=True)
    return print_and_save(report, args.json_path)
