"""Notebook 09's checks refuse the wrong answers a student is likely to write, on the case
meant to catch each one (not by luck on an earlier case), and pass the solutions."""

from __future__ import annotations

import asyncio

from lab_kit.exercises import nb09


def test_q1_refuses_a_future_completed_on_the_sender_thread():
    # fut.set_result from the producer's callback: the loop is called from another thread
    result = nb09.q1.check(nb09._wrong_q1_sets_from_sender)
    assert not result.passed
    assert result.failed_case == "which thread completes the asyncio future"
    assert "fake-sender" in result.detail and "call_soon_threadsafe" in result.detail


def test_q1_refuses_a_422_without_the_error():
    result = nb09.q1.check(nb09._wrong_q1_422_without_error)
    assert not result.passed
    assert result.failed_case == "a post with a bad user_id"


def test_q1_refuses_a_blocked_loop_on_the_case_meant_for_it():
    result = nb09.q1.check(nb09._wrong_q1_blocks)
    assert not result.passed
    assert result.failed_case == f"{nb09.N_AT_ONCE} posts at once"


def test_q1_passes_the_ready_made_bridge():
    from lab_kit.posts import PostValidationError, validate_post
    from lab_kit.producer.asyncio_bridge import wrap_future

    async def handle(body, submit):
        try:
            post = validate_post(body)
        except PostValidationError as exc:
            return 422, {"error": str(exc), "field": exc.field}
        try:
            d = await wrap_future(submit(post))
        except Exception as exc:  # noqa: BLE001 - the delivery failed
            return 502, {"error": str(exc)}
        return 201, {"post_id": d.post_id, "partition": d.partition, "offset": d.offset}

    assert asyncio.iscoroutinefunction(handle)
    assert nb09.q1.check(handle).passed


def test_q2_refuses_408_as_a_wrong_post():
    result = nb09.q2.check(nb09._wrong_q2_408_gives_up)
    assert not result.passed
    assert result.failed_case == "status=408, attempt=1, retry_after=None"


def test_q2_refuses_retry_after_past_the_last_attempt():
    result = nb09.q2.check(nb09._wrong_q2_retry_after_first)
    assert not result.passed
    assert result.failed_case == "status=503, attempt=8, retry_after=2.0"


def test_q1_and_q2_pass_their_solutions():
    assert nb09.q1.check(nb09._solution_q1).passed
    assert nb09.q2.check(nb09._solution_q2).passed
