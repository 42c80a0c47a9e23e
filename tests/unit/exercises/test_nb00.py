"""Notebook 00's offline check (q2, what happened to a post) refuses the wrong answers a
student is likely to write, on the case meant to catch each one, and passes the solution."""

from __future__ import annotations

from lab_kit.exercises import nb00

ACKED_IN_SPOOL = "accepted=True, acknowledged=True, in_spool_at_end=True, times_read_back=0"


def test_q2_refuses_duplicate_only_when_read_back_exactly_twice():
    result = nb00.q2.check(nb00._wrong_q2_twice_only)
    assert not result.passed
    assert result.failed_case.endswith("times_read_back=3")
    assert "'duplicate'" in result.detail


def test_q2_refuses_an_acked_post_still_in_the_spool_called_lost():
    result = nb00.q2.check(nb00._wrong_q2_acked_unread_is_lost)
    assert not result.passed
    assert result.failed_case == ACKED_IN_SPOOL
    assert "'left in spool'" in result.detail


def test_q2_refuses_trusting_the_ack():
    result = nb00.q2.check(nb00._wrong_q2_trusts_acks)
    assert not result.passed
    assert result.failed_case.endswith("in_spool_at_end=False, times_read_back=0")


def test_q2_passes_its_solution():
    result = nb00.q2.check(nb00._solution_q2)
    assert result.passed and result.cases == len(nb00._CASES)
