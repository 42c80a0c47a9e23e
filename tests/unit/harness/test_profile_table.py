"""The per-stage CPU profile: phases as shares of the stage's measured CPU, rows per post."""

from __future__ import annotations

import time

import pytest

from lab_kit.harness.results import PROFILE_ROWS, format_profile, profile_table
from lab_kit.moderation.profile import PHASES, StageProfile, merge

BEFORE = {"producer": 1.0, "moderation": 10.0, "backend": 2.0, "broker": 5.0,
          "load_threads": {"caller": 0.5, "client": 0.2, "other": 0.1}}
AFTER = {"producer": 2.0, "moderation": 11.0, "backend": 2.5, "broker": 5.4,
         "load_threads": {"caller": 1.1, "client": 0.4, "other": 0.15}}


def row(table, part):
    return next(r["cpu_us_per_post"] for r in table["rows"] if r["part"] == part)


def test_stage_phases_split_the_measured_stage_cpu_by_their_shares():
    # 1 s of moderation CPU over 10,000 posts = 100 µs/post; decode had 30% of the phases
    phases = {"consume": 1.0, "decode": 3.0, "dispatch": 0.0, "backend_client": 2.0,
              "results": 2.0, "delivery_reports": 0.5, "commit": 0.5, "other": 1.0}
    table = profile_table(BEFORE, AFTER, 10_000, {"phases_cpu_s": phases}, reader_cpu_s=0.2)
    assert row(table, "decode: JSON -> Post") == pytest.approx(30.0)
    assert row(table, "consume: poll()") == pytest.approx(10.0)
    stage = [r["cpu_us_per_post"] for r in table["rows"] if r["stage"] == "moderation stage"]
    assert sum(stage) == pytest.approx(100.0)
    assert row(table, "caller thread: submit()") == pytest.approx(60.0)
    assert row(table, "client thread (kafka-python network / librdkafka poll)") == \
        pytest.approx(20.0)
    assert row(table, "results read back") == pytest.approx(20.0)
    assert row(table, "JVM, every request (posts, results, fetches, commits)") == \
        pytest.approx(40.0)
    assert table["total_cpu_us_per_post"] == pytest.approx(100 + 60 + 20 + 5 + 40 + 50 + 20)
    assert table["not_measured"] == []
    assert len(format_profile(table).splitlines()) == len(PROFILE_ROWS) + 2


def test_what_was_not_measured_is_named_not_counted_as_zero():
    table = profile_table({"moderation": 1.0}, {"moderation": 2.0}, 1000, None, None)
    assert "e2e reader: results read back" in table["not_measured"]
    assert "moderation stage: decode: JSON -> Post" in table["not_measured"]
    assert table["total_cpu_us_per_post"] == 0
    assert "-" in format_profile(table)


def test_a_stage_profile_counts_thread_cpu_per_phase_and_the_rest_as_other():
    prof = StageProfile()
    prof.start()
    t0 = time.thread_time_ns()
    end = time.process_time() + 0.05
    while time.process_time() < end:  # bounded: 50 ms of CPU
        pass
    prof.add("decode", time.thread_time_ns() - t0)
    snap = prof.snapshot()
    assert set(snap["phases_cpu_s"]) == {*PHASES, "other"}
    assert snap["phases_cpu_s"]["decode"] >= 0.04
    assert snap["phases_cpu_s"]["decode"] <= snap["process_cpu_s"]
    with pytest.raises(KeyError):
        prof.add("no-such-phase", 1)


def test_merge_sums_the_members_and_skips_those_without_a_profile():
    a = {"process_cpu_s": 1.0, "phases_cpu_s": {"decode": 0.25, "other": 0.5}}
    b = {"process_cpu_s": 2.0, "phases_cpu_s": {"decode": 0.5, "commit": 0.1}}
    merged = merge([a, None, b, {}])
    assert merged == {"process_cpu_s": 3.0,
                      "phases_cpu_s": {"decode": 0.75, "other": 0.5, "commit": 0.1}}
    assert merge([None, {}]) is None
