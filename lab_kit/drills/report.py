"""The drills' reports: typed results with named fields, written to disk as JSON.

* :class:`DrillReport` — broker-outage, broker-pause, leader-failover, moderation-outage,
  moderation-slow: the audit (:class:`lab_kit.harness.readback.AuditReport`), the fault
  windows, the ``submit()`` latency during the fault, the caller check, plus
  :class:`ProducerChecks` or :class:`ModerationChecks`;
* :class:`OverloadReport` — moderation-overload;
* :class:`ApiDrillReport` — api-broker-outage (HTTP).

Each has ``ok``, ``summary()`` (the text the CLI prints), ``to_dict()``/``to_json()`` (the
keys the CLI has always written: a flat JSON object, read by the README's tables and other
tools) and ``from_dict()``/``from_json()`` to load a saved run. :func:`load_report` picks the
class from the JSON's ``drill`` key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_kit import lab_env
from lab_kit.drills.workload import DrillSettings
from lab_kit.harness.checker import ResultsCheck
from lab_kit.harness.readback import AuditReport
from lab_kit.metrics import percentiles_ms

if TYPE_CHECKING:
    from lab_kit.metrics import MetricsRecorder

API_DRILL = "api-broker-outage"
OVERLOAD_DRILL = "moderation-overload"
#: The overload window counts as offered in full at 95 % of the asked rate or more.
OFFERED_ENOUGH = 0.95
#: the audit counts a summary line shows, in this order
AUDIT_KEYS = ("submitted", "acked", "spooled", "replayed", "delivered_unique", "duplicates",
              "lost", "dead_lettered", "out_of_order", "users_out_of_order")


class _Json:
    """``to_json``/``from_json`` on top of a class's ``to_dict``/``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))  # type: ignore[attr-defined]


def audit_from_dict(d: dict[str, Any]) -> AuditReport:
    """An :class:`~lab_kit.harness.readback.AuditReport` from a saved report's keys (others
    ignored)."""
    return AuditReport(**{f.name: d[f.name] for f in fields(AuditReport) if f.name in d})


@dataclass
class OutageWindow:
    """A fault window in seconds since the drill's start; JSON: ``[start_s, end_s, label]``."""

    start_s: float
    end_s: float
    label: str

    def to_list(self) -> list:
        return [self.start_s, self.end_s, self.label]


@dataclass
class OutageLatency:
    """How long the user-facing call took while the fault was on (``n`` calls)."""

    n: int
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None = None


@dataclass
class Memory:
    """This process's resident memory during the drill (MB)."""

    peak_mb: float
    baseline_mb: float


@dataclass
class CallerCheck:
    """Posts ``submit()`` spooled, and how many of those made a Kafka client call on the
    caller's thread (should be 0; None when no :class:`KafkaCallWatch` watched)."""

    spooled_by_caller: int
    kafka_calls_while_spooling: int | None

    @classmethod
    def of(cls, submit) -> CallerCheck:
        """From a :class:`~lab_kit.drills.workload.TimedSubmit` after the run."""
        return cls(submit.spooled_by_caller, submit.kafka_calls_while_spooling)


@dataclass
class ProducerChecks:
    """The producer drills' own checks: spool empty, close() lost nothing, recovery time."""

    spool_left: int
    close_report_lost: int
    recovery_s: float | None  # from the heal to the spool drained
    client_rebuilds: int


@dataclass
class ModerationChecks:
    """The moderation drills' own checks: the results read back, the breaker's transitions
    (``{"t_s", "from", "to"}``) and the service's counters."""

    results: ResultsCheck
    breaker_events: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] = field(default_factory=dict)


