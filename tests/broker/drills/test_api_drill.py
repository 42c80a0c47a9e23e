"""The api-broker-outage drill at small scale: users post through HTTP, the broker is killed
with -9 and restarted, the checker reads the topic back: lost 0, every request accepted."""

from __future__ import annotations

import pytest

from lab_kit.drills.api import run_api_drill

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]


def test_api_broker_outage_small():
    # a broker of the drill's own: other tests' restarts of the shared one cannot race it
    r = run_api_drill(posts=1_600, rate=200, outage_s=3.0, lead_s=2.0, own_broker=True)
    assert r.outage is not None and r.outage.error is None
    assert r.sent == 1_600 and r.accepted == r.sent, r.errors_by_kind
    assert r.delivery.lost == 0 and r.delivery.delivered_unique == r.accepted
    assert r.delivery.duplicates >= 0  # counted, not forbidden (a lost ack is re-sent)
    assert r.server["posts_spooled_total"] > 0  # the fault took effect
    assert r.server["spool_replayed"] >= r.server["posts_spooled_total"]
    assert r.spool_left == 0 and r.ok
    assert r.load is not None and r.load.sent == r.sent  # per-request data, not in the JSON
    saved = r.to_dict()
    assert "load" not in saved and saved["lost"] == 0 and saved["ok"] is True


def test_drill_refuses_an_outage_longer_than_the_load():
    with pytest.raises(ValueError, match="--lead"):
        run_api_drill(posts=100, rate=100, outage_s=5, lead_s=1)
