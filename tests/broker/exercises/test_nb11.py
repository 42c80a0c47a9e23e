"""Notebook 11's checks refuse each wrong answer for its own reason (the generic test in
test_live_checks.py only asks that they fail)."""

from __future__ import annotations

import pytest

from lab_kit import experiments as ex
from lab_kit.exercises import nb11

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def lab(kafka_broker):
    return ex.setup()


def test_serve_reports_solution_passes(lab):
    assert nb11.q1.check(nb11._solution_q1, lab=lab)


@pytest.mark.parametrize(("wrong", "says"), [
    (nb11._wrong_q1_never_polls, "BufferError escaped"),
    (nb11._wrong_q1_drops, "never landed"),
    (nb11._wrong_q1_no_flush, "still in the producer"),
])
def test_serve_reports_refuses_each_wrong_answer_for_its_reason(lab, wrong, says):
    result = nb11.q1.check(wrong, lab=lab)
    assert not result and says in result.detail, str(result)


def test_to_awaitable_solution_passes(lab):
    assert nb11.q2.check(nb11._solution_q2, lab=lab)


@pytest.mark.parametrize(("wrong", "says"), [
    (nb11._wrong_q2_sets_from_sender, "never came back"),
    (nb11._wrong_q2_blocks, "before to_awaitable returned"),
])
def test_to_awaitable_refuses_each_wrong_answer_for_its_reason(lab, wrong, says):
    result = nb11.q2.check(wrong, lab=lab)
    assert not result and says in result.detail, str(result)