def merge_timeline(metrics: MetricsRecorder, consumer_metrics: MetricsRecorder | None = None
                   ) -> tuple[list[dict[str, float]], list[OutageWindow]]:
    """Per-second rows (``t_s`` and counts: submitted, acked, ..., moderated, degraded,
    rechecked) and fault windows, from the producer's recorder and optionally the moderation
    side's (shifted onto the producer's clock)."""
    ts = metrics.timeseries_frame()
    windows = list(metrics.windows)
    if consumer_metrics is not None:  # the moderation side: results, degraded, rechecked
        offset = consumer_metrics.start - metrics.start
        cts = consumer_metrics.timeseries_frame()
        cts.index = (cts.index + offset).round().astype(int).astype(float)
        keep = [c for c in ("results", "degraded", "rechecked") if c in cts.columns]
        ts = ts.join(cts[keep].groupby(level=0).sum(), how="outer").fillna(0)
        windows += [(s + offset, e + offset, label) for s, e, label in consumer_metrics.windows]
    names = {"submitted": "submitted", "acked": "acked", "failed": "failed",
             "spooled": "spooled", "replayed": "replayed", "results": "moderated",
             "degraded": "degraded", "rechecked": "rechecked"}
    columns = [c for c in names if c in ts.columns]
    timeline = [{"t_s": float(t), **{names[c]: int(row[c]) for c in columns}}
                for t, row in ts[columns].iterrows()]
    return timeline, [OutageWindow(round(s, 3), round(e, 3), label) for s, e, label in windows]


@dataclass
class DrillReport(_Json):
    """One drill of workload + nemesis + checker (all but moderation-overload and
    api-broker-outage). ``producer`` is set by the broker drills, ``moderation`` by the
    moderation drills."""

    drill: str
    kafka_version: str
    nodes: int
    settings: DrillSettings
    achieved_rate: float
    audit: AuditReport
    outage_windows: list[OutageWindow]
    nemesis_error: str | None
    during_outage: OutageLatency
    memory: Memory
    topic: str
    caller: CallerCheck
    timeline: list[dict[str, float]] = field(default_factory=list)
    producer: ProducerChecks | None = None
    moderation: ModerationChecks | None = None
    #: The ids ``submit()`` accepted, in the order it accepted them: what the checker audited
    #: (for a student's own checker, notebook 05). In memory only, not in the JSON report
    #: (tens of thousands of ids): a report read back from JSON has none.
    accepted_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """Lost 0, every user's posts in submit order on the topic, and the nemesis did its
        job; broker drills: no Kafka call while spooling; moderation drills: every post has a
        result and every degraded one a recheck."""
        ok = (self.audit.lost == 0 and not self.audit.out_of_order
              and self.nemesis_error is None)
        if self.producer is not None:
            ok = ok and self.caller.kafka_calls_while_spooling == 0
        if self.moderation is not None:
            ok = ok and self.moderation.results.ok
        return bool(ok)

    @classmethod
    def build(cls, name: str, broker, settings: DrillSettings, run, audit_report: AuditReport,
              metrics: MetricsRecorder, nemesis, submit, rss, *, topic: str,
              producer: ProducerChecks | None = None,
              moderation: ModerationChecks | None = None,
              consumer_metrics: MetricsRecorder | None = None) -> DrillReport:
        """Assemble the report of a finished run (the pieces the drill used)."""
        timeline, windows = merge_timeline(metrics, consumer_metrics)
        p = percentiles_ms(submit.during)
        return cls(
            drill=name, kafka_version=broker.kafka_version or lab_env.KAFKA_VERSION,
            nodes=len(broker.nodes()), settings=settings,
            achieved_rate=round(run.achieved_rate, 1), audit=audit_report,
            outage_windows=windows,
            nemesis_error=None if nemesis.error is None else repr(nemesis.error),
            during_outage=OutageLatency(len(submit.during), p["p99_ms"], p["p999_ms"],
                                        p["max_ms"]),
            memory=Memory(round(rss.peak / 2**20, 1), round(rss.baseline / 2**20, 1)),
            topic=topic, caller=CallerCheck.of(submit), timeline=timeline,
            producer=producer, moderation=moderation, accepted_ids=list(submit.submitted))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "drill": self.drill, "kafka_version": self.kafka_version, "nodes": self.nodes,
            "settings": self.settings.to_dict(), "achieved_rate": self.achieved_rate,
            **self.audit.to_dict(),
            "outage_windows": [w.to_list() for w in self.outage_windows],
            "nemesis_error": self.nemesis_error,
            "submitted_during_outage": self.during_outage.n,
            "submit_p99_during_outage_ms": self.during_outage.p99_ms,
            "submit_p999_during_outage_ms": self.during_outage.p999_ms,
            "submit_max_during_outage_ms": self.during_outage.max_ms,
            "peak_rss_mb": self.memory.peak_mb, "baseline_rss_mb": self.memory.baseline_mb,
            "topic": self.topic,
        }
        if self.producer is not None:
            d.update(asdict(self.producer))
        if self.moderation is not None:
            d.update(self.moderation.results.to_dict())
        d.update(asdict(self.caller))
        if self.moderation is not None:
            d.update(breaker_events=self.moderation.breaker_events,
                     service=self.moderation.service)
        d.update(timeline=self.timeline, ok=self.ok)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DrillReport:
        producer = moderation = None
        if "spool_left" in d:
            producer = ProducerChecks(d["spool_left"], d["close_report_lost"], d["recovery_s"],
                                      d["client_rebuilds"])
        if "results_missing" in d:
            moderation = ModerationChecks(ResultsCheck.from_dict(d),
                                          list(d.get("breaker_events", [])),
                                          dict(d.get("service", {})))
        return cls(
            drill=d["drill"], kafka_version=d["kafka_version"], nodes=d["nodes"],
            settings=DrillSettings(**d["settings"]), achieved_rate=d["achieved_rate"],
            audit=audit_from_dict(d),
            outage_windows=[OutageWindow(*w) for w in d["outage_windows"]],
            nemesis_error=d["nemesis_error"],
            during_outage=OutageLatency(d["submitted_during_outage"],
                                        d["submit_p99_during_outage_ms"],
                                        d["submit_p999_during_outage_ms"],
                                        d.get("submit_max_during_outage_ms")),
            memory=Memory(d["peak_rss_mb"], d["baseline_rss_mb"]), topic=d["topic"],
            caller=CallerCheck(d["spooled_by_caller"], d["kafka_calls_while_spooling"]),
            timeline=list(d.get("timeline", [])), producer=producer, moderation=moderation)

    def summary(self) -> str:
        """The text ``python -m lab_kit drill NAME`` prints."""
        a = self.audit
        lines = [f"drill {self.drill} on {self.nodes} node(s), Kafka {self.kafka_version}, "
                 f"client {self.settings.client}: {'OK' if self.ok else 'FAILED'}",
                 "  " + ", ".join(f"{k}={getattr(a, k)}" for k in AUDIT_KEYS)]
        for w in self.outage_windows:
            lines.append(f"  outage {w.start_s:.1f}s..{w.end_s:.1f}s: {w.label}")
        o = self.during_outage
        if o.p99_ms is not None:
            lines.append(f"  submit during outage: n={o.n}, p99={o.p99_ms:.3f} ms, "
                         f"p99.9={o.p999_ms:.3f} ms")
        if self.caller.kafka_calls_while_spooling is not None:
            lines.append(f"  spooled by submit(): {self.caller.spooled_by_caller}, of which "
                         f"{self.caller.kafka_calls_while_spooling} made a Kafka client call")
        lines.append(f"  peak RSS {self.memory.peak_mb} MB "
                     f"(baseline {self.memory.baseline_mb})")
        if self.producer is not None:
            lines.append(f"  recovery_s: {self.producer.recovery_s}")
        if self.moderation is not None:
            r = self.moderation.results
            lines += [f"  results_missing: {r.results_missing}", f"  degraded: {r.degraded}",
                      f"  rechecked_missing: {r.rechecked_missing}"]
        return "\n".join(lines)


