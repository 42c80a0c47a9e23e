"""``python -m lab_kit bench pipeline``: the whole pipeline at a fixed rate, end to end.

Producer → Kafka ``posts`` → the moderation service (``python -m lab_kit.moderation``, N
processes of one consumer group) → moderation backend (HTTP) → ``moderation.results``. Every
part is a real process on this machine, on fresh topics (``bench.pipeline.<stamp>.*``):

* the **load**: posts offered open-loop at ``rate``/s for ``seconds`` through
  :class:`~lab_kit.producer.AsyncPostProducer`; each post's ``created_at`` is stamped when it
  is submitted, so ``moderated_at - created_at`` of its first verdict is the end-to-end
  latency a user would see (queueing included: no coordinated omission);
* a **sampler** (once per second): posts offered that second and the service group's lag on
  the posts topic (end offsets minus committed offsets);
* the **checker**: the results topic read back by ``post_id`` (missing, duplicated,
  degraded), and the posts topic audited (:func:`lab_kit.harness.readback.audit`). ``lost``
  is an accepted post that is not on the posts topic; one that is there but got no result
  before the bench stopped waiting is ``results_missing`` ("no result in the window");
* the **CPU profile**: CPU time of each stage's processes over the timed part (``psutil``),
  per submitted post. When a target is missed, ``ceiling`` names the costliest stage and the
  cores 10,000 and 100,000 posts/s would need at the measured cost.

``--backlog N`` measures something else: N posts are written first, then the service starts
and drains them (``backlog_rate``, posts per second from its first result to its last).

Both runs are :class:`~lab_kit.harness.runner.PipelineRun` subclasses (:class:`OpenLoopRun`,
:class:`BacklogRun`); the same sequence runs ``drill moderation-overload``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_kit import broker as lab_broker
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.harness.pipeline import WARMUP_TIMEOUT_S, make_producer
from lab_kit.harness.results import (
    build_timeline,
    ceiling,
    cpu_per_post,
    format_profile,
    profile_table,
    steady_rate,
)
from lab_kit.harness.runner import PipelineRun
from lab_kit.harness.sampler import Sampler
from lab_kit.machine import cpu_count
from lab_kit.metrics import percentiles_ms
from lab_kit.moderation.clients import CLIENTS as CLIENT_CHOICES
from lab_kit.moderation.clients import DEFAULT_CLIENT
from lab_kit.moderation.profile import merge as merge_profiles
from lab_kit.moderation.settings import GUARANTEES
from lab_kit.output_paths import check_output_path
from lab_kit.posts import Workload
from lab_kit.producer import BackpressureError

FULL = {"rate": 10_000.0, "seconds": 30.0}
QUICK = {"rate": 2_000.0, "seconds": 5.0}
MAX_POSTS = 1_000_000  # the workload is built before the clock starts: bound its memory

#: (field, op, limit): what the full run (10,000 posts/s for 30 s or more) must reach.
TARGETS = (("achieved_rate", ">=", 9800.0), ("e2e_p99_ms", "<=", 2000.0),
           ("degraded_fraction", "<=", 0.01), ("lost", "<=", 0), ("results_missing", "<=", 0))

#: The pipeline bench's producer lingers 20 ms instead of the lab's 5: at 10,000 posts/s that
#: fills batches 4x fuller, which saves CPU in the producer and the broker on a machine
#: where every stage shares two cores (notebook 06 shows the trade-off). Reported in the JSON.
PRODUCER_LINGER_MS = 20

#: Moderation member processes (one consumer group) when ``--processes`` is not given: two,
#: on a machine with two cores or more. One member is one Python process: its GIL caps it
#: near 15,000 posts/s here, so at the seed's rate plus margin it has none, and any stall
#: tips it into load shedding. Two members split the partitions (README, "Headroom").
DEFAULT_PROCESSES = min(2, cpu_count())


# =========================================================================================
# Settings: every value checked before anything starts
# =========================================================================================


@dataclass
class PipelineSettings:
    rate: float = FULL["rate"]
    seconds: float = FULL["seconds"]
    processes: int = DEFAULT_PROCESSES
    client: str = DEFAULT_CLIENT
    #: the open loop's load producer (``AsyncPostProducer(client=...)``): librdkafka by
    #: default, so that the load costs the machine little (the notebooks' producer stays
    #: kafka-python); ``--load-client kafka-python`` for the lessons' client
    load_client: str = DEFAULT_CLIENT
    backlog: int | None = None
    shed_after_ms: float | None = None  # None: the service's default
    guarantee: str = "at-least-once"  # or "exactly-once", or "both" (one after the other)
    json_path: str | None = None
    quick: bool = False
    profile: bool = False  # print the per-stage profile (it is in the JSON either way)
    #: an unmeasured open-loop run of this long at ``rate`` first (0: none). A broker JVM
    #: compiles its hot paths under its first load: measured, the first run after a start
    #: shed half its posts where the next two shed none. Its figures are in the report
    #: (``broker_warm_up``), not hidden. The CLI's full run sets ``CLI_WARMUP_S``.
    broker_warmup_s: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PipelineSettings:
        for flag, value in (("--rounds", getattr(args, "rounds", None)),
                            ("--duration", getattr(args, "duration", None))):
            if value is not None:
                raise ValueError(f"{flag} belongs to the producer suite; `bench pipeline` "
                                 f"takes --rate, --seconds, --processes, --client, --backlog")
        base = QUICK if args.quick else FULL
        return cls(rate=base["rate"] if args.rate is None else args.rate,
                   seconds=base["seconds"] if args.seconds is None else args.seconds,
                   processes=DEFAULT_PROCESSES if args.processes is None else args.processes,
                   client=args.client or DEFAULT_CLIENT, backlog=args.backlog,
                   load_client=getattr(args, "load_client", None) or DEFAULT_CLIENT,
                   shed_after_ms=args.shed_after_ms,
                   guarantee=getattr(args, "guarantee", None) or "at-least-once",
                   json_path=args.json_path,
                   quick=args.quick, profile=bool(getattr(args, "profile", False)),
                   broker_warmup_s=_warmup_from_args(args))

    def validate(self) -> None:
        def bad(v: Any) -> bool:
            return isinstance(v, float) and not math.isfinite(v)

        if bad(self.rate) or not 0 < self.rate <= 100_000:
            raise ValueError(f"--rate must be in (0, 100000] posts/s, got {self.rate:g}")
        if bad(self.seconds) or not 0 < self.seconds <= 600:
            raise ValueError(f"--seconds must be in (0, 600], got {self.seconds:g}")
        if self.backlog is None and self.rate * self.seconds > MAX_POSTS:
            raise ValueError(f"--rate x --seconds must be at most {MAX_POSTS} posts (the "
                             f"workload is built in memory first), got "
                             f"{self.rate * self.seconds:.0f}")
        if not 1 <= self.processes <= 32:
            raise ValueError(f"--processes must be between 1 and 32, got {self.processes}")
        if self.client not in CLIENT_CHOICES:
            raise ValueError(f"--client must be one of {', '.join(CLIENT_CHOICES)}, "
                             f"got {self.client!r}")
        if self.load_client not in CLIENT_CHOICES:
            raise ValueError(f"--load-client must be one of {', '.join(CLIENT_CHOICES)}, "
                             f"got {self.load_client!r}")
        if self.client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError("--client confluent needs confluent-kafka "
                             "(pip install '.[confluent]')")
        if self.guarantee not in (*GUARANTEES, "both"):
            raise ValueError(f"--guarantee must be one of {', '.join((*GUARANTEES, 'both'))}, "
                             f"got {self.guarantee!r}")
        if self.backlog is not None and not 1 <= self.backlog <= MAX_POSTS:
            raise ValueError(f"--backlog must be between 1 and {MAX_POSTS} posts, "
                             f"got {self.backlog}")
        if self.shed_after_ms is not None and (bad(self.shed_after_ms)
                                               or not 0 <= self.shed_after_ms <= 3_600_000):
            raise ValueError(f"--shed-after-ms must be in [0, 3600000] (0: never shed), "
                             f"got {self.shed_after_ms:g}")
        if bad(self.broker_warmup_s) or not 0 <= self.broker_warmup_s <= 120:
            raise ValueError(f"--broker-warmup must be in [0, 120] s, got "
                             f"{self.broker_warmup_s:g}")
        if self.rate * self.broker_warmup_s > MAX_POSTS:
            raise ValueError(f"--rate x --broker-warmup must be at most {MAX_POSTS} posts (the "
                             f"warm-up's workload is built in memory too), got "
                             f"{self.rate * self.broker_warmup_s:.0f}")
        check_output_path(self.json_path, "--json")



#: the CLI's full open-loop run warms the broker this long first (``--quick`` and
#: ``--backlog``: no warm-up, unless ``--broker-warmup`` says so)
CLI_WARMUP_S = 10.0


def _warmup_from_args(args: argparse.Namespace) -> float:
    given = getattr(args, "broker_warmup", None)
    if given is not None:
        return given
    return 0.0 if args.quick or args.backlog is not None else CLI_WARMUP_S


def _service_args(settings: PipelineSettings) -> tuple[str, ...]:
    out: tuple[str, ...] = ("--guarantee", settings.guarantee)
    if settings.shed_after_ms is None:
        return out
    return (*out, "--shed-after-ms", f"{settings.shed_after_ms:g}")


# =========================================================================================
# The runs
# =========================================================================================


class OpenLoopRun(PipelineRun):
    """``rate`` posts/s for ``seconds``, open loop, each stamped when it is submitted."""

    def __init__(self, settings: PipelineSettings, broker, progress: bool = True):
        super().__init__(
            broker, progress=progress, max_rows=int(2 * settings.seconds) + 200,
            drain_timeout_s=60 + settings.seconds,
            producer_options={"linger_ms": PRODUCER_LINGER_MS, "client": settings.load_client},
            processes=settings.processes, client=settings.client,
            service_args=_service_args(settings),
            # the service ends itself after this long, should this process be killed (-9)
            max_seconds=WARMUP_TIMEOUT_S + 2 * settings.seconds + 60 + 120)
        self.settings = settings
        n_posts = int(math.ceil(settings.rate * settings.seconds - 1e-9))
        self.posts = Workload(seed=11).posts(n_posts)  # built before the clock; frozen by the loop
        self.loop: Any = None

    def warm_up_note(self) -> str:
        return (f"pipeline: {self.settings.processes} moderation process(es), "
                f"{self.settings.client}; waiting for a warm-up post ...")

    def after_warm_up(self) -> None:
        self.producer.metrics.reset()
        self.say(f"open loop: {self.settings.rate:,.0f} posts/s for "
                 f"{self.settings.seconds:g} s ...")

    def load(self) -> None:
        self.loop = run_open_loop(self.submit, iter(self.posts), self.settings.rate,
                                  self.settings.seconds)


class BacklogRun(PipelineRun):
    """``backlog`` posts written first; then the service starts and drains them."""

    def __init__(self, settings: PipelineSettings, broker, progress: bool = True):
        n = settings.backlog
        super().__init__(
            broker, progress=progress, max_rows=int(60 + n / 100) + 60,
            drain_timeout_s=60 + n / 200, processes=settings.processes,
            client=settings.client, service_args=_service_args(settings),
            max_seconds=WARMUP_TIMEOUT_S + 60 + n / 200 + 120)
        self.n = n
        self.posts = Workload(seed=13).posts(n)
        self.fill_s = 0.0
        self.joined = False

    def set_up(self) -> None:
        """The backlog written (the service not started yet), then the sampler."""
        self.fill()
        self.say(f"backlog written ({self.n / self.fill_s:,.0f} posts/s); starting the "
                 f"service ...")
        self.probes = [self.pipe.lag_probe()]
        self.sampler = Sampler(0.0, lambda: 0, {"lag": self.pipe.lag_probe()},
                               max_rows=self.max_rows)

    def fill(self) -> None:
        producer = make_producer(self.pipe)
        try:
            self.say(f"backlog: writing {self.n:,} posts ...")
            t_fill = time.perf_counter()
            fill_deadline = time.monotonic() + 60 + self.n / 1000
            for post in self.posts:
                post = dataclasses.replace(post, created_at=time.time())
                while True:
                    try:
                        producer.submit(post)
                        break
                    except BackpressureError:
                        if time.monotonic() > fill_deadline:
                            raise TimeoutError("backlog: the producer could not hand over "
                                               "the posts in time") from None
                self.ids.append(post.post_id)
            self.flushed = producer.flush(timeout=120)
            self.fill_s = time.perf_counter() - t_fill
        finally:
            producer.close(timeout=30)

    def measure(self) -> None:
        self.start_clock()
        self.pipe.start_service()
        self.sampler.start()
        # CPU from the moment the group has formed: the service's start-up (interpreter,
        # imports, group join) is not part of the cost of a post
        self.joined = self.pipe.wait_for_members(WARMUP_TIMEOUT_S, poll_s=0.05)
        self.cpu0 = self.cpu_snapshot()
        self.drained = self.pipe.wait_drained(self.probes, timeout_s=self.drain_timeout_s)
        self.drain_s = time.time() - self.t0
        self.cpu1 = self.cpu_snapshot()


def run_pipeline_bench(settings: PipelineSettings, broker=None, progress: bool = True
                       ) -> dict[str, Any]:
    """The open-loop run (or, with ``settings.backlog``, the backlog run). With
    ``guarantee="both"``: the same run at-least-once, then exactly-once, and the ratio of
    their throughputs (backlog_rate, or achieved_rate in the open loop)."""
    settings.validate()
    if broker is None:
        broker = lab_broker.ensure()
    if settings.guarantee == "both":  # the broker is warm for the second run
        runs = {g: run_pipeline_bench(dataclasses.replace(
            settings, guarantee=g, broker_warmup_s=settings.broker_warmup_s if i == 0 else 0),
            broker, progress) for i, g in enumerate(GUARANTEES)}
        key = "backlog_rate" if settings.backlog is not None else "achieved_rate"
        base, eos = runs["at-least-once"].get(key), runs["exactly-once"].get(key)
        return {"suite": "pipeline", "mode": "guarantees", "measure": key, "runs": runs,
                "exactly_once_over_at_least_once":
                    round(eos / base, 3) if base and eos is not None else None}
    warm = _warm_up(settings, broker, progress) if settings.broker_warmup_s else None
    if settings.backlog is not None:
        report = run_backlog(settings, broker, progress=progress)
    else:
        report = _open_loop_report(settings, OpenLoopRun(settings, broker, progress).execute())
    if warm is not None:
        report["broker_warm_up"] = warm
    return report


#: what the report keeps of the unmeasured warm-up run (a loss there is still a loss: it is
#: in the report, and in the printed summary)
WARM_UP_FIELDS = ("seconds", "offered_rate", "achieved_rate", "e2e_p99_ms",
                  "degraded_fraction", "lost", "results_missing", "duplicates")


def _warm_up(settings: PipelineSettings, broker, progress: bool) -> dict[str, Any]:
    """The open loop at ``settings.rate`` for ``broker_warmup_s``, unmeasured; what the
    report keeps of it (:data:`WARM_UP_FIELDS`)."""
    warm = dataclasses.replace(settings, seconds=settings.broker_warmup_s,
                               broker_warmup_s=0.0, json_path=None)
    if progress:
        print(f"broker warm-up (not measured): {warm.rate:,.0f} posts/s for "
              f"{warm.seconds:g} s ...", file=sys.stderr, flush=True)
    report = _open_loop_report(warm, OpenLoopRun(warm, broker, progress).execute())
    return {k: report.get(k) for k in WARM_UP_FIELDS}


def run_backlog(settings: PipelineSettings, broker, progress: bool = True) -> dict[str, Any]:
    """Fill the posts topic with ``backlog`` posts, then start the service and time the
    drain: ``backlog_rate`` = posts / (last first-verdict - first first-verdict)."""
    run = BacklogRun(settings, broker, progress).execute()
    n, firsts, t0 = run.n, run.firsts, run.t0
    times = sorted(r["moderated_at"] for r in firsts.values() if r.get("moderated_at"))
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    degraded = sum(1 for r in firsts.values() if r.get("degraded"))
    return {
        "suite": "pipeline", "mode": "backlog",
        "backlog_posts": n,
        "backlog_rate": round(len(times) / span, 1) if span > 0 else None,
        "first_result_after_s": round(times[0] - t0, 2) if times else None,
        "fill_rate": round(n / run.fill_s, 1),
        "lost": run.lost, "results_missing": run.missing, "posts_lost": run.landed.lost,
        "duplicates": run.duplicates, "posts_duplicates": run.landed.duplicates,
        "degraded_fraction": round(degraded / n, 5),
        "fallback_causes": _fallback_causes(firsts),
        "processes": settings.processes, "client": settings.client,
        "guarantee": settings.guarantee,
        "submitted": len(run.ids), "producer_flushed": bool(run.flushed),
        "drained": run.drained,
        "drain_s": round(run.drain_s, 2),
        "group_joined": run.joined,
        "cpu_us_per_post": cpu_per_post(run.cpu0, run.cpu1, n),
        "timeline": build_timeline(run.samples, firsts, t0),
        "service_stop": run.service_stop,
        "topic_prefix": run.prefix,
        "kafka_version": broker.kafka_version,
        "machine": {"cpus": cpu_count()},
    }


# =========================================================================================
# The report
# =========================================================================================


def _open_loop_report(settings: PipelineSettings, run: OpenLoopRun) -> dict[str, Any]:
    ids, firsts, loop = run.ids, run.firsts, run.loop
    e2e = [r["moderated_at"] - r["created_at"] for r in firsts.values()
           if r.get("moderated_at") and r.get("created_at")]
    p = percentiles_ms(e2e)
    degraded = sum(1 for r in firsts.values() if r.get("degraded"))
    cpu = cpu_per_post(run.cpu0, run.cpu1, len(ids))
    busy_s = run.load_s + run.drain_s
    out: dict[str, Any] = {
        "suite": "pipeline",
        "quick": settings.quick,
        "offered_rate": settings.rate,
        "seconds": settings.seconds,
        "producer_linger_ms": PRODUCER_LINGER_MS,
        "submit_rate": round(loop.achieved_rate, 1),
        "achieved_rate": _round(steady_rate([r["moderated_at"] for r in firsts.values()])),
        "e2e_p50_ms": _round(p["p50_ms"]), "e2e_p99_ms": _round(p["p99_ms"]),
        "e2e_p999_ms": _round(p["p999_ms"]), "e2e_max_ms": _round(p["max_ms"]),
        "degraded_fraction": round(degraded / len(ids), 5) if ids else None,
        "degraded": degraded,
        "fallback_causes": _fallback_causes(firsts),
        "lost": run.lost,
        "results_missing": run.missing,
        "posts_lost": run.landed.lost,
        "duplicates": run.duplicates,
        "posts_duplicates": run.landed.duplicates,
        "processes": settings.processes,
        "client": settings.client,
        "load_client": settings.load_client,
        "guarantee": settings.guarantee,
        "submitted": len(ids),
        "rejected": run.submit.rejected,
        "skipped": loop.skipped,
        "max_submit_lag_ms": round(loop.max_lag_s * 1000, 1),
        "producer_flushed": bool(run.flushed),
        "drained": run.drained,
        "warm_up_s": round(run.warm_s, 2),
        "load_s": round(run.load_s, 2),
        "drain_s": round(run.drain_s, 2),
        "cpu_us_per_post": cpu,
        "profile": profile_table(
            run.cpu0, run.cpu1, len(ids),
            merge_profiles([m.get("profile") for m in run.service_stop.get("members", [])]),
            run.reader_cpu_s),
        "cpu_cores_busy": {k: None if v is None else round(v * len(ids) / 1e6 / busy_s, 2)
                           for k, v in cpu.items()},
        "timeline": build_timeline(run.samples, firsts, run.t0),
        "service_stop": run.service_stop,
        "topic_prefix": run.prefix,
        "kafka_version": run.broker.kafka_version,
        "machine": {"cpus": cpu_count()},
    }
    out["targets_apply"] = settings.rate >= FULL["rate"] and settings.seconds >= FULL["seconds"]
    out["targets"] = evaluate_targets(out)
    if not all(t["met"] for t in out["targets"].values()):
        out["ceiling"] = ceiling(cpu)
    return out


def _fallback_causes(firsts: dict[str, dict]) -> dict[str, int]:
    causes = Counter(r.get("fallback_cause") for r in firsts.values() if r.get("degraded"))
    return {str(k): v for k, v in causes.most_common()}


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def evaluate_targets(report: dict) -> dict[str, dict]:
    out = {}
    for key, op, limit in TARGETS:
        value = report.get(key)
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out[key] = {"value": value, "target": limit, "op": op, "met": bool(met)}
    return out


# =========================================================================================
# Output and CLI
# =========================================================================================


def _f(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def _warm_up_line(w: dict | None) -> list[str]:
    """The warm-up's summary (none without one); a loss, a missing result or a duplicate in
    it is flagged: it counts as much as one in the measured run."""
    if not w:
        return []
    line = (f"  broker warm-up before it (not measured, no target applies): {w['seconds']:g} s, "
            f"achieved {_f(w['achieved_rate'])} results/s, e2e p99 {_f(w['e2e_p99_ms'])} ms, "
            f"degraded {_f(w['degraded_fraction'], '.2%')}, lost {w['lost']}, no result in the "
            f"window {w['results_missing']}, duplicates {w['duplicates']}")
    if w["lost"] or w["results_missing"] or w["duplicates"]:
        line += "  WARNING: the warm-up lost, missed or duplicated posts"
    return [line]


def format_report(r: dict) -> str:
    if r.get("mode") == "guarantees":
        parts = [format_report(run) for run in r["runs"].values()]
        parts.append(f"exactly-once / at-least-once ({r['measure']}): "
                     f"{_f(r['exactly_once_over_at_least_once'], '.3f')}")
        return "\n".join(parts)
    cpu = r["cpu_us_per_post"]
    warm_line = _warm_up_line(r.get("broker_warm_up"))
    known = [v for v in cpu.values() if v is not None]
    cpu_line = ("CPU µs per post: " + ", ".join(f"{k} {_f(v, '.1f')}" for k, v in cpu.items())
                + f" = {sum(known):.1f} total")
    if r.get("mode") == "backlog":
        lines = [f"pipeline backlog: {r['backlog_posts']:,} posts written first, then "
                 f"{r['processes']} moderation process(es) ({r['client']}, "
                 f"{r.get('guarantee', 'at-least-once')})",
                 f"  backlog_rate {_f(r['backlog_rate'])} posts/s (drain {r['drain_s']} s), "
                 f"degraded {r['degraded_fraction']:.1%}, lost {r['lost']}, no result in "
                 f"the window {r['results_missing']}, duplicates {r['duplicates']}",
                 "  " + cpu_line]
        lines[1:1] = warm_line
        return "\n".join(lines)
    lines = [f"pipeline: {r['offered_rate']:,.0f} posts/s offered for {r['seconds']:g} s "
             f"(load producer: {r.get('load_client', 'kafka-python')}), "
             f"{r['processes']} moderation process(es) ({r['client']}, "
             f"{r.get('guarantee', 'at-least-once')})",
             f"  submitted {r['submitted']:,}; achieved {_f(r['achieved_rate'])} results/s; "
             f"e2e p50/p99/p99.9 {_f(r['e2e_p50_ms'])} / {_f(r['e2e_p99_ms'])} / "
             f"{_f(r['e2e_p999_ms'])} ms",
             f"  degraded {_f(r['degraded_fraction'], '.2%')}, lost {r['lost']}, no result in "
             f"the window {r['results_missing']}, duplicates {r['duplicates']}, drained "
             f"{r['drained']} ({r['drain_s']} s after the load)",
             "  " + cpu_line,
             f"  {'t_s':>4} {'offered':>8} {'moderated':>10} {'lag':>8} {'degraded':>9}"]
    lines[1:1] = warm_line
    rows = r["timeline"]
    shown = rows if len(rows) <= 24 else rows[:12] + [None] + rows[-11:]
    for row in shown:
        if row is None:
            lines.append("   ...")
            continue
        lines.append(f"  {row['t_s']:>4} {row['offered']:>8} {row['moderated']:>10} "
                     f"{_f(row['lag'], 'd'):>8} {row['degraded']:>9}")
    scope = "" if r["targets_apply"] else " (targets are for --rate 10000 --seconds 30)"
    for key, t in r["targets"].items():
        lines.append(f"  target {key} {t['op']} {t['target']:g}: {_f(t['value'], ',.2f')} "
                     f"{'met' if t['met'] else 'NOT met'}{scope}")
    c = r.get("ceiling")
    if c:
        lines.append(f"  ceiling: {c['stage']} costs most ({c['stage_cpu_us_per_post']} µs/post); "
                     f"{c['total_cpu_us_per_post']} µs/post in all -> "
                     f"{c['cores_at_10000_per_s']} cores at 10,000/s, "
                     f"{c['cores_at_100000_per_s']} at 100,000/s (this machine: "
                     f"{c['cores_here']})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``bench pipeline``: settings checked first (ValueError → exit 2 in the CLI)."""
    settings = PipelineSettings.from_args(args)
    settings.validate()
    try:
        report = run_pipeline_bench(settings)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: bench pipeline: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if settings.profile and report.get("profile"):
        print("CPU profile, µs of CPU per submitted post:")
        print(format_profile(report["profile"]))
    if settings.json_path:
        Path(settings.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {settings.json_path}")
    return 0
