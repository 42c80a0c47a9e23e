"""Exercises of notebook 04 (metrics and monitoring): all three are pure logic, checked offline.

* ``q1`` a percentile from raw latencies (nearest rank, the definition
  :func:`lab_kit.metrics.percentiles_ms` uses);
* ``q2`` an alert rule over a per-second metrics frame (the dashboard's
  :meth:`~lab_kit.widgets.Dashboard.timeseries_frame`);
* ``q3`` Little's law: how many posts are in flight at a rate and a latency.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz

# --- q1: a percentile from raw latencies (nearest rank) -------------------------------------


def _nearest_rank(values: list[float], p: float) -> float:
    """The reference: the smallest value with at least p % of the values at or below it
    (rank computed exactly, so no float rounding decides it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(p)) * len(ordered) / 100))
    return ordered[rank - 1]


def _q1_cases() -> list[tuple[str, list[float], float]]:
    rng = random.Random(4)
    one_to_100 = [float(v) for v in range(1, 101)]
    rng.shuffle(one_to_100)
    tail = [round(rng.lognormvariate(1.5, 0.6), 3) for _ in range(990)] + \
        [round(rng.uniform(200, 900), 3) for _ in range(10)]  # 1 % of slow acks
    rng.shuffle(tail)
    tens = [float(v) for v in range(100, 0, -10)]
    return [
        ("1..100 shuffled, p50", one_to_100, 50),
        ("1..100 shuffled, p99", one_to_100, 99),
        ("1..100 shuffled, p100 (the max)", one_to_100, 100),
        ("1..100 shuffled, p0 (the min: the rank is at least 1)", one_to_100, 0),
        ("[50, 10, 40, 20, 30], p25", [50.0, 10.0, 40.0, 20.0, 30.0], 25),
        ("[1, 2, 3, 4], p50", [1.0, 2.0, 3.0, 4.0], 50),
        ("ten values 100, 90 ... 10, p90", tens, 90),
        ("ten values 100, 90 ... 10, p99", tens, 99),
        ("a single value, p99", [7.5], 99),
        ("ties [5, 5, 1, 9, 5], p50", [5.0, 5.0, 1.0, 9.0, 5.0], 50),
        ("1,000 acks with a 1 % slow tail, p50", tail, 50),
        ("1,000 acks with a 1 % slow tail, p99", tail, 99),
    ]


def _check_percentile(percentile: Any) -> int:
    cases = _q1_cases()
    for name, values, p in cases:
        given = list(values)
        got = percentile(given, p)
        if given != values:
            raise CaseFailed(name, "your function changed the list it was given (sort a copy: "
                                   "sorted(values), not values.sort())")
        want = _nearest_rank(values, p)
        if not isinstance(got, int | float) or not math.isclose(got, want, abs_tol=1e-9):
            raise CaseFailed(name, f"you returned {got!r}, expected {want!r} (nearest rank: "
                                   f"a value of the list, no interpolation)")
    return len(cases)


def _solution_q1(values, p):
    ordered = sorted(values)  # a copy: the caller's list stays as it was
    rank = max(1, math.ceil(p * len(ordered) / 100))  # 1-based: at least p % at or below it
    return ordered[rank - 1]


