"""Exercise checks that run the student's code against the real broker: each passes its
solution and refuses each wrong answer."""

from __future__ import annotations

import pytest

from lab_kit import experiments as ex
from lab_kit.exercises import all_exercises

LIVE = [e for e in all_exercises() if e.needs_broker]


@pytest.fixture(scope="module")
def lab(kafka_broker):
    return ex.setup()


@pytest.mark.parametrize("exercise", LIVE, ids=lambda e: e.name)
def test_the_solution_passes_on_the_broker(exercise, lab):
    result = exercise.check(exercise.solution_obj, lab=lab)
    assert result.passed, str(result)


@pytest.mark.parametrize("exercise", LIVE, ids=lambda e: e.name)
def test_a_wrong_answer_fails_on_the_broker(exercise, lab):
    assert exercise.wrong
    for wrong in exercise.wrong:
        result = exercise.check(wrong, lab=lab)
        assert not result.passed and result.failed_case
