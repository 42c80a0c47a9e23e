"""The api-crash drill at small scale (issue 20): the broker (the drill's own) is killed, then
every API process is killed -9; a new API on the same spool replays what the spool kept. Every
``?wait=ack`` answer (201: acknowledged, or fsynced in the spool) is read back from the topic;
the plain 202s that died in memory are counted, never folded into the 201 side."""

from __future__ import annotations

import json

import pytest

from lab_kit.drills.api_crash import CrashSettings, run_crash_drill
from lab_kit.drills.runner import DRILLS, run_drill

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(400)]


def test_api_crash_small():
    s = CrashSettings(rate=150, lead_s=1.5, crash_after_s=2.0, tail_s=0.5, workers=2)
    r = run_crash_drill(s)
    for side in (r.plain, r.wait_ack):
        assert side.requests == int(150 * s.seconds)
        # the requests answered after the crash (or cut by it) are not accepted
        assert 0 < side.accepted < side.requests
        assert side.delivered_unique + side.lost == side.accepted
    assert r.crashed_at_s is not None and r.crashed_at_s >= s.lead_s + s.crash_after_s
    assert r.spool_rows_at_restart is not None and r.spool_rows_at_restart > 0
    assert r.wait_ack.lost == 0 and r.wait_ack.duplicates == 0 and r.drained
    assert r.ok
    saved = json.loads(r.to_json())
    assert saved["ok"] is True and saved["wait_ack"]["lost"] == 0
    assert saved["plain"]["lost"] == r.plain.lost  # counted, whatever it is


def test_the_drill_is_registered_and_checks_its_settings():
    assert "api-crash" in DRILLS
    with pytest.raises(ValueError, match="api-crash"):
        run_drill("api-crash")
    with pytest.raises(ValueError, match="--workers"):
        run_crash_drill(CrashSettings(workers=0), broker=object())
    with pytest.raises(ValueError, match="--crash-after"):
        run_crash_drill(CrashSettings(crash_after_s=0), broker=object())
