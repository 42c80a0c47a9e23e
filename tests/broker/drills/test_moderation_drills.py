"""The moderation drills at small scale: a real backend process killed or slowed."""

from __future__ import annotations

import pytest

from lab_kit.drills import DrillSettings
from lab_kit.drills.runner import run_drill

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("name", ["moderation-outage", "moderation-slow"])
def test_moderation_drill_every_post_gets_a_result_and_degraded_ones_are_rechecked(
        kafka_broker, tmp_path, name):
    # the load outlasts outage + breaker reset (2 s), so the breaker sees the recovery
    settings = DrillSettings.for_drill(name, posts=1050, rate=150, outage_s=2.0, lead_s=1.0)
    report = run_drill(name, settings, broker=kafka_broker, workdir=tmp_path)
    results = report.moderation.results
    assert report.ok, (report.audit.lost, results.results_missing, results.rechecked_missing)
    assert report.audit.submitted == 1050 and report.audit.lost == 0
    assert results.results_missing == 0
    assert results.degraded > 0  # the fault really bit
    assert results.rechecked == results.degraded and results.rechecked_missing == 0
    transitions = [(e["from"], e["to"]) for e in report.moderation.breaker_events]
    assert ("closed", "open") in transitions
    assert transitions[-1] == ("half-open", "closed")  # recovered by the end
    assert any("moderation backend" in w.label for w in report.outage_windows)
    moderated = sum(row.get("moderated", 0) for row in report.timeline)
    assert moderated >= 1050
    assert type(report).from_json(report.to_json()).to_dict() == report.to_dict()


def test_drill_settings_are_validated():
    with pytest.raises(ValueError, match="--rate"):
        DrillSettings(rate=0).validate()
    with pytest.raises(ValueError, match="--posts"):
        DrillSettings(posts=0).validate()
    with pytest.raises(ValueError, match="unknown drill"):
        run_drill("power-cut")
    with pytest.raises(ValueError, match="run_api_drill"):
        run_drill("api-broker-outage")
