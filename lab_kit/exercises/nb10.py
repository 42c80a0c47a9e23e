"""Exercises of notebook 10 (guarantees): what a reader sees, and counting each post once.

* q1: ``visible(records)`` is a ``read_committed`` reader, by hand: given a partition's records
  (data records, some written inside transactions, and the commit/abort markers Kafka writes
  when a transaction ends), return the post ids the reader delivers, in offset order. Offline,
  on seeded partitions; one case is a partition where a killed member's transaction is still
  open (nothing at or after its first record is delivered, plain records included), another
  gives the records out of order.
* q2: ``spam_signals(results)`` counts each user's spam posts *once* from an at-least-once
  results topic, where a post may carry two results (counted by its first): the idempotent
  reader, the other way to the effect "each post counted once". One case judges a post spam
  first and approve second (and another post the other way round), so a "last result wins"
  count differs from the first-result count.
"""

from __future__ import annotations

from typing import Any

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz

# --- q1: a read_committed reader, by hand ------------------------------------------------------


def _data(offset: int, post_id: str, producer_id: int | None = None) -> dict[str, Any]:
    """A data record; ``producer_id`` set = written inside that producer's transaction."""
    return {"offset": offset, "kind": "data", "post_id": post_id, "producer_id": producer_id,
            "transactional": producer_id is not None}


def _marker(offset: int, producer_id: int, commit: bool) -> dict[str, Any]:
    return {"offset": offset, "kind": "commit" if commit else "abort", "post_id": None,
            "producer_id": producer_id, "transactional": True}


_VISIBLE_CASES: list[tuple[str, list[dict], list[str]]] = [
    ("no transactions at all", [_data(0, "a"), _data(1, "b")], ["a", "b"]),
    ("one committed transaction",
     [_data(0, "a", 7), _data(1, "b", 7), _marker(2, 7, True)], ["a", "b"]),
    ("one aborted transaction, then the same posts again, committed",
     [_data(0, "a", 7), _marker(1, 7, False), _data(2, "a", 7), _marker(3, 7, True)], ["a"]),
    ("two producers' transactions interleaved, one aborted",
     [_data(0, "a", 7), _data(1, "x", 9), _data(2, "b", 7), _marker(3, 9, False),
      _marker(4, 7, True)], ["a", "b"]),
    ("an open transaction holds back what comes after it",
     [_data(0, "a", 7), _marker(1, 7, True), _data(2, "b", 9), _data(3, "c", 7),
      _marker(4, 7, True)], ["a"]),
    ("a plain record after an open transaction waits too (the last stable offset)",
     [_data(0, "a", 7), _marker(1, 7, True), _data(2, "b", 9), _data(3, "p"),
      _data(4, "c", 7), _marker(5, 7, True)], ["a"]),
    ("a plain record between transactions",
     [_data(0, "a", 7), _marker(1, 7, True), _data(2, "p"), _data(3, "b", 7),
      _marker(4, 7, False)], ["a", "p"]),
    ("records come in any order: the offsets say where they are",
     [_marker(2, 7, True), _data(1, "b", 7), _data(0, "a", 7)], ["a", "b"]),
]


def _check_visible(visible: Any) -> int:
    for case, records, want in _VISIBLE_CASES:
        got = visible([dict(r) for r in records])
        if not isinstance(got, list):
            raise CaseFailed(case, f"returned {got!r}: return a list of post ids")
        if got != want:
            shown = "\n".join(f"  {r['offset']}: {r['kind']:<6} post={r['post_id']} "
                              f"producer={r['producer_id']}"
                              for r in sorted(records, key=lambda r: r["offset"]))
            raise CaseFailed(case, f"you delivered {got}, expected {want} from\n{shown}")
    return len(_VISIBLE_CASES)


def _solution_q1(records):
    records = sorted(records, key=lambda r: r["offset"])
    committed, waiting = set(), {}  # waiting: producer -> its open transaction's records
    for r in records:
        if r["kind"] == "data" and not r["transactional"]:
            committed.add(r["offset"])
        elif r["kind"] == "data":
            waiting.setdefault(r["producer_id"], []).append(r["offset"])
        else:  # a marker ends that producer's transaction
            ended = waiting.pop(r["producer_id"], [])
            if r["kind"] == "commit":
                committed.update(ended)
    # the last stable offset: nothing at or after an open transaction's first record
    stable = min((offs[0] for offs in waiting.values()), default=float("inf"))
    return [r["post_id"] for r in records
            if r["offset"] in committed and r["offset"] < stable]


