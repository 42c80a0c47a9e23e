"""The api-full-spool drill at small scale (issue 22): the broker (the drill's own) is killed,
the API's spool (capped at 60 posts) fills, then every request is answered 503 + Retry-After
with the JSON body, never a 500; after the restart every 202 is read back from the topic."""

from __future__ import annotations

import json

import pytest

from lab_kit.drills.full_spool import FullSpoolSettings, run_full_spool_drill
from lab_kit.drills.runner import DRILLS, run_drill

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(400)]


def test_api_full_spool_small():
    r = run_full_spool_drill(FullSpoolSettings(rate=100, lead_s=1.0, outage_s=3.0,
                                               after_s=1.0, spool_rows=60))
    assert r.requests == 500  # 100/s for 1 + 3 + 1 s
    assert r.server_errors == 0 and r.transport_errors == 0 and not r.other_statuses
    assert r.accepted + r.refused_503 + r.refused_429 == r.requests
    assert r.refused_503 > 0 and set(r.refused_by_field) <= {"spool_rows", "spool_bytes",
                                                             "disk_free", "disk"}
    assert r.refusals_without_retry_after == 0 and r.refusals_without_json == 0
    assert r.spool_peak >= 60  # the cap was reached (in-flight posts may pass it a little)
    assert r.lost == 0 and r.delivered_unique == r.accepted and r.refused_but_delivered == 0
    assert r.ok
    saved = json.loads(r.to_json())
    assert saved["ok"] is True and saved["requests"] == 500 and saved["lost"] == 0


def test_the_drill_is_registered_and_checks_its_settings():
    assert "api-full-spool" in DRILLS
    with pytest.raises(ValueError, match="api-full-spool"):
        run_drill("api-full-spool")
    with pytest.raises(ValueError, match="--spool-rows"):
        run_full_spool_drill(FullSpoolSettings(spool_rows=0), broker=object())
