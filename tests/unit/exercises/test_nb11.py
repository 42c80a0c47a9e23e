"""Notebook 11's checks, the parts that need no broker: the time limit on exercise 1 (a
loop that retries after ``BufferError`` without ``poll()`` never ends by itself) and
exercise 2's failing-post case. The whole checks run on the broker in
tests/broker/exercises/test_nb11.py.

Exercise 1's producer here is a real librdkafka producer with no ``bootstrap.servers``: it
opens no connection, so nothing is ever acked and its local queue stays full, which is the
state a loop without ``poll()`` leaves it in on a live broker too."""

from __future__ import annotations

import logging
import time

import pytest

from lab_kit.exercises import nb11
from lab_kit.exercises.core import CaseFailed
from lab_kit.posts import Workload

LIMIT_S = 1.0


@pytest.fixture
def producer():
    timed = nb11._timed_producer_class()({
        "queue.buffering.max.messages": nb11.QUEUE_MAX,
        "logger": logging.getLogger("test.nb11.librdkafka")})
    yield timed
    timed.purge()  # nothing can be delivered without a broker: drop it, do not wait


def _serve(answer, producer):
    t0 = time.monotonic()
    with pytest.raises(CaseFailed) as failed:
        nb11._serve_within(answer, producer, "t", Workload(seed=1).posts(nb11.N_POSTS),
                           LIMIT_S, "case")
    return failed.value, time.monotonic() - t0


def test_a_loop_that_retries_without_poll_is_stopped_at_the_limit_and_told_why(producer):
    failed, took = _serve(nb11._wrong_q1_retries_without_poll, producer)
    assert "never served reports" in failed.detail and "poll()" in failed.detail
    assert producer.buffer_errors > 0 and producer.serves == 0
    assert took < LIMIT_S + 2.0  # stopped by the producer's deadline, not given up on later


def test_a_loop_that_polls_in_vain_is_stopped_with_another_reason(producer):
    failed, _ = _serve(nb11._solution_q1, producer)  # no broker: poll() frees nothing here
    assert "still running" in failed.detail and "never served" not in failed.detail
    assert producer.serves > 0


def test_a_buffer_error_that_escapes_is_named(producer):
    failed, _ = _serve(nb11._wrong_q1_never_polls, producer)
    assert "BufferError escaped" in failed.detail


def test_no_answer_yet_reaches_the_exercise_as_not_implemented(producer):
    def not_yet(producer, topic, posts):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        nb11._serve_within(not_yet, producer, "t", [], LIMIT_S, "case")


def test_the_check_gives_the_student_a_real_confluent_producer(producer):
    from confluent_kafka import Producer

    assert isinstance(producer, Producer)


def test_the_failing_post_case_passes_the_solution():
    nb11._failing_post_case(nb11._solution_q2)


def test_the_failing_post_case_refuses_an_answer_that_only_sets_results():
    with pytest.raises(CaseFailed) as failed:
        nb11._failing_post_case(nb11._wrong_q2_result_only)
    assert failed.value.case.startswith("a post that fails")
    assert "set_exception" in failed.value.detail


def test_the_failing_post_case_refuses_a_result_given_for_a_failure():
    def swallows(post_future, loop):  # completes, but with None instead of the exception
        fut = loop.create_future()
        post_future.add_done_callback(lambda pf: loop.call_soon_threadsafe(
            fut.set_result, None if pf.exception(0) else pf.result(0)))
        return fut

    with pytest.raises(CaseFailed) as failed:
        nb11._failing_post_case(swallows)
    assert "must raise the post's exception" in failed.value.detail
