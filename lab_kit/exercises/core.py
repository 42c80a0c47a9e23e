"""Exercises that check themselves, in the shape of Kaggle Learn's ``learntools``:
``q.check(answer)``, ``q.hint()``, ``q.solution()``.

A student writes a function (a callback, a retry rule, a percentile ...) in a notebook cell
and passes it to :meth:`Exercise.check`. The exercise runs it on its cases (against the live
broker where the lesson is about Kafka) and answers with a :class:`CheckResult`: passed, or
the case that failed, what went wrong and a hint. Each exercise also carries its own solution
and at least one wrong answer, so the tests can prove every check passes the solution and
fails a wrong one.

Why a small module of our own and not otter-grader or nbgrader: both grade a notebook from
outside (an instructor's run, a hidden test file); a student here needs an answer in the cell,
on a live broker, with a hint, and the checks must be ordinary tested code in ``lab_kit``.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CaseFailed", "CheckResult", "Exercise", "Question", "Quiz", "QuizResult"]


class CaseFailed(AssertionError):
    """Raised by a checker: ``case`` names the input that failed, ``detail`` what was wrong."""

    def __init__(self, case: str, detail: str) -> None:
        super().__init__(f"{case}: {detail}")
        self.case = case
        self.detail = detail


@dataclass
class CheckResult:
    """What :meth:`Exercise.check` found. Truthy when every case passed."""

    name: str
    passed: bool
    cases: int = 0
    failed_case: str | None = None
    detail: str | None = None
    hint: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"✓ {self.name}: correct ({self.cases} cases passed)"
        lines = [f"✗ {self.name}: case '{self.failed_case}' failed: {self.detail}"]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __repr__(self) -> str:  # a notebook cell shows the verdict, not a dataclass dump
        return str(self)


@dataclass
class Exercise:
    """One exercise: ``checker(answer, **context)`` raises :class:`CaseFailed` on the first
    wrong case and returns the number of cases it ran.

    ``solution`` is a working answer (its source is what :meth:`solution` shows); ``wrong``
    holds answers the check must refuse (the tests use them). ``needs_broker`` marks checks
    that run the answer against Kafka: they take ``lab=`` (from ``experiments.setup()``).
    """

    name: str
    task: str
    checker: Callable[..., int]
    hint_text: str
    solution_obj: Any
    wrong: tuple[Any, ...] = ()
    needs_broker: bool = False

    def check(self, answer: Any = None, **context: Any) -> CheckResult:
        if answer is None or answer is Ellipsis:
            return CheckResult(self.name, False, failed_case="no answer yet",
                               detail="write your answer above, then run this cell again",
                               hint=self.hint_text)
        try:
            cases = self.checker(answer, **context)
        except CaseFailed as exc:
            return CheckResult(self.name, False, failed_case=exc.case, detail=exc.detail,
                               hint=self.hint_text)
        except NotImplementedError:
            return CheckResult(self.name, False, failed_case="no answer yet",
                               detail="your function still raises NotImplementedError",
                               hint=self.hint_text)
        except Exception as exc:  # the student's code raised: say so, do not crash the cell
            return CheckResult(self.name, False, failed_case="your code raised",
                               detail=f"{type(exc).__name__}: {exc}", hint=self.hint_text)
        return CheckResult(self.name, True, cases=int(cases))

    def hint(self) -> None:
        print(f"hint for {self.name}: {self.hint_text}")

    def solution(self) -> None:
        print(self.solution_source())

    def solution_source(self) -> str:
        obj = self.solution_obj
        if isinstance(obj, str):
            return obj
        try:
            return textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError):
            return repr(obj)


@dataclass
class Question:
    """A recap question: ``choices`` maps a letter to an answer; ``answer`` is the right
    letter; ``why`` is said once the student answers (right or wrong)."""

    text: str
    choices: Mapping[str, str]
    answer: str
    why: str
    hint: str = "reread the section this question is about"


@dataclass
class QuizResult:
    title: str
    right: int
    total: int
    lines: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.right == self.total

    def __str__(self) -> str:
        return "\n".join([f"{self.title}: {self.right}/{self.total} right", *self.lines])

    def __repr__(self) -> str:
        return str(self)


@dataclass
class Quiz:
    """The recap at the end of a notebook: ``quiz.show()`` prints the questions,
    ``quiz.check({1: "b", 2: "a", ...})`` marks them and explains each."""

    title: str
    questions: list[Question]

    def show(self) -> None:
        for i, q in enumerate(self.questions, 1):
            print(f"{i}. {q.text}")
            for letter, text in q.choices.items():
                print(f"   {letter}) {text}")

    def check(self, answers: Mapping[int, str] | None = None) -> QuizResult:
        answers = dict(answers or {})
        right, lines = 0, []
        for i, q in enumerate(self.questions, 1):
            given = str(answers.get(i, "")).strip().lower()
            if not given:
                lines.append(f"  {i}. not answered yet")
            elif given == q.answer:
                right += 1
                lines.append(f"  {i}. ✓ {q.why}")
            elif given not in q.choices:
                lines.append(f"  {i}. ✗ '{given}' is not one of {', '.join(q.choices)}")
            else:
                lines.append(f"  {i}. ✗ not '{given}'; hint: {q.hint}")
        return QuizResult(self.title, right, len(self.questions), lines)

    def solution(self) -> dict[int, str]:
        return {i: q.answer for i, q in enumerate(self.questions, 1)}
