"""Exercises that check themselves, one module per notebook:
``nb00`` (start here), ``nb01`` (blocking vs non-blocking), ``nb02`` (futures and callbacks),
``nb03`` (the moderation pipeline), ``nb04`` (metrics), ``nb05`` (failover drills), ``nb06``
(tuning), ``nb07`` (the instructor demo), ``nb08`` (moderation at scale), ``nb09`` (the users'
side), ``nb10`` (guarantees), ``nb11`` (where does my callback run).

Open :mod:`.core` first: :class:`Exercise` (``check`` / ``hint`` / ``solution``) and
:class:`Quiz` (the recap at the end of each notebook). Each ``nbNN`` module holds that
notebook's exercises (``q1``, ``q2`` ...), its ``recap`` quiz and ``EXERCISES``, the list the
tests walk: every check must pass its solution and refuse its wrong answers.

In a notebook::

    from lab_kit.exercises import nb02
    nb02.q2.check(my_decide)      # ✓ or the failing case and a hint
    nb02.q2.hint(); nb02.q2.solution()
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from lab_kit.exercises.core import CaseFailed, CheckResult, Exercise, Question, Quiz, QuizResult

# every nbNN module in this folder, found by name (a new notebook's module needs no registration)
NOTEBOOK_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                                if m.name.startswith("nb") and m.name[2:].isdigit()))


def notebook(name: str) -> ModuleType:
    """The exercise module of one notebook, e.g. ``notebook("nb02")``."""
    if name not in NOTEBOOK_MODULES:
        raise ValueError(f"notebook must be one of {', '.join(NOTEBOOK_MODULES)}, got {name!r}")
    return importlib.import_module(f"lab_kit.exercises.{name}")


def all_exercises() -> list[Exercise]:
    return [e for name in NOTEBOOK_MODULES for e in notebook(name).EXERCISES]


def all_quizzes() -> list[Quiz]:
    return [notebook(name).recap for name in NOTEBOOK_MODULES]


__all__ = ["NOTEBOOK_MODULES", "CaseFailed", "CheckResult", "Exercise", "Question", "Quiz",
           "QuizResult", "all_exercises", "all_quizzes", "notebook"]