def _wrong_q1_uncommitted(records):  # read_uncommitted: every data record
    return [r["post_id"] for r in sorted(records, key=lambda r: r["offset"])
            if r["kind"] == "data"]


def _wrong_q1_no_stable_offset(records):  # forgets that an open transaction holds back
    records = sorted(records, key=lambda r: r["offset"])
    committed, waiting = set(), {}
    for r in records:
        if r["kind"] == "data" and not r["transactional"]:
            committed.add(r["offset"])
        elif r["kind"] == "data":
            waiting.setdefault(r["producer_id"], []).append(r["offset"])
        elif r["kind"] == "commit":
            committed.update(waiting.pop(r["producer_id"], []))
        else:
            waiting.pop(r["producer_id"], None)
    return [r["post_id"] for r in records if r["offset"] in committed]


def _wrong_q1_plain_past_stable(records):  # holds back only transactional records at the LSO
    records = sorted(records, key=lambda r: r["offset"])
    committed, waiting = set(), {}
    for r in records:
        if r["kind"] == "data" and not r["transactional"]:
            committed.add(r["offset"])
        elif r["kind"] == "data":
            waiting.setdefault(r["producer_id"], []).append(r["offset"])
        else:
            ended = waiting.pop(r["producer_id"], [])
            if r["kind"] == "commit":
                committed.update(ended)
    stable = min((offs[0] for offs in waiting.values()), default=float("inf"))
    return [r["post_id"] for r in records if r["offset"] in committed
            and (not r["transactional"] or r["offset"] < stable)]


def _wrong_q1_input_order(records):  # trusts the list's order instead of the offsets
    return _solution_q1([dict(r, offset=i) for i, r in enumerate(records)])


q1 = Exercise(
    name="10.q1 what a read_committed reader sees",
    task="visible(records) returns the post ids a read_committed reader delivers from one "
         "partition's records, in offset order",
    checker=_check_visible,
    hint_text="a transactional record counts once the first marker of its producer after it "
              "says 'commit'; and the reader stops at the first record of a transaction that "
              "has no marker yet (the last stable offset), whatever comes after it",
    solution_obj=_solution_q1,
    wrong=(_wrong_q1_uncommitted, _wrong_q1_no_stable_offset, _wrong_q1_plain_past_stable,
           _wrong_q1_input_order))


# --- q2: each post counted once, from an at-least-once topic ----------------------------------


def _result(post_id: str, user_id: str, label: str) -> dict[str, str]:
    return {"post_id": post_id, "user_id": user_id, "label": label}


_SPAM_CASES: list[tuple[str, list[dict], dict[str, int]]] = [
    ("one spam post", [_result("p1", "ana", "spam")], {"ana": 1}),
    ("no spam at all", [_result("p1", "ana", "approve"), _result("p2", "bo", "review")], {}),
    ("a spam post moderated twice (a member was killed)",
     [_result("p1", "ana", "spam"), _result("p2", "ana", "spam"), _result("p1", "ana", "spam")],
     {"ana": 2}),
    ("two users, duplicates of both",
     [_result("p1", "ana", "spam"), _result("p2", "bo", "spam"), _result("p2", "bo", "spam"),
      _result("p1", "ana", "spam"), _result("p3", "bo", "approve")], {"ana": 1, "bo": 1}),
    ("the same user, two different spam posts",
     [_result("p1", "cy", "spam"), _result("p2", "cy", "spam")], {"cy": 2}),
    ("a re-sent post judged differently the second time: its first result counts",
     [_result("p1", "di", "spam"), _result("p2", "di", "approve"), _result("p1", "di", "approve"),
      _result("p2", "di", "spam")], {"di": 1}),
    ("first and second results disagree: spam then approve for one user, the reverse for another",
     [_result("p1", "fay", "spam"), _result("p2", "gus", "approve"),
      _result("p1", "fay", "approve"), _result("p2", "gus", "spam")], {"fay": 1}),
]