@dataclass
class Phase:
    """One phase of the overload drill's load: ``rate`` posts/s from ``start_s`` to
    ``end_s`` (seconds since the load began)."""

    phase: str
    rate: float
    start_s: float
    end_s: float
    submitted: int


@dataclass
class OverloadReport(_Json):
    """``moderation-overload``: posts at 0.5C, 2C, 0.5C against a backend of capacity C.

    ``lost`` counts posts without a verdict or missing from the posts topic (the union);
    ``posts_lost`` the posts-topic audit alone; ``recheck_drained_s`` is how long after the
    overload window the last recheck landed."""

    capacity_per_s: float
    offered_rate_overload: float
    phases: list[Phase]
    overload_window: tuple[float, float]
    submitted: int
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    degraded: int
    fallback_causes: dict[str, int]
    rechecked: int
    rechecked_missing: int
    results_missing: int
    duplicates: int
    lost: int
    posts_lost: int
    recheck_drained_s: float | None
    drained: bool
    backend: dict[str, Any] = field(default_factory=dict)
    service_stop: dict[str, Any] = field(default_factory=dict)
    service_events: list[str] = field(default_factory=list)
    topic_prefix: str = ""
    timeline: list[dict[str, Any]] = field(default_factory=list)
    drill: str = OVERLOAD_DRILL

    @property
    def ok(self) -> bool:
        return bool(self.lost == 0 and self.results_missing == 0
                    and self.rechecked == self.degraded and self.drained)

    @property
    def overload_factor(self) -> float:
        """How many times the backend's capacity the overload window really offered (the
        drill asks for 2; a machine whose load generator cannot keep up offers less)."""
        return round(self.offered_rate_overload / self.capacity_per_s, 2)

    def _shortfall_line(self) -> list[str]:
        asked = next((p.rate for p in self.phases if p.phase == "overload"), None)
        if asked is None or self.offered_rate_overload >= OFFERED_ENOUGH * asked:
            return []
        return [f"  offered {self.overload_factor:g}x the capacity, not the "
                f"{asked / self.capacity_per_s:g}x asked ({asked:,.0f} posts/s): the load "
                f"generator could not keep up on this machine, so this run did not show "
                f"{asked / self.capacity_per_s:g}x"]

    def to_dict(self) -> dict[str, Any]:
        d = {"drill": self.drill}
        for f in fields(self):
            if f.name == "drill":
                continue
            value = getattr(self, f.name)
            if f.name == "phases":
                value = [asdict(p) for p in value]
            elif f.name == "overload_window":
                value = list(value)
            d[f.name] = value
        d["ok"] = self.ok
        d["overload_factor"] = self.overload_factor
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OverloadReport:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["phases"] = [Phase(**p) for p in d["phases"]]
        kw["overload_window"] = tuple(d["overload_window"])
        return cls(**kw)

    def summary(self) -> str:
        w = self.overload_window
        return "\n".join([
            f"drill moderation-overload: {'OK' if self.ok else 'FAILED'}; backend capacity "
            f"{self.capacity_per_s:g} posts/s, {self.offered_rate_overload:,.0f} posts/s "
            f"offered in the overload window {w[0]:.1f}s..{w[1]:.1f}s",
            f"  submitted={self.submitted}, lost={self.lost}, results_missing="
            f"{self.results_missing}, duplicates={self.duplicates}",
            *self._shortfall_line(),
            f"  e2e p99 of posts submitted in the overload: {self.e2e_p99_ms} ms",
            f"  degraded={self.degraded} {self.fallback_causes}, rechecked={self.rechecked}, "
            f"recheck drained {self.recheck_drained_s} s after the overload"])


