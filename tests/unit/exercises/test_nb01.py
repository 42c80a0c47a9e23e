"""Notebook 01's offline check (q1, a nearest-rank percentile) refuses the wrong answers a
student is likely to write, on the case meant to catch each one, and passes the solution."""

from __future__ import annotations

from lab_kit.exercises import nb01


def test_q1_refuses_sorting_the_callers_list_in_place():
    result = nb01.q1.check(nb01._wrong_q1_sorts_in_place)  # right values, list reordered
    assert not result.passed
    assert result.failed_case == "2 values, p50"  # the first unsorted input
    assert "sort a copy" in result.detail


def test_q1_refuses_an_off_by_one_rank():
    result = nb01.q1.check(nb01._wrong_q1_off_by_one)
    assert not result.passed
    assert result.failed_case.startswith(("1 value", "2 values"))  # small samples show it


def test_q1_refuses_interpolation():
    assert not nb01.q1.check(nb01._wrong_q1_interpolates).passed


def test_q1_passes_its_solution_and_leaves_the_list_alone():
    result = nb01.q1.check(nb01._solution_q1)
    assert result.passed
    latencies = [3.0, 1.0, 2.0]
    assert nb01._solution_q1(latencies, 50) == 2.0 and latencies == [3.0, 1.0, 2.0]
