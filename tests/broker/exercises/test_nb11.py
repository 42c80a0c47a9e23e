"""Notebook 11's checks refuse each wrong answer for its own reason (the generic test in
test_live_checks.py only asks that they fail)."""

from __future__ import annotations

import time

import pytest

from lab_kit import experiments as ex
from lab_kit.exercises import nb11

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def lab(kafka_broker):
    return ex.setup()


def test_serve_reports_solution_passes(lab):
    assert nb11.q1.check(nb11._solution_q1, lab=lab)


def test_serve_reports_stops_a_loop_without_poll_within_its_limit(lab):
    t0 = time.monotonic()
    result = nb11.q1.check(nb11._wrong_q1_retries_without_poll, lab=lab)
    assert not result and "never served reports" in result.detail, str(result)
    assert time.monotonic() - t0 < nb11.TIME_LIMIT_S + nb11.GRACE_S  # no hang


@pytest.mark.parametrize(("wrong", "says"), [
    (nb11._wrong_q1_never_polls, "BufferError escaped"),
    (nb11._wrong_q1_drops, "never landed"),
    (nb11._wrong_q1_no_flush, "still in the producer"),
    (nb11._wrong_q1_retries_without_poll, "never served reports"),  # stopped at the limit
    (nb11._wrong_q1_sends_twice, "delivery reports for"),
])
def test_serve_reports_refuses_each_wrong_answer_for_its_reason(lab, wrong, says):
    result = nb11.q1.check(wrong, lab=lab)
    assert not result and says in result.detail, str(result)


def test_to_awaitable_solution_passes(lab):
    assert nb11.q2.check(nb11._solution_q2, lab=lab)


@pytest.mark.parametrize(("wrong", "says"), [
    (nb11._wrong_q2_sets_from_sender, "never came back"),
    (nb11._wrong_q2_blocks, "before to_awaitable returned"),
    (nb11._wrong_q2_result_only, "set_exception"),  # passes the acks, not the failed post
])
def test_to_awaitable_refuses_each_wrong_answer_for_its_reason(lab, wrong, says):
    result = nb11.q2.check(wrong, lab=lab)
    assert not result and says in result.detail, str(result)
