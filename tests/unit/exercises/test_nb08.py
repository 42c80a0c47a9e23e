"""The figures notebook 08 states in its Exercise 1 solution follow from the cost model and
the checker's own solution (they are arithmetic, not measurements), and Exercise 4's bound
agrees with section 7's printed one to within one post per second."""

from __future__ import annotations

import math

import pytest

from lab_kit.exercises import nb08

solve = nb08.q1.solution_obj  # concurrency_for(target, batch, request_ms, post_ms, extra_ms)


def _ceiling(batch_size: int, calls: int, extra_ms: float) -> float:
    """Posts/s that ``calls`` calls in flight carry on the lab's cost model."""
    return calls * batch_size / ((1.0 + batch_size * 0.02 + extra_ms) / 1000)


def test_single_post_calls_with_a_50_ms_slowdown_top_out_a_little_over_300_per_s():
    top = _ceiling(1, nb08.MAX_CONCURRENT, 50.0)
    assert 300 < top < 320
    assert solve(int(top), 1, 1.0, 0.02, 50.0) == nb08.MAX_CONCURRENT
    assert solve(1_000, 1, 1.0, 0.02, 50.0) is None


def test_batches_of_100_need_11_calls_for_20k_per_s_and_top_out_near_30k():
    assert solve(20_000, 100, 1.0, 0.02, 50.0) == 11
    top = _ceiling(100, nb08.MAX_CONCURRENT, 50.0)
    assert 29_000 < top < 31_000
    assert solve(int(top), 100, 1.0, 0.02, 50.0) == nb08.MAX_CONCURRENT
    assert solve(int(top) + 100, 100, 1.0, 0.02, 50.0) is None


@pytest.mark.parametrize("parts", [
    {"load producer": 56.9, "broker": 26.7, "moderation stage": 52.7, "backend": 22.2,
     "e2e reader": 15.7},
    {"load producer": 60.0, "broker": 20.0, "moderation stage": 45.0, "backend": 25.0},
])
@pytest.mark.parametrize("cores", [1, 2, 8])
def test_max_rate_is_section_7s_bound_to_within_one_post_per_s(parts, cores):
    busy = sum(v for k, v in parts.items() if k != "e2e reader")
    printed = round(cores * 1e6 / busy)  # section 7 prints f"{...:,.0f}"
    got = nb08.q4.solution_obj(dict(parts), cores)
    assert got <= printed and printed - got <= 1
    assert got == math.floor(cores * 1e6 / busy)
