"""Notebook 05's checks refuse the wrong answers a student is likely to write, on the case
meant to catch each one (not by luck on an earlier case), and pass the solutions."""

from __future__ import annotations

from lab_kit.exercises import nb05


def test_q1_refuses_duplicates_counted_over_other_runs_posts():
    def audit(submitted_ids, records, in_spool=()):  # every id's extra copies, any run's
        right = nb05._solution_q1(submitted_ids, records, in_spool)
        ids = [r["post_id"] for r in records]
        return {**right, "duplicates": len(ids) - len(set(ids))}

    result = nb05.q1.check(audit)
    assert not result.passed
    assert result.failed_case.startswith("another run's post on the topic twice")
    assert "'duplicates': 1" in result.detail


def test_q1_passes_its_solution():
    assert nb05.q1.check(nb05._solution_q1).passed
