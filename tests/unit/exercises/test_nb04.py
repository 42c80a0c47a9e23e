"""Notebook 04's checks refuse the wrong answers a student is likely to write, on the case
meant to catch each one (not by luck on an earlier case), and pass the solutions."""

from __future__ import annotations

import math

import numpy as np

from lab_kit.exercises import nb04


def test_q1_refuses_a_rank_of_zero_at_p0():
    def percentile(values, p):  # no max(1, ...): rank 0 is index -1, the max
        ordered = sorted(values)
        return ordered[math.ceil(p * len(ordered) / 100) - 1]

    result = nb04.q1.check(percentile)
    assert not result.passed
    assert result.failed_case.startswith("1..100 shuffled, p0")


def test_q1_refuses_numpys_closest_observation():
    def percentile(values, p):  # a value of the list, but not the nearest rank above p %
        return float(np.percentile(values, p, method="closest_observation"))

    result = nb04.q1.check(percentile)
    assert not result.passed
    assert result.failed_case == "[50, 10, 40, 20, 30], p25"


def test_q1_passes_numpys_inverted_cdf_and_the_solution():
    # inverted_cdf is the nearest-rank definition: a right answer must pass
    assert nb04.q1.check(lambda v, p: float(np.percentile(v, p, method="inverted_cdf"))).passed
    assert nb04.q1.check(nb04._solution_q1).passed


def test_q2_refuses_row_numbers_for_t_s():
    result = nb04.q2.check(nb04._wrong_q2_row_numbers)
    assert not result.passed
    assert result.failed_case.startswith("a frame from t_s=60")
    assert "[63.0, 64.0]" in result.detail


def test_q2_passes_its_solution():
    assert nb04.q2.check(nb04._solution_q2).passed
