"""Notebook 10's checks refuse the wrong answers a student is likely to write, on the case
meant to catch each one (not by luck on an earlier case), and pass the solutions."""

from __future__ import annotations

from lab_kit.exercises import nb10


def test_q1_refuses_plain_records_past_an_open_transaction():
    # read_committed, but lets plain records pass the last stable offset
    visible = nb10._wrong_q1_plain_past_stable
    result = nb10.q1.check(visible)
    assert not result.passed
    assert result.failed_case.startswith("a plain record after an open transaction")
    assert "'p'" in result.detail  # it delivered the plain record behind the open transaction


def test_q1_passes_its_solution():
    assert nb10.q1.check(nb10._solution_q1).passed


def test_q2_refuses_last_result_wins():
    spam_signals = nb10._wrong_q2_last_wins  # each post's last result overwrites its first
    result = nb10.q2.check(spam_signals)
    assert not result.passed
    assert result.failed_case.startswith("first and second results disagree")


def test_q2_refuses_any_spam_result_wins():
    def spam_signals(results):  # a post counts as spam if any of its results says so
        spam = {r["post_id"]: r["user_id"] for r in results if r["label"] == "spam"}
        counts = {}
        for user in spam.values():
            counts[user] = counts.get(user, 0) + 1
        return counts

    assert not nb10.q2.check(spam_signals).passed


def test_q2_passes_its_solution():
    assert nb10.q2.check(nb10._solution_q2).passed