def _wrong_q1_interpolates(values, p):
    ordered = sorted(values)  # numpy.percentile's default: linear interpolation
    pos = (len(ordered) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _wrong_q1_off_by_one(values, p):
    ordered = sorted(values)
    return ordered[min(int(p / 100 * len(ordered)), len(ordered) - 1)]


def _wrong_q1_no_floor(values, p):
    ordered = sorted(values)  # rank 0 at p0: index -1 is the max, not the min
    return ordered[math.ceil(p * len(ordered) / 100) - 1]


def _wrong_q1_closest_observation(values, p):
    # a value of the list, but the closest rank, not the nearest rank at or above p %:
    # [10, 20, 30, 40, 50] at p25 gives 10 (only 20 % at or below it), not 20
    return float(np.percentile(values, p, method="closest_observation"))


def _wrong_q1_sorts_in_place(values, p):
    values.sort()
    return values[max(1, math.ceil(p * len(values) / 100)) - 1]


q1 = Exercise(
    name="04.q1 a percentile from raw latencies",
    task="percentile(values, p) returns the nearest-rank p-th percentile of a list of "
         "latencies: the smallest value with at least p % of the values at or below it",
    checker=_check_percentile,
    hint_text="sort a copy; the rank is ceil(p * n / 100), counted from 1; return that value "
              "(nearest rank picks a value of the list, it never interpolates)",
    solution_obj=_solution_q1,
    wrong=(_wrong_q1_interpolates, _wrong_q1_off_by_one, _wrong_q1_sorts_in_place,
           _wrong_q1_no_floor, _wrong_q1_closest_observation))


# --- q2: an alert rule over a per-second metrics frame -------------------------------------

def _frame(rows: list[tuple[int, int, float]], start: int = 0) -> pd.DataFrame:
    """(submitted, acked, ack_p99_ms) per second, indexed by t_s like the dashboard's frame
    (from ``start``: a frame that does not begin at 0 tells t_s from row numbers)."""
    return pd.DataFrame(rows, columns=["submitted", "acked", "ack_p99_ms"],
                        index=pd.Index([float(start + i) for i in range(len(rows))], name="t_s"))


_NAN = float("nan")
_OK = (500, 500, 20.0)
_SLOW = (500, 500, 250.0)
_DOWN = (500, 0, _NAN)  # posts submitted, none acked: there is no latency to look at
_IDLE = (0, 0, _NAN)  # nobody posted


def _q2_cases() -> list[tuple[str, pd.DataFrame, dict, list[float]]]:
    return [
        ("a healthy minute", _frame([_OK] * 60), {}, []),
        ("one slow second (a spike)", _frame([_OK, _OK, _SLOW, _OK, _OK]), {}, []),
        ("three slow seconds in a row", _frame([_OK, _SLOW, _SLOW, _SLOW, _OK]), {}, [3.0]),
        ("four slow seconds in a row", _frame([_SLOW] * 4 + [_OK]), {}, [2.0, 3.0]),
        ("slow, slow, fine, slow, slow", _frame([_SLOW, _SLOW, _OK, _SLOW, _SLOW]), {}, []),
        ("p99 exactly at the target", _frame([(500, 500, 100.0)] * 4), {}, []),
        ("the broker is down: posts submitted, nothing acked",
         _frame([_OK, _DOWN, _DOWN, _OK]), {}, [1.0, 2.0]),
        ("idle: nobody posted", _frame([_OK, _IDLE, _IDLE, _OK]), {}, []),
        ("slow, slow, idle, slow: an idle second breaks the streak",
         _frame([_SLOW, _SLOW, _IDLE, _SLOW]), {}, []),
        ("for_windows=1", _frame([_OK, _SLOW, _OK]), {"for_windows": 1}, [1.0]),
        ("target_ms=10", _frame([_OK] * 3), {"target_ms": 10.0}, [2.0]),
        ("a frame from t_s=60 (return t_s, not row numbers)",
         _frame([_OK, _SLOW, _SLOW, _SLOW, _DOWN], start=60), {}, [63.0, 64.0]),
    ]


def _check_alerts(alerts: Any) -> int:
    cases = _q2_cases()
    for name, frame, kwargs, want in cases:
        got = alerts(frame.copy(), **kwargs)
        try:
            got_list = [float(t) for t in got]
        except TypeError as exc:
            raise CaseFailed(name, f"return a list of t_s values, got {got!r}") from exc
        if got_list != want:
            raise CaseFailed(name, f"your rule fired at {got_list}, expected {want}")
    return len(cases)


def _solution_q2(frame, target_ms=100.0, for_windows=3):
    fired, streak = [], 0
    for t_s, row in frame.iterrows():
        slow = row["ack_p99_ms"] > target_ms  # NaN (no acks) is not slow: it breaks a streak
        streak = streak + 1 if slow else 0
        silent = row["submitted"] > 0 and row["acked"] == 0  # nothing got through
        if streak >= for_windows or silent:
            fired.append(t_s)
    return fired


def _wrong_q2_latency_only(frame, target_ms=100.0, for_windows=3):
    fired, streak = [], 0
    for t_s, row in frame.iterrows():
        streak = streak + 1 if row["ack_p99_ms"] > target_ms else 0
        if streak >= for_windows:
            fired.append(t_s)
    return fired


def _wrong_q2_skips_idle(frame, target_ms=100.0, for_windows=3):
    """Skips the seconds without a p99 instead of letting them break the streak."""
    fired, streak = [], 0
    for t_s, row in frame.iterrows():
        if row["submitted"] > 0 and row["acked"] == 0:
            fired.append(t_s)
            continue
        if row["ack_p99_ms"] != row["ack_p99_ms"]:  # NaN: skipped, the streak carries on
            continue
        streak = streak + 1 if row["ack_p99_ms"] > target_ms else 0
        if streak >= for_windows:
            fired.append(t_s)
    return fired


def _wrong_q2_every_spike(frame, target_ms=100.0, for_windows=3):
    silent = (frame["submitted"] > 0) & (frame["acked"] == 0)
    return list(frame.index[(frame["ack_p99_ms"] > target_ms) | silent])


def _wrong_q2_row_numbers(frame, target_ms=100.0, for_windows=3):
    """Right rule, but returns row positions: they equal t_s only in a frame starting at 0."""
    return [i for i, t_s in enumerate(frame.index)
            if t_s in _solution_q2(frame, target_ms, for_windows)]


q2 = Exercise(
    name="04.q2 an alert rule",
    task="alerts(frame, target_ms=100.0, for_windows=3) returns the t_s of every second where "
         "the alert fires: the p99 was above target_ms in this second and the for_windows-1 "
         "seconds just before it, or posts were submitted in this second and none was acked",
    checker=_check_alerts,
    hint_text="walk the rows in order with a counter of consecutive slow seconds (reset it on "
              "a second that is not slow; NaN > x is False); a second with submitted > 0 and "
              "acked == 0 fires on its own: its p99 is NaN, so a latency rule stays silent",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_latency_only, _wrong_q2_every_spike, _wrong_q2_skips_idle,
           _wrong_q2_row_numbers))


