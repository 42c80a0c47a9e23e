"""Moderation drills: the moderation backend fails (killed, or slow) while posts flow.

Workload: posts submitted open-loop through ``AsyncPostProducer``. System under test: the
``ModerationService`` (circuit breaker + fallback rules) and the ``RecheckWorker``. Nemesis:
the backend *process* is killed (``moderation-outage``) or made slow (``moderation-slow``),
then healed. Checker: every post reached ``posts`` (audit by id), every post has a
moderation result, and every post moderated in degraded mode was re-checked after recovery.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from .audit import audit
from .metrics import MetricsRecorder
from .posts import Workload, run_open_loop

BACKEND_TIMEOUT_S = 0.2
SLOW_LATENCY_MS = 800.0


def _create_topics(cfg: dict, names: dict[str, str]) -> None:
    from .topics import ensure_topics

    parts = {name: (3 if key in ("posts", "results", "recheck") else 1)
             for key, name in names.items()}
    ensure_topics(cfg, names=tuple(names.values()), partitions=parts)


def _wait_for_results(cfg: dict, results_topic: str, ids: set[str], timeout_s: float
                      ) -> dict[str, list[dict]]:
    """Poll the results topic until every id has a result and every degraded one a recheck."""
    from .moderation import moderation_results

    deadline = time.monotonic() + timeout_s
    while True:
        results = moderation_results(cfg, results_topic)
        missing = ids - set(results)
        unrechecked = [pid for pid in ids & set(results)
                       if results[pid][0].get("degraded")
                       and not any(r.get("source") == "recheck" for r in results[pid])]
        if (not missing and not unrechecked) or time.monotonic() > deadline:
            return results
        time.sleep(1.0)


def moderation_drill(name: str, broker, settings, *, workdir: Path,
                     progress: bool = False) -> dict[str, Any]:
    from .drills import Nemesis, RssSampler, TimedSubmit, _result
    from .moderation import ModerationService, RecheckWorker, topic_names
    from .moderation_backend import ModerationBackend
    from .producer import AsyncPostProducer

    cfg = broker.client_config()
    stamp = time.strftime("%Y%m%d-%H%M%S")
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
    submit = TimedSubmit(producer, nemesis)
    submitted = submit.submitted

    try:
        with RssSampler() as rss:
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
    report = audit(cfg, names["posts"], submitted, dlq_topic=names["dlq"], counters=counters)
    ids = set(submitted)
    degraded = {pid for pid in ids & set(results) if results[pid][0].get("degraded")}
    rechecked = {pid for pid in degraded
                 if any(r.get("source") == "recheck" for r in results[pid])}
    svc = service.stats()
    checks = {
        "topic": names["posts"],
        "results_missing": len(ids - set(results)),
        "results_duplicates": sum(len([r for r in v if r.get("source") != "recheck"]) - 1
                                  for pid, v in results.items() if pid in ids),
        "degraded": len(degraded),
        "rechecked": len(rechecked),
        "rechecked_missing": len(degraded - rechecked),
        "breaker_events": [{"t_s": round(e["t"] - (time.time() - metrics.elapsed()), 3),
                            "from": e["from"], "to": e["to"]} for e in service.breaker_events],
        "service": {k: svc.get(k) for k in ("consumed", "results", "degraded", "rechecked",
                                            "backend_calls", "backend_failures", "dlq",
                                            "breaker_opens", "batch_retries")},
    }
    out = _result(name, broker, settings, run, report, metrics, nemesis, submit.during, rss,
                  extra=checks, consumer_metrics=svc_metrics)
    out["ok"] = bool(out["ok"] and out["results_missing"] == 0
                     and out["rechecked_missing"] == 0)
    return out