@dataclass
class ApiDrillSettings:
    posts: int = 20_000
    rate: float = 2_000
    outage_s: float = 10.0
    lead_s: float = 3.0
    workers: int = 1


@dataclass
class HttpLatency:
    """HTTP response times of the whole run, from each request's intended send time."""

    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


@dataclass
class Delivery:
    """The checker's counts, from the topic read back (accepted posts only)."""

    delivered_unique: int
    duplicates: int
    lost: int


@dataclass
class NemesisRun:
    lead_s: float
    outage_s: float
    error: str | None


@dataclass
class ApiDrillReport(_Json):
    """``api-broker-outage``: open-loop ``POST /posts`` while the broker is killed.

    The JSON has :func:`lab_kit.harness.api_condition.run_condition`'s keys; ``load`` (the
    workload's :class:`~lab_kit.harness.http_load.LoadRun`, per-request data) is kept in memory
    only."""

    settings: ApiDrillSettings
    variant: str
    condition: str
    workers: int
    topic: str
    target_rate: float
    seconds: float
    sent: int
    accepted: int
    achieved_rate: float
    latency: HttpLatency
    errors: int
    errors_by_kind: dict[str, int]
    driver_max_lag_ms: float
    server_exit_code: int | None
    spool_left: int | None
    in_flight_left: int | None
    server: dict[str, int]
    outage: NemesisRun | None = None
    during_outage: OutageLatency | None = None
    delivery: Delivery | None = None
    load: Any = field(default=None, repr=False, compare=False)
    drill: str = API_DRILL

    @property
    def ok(self) -> bool:
        return bool(self.delivery is not None and self.delivery.lost == 0
                    and self.accepted == self.sent
                    and (self.outage is None or self.outage.error is None))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ApiDrillReport:
        """From the saved JSON, or from ``{"settings": ..., **run_condition(...)}`` (its
        ``load`` is kept)."""
        o = d.get("outage")
        return cls(
            settings=ApiDrillSettings(**d["settings"]), variant=d["variant"],
            condition=d["condition"], workers=d["workers"], topic=d["topic"],
            target_rate=d["target_rate"], seconds=d["seconds"], sent=d["sent"],
            accepted=d["accepted"], achieved_rate=d["achieved_rate"],
            latency=HttpLatency(d["p50_ms"], d["p99_ms"], d["p999_ms"], d["max_ms"]),
            errors=d["errors"], errors_by_kind=dict(d["errors_by_kind"]),
            driver_max_lag_ms=d["driver_max_lag_ms"], server_exit_code=d["server_exit_code"],
            spool_left=d["spool_left"], in_flight_left=d["in_flight_left"],
            server=dict(d["server"]),
            outage=None if o is None else NemesisRun(o["lead_s"], o["outage_s"], o["error"]),
            during_outage=(OutageLatency(d["sent_during_outage"], d["p99_during_outage_ms"],
                                         d["p999_during_outage_ms"])
                           if "sent_during_outage" in d else None),
            delivery=(Delivery(d["delivered_unique"], d["duplicates"], d["lost"])
                      if "lost" in d else None),
            load=d.get("load"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "drill": self.drill, "settings": asdict(self.settings), "variant": self.variant,
            "condition": self.condition, "workers": self.workers, "topic": self.topic,
            "target_rate": self.target_rate, "seconds": self.seconds, "sent": self.sent,
            "accepted": self.accepted, "achieved_rate": self.achieved_rate,
            **asdict(self.latency), "errors": self.errors,
            "errors_by_kind": self.errors_by_kind, "driver_max_lag_ms": self.driver_max_lag_ms,
            "server_exit_code": self.server_exit_code, "spool_left": self.spool_left,
            "in_flight_left": self.in_flight_left, "server": self.server}
        if self.outage is not None:
            d["outage"] = asdict(self.outage)
        if self.during_outage is not None:
            d.update(p99_during_outage_ms=self.during_outage.p99_ms,
                     p999_during_outage_ms=self.during_outage.p999_ms,
                     sent_during_outage=self.during_outage.n)
        if self.delivery is not None:
            d.update(lost=self.delivery.lost, duplicates=self.delivery.duplicates,
                     delivered_unique=self.delivery.delivered_unique)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        s, lat, dl = self.server, self.latency, self.delivery
        o = self.during_outage
        return "\n".join([
            f"drill {self.drill}: {'OK' if self.ok else 'FAILED'}",
            f"  sent {self.sent}, accepted {self.accepted}, delivered_unique "
            f"{dl and dl.delivered_unique}, duplicates {dl and dl.duplicates}, lost "
            f"{dl and dl.lost}",
            f"  HTTP p50 {lat.p50_ms} ms, p99 {lat.p99_ms} ms, p99.9 {lat.p999_ms} ms; during "
            f"the outage p99 {o and o.p99_ms} ms (n={o and o.n})",
            f"  server: spooled {s.get('posts_spooled_total')}, replayed "
            f"{s.get('spool_replayed')}, acked {s.get('posts_acked_total')}, failed "
            f"{s.get('posts_failed_total')}",
        ])


Report = DrillReport | OverloadReport | ApiDrillReport


def report_from_dict(d: dict[str, Any]) -> Report:
    """The report class for a saved drill's JSON object (by its ``drill`` key)."""
    if d.get("drill") == OVERLOAD_DRILL:
        return OverloadReport.from_dict(d)
    if d.get("drill") == API_DRILL:
        return ApiDrillReport.from_dict(d)
    return DrillReport.from_dict(d)


def load_report(path: str | Path) -> Report:
    """A report saved by ``python -m lab_kit drill NAME --json PATH``."""
    return report_from_dict(json.loads(Path(path).read_text()))


def print_and_save(report: Any, json_path: str | None) -> int:
    """What every ``drill`` command line ends with: the summary printed, the JSON written if
    asked for, and the exit code (0 if the drill's checks held, else 1)."""
    print(report.summary())
    if json_path:
        Path(json_path).write_text(report.to_json())
        print(f"wrote {json_path}")
    return 0 if report.ok else 1
