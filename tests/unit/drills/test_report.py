"""The drills' typed reports, without a broker: ``ok``, the JSON on disk, the summary text."""

from __future__ import annotations

import json
from types import SimpleNamespace

from lab_kit.drills import DrillSettings
from lab_kit.drills.report import (
    ApiDrillReport,
    CallerCheck,
    DrillReport,
    Memory,
    ModerationChecks,
    OutageLatency,
    OutageWindow,
    OverloadReport,
    Phase,
    ProducerChecks,
    load_report,
    report_from_dict,
)
from lab_kit.harness.checker import ResultsCheck
from lab_kit.harness.readback import AuditReport

#: the keys ``python -m lab_kit drill broker-outage --json`` writes, in order (the per-user
#: order check's three came after dead_lettered_ids; none was removed or moved)
PRODUCER_KEYS = [
    "drill", "kafka_version", "nodes", "settings", "achieved_rate", "submitted", "acked",
    "spooled", "replayed", "delivered_unique", "duplicates", "lost", "dead_lettered", "pending",
    "lost_ids", "duplicate_ids", "dead_lettered_ids", "out_of_order", "users_out_of_order",
    "out_of_order_ids", "outage_windows", "nemesis_error",
    "submitted_during_outage", "submit_p99_during_outage_ms", "submit_p999_during_outage_ms",
    "submit_max_during_outage_ms", "peak_rss_mb", "baseline_rss_mb", "topic", "spool_left",
    "close_report_lost", "recovery_s", "client_rebuilds", "spooled_by_caller",
    "kafka_calls_while_spooling", "timeline", "ok"]
MODERATION_KEYS = PRODUCER_KEYS[:29] + [
    "results_missing", "results_duplicates", "degraded", "rechecked", "rechecked_missing",
    "results_missing_ids", "results_duplicate_ids", "unrechecked_ids", "spooled_by_caller",
    "kafka_calls_while_spooling", "breaker_events", "service", "timeline", "ok"]


def _audit(lost: int = 0, **kw) -> AuditReport:
    base = dict(submitted=100, acked=60, spooled=40, replayed=40, delivered_unique=100 - lost,
                duplicates=1, lost=lost, dead_lettered=0,
                lost_ids=[f"p{i}" for i in range(lost)])
    base.update(kw)
    return AuditReport(**base)


def _producer_report(lost: int = 0, kafka_calls: int | None = 0) -> DrillReport:
    return DrillReport(
        drill="broker-outage", kafka_version="4.0.0", nodes=1,
        settings=DrillSettings(posts=100, rate=50.0, outage_s=1.0, lead_s=0.5),
        achieved_rate=49.9, audit=_audit(lost),
        outage_windows=[OutageWindow(0.5, 1.52, "broker node 1 killed (-9)")],
        nemesis_error=None, during_outage=OutageLatency(50, 0.2, 0.4, 0.9),
        memory=Memory(120.5, 100.0), topic="drill.broker-outage.x",
        caller=CallerCheck(40, kafka_calls),
        timeline=[{"t_s": 0.0, "submitted": 50, "acked": 50},
                  {"t_s": 1.0, "submitted": 50, "acked": 10, "spooled": 40}],
        producer=ProducerChecks(spool_left=0, close_report_lost=0, recovery_s=0.8,
                                client_rebuilds=1))


def _moderation_report(missing: int = 0, unrechecked: int = 0) -> DrillReport:
    r = _producer_report()
    r.drill, r.producer = "moderation-outage", None
    r.moderation = ModerationChecks(
        results=ResultsCheck(results_missing=missing, results_duplicates=0, degraded=10,
                             rechecked=10 - unrechecked, rechecked_missing=unrechecked,
                             missing_ids=[f"m{i}" for i in range(missing)], duplicate_ids=[],
                             unrechecked_ids=[f"u{i}" for i in range(unrechecked)]),
        breaker_events=[{"t_s": 1.0, "from": "closed", "to": "open"}],
        service={"consumed": 100, "degraded": 10})
    return r


def test_ok_follows_the_checker_not_the_producer():
    assert _producer_report().ok
    assert not _producer_report(lost=1).ok  # one post not read back fails the drill
    assert not _producer_report(kafka_calls=1).ok  # a spooled submit() reached the client
    reordered = _producer_report()
    reordered.audit.out_of_order, reordered.audit.users_out_of_order = 1, 1
    assert not reordered.ok  # a user's post landed after a newer one of theirs
    failed = _producer_report()
    failed.nemesis_error = "RuntimeError('kill failed')"
    assert not failed.ok  # a fault that did not happen proves nothing
    assert _moderation_report().ok
    assert not _moderation_report(missing=1).ok
    assert not _moderation_report(unrechecked=2).ok


def test_the_json_on_disk_keeps_its_keys_and_loads_back():
    for report, keys in ((_producer_report(lost=2), PRODUCER_KEYS),
                         (_moderation_report(missing=1), MODERATION_KEYS)):
        d = json.loads(report.to_json())
        assert list(d) == keys
        assert d["lost"] == report.audit.lost and d["ok"] is report.ok
        assert d["outage_windows"] == [[0.5, 1.52, "broker node 1 killed (-9)"]]
        back = DrillReport.from_json(report.to_json())
        assert back == report
        assert report_from_dict(d) == report


