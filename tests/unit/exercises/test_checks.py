"""Every exercise check that needs no broker passes its own solution and refuses each of its
wrong answers; every recap quiz marks its own answers right and a wrong set wrong."""

from __future__ import annotations

import pytest

from lab_kit.exercises import NOTEBOOK_MODULES, all_exercises, all_quizzes, notebook
from lab_kit.exercises.core import CaseFailed, Exercise

OFFLINE = [e for e in all_exercises() if not e.needs_broker]


@pytest.mark.parametrize("exercise", OFFLINE, ids=lambda e: e.name)
def test_the_solution_passes(exercise):
    result = exercise.check(exercise.solution_obj)
    assert result.passed, str(result)
    assert result.cases >= 1


@pytest.mark.parametrize("exercise", OFFLINE, ids=lambda e: e.name)
def test_every_wrong_answer_fails_with_a_case_and_a_hint(exercise):
    assert exercise.wrong, f"{exercise.name} has no wrong answer to test its check with"
    for wrong in exercise.wrong:
        result = exercise.check(wrong)
        assert not result.passed
        assert result.failed_case and result.hint


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: e.name)
def test_no_answer_yet_is_said_so(exercise):
    assert exercise.check(None).failed_case == "no answer yet"


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: e.name)
def test_the_solution_can_be_shown(exercise, capsys):
    exercise.solution()
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("quiz", all_quizzes(), ids=lambda q: q.title)
def test_recap_quizzes(quiz):
    assert 3 <= len(quiz.questions) <= 5
    assert quiz.check(quiz.solution())
    wrong = {i: next(c for c in q.choices if c != q.answer)
             for i, q in enumerate(quiz.questions, 1)}
    result = quiz.check(wrong)
    assert result.right == 0 and not result


def test_every_notebook_has_two_exercises_and_a_recap():
    for name in NOTEBOOK_MODULES:
        module = notebook(name)
        assert len(module.EXERCISES) >= 2, name
        assert module.recap.questions


def test_a_raising_answer_is_reported_not_raised():
    def checker(answer):
        return answer()

    def boom():
        raise ZeroDivisionError("x")

    ex = Exercise("t", "t", checker, "h", lambda: 1)
    assert ex.check(boom).failed_case == "your code raised"
    with pytest.raises(CaseFailed):
        raise CaseFailed("c", "d")


def test_unknown_notebook_is_refused():
    with pytest.raises(ValueError, match="notebook must be one of"):
        notebook("nb99")
