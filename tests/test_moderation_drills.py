"""The moderation drills at small scale: a real backend process killed or slowed."""

from __future__ import annotations

import pytest

from lab_kit.drills import DrillSettings, run_drill

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("name", ["moderation-outage", "moderation-slow"])
def test_moderation_drill_every_post_gets_a_result_and_degraded_ones_are_rechecked(
        kafka_broker, tmp_path, name):
    # the load outlasts outage + breaker reset (2 s), so the breaker sees the recovery
    settings = DrillSettings.for_drill(name, posts=1050, rate=150, outage_s=2.0, lead_s=1.0)
    result = run_drill(name, settings, broker=kafka_broker, workdir=tmp_path)
    assert result["ok"], {k: result[k] for k in ("lost", "results_missing", "rechecked_missing")}
    assert result["submitted"] == 1050 and result["lost"] == 0
    assert result["results_missing"] == 0
    assert result["degraded"] > 0  # the fault really bit
    assert result["rechecked"] == result["degraded"] and result["rechecked_missing"] == 0
    transitions = [(e["from"], e["to"]) for e in result["breaker_events"]]
    assert ("closed", "open") in transitions
    assert transitions[-1] == ("half-open", "closed")  # recovered by the end
    assert any("moderation backend" in w[2] for w in result["outage_windows"])
    moderated = sum(row.get("moderated", 0) for row in result["timeline"])
    assert moderated >= 1050


def test_drill_settings_are_validated():
    with pytest.raises(ValueError, match="--rate"):
        DrillSettings(rate=0).validate()
    with pytest.raises(ValueError, match="--posts"):
        DrillSettings(posts=0).validate()
    with pytest.raises(ValueError, match="unknown drill"):
        run_drill("power-cut")