def _check_spam(spam_signals: Any) -> int:
    for case, results, want in _SPAM_CASES:
        got = spam_signals([dict(r) for r in results])
        if not isinstance(got, dict):
            raise CaseFailed(case, f"returned {got!r}: return a dict user_id -> count")
        got = {k: v for k, v in got.items() if v}
        if got != want:
            raise CaseFailed(case, f"you counted {got}, expected {want}")
    return len(_SPAM_CASES)


def _solution_q2(results):
    seen, counts = set(), {}
    for r in results:
        if r["post_id"] in seen:
            continue  # a duplicate: this post was counted already
        seen.add(r["post_id"])
        if r["label"] == "spam":
            counts[r["user_id"]] = counts.get(r["user_id"], 0) + 1
    return counts


def _wrong_q2_every_record(results):
    counts = {}
    for r in results:
        if r["label"] == "spam":
            counts[r["user_id"]] = counts.get(r["user_id"], 0) + 1
    return counts


def _wrong_q2_per_user(results):  # "has this user spammed?", not how often
    return {r["user_id"]: 1 for r in results if r["label"] == "spam"}


def _wrong_q2_last_wins(results):  # each post's last result overwrites its first
    last = {r["post_id"]: r for r in results}
    counts = {}
    for r in last.values():
        if r["label"] == "spam":
            counts[r["user_id"]] = counts.get(r["user_id"], 0) + 1
    return counts


q2 = Exercise(
    name="10.q2 each spam post counted once",
    task="spam_signals(results) returns {user_id: number of distinct spam posts} from results "
         "that may hold a post twice",
    checker=_check_spam,
    hint_text="remember the post ids you have seen; a post seen again is a duplicate: its "
              "first result is its verdict, whatever the second one says",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_every_record, _wrong_q2_per_user, _wrong_q2_last_wins))


# --- recap -------------------------------------------------------------------------------------

recap = Quiz("10 recap", [
    Question("At-least-once moderation, one of two members killed -9; the posts topic holds "
             "each post once, yet some posts have two results in moderation.results. Why?",
             {"a": "Kafka copies records between replicas",
              "b": "work not committed when ownership of the partitions moved: mostly the "
                   "killed member's open chunks (results produced, offsets not committed "
                   "yet), and anything whose commit failed at the rebalance; the new owner "
                   "moderates those posts again",
              "c": "the producer of the posts retried"}, "b",
             "Offsets are committed after the outputs are acked: work whose offsets were not "
             "committed when its partition moved (a crash in between, or a commit that "
             "failed at the rebalance) is done again by the partition's next owner."),
    Question("Exactly-once moderation, a member killed -9. Which reader finds each post's "
             "result once in moderation.results?",
             {"a": "any reader, whatever its settings",
              "b": "a reader that reads with isolation_level=read_committed",
              "c": "only a reader with isolation_level=read_uncommitted"}, "b",
             "The aborted transaction's records stay in the log; a read_uncommitted reader "
             "sees them."),
    Question("A member is killed while its open transaction has already written results. What "
             "do read_committed readers of those partitions notice?",
             {"a": "nothing at all",
              "b": "they wait: nothing past the open transaction is delivered until the "
                   "broker aborts it (transaction timeout)",
              "c": "they receive the open transaction's records"}, "b",
             "The last stable offset stops at the open transaction's first record."),
    Question("A transaction aborts and its posts are read again. What happens twice that Kafka "
             "cannot take back?",
             {"a": "read_committed readers receive the aborted results",
              "b": "the consumed offsets move backward for good",
              "c": "the call to the moderation backend (and what the backend remembers)"}, "c",
             "The transaction covers Kafka writes and offsets; an HTTP call made on the way is "
             "made again when the batch is re-read."),
    Question("A 202 from POST /posts (no ?wait=ack) promises ...",
             {"a": "the post is in Kafka",
              "b": "the post was accepted: it may still be in the API's memory, and a kill -9 "
                   "can lose it",
              "c": "the post is fsynced to disk"}, "b",
             "Only the 201 of ?wait=ack waits: for Kafka's ack or an fsynced spool row."),
])

EXERCISES = [q1, q2]