# --- q3: Little's law -------------------------------------------------------------------------

_Q3_CASES = [(1_000, 5.0, 5.0), (8_000, 20.0, 160.0), (2_000, 0.5, 1.0),
             (10_000, 1_000.0, 10_000.0), (150, 300.0, 45.0)]


def _check_in_flight(in_flight: Any) -> int:
    for rate, latency_ms, want in _Q3_CASES:
        got = in_flight(rate, latency_ms)
        name = f"{rate:,} posts/s with a mean latency of {latency_ms:g} ms"
        if not isinstance(got, int | float) or not math.isclose(got, want, rel_tol=1e-9):
            raise CaseFailed(name, f"you returned {got!r}, expected {want:g} posts in flight")
    return len(_Q3_CASES)


def _solution_q3(rate_per_s, mean_latency_ms):
    return rate_per_s * mean_latency_ms / 1000  # L = λ W, with W in seconds


def _wrong_q3_units(rate_per_s, mean_latency_ms):
    return rate_per_s * mean_latency_ms


q3 = Exercise(
    name="04.q3 Little's law",
    task="in_flight(rate_per_s, mean_latency_ms) returns how many posts are in flight on "
         "average (submitted, not yet acked) at that rate and mean ack latency",
    checker=_check_in_flight,
    hint_text="Little's law: L = λ × W; λ in posts per second, so W must be in seconds",
    solution_obj=_solution_q3, wrong=(_wrong_q3_units,))


recap = Quiz("04 recap", [
    Question("At 10,000 posts/s, how many posts each second take longer than the p99?",
             {"a": "about 1", "b": "about 100", "c": "about 1,000"}, "b",
             "1 % of 10,000: a hundred users every second see the tail."),
    Question("Why does the open-loop driver measure latency from the intended send time?",
             {"a": "it is cheaper to compute",
              "b": "so a stall shows up as latency instead of as a quietly lower load",
              "c": "Kafka stamps records with it"}, "b",
             "A closed loop stops sending while the system stalls: coordinated omission."),
    Question("What do kafka-python's producer.metrics() give you about latency?",
             {"a": "p50 and p99 per request",
              "b": "averages and maxima over a sample window, no percentiles",
              "c": "nothing about latency"}, "b",
             "request-latency-avg/-max, record-queue-time-avg/-max: why, not how bad the tail."),
    Question("You have the p99 of each second of a minute. The p99 of the whole minute is ...",
             {"a": "the mean of the sixty p99s", "b": "the largest of the sixty p99s",
              "c": "none of these: percentiles do not average, merge the values (or histograms)"},
             "c", "A percentile needs the whole distribution: keep histograms and merge them."),
])

EXERCISES = [q1, q2, q3]
