"""The member-crash drill at small scale (issue 20): two exactly-once moderation members on a
3-node cluster of the drill's own; one member is killed -9 mid-load, then the leader of the
results topic. A read_committed reader of the results finds every post once, in each user's
order."""

from __future__ import annotations

import json

import pytest

from lab_kit.drills.member_crash import MemberCrashSettings, run_member_crash_drill
from lab_kit.drills.runner import DRILLS, run_drill

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(480)]


def test_member_crash_exactly_once_small():
    s = MemberCrashSettings(rate=200, seconds=12, member_kill_s=3, leader_kill_s=6,
                            outage_s=3, guarantee="exactly-once")
    r = run_member_crash_drill(s)
    assert r.submitted == 200 * 12
    assert r.member_killed_at_s is not None and r.member_killed_at_s >= 3
    assert r.leader_killed_at_s is not None and r.leader_killed_at_s >= 6
    assert r.posts_lost == 0 and r.posts_out_of_order == 0
    assert r.results_missing == 0, r.missing_ids
    assert r.results_duplicates == 0, r.duplicate_ids
    assert r.results_out_of_order == 0
    assert r.survivor.get("guarantee") == "exactly-once" and r.survivor.get("transactions")
    assert r.ok
    saved = json.loads(r.to_json())
    assert saved["ok"] is True and saved["results_duplicates"] == 0


def test_the_drill_is_registered_and_checks_its_settings():
    assert "member-crash" in DRILLS
    with pytest.raises(ValueError, match="member-crash"):
        run_drill("member-crash")
    for kwargs, word in (({"guarantee": "twice"}, "--guarantee"),
                         ({"client": "kafka"}, "--client"),
                         ({"member_kill_s": 30.0}, "--member-kill"),
                         ({"rate": 0}, "--rate")):
        with pytest.raises(ValueError, match=word):
            run_member_crash_drill(MemberCrashSettings(**kwargs), broker=object())
