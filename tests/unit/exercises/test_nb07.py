"""Notebook 07's checks refuse the wrong answers a student is likely to write, on the case
meant to catch each one (not by luck on an earlier case), and pass the solutions."""

from __future__ import annotations

from lab_kit.exercises import nb07


def test_q1_refuses_spooled_as_the_outage_marker():
    # "spooled > 0" misses the buckets whose posts queue behind the replay, unacked
    result = nb07.q1.check(nb07._wrong_q1_spooled)
    assert not result.passed
    assert result.failed_case == "posts queued behind the spool's replay"


def test_q1_refuses_a_window_closed_one_second_after_its_last_bucket():
    # frame.index[-1] + 1 instead of + frame.attrs["interval_s"]
    result = nb07.q1.check(nb07._wrong_q1_one_second)
    assert not result.passed
    assert result.failed_case == "half-second buckets, still down at the end"


def test_q1_passes_its_solution_on_a_demo_like_frame():
    frame = nb07._frame([100, 0, 0, 0, 300], spooled=[0, 100, 0, 0, 0],
                        replayed=[0, 0, 100, 0, 0])
    assert nb07.q1.check(nb07._solution_q1, frame=frame,
                         windows=[(0.8, 2.2, "node 1 paused")]).passed


def test_q2_refuses_the_spooled_counter_for_the_spool_depth():
    result = nb07.q2.check(nb07._wrong_q2_spooled_counter)
    assert not result.passed
    assert result.failed_case.startswith("the spool drained")


def test_q2_refuses_99_percent_or_fewer():
    result = nb07.q2.check(nb07._wrong_q2_at_most)
    assert not result.passed
    assert result.failed_case.startswith("exactly 99 %")


def test_the_sample_text_counts_replayed_posts_as_spooled_once():
    text = nb07.sample_metrics_text(fast=10, spool=2, replayed=5)
    assert "lab_api_posts_spooled_total 7.0" in text
    assert "lab_api_spool_depth 2.0" in text
    assert "lab_api_spool_replayed 5.0" in text


def test_q1_and_q2_pass_their_solutions():
    assert nb07.q1.check(nb07._solution_q1).passed
    assert nb07.q2.check(nb07._solution_q2).passed
