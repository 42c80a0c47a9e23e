"""The instructor demo's "users posting" panel, against the real broker and API process."""

from __future__ import annotations

import pytest

from lab_kit.users_panel import UsersPostingPanel
from lab_kit.widgets import iter_widgets

pytestmark = pytest.mark.timeout(240)


def test_users_post_through_the_api_and_every_accepted_post_lands(kafka_broker):
    panel = UsersPostingPanel(kafka_broker, rate=100, refresh_s=0.5, chunk_s=1.0, max_seconds=60)
    try:
        assert not panel.posting
        panel.start_users()
        assert panel.toggle.value  # the button shows what the code did
        row = panel.wait_for(lambda r: r["accepted_per_s"] > 0, timeout_s=60,
                             what="users' posts accepted by the API")
        assert row["broker_healthy"] == 1 and row["within_100ms"] is not None
        assert "requests/s" in panel.status_html.value
        report = panel.check()  # stops the users, waits for the API to drain, reads back
        assert not panel.posting and not panel.toggle.value
        assert panel.sent > 0 and len(panel.accepted_ids) == panel.sent
        assert report.lost == 0 and report.delivered_unique == len(panel.accepted_ids)
        fig = panel.render_figure()
        assert [ax.get_ylabel() for ax in fig.axes] == ["posts/s", "within 100 ms (%)"]
        assert not panel.frame().empty
    finally:
        panel.close()
    assert panel.api.proc is None or panel.api.proc.poll() is not None


def test_a_bad_rate_is_refused_before_anything_starts(kafka_broker):
    with pytest.raises(ValueError, match=r"^rate: must be in \[10, 3000\]"):
        UsersPostingPanel(kafka_broker, rate=0)


def test_the_slider_sets_the_users_rate(kafka_broker):
    panel = UsersPostingPanel(kafka_broker, rate=50, max_seconds=10)
    try:
        slider = next(x for x in iter_widgets(panel.widget)
                      if getattr(x, "description", "") == "users' posts/s")
        slider.value = 300
        assert panel.rate == 300
    finally:
        panel.close()
