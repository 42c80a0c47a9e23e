"""Exercises of notebook 08 (moderation at scale): Little's law, the commit rule, shedding, and
the bound a CPU profile puts on the rate.

All four are pure logic, checked offline: the sizing against the backend's cost model, the
commit rule against the stage's own :class:`~lab_kit.moderation.offsets.OffsetTracker`, the
shed policy against the rules of ``ModerationService._shed`` and ``_call``, the bound against
the arithmetic of ``bench pipeline``'s profile (µs per post x posts per second = cores busy).
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.moderation.offsets import Chunk, OffsetTracker

# --- q1: Little's law, how many calls in flight ------------------------------------------------

MAX_CONCURRENT = 16  # the backend's DEFAULT_SETTINGS["max_concurrent"]

# (target posts/s, batch_size, request_ms, post_ms, extra_ms) -> calls in flight, or None
_SIZING = [
    ((300, 1, 1.0, 0.02, 0.0), 1),
    ((5_000, 1, 1.0, 0.02, 0.0), 6),
    ((2_500, 1, 1.0, 0.02, 0.5), 4),
    ((20_000, 100, 1.0, 0.02, 0.0), 1),
    ((50_000, 100, 1.0, 0.02, 0.0), 2),
    ((1_000, 1, 1.0, 0.02, 50.0), None),  # 52 calls in flight: more than the backend admits
    ((1_000, 100, 1.0, 0.02, 50.0), 1),
    ((20_000, 100, 1.0, 0.02, 50.0), 11),
    ((9_000, 10, 1.0, 0.02, 10.0), 11),
]


def _check_sizing(concurrency_for: Any) -> int:
    for args, want in _SIZING:
        got = concurrency_for(*args)
        target, batch, request_ms, post_ms, extra_ms = args
        case = (f"target={target}/s, batch_size={batch}, request_ms={request_ms}, "
                f"post_ms={post_ms}, extra_ms={extra_ms}")
        if want is None and got is not None:
            raise CaseFailed(case, f"you said {got!r}; that is more calls than the backend's "
                                   f"max_concurrent={MAX_CONCURRENT}: return None")
        if got != want:
            call_ms = request_ms + batch * post_ms + extra_ms
            raise CaseFailed(case, f"you said {got!r}, expected {want!r} (one call takes "
                                   f"{call_ms:g} ms)")
    return len(_SIZING)


def _solution_q1(target_per_s, batch_size, request_ms, post_ms, extra_ms=0.0):
    call_s = (request_ms + batch_size * post_ms + extra_ms) / 1000  # time one call takes
    posts_in_flight = target_per_s * call_s  # Little's law: L = throughput x time
    calls = max(1, math.ceil(posts_in_flight / batch_size - 1e-9))  # whole calls, round up
    return calls if calls <= 16 else None  # the backend admits at most 16 at once


def _wrong_q1_no_post_cost(target_per_s, batch_size, request_ms, post_ms, extra_ms=0.0):
    calls = max(1, math.ceil(target_per_s * (request_ms + extra_ms) / 1000 / batch_size))
    return calls if calls <= 16 else None


def _wrong_q1_rounds_down(target_per_s, batch_size, request_ms, post_ms, extra_ms=0.0):
    call_s = (request_ms + batch_size * post_ms + extra_ms) / 1000
    calls = max(1, int(target_per_s * call_s / batch_size))
    return calls if calls <= 16 else None


q1 = Exercise(
    name="08.q1 Little's law: calls in flight",
    task="concurrency_for(target_per_s, batch_size, request_ms, post_ms, extra_ms) returns the "
         "fewest calls in flight that reach target_per_s, or None above 16",
    checker=_check_sizing,
    hint_text="one call takes request_ms + batch_size*post_ms + extra_ms; Little's law: posts "
              "in flight = target x that time (in seconds); divide by batch_size, round up",
    solution_obj=_solution_q1, wrong=(_wrong_q1_no_post_cost, _wrong_q1_rounds_down))


# --- q2: the commit rule, checked against the stage's own OffsetTracker ------------------------

_Record = namedtuple("_Record", "offset")
_TP = ("posts", 0)

# one partition's chunks in offset order: (first, end, state)
_COMMIT_CASES = [
    [(0, 100, "acked")],
    [(0, 100, "pending")],
    [(0, 100, "acked"), (100, 200, "acked"), (200, 300, "pending")],
    [(0, 100, "pending"), (100, 200, "acked"), (200, 300, "acked")],
    [(0, 50, "acked"), (50, 60, "pending"), (60, 500, "acked")],
    [(0, 100, "acked"), (100, 150, "failed"), (150, 200, "acked")],
    [(10, 20, "acked"), (25, 40, "acked")],  # a gap in the offsets (compaction, markers)
    [(300, 310, "acked"), (310, 320, "acked"), (320, 330, "acked")],
    [],
]


def _expected_commit(chunks: list[tuple[int, int, str]]) -> int | None:
    tracker = OffsetTracker()
    for first, end, state in chunks:
        chunk = tracker.add(Chunk(_TP, [_Record(first), _Record(end - 1)]))
        chunk.expect(1)
        chunk.seal()
        if state != "pending":
            chunk.output_done(RuntimeError("not acked") if state == "failed" else None)
    return tracker.committable().get(_TP)


def _check_commit(commit_offset: Any) -> int:
    for chunks in _COMMIT_CASES:
        want = _expected_commit(chunks)
        got = commit_offset(list(chunks))
        if got != want:
            raise CaseFailed(f"chunks={chunks}", f"you said {got!r}, the stage's "
                                                 f"OffsetTracker commits {want!r}")
    return len(_COMMIT_CASES)


def _solution_q2(chunks):
    offset = None
    for _first, end, state in chunks:  # in offset order
        if state != "acked":
            break  # an unacked (pending or failed) chunk stops the prefix
        offset = end  # the offset after the chunk's last record
    return offset


def _wrong_q2_any_acked(chunks):
    acked = [end for first, end, state in chunks if state == "acked"]
    return max(acked) if acked else None


def _wrong_q2_last_record(chunks):
    offset = None
    for _first, end, state in chunks:
        if state != "acked":
            break
        offset = end - 1
    return offset


q2 = Exercise(
    name="08.q2 the commit rule",
    task="commit_offset(chunks) returns the offset to commit for one partition's chunks "
         "[(first, end, 'acked'|'pending'|'failed'), ...], or None",
    checker=_check_commit,
    hint_text="walk the chunks in order and stop at the first one that is not 'acked'; Kafka "
              "commits the offset of the NEXT record to read (a chunk's end)",
    solution_obj=_solution_q2, wrong=(_wrong_q2_any_acked, _wrong_q2_last_record))


# --- q3: a shed policy with hysteresis, and the breaker ----------------------------------------

SHED_AFTER_S = 1.0  # ModerationService's default shed_after_ms=1000

# (oldest_age_s, shedding, breaker) -> (route, shedding afterwards)
_SHED_CASES = [
    ((0.2, False, "closed"), ("backend", False)),
    ((1.5, False, "closed"), ("shed", True)),
    ((0.8, True, "closed"), ("shed", True)),  # hysteresis: keep shedding above 0.5 s
    ((0.4, True, "closed"), ("backend", False)),
    ((1.0, False, "closed"), ("backend", False)),  # "more than" 1 s
    ((0.5, True, "closed"), ("backend", False)),  # stops at half: 0.5 s is young enough
    ((0.2, False, "open"), ("breaker_open", False)),
    ((2.0, False, "open"), ("shed", True)),  # shed first: the breaker is not even asked
    ((0.3, False, "half-open"), ("backend", False)),  # the trial call goes to the backend
    ((0.9, True, "open"), ("shed", True)),
]


def _check_shed(route: Any) -> int:
    for args, want in _SHED_CASES:
        got = route(*args)
        if not isinstance(got, tuple) or len(got) != 2:
            raise CaseFailed(f"route{args}", f"return a pair (route, shedding), got {got!r}")
        got = (got[0], bool(got[1]))
        if got != want:
            raise CaseFailed(f"oldest_age_s={args[0]}, shedding={args[1]}, breaker={args[2]!r}",
                             f"you said {got!r}, expected {want!r}")
    return len(_SHED_CASES)


def _solution_q3(oldest_age_s, shedding, breaker):
    limit = 1.0  # shed_after_ms = 1000
    if shedding:
        shedding = oldest_age_s > limit / 2  # keep shedding until posts are young again
    else:
        shedding = oldest_age_s > limit
    if shedding:
        return "shed", True  # local rules now, without asking the breaker
    if breaker == "open":
        return "breaker_open", False  # the breaker refuses the call: local rules
    return "backend", False  # closed, or half-open (the one trial call)


def _wrong_q3_no_hysteresis(oldest_age_s, shedding, breaker):
    if oldest_age_s > 1.0:
        return "shed", True
    return ("breaker_open" if breaker == "open" else "backend"), False


def _wrong_q3_half_open_refuses(oldest_age_s, shedding, breaker):
    shedding = oldest_age_s > (0.5 if shedding else 1.0)
    if shedding:
        return "shed", True
    return ("backend" if breaker == "closed" else "breaker_open"), False


q3 = Exercise(
    name="08.q3 shed or call the backend",
    task="route(oldest_age_s, shedding, breaker) returns (where the chunk goes: 'backend', "
         "'shed' or 'breaker_open'; whether the stage is shedding afterwards)",
    checker=_check_shed,
    hint_text="decide shedding first, with hysteresis: start above 1 s, stop at 0.5 s or less; "
              "only a chunk that is not shed meets the breaker (open refuses, half-open lets "
              "the trial call through)",
    solution_obj=_solution_q3, wrong=(_wrong_q3_no_hysteresis, _wrong_q3_half_open_refuses))


# --- q4: the bound of a machine, from a CPU profile ---------------------------------------------

# ({part: CPU µs per post, None if not measured}, cores) -> posts/s, or None
_BOUND_CASES = [
    (({"load producer": 60.0, "broker": 20.0, "moderation stage": 45.0, "backend": 25.0}, 2),
     13_333),
    (({"load producer": 60.0, "broker": 20.0, "moderation stage": 45.0, "backend": 25.0}, 8),
     53_333),
    (({"moderation stage": 45.0}, 1), 22_222),
    (({"load producer": 56.0, "broker": 17.0, "moderation stage": 48.0, "backend": 24.0,
       "e2e reader": 15.0}, 2), 13_793),  # the reader runs after the load: not counted
    (({"broker": 20.0, "backend": None}, 2), None),  # an unmeasured part: no bound
    (({"load producer": 0.5}, 2), 4_000_000),
]


def _check_bound(max_rate: Any) -> int:
    for (parts, cores), want in _BOUND_CASES:
        got = max_rate(dict(parts), cores)
        case = f"us_per_post={parts}, cores={cores}"
        if want is None:
            if got is not None:
                raise CaseFailed(case, f"you said {got!r}; a part was not measured (None), so "
                                       "the bound is unknown: return None")
            continue
        if not isinstance(got, int) or isinstance(got, bool):
            raise CaseFailed(case, f"return a whole number of posts per second, got {got!r}")
        if got != want:
            raise CaseFailed(case, f"you said {got!r}, expected {want!r}")
    return len(_BOUND_CASES)


def _solution_q4(us_per_post, cores):
    busy = {part: us for part, us in us_per_post.items() if part != "e2e reader"}
    if any(us is None for us in busy.values()):
        return None  # a part nobody measured could cost anything
    return int(cores * 1_000_000 / sum(busy.values()))  # µs of CPU per second / µs per post


def _wrong_q4_costliest_only(us_per_post, cores):
    busy = [us for part, us in us_per_post.items() if part != "e2e reader"]
    return None if None in busy else int(cores * 1_000_000 / max(busy))


def _wrong_q4_counts_the_reader(us_per_post, cores):
    if None in us_per_post.values():
        return None
    return int(cores * 1_000_000 / sum(us_per_post.values()))


def _wrong_q4_one_core(us_per_post, cores):
    busy = [us for part, us in us_per_post.items() if part != "e2e reader"]
    return None if None in busy else int(1_000_000 / sum(busy))


q4 = Exercise(
    name="08.q4 the bound of a machine",
    task="max_rate(us_per_post, cores) returns the most posts per second the cores can carry "
         "at these CPU costs (a whole number), or None if a part was not measured",
    checker=_check_bound,
    hint_text="every part that runs during the load costs CPU for every post: add them up "
              "(the e2e reader runs after the load); a core gives 1,000,000 µs of CPU per "
              "second; round down",
    solution_obj=_solution_q4,
    wrong=(_wrong_q4_costliest_only, _wrong_q4_counts_the_reader, _wrong_q4_one_core))


recap = Quiz("08 recap", [
    Question("A stage sends one post and waits for the answer; a call takes 2 ms. Its ceiling?",
             {"a": "about 500 posts/s, however idle the backend", "b": "the backend's capacity",
              "c": "the CPU's speed"}, "a",
             "One post in flight: throughput = 1 / round trip (Little's law with L = 1)."),
    Question("Why does batching help more than concurrency with this backend?",
             {"a": "it overlaps more round trips",
              "b": "it pays the fixed cost per request once per batch, and makes fewer calls",
              "c": "it skips the circuit breaker"}, "b",
             "request_ms is paid per call: 100 posts per call pay it once, and the stage "
             "makes 100x fewer HTTP exchanges in Python."),
    Question("Chunk 200..299 is acked, chunk 100..199 (same partition) is still pending, "
             "0..99 was committed. What may the stage commit now?",
             {"a": "300", "b": "200", "c": "nothing new: 100 stays"}, "c",
             "Only the end of the contiguous acked prefix: a restart resumes at 100 and "
             "re-moderates 200..299 too (duplicates); by this rule nothing is skipped."),
    Question("Why does one kafka-python stage process stop scaling with more threads?",
             {"a": "Kafka limits threads per client", "b": "the GIL: one thread runs Python "
              "at a time, threads overlap waiting, not computing",
              "c": "the backend refuses more threads"}, "b",
             "Threads help while they wait (on the backend, on Kafka); Python work runs one "
             "thread at a time. More member processes of the consumer group can add CPU "
             "where a core is free. The notebook does not measure the GIL itself: it is "
             "how CPython works, and the likely limit; section 5 printed what a second "
             "process added on your machine."),
    Question("The backend is slow but never refuses. Which defence answers posts that have "
             "waited too long?",
             {"a": "the circuit breaker", "b": "load shedding on the oldest post's age",
              "c": "the recheck worker"}, "b",
             "The breaker counts failures (timeouts, errors; not 429s), not waits; shedding "
             "looks at age. The recheck worker repairs shed verdicts later, once the stage "
             "is healthy again (right after an overload it competes with new posts)."),
])

EXERCISES = [q1, q2, q3, q4]