def test_audit_ids_are_capped_in_the_json_but_the_counts_are_not():
    report = _producer_report(lost=30)
    d = report.to_dict()
    assert d["lost"] == 30 and len(d["lost_ids"]) == 20
    assert DrillReport.from_dict(d).audit.lost == 30


def test_summary_text():
    text = _producer_report().summary()
    assert text.splitlines()[0] == ("drill broker-outage on 1 node(s), Kafka 4.0.0, "
                                    "client kafka-python: OK")
    assert ("submitted=100, acked=60, spooled=40, replayed=40, delivered_unique=100, "
            "duplicates=1, lost=0, dead_lettered=0") in text
    assert "outage 0.5s..1.5s: broker node 1 killed (-9)" in text
    assert "submit during outage: n=50, p99=0.200 ms, p99.9=0.400 ms" in text
    assert "spooled by submit(): 40, of which 0 made a Kafka client call" in text
    assert "recovery_s: 0.8" in text
    mod = _moderation_report(missing=1).summary()
    assert "FAILED" in mod and "results_missing: 1" in mod and "recovery_s" not in mod


def _overload() -> OverloadReport:
    return OverloadReport(
        capacity_per_s=300.0, offered_rate_overload=598.2,
        phases=[Phase("before", 150.0, 0.0, 1.0, 150), Phase("overload", 600.0, 1.0, 5.0, 2400),
                Phase("after", 150.0, 5.0, 9.0, 600)],
        overload_window=(1.0, 5.0), submitted=3150, e2e_p50_ms=12.5, e2e_p99_ms=800.1,
        degraded=900, fallback_causes={"BackendOverloaded": 900}, rechecked=900,
        rechecked_missing=0, results_missing=0, duplicates=0, lost=0, posts_lost=0,
        recheck_drained_s=3.2, drained=True, backend={"requests": 40}, service_stop={"rc": 0},
        service_events=["breaker open"], topic_prefix="drill.moderation-overload.x.",
        timeline=[{"t_s": 0, "offered": 150}])


def test_overload_report_round_trip_and_ok(tmp_path):
    report = _overload()
    assert report.ok
    d = json.loads(report.to_json())
    assert list(d)[:3] == ["drill", "capacity_per_s", "offered_rate_overload"]
    assert d["drill"] == "moderation-overload" and d["overload_window"] == [1.0, 5.0]
    assert d["phases"][1] == {"phase": "overload", "rate": 600.0, "start_s": 1.0, "end_s": 5.0,
                              "submitted": 2400}
    path = tmp_path / "overload.json"
    path.write_text(report.to_json())
    assert load_report(path) == report
    assert "drill moderation-overload: OK" in report.summary()
    report.rechecked = 899  # one degraded verdict never repaired
    assert not report.ok


def test_overload_report_says_when_the_machine_offered_less_than_asked():
    report = _overload()  # 598.2 posts/s offered of the 600 asked: 2x, in full
    assert report.to_dict()["overload_factor"] == 1.99
    assert "could not keep up" not in report.summary()
    report.offered_rate_overload = 501.0  # under 95 % of the asked 600
    assert report.to_dict()["overload_factor"] == 1.67
    assert ("  offered 1.67x the capacity, not the 2x asked (600 posts/s): the load generator "
            "could not keep up on this machine, so this run did not show 2x"
            ) in report.summary().splitlines()


def _api_run() -> dict:
    return {"variant": "async", "condition": "broker_killed", "workers": 1, "topic": "t",
            "target_rate": 200, "seconds": 8.0, "sent": 1600, "accepted": 1600,
            "achieved_rate": 199.8, "p50_ms": 1.1, "p99_ms": 4.0, "p999_ms": 9.0, "max_ms": 20.0,
            "errors": 0, "errors_by_kind": {}, "driver_max_lag_ms": 0.5,
            "server_exit_code": 0, "spool_left": 0, "in_flight_left": 0,
            "server": {"posts_spooled_total": 300, "spool_replayed": 300},
            "outage": {"lead_s": 2.0, "outage_s": 3.0, "error": None},
            "p99_during_outage_ms": 3.0, "p999_during_outage_ms": 5.0,
            "sent_during_outage": 600, "lost": 0, "duplicates": 2, "delivered_unique": 1600,
            "load": SimpleNamespace(sent=1600)}


def test_api_drill_report_keeps_run_condition_keys_and_not_the_load():
    run = _api_run()
    settings = {"posts": 1600, "rate": 200, "outage_s": 3.0, "lead_s": 2.0, "workers": 1}
    report = ApiDrillReport.from_dict({"settings": settings, **run})
    assert report.ok and report.load.sent == 1600 and report.delivery.duplicates == 2
    d = report.to_dict()
    run.pop("load")
    assert d == {"drill": "api-broker-outage", "settings": settings, **run, "ok": True}
    assert "load" not in json.loads(report.to_json())
    assert ApiDrillReport.from_json(report.to_json()) == report  # load is not compared
    assert "lost 0" in report.summary()
    run["accepted"] = 1599  # one request refused: not ok, even with nothing lost
    assert not ApiDrillReport.from_dict({"settings": settings, **run}).ok
