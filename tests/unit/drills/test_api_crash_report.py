"""The api-crash drill's counting and verdict, without a broker: the spool rows are summed over
every worker's slot, and a crash that left nothing in the spool is no pass."""

from __future__ import annotations

from lab_kit.drills.api_crash import CrashReport, CrashSettings, Side, spooled_rows
from lab_kit.producer.spool import Spool


def _fill(path, n: int) -> None:
    with Spool(path) as spool:
        for i in range(n):
            spool.append("t", b"u1", b"{}", f"p{i}")


def test_spooled_rows_counts_every_slot(tmp_path):
    _fill(tmp_path / "api-0.spool.db", 3)
    _fill(tmp_path / "api-1.spool.db", 5)
    _fill(tmp_path / "other.spool.db", 7)  # not an API slot
    assert spooled_rows(tmp_path) == 8
    assert spooled_rows(tmp_path / "none") == 0


def _side(lost: int = 0) -> Side:
    return Side(requests=10, accepted=8, statuses={}, delivered_unique=8 - lost, duplicates=0,
                lost=lost, p50_ms=1.0, p99_ms=2.0, p99_healthy_ms=2.0, p99_outage_ms=2.0)


def _report(rows: int | None, wait_ack_lost: int = 0) -> CrashReport:
    return CrashReport(settings=CrashSettings(), topic="t", plain=_side(3),
                       wait_ack=_side(wait_ack_lost), crashed_at_s=6.1,
                       spool_rows_at_restart=rows, drained=True)


def test_ok_needs_a_spool_with_posts_and_no_201_lost():
    assert _report(12).ok
    assert not _report(0).ok  # the outage never reached the spool: nothing spooled was tested
    assert not _report(None).ok
    assert not _report(12, wait_ack_lost=1).ok
    assert "spool files held 12 posts" in _report(12).summary()
