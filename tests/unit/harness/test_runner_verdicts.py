"""What a pipeline run calls lost, and what it calls missing (the guide's vocabulary)."""

from __future__ import annotations

from types import SimpleNamespace

from lab_kit.harness.runner import PipelineRun


def verdicts(ids, results, lost_ids):
    run = object.__new__(PipelineRun)  # only the read-back's outcome, no broker
    run.ids, run.results = ids, results
    run.landed = SimpleNamespace(lost=len(lost_ids), lost_ids=lost_ids)
    run.verdicts()
    return run


def test_a_post_on_the_topic_without_a_result_is_missing_not_lost():
    r = {"a": [{"post_id": "a", "moderated_at": 2.0}],
         "b": [{"post_id": "b", "moderated_at": 3.0}, {"post_id": "b", "moderated_at": 1.0}]}
    run = verdicts(["a", "b", "c"], r, lost_ids=[])
    assert (run.lost, run.missing, run.duplicates) == (0, 1, 1)
    assert run.firsts["b"]["moderated_at"] == 1.0


def test_a_post_missing_from_the_posts_topic_is_lost():
    run = verdicts(["a", "c"], {"a": [{"post_id": "a", "moderated_at": 2.0}]}, lost_ids=["c"])
    assert (run.lost, run.missing) == (1, 1)
