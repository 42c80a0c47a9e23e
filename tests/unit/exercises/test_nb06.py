"""Notebook 06's offline checks refuse the wrong answers a student is likely to write, on the
case meant to catch each one (not by luck on an earlier case), and pass the solutions."""

from __future__ import annotations

from lab_kit.exercises import nb06


def test_q2_refuses_a_row_position_for_an_index_label():
    def pick(sweep, p99_target_ms):  # numpy's argmax: a position, not the row's label
        ok = (sweep["acks"] == "all") & (sweep["ack_p99_ms"] <= p99_target_ms)
        return None if not ok.any() else int(sweep["msgs_per_s"].where(ok, -1).to_numpy().argmax())

    result = nb06.q2.check(pick)
    assert not result.passed
    assert result.failed_case.startswith("a filtered sweep")
    assert "you chose 2, expected 9" in result.detail


def test_q2_passes_its_solution():
    assert nb06.q2.check(nb06._solution_q2).passed
