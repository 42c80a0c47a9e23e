"""Exercises of notebook 05 (failover drills): both are pure logic, checked offline on seeded
histories.

* ``q1`` the checker: count lost, duplicated, out-of-order and left-in-spool posts from the
  submitted ids and the records read back (the vocabulary of notebook 00 and of
  :func:`lab_kit.harness.readback.audit`);
* ``q2`` the failover decision: where a new post goes (Kafka, the spool, or the queue behind
  the replay), the rule :mod:`lab_kit.producer.failover` applies.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz

# --- q1: audit a history ----------------------------------------------------------------------

AUDIT_KEYS = ("lost", "duplicates", "out_of_order", "in_spool")


def _rec(post_id: str, user: str, partition: int, offset: int) -> dict:
    return {"post_id": post_id, "user_id": user, "partition": partition, "offset": offset}


def _history(deliveries: list[tuple[str, str]]) -> list[dict]:
    """Records as a consumer returns them, from (post_id, user) in the order they landed:
    user ``a`` and ``c`` on partition 0, ``b`` on partition 1, offsets counted per partition,
    the two partitions interleaved."""
    offsets: Counter = Counter()
    out = []
    for pid, user in deliveries:
        part = 1 if user == "b" else 0
        out.append(_rec(pid, user, part, offsets[part]))
        offsets[part] += 1
    return out


_SUBMITTED = ["a1", "b1", "a2", "c1", "b2", "a3", "c2", "b3"]  # submission order
_USER = {pid: pid[0] for pid in _SUBMITTED}


def _landed(*ids: str) -> list[dict]:
    return _history([(pid, _USER.get(pid, "a")) for pid in ids])


def _seeded_history(seed: int) -> tuple[list[str], list[dict], list[str]]:
    """A larger history from a seed: 400 posts of 25 users on 4 partitions, some lost, some
    delivered twice (the second copy later), some users' posts swapped, a few left in the
    spool."""
    rng = random.Random(seed)
    users = [f"u{i:02d}" for i in range(25)]
    submitted = [f"p-{i:05d}" for i in range(400)]
    user_of = {pid: rng.choice(users) for pid in submitted}
    order = list(submitted)
    for user in rng.sample(users, rng.randint(2, 6)):  # two posts of one user swapped
        at = [i for i, pid in enumerate(order) if user_of[pid] == user]
        i, j = sorted(rng.sample(at, 2))
        order[i], order[j] = order[j], order[i]
    spool = rng.sample(submitted, rng.randint(1, 6))
    lost = set(rng.sample([p for p in submitted if p not in spool], rng.randint(2, 6)))
    landed = [p for p in order if p not in lost and p not in spool]
    for pid in rng.sample(landed, rng.randint(3, 9)):  # a replayed copy lands after the first
        landed.insert(rng.randrange(landed.index(pid) + 1, len(landed) + 1), pid)
    landed += ["other-run-1", "other-run-2"]  # a shared topic holds other runs' posts too
    offsets: Counter = Counter()
    records = []
    for pid in landed:
        user = user_of.get(pid, "u99")
        part = int(user[1:]) % 4
        records.append(_rec(pid, user, part, offsets[part]))
        offsets[part] += 1
    return submitted, records, spool


def _reference_audit(submitted_ids, records, in_spool=()):
    submitted = list(dict.fromkeys(submitted_ids))
    position = {pid: i for i, pid in enumerate(submitted)}
    found = Counter(r["post_id"] for r in records if r["post_id"] in position)
    waiting = set(in_spool) & set(position)
    last: dict[str, int] = {}
    out_of_order: set[str] = set()
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        pid = r["post_id"]
        if pid not in position or pid in seen:
            continue  # another run's post, or a second copy: order is judged on first copies
        seen.add(pid)
        user = r["user_id"]
        if user in last and position[pid] < last[user]:
            out_of_order.add(user)
        last[user] = max(last.get(user, -1), position[pid])
    return {"lost": sum(1 for p in submitted if p not in found and p not in waiting),
            "duplicates": sum(n - 1 for n in found.values()),
            "out_of_order": len(out_of_order),
            "in_spool": sum(1 for p in waiting if p not in found)}


def _q1_cases() -> list[tuple[str, list[str], list[dict], list[str]]]:
    every = list(_SUBMITTED)
    cases = [
        ("every post once, in order", every, _landed(*every), []),
        ("b2 never landed", every, _landed(*[p for p in every if p != "b2"]), []),
        ("a1 delivered twice (a replayed copy after the others)", every,
         _landed(*every, "a1"), []),
        ("a2 landed before a1", every, _landed("b1", "a2", "a1", "c1", "b2", "a3", "c2", "b3"),
         []),
        ("two users out of order, one fine", every,
         _landed("a2", "a1", "b1", "c1", "b3", "b2", "a3", "c2"), []),
        ("another run's posts on the same topic", every,
         _landed("zz1", *every[:4], "zz2", *every[4:]), []),
        ("another run's post on the topic twice (its copies are not this run's duplicates)",
         every, _landed("zz1", *every[:4], "zz1", *every[4:]), []),
        ("c2 and b3 still in the spool at the end", every, _landed(*every[:6]), ["c2", "b3"]),
        ("b3 in the spool and on the topic (replayed, its row not yet deleted)", every,
         _landed(*every), ["b3"]),
    ]
    for seed in (5, 6):
        submitted, records, spool = _seeded_history(seed)
        cases.append((f"a seeded history (seed {seed}): 400 posts, 25 users, 4 partitions",
                      submitted, records, spool))
    return cases


def _check_audit(audit: Any) -> int:
    cases = _q1_cases()
    for name, submitted, records, spool in cases:
        got = audit(list(submitted), [dict(r) for r in records], in_spool=list(spool))
        want = _reference_audit(submitted, records, spool)
        if not isinstance(got, dict):
            raise CaseFailed(name, f"return a dict with keys {AUDIT_KEYS}, got {got!r}")
        wrong = {k: got.get(k) for k in AUDIT_KEYS if got.get(k) != want[k]}
        if wrong:
            raise CaseFailed(name, f"you said {wrong}, expected "
                                   f"{ {k: want[k] for k in wrong} }")
    return len(cases)


def _solution_q1(submitted_ids, records, in_spool=()):
    position = {pid: i for i, pid in enumerate(submitted_ids)}  # submission order
    copies = Counter(r["post_id"] for r in records if r["post_id"] in position)
    waiting = {pid for pid in in_spool if pid in position and pid not in copies}
    latest, out_of_order, seen = {}, set(), set()
    for r in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        pid, user = r["post_id"], r["user_id"]
        if pid not in position or pid in seen:
            continue  # not this run's, or a duplicate: order is about first copies
        seen.add(pid)
        if position[pid] < latest.get(user, -1):
            out_of_order.add(user)  # a later post of this user landed before this one
        latest[user] = max(latest.get(user, -1), position[pid])
    return {"lost": sum(1 for pid in position if pid not in copies and pid not in waiting),
            "duplicates": sum(n - 1 for n in copies.values()),
            "out_of_order": len(out_of_order),
            "in_spool": len(waiting)}


def _wrong_q1_order_on_every_copy(submitted_ids, records, in_spool=()):
    right = _solution_q1(submitted_ids, records, in_spool)
    position = {pid: i for i, pid in enumerate(submitted_ids)}
    latest, out_of_order = {}, set()
    for r in records:  # a duplicate copy counts as a reordering: it is not one
        pid = r["post_id"]
        if pid in position:
            if position[pid] < latest.get(r["user_id"], -1):
                out_of_order.add(r["user_id"])
            latest[r["user_id"]] = max(latest.get(r["user_id"], -1), position[pid])
    return {**right, "out_of_order": len(out_of_order)}


def _wrong_q1_spool_is_lost(submitted_ids, records, in_spool=()):
    right = _solution_q1(submitted_ids, records, in_spool)
    return {**right, "lost": right["lost"] + right["in_spool"], "in_spool": 0}


def _wrong_q1_counts_every_copy(submitted_ids, records, in_spool=()):
    right = _solution_q1(submitted_ids, records, in_spool)
    ids = [r["post_id"] for r in records]  # other runs' copies counted too
    return {**right, "duplicates": len(ids) - len(set(ids))}


q1 = Exercise(
    name="05.q1 the checker: lost, duplicates, out of order",
    task="audit(submitted_ids, records, in_spool=()) returns {'lost', 'duplicates', "
         "'out_of_order', 'in_spool'} from the ids submit() accepted (in submission order), "
         "the records read back ({'post_id', 'user_id', 'partition', 'offset'}) and the ids "
         "still in the spool",
    checker=_check_audit,
    hint_text="count copies per submitted id (ignore other ids); a post still in the spool "
              "and not on the topic is in_spool, not lost; for order, walk each partition by "
              "offset, skip second copies, and flag a user when a post comes after a later "
              "post of the same user (compare submission positions)",
    solution_obj=_solution_q1,
    wrong=(_wrong_q1_order_on_every_copy, _wrong_q1_spool_is_lost,
           _wrong_q1_counts_every_copy))


# --- q2: where does a new post go? ------------------------------------------------------------

def _route_reference(answers: bool, stalled: bool, spool_empty: bool) -> str:
    if not answers or stalled:
        return "spool"
    return "kafka" if spool_empty else "behind the replay"


_WHY = {
    "spool": "the broker does not answer (or acks have stalled): the post goes to disk and "
             "submit() returns at once",
    "kafka": "the broker answers and nothing waits on disk: send it",
    "behind the replay": "the broker answers but older posts are still on disk: sent now, "
                         "this post could overtake an older post of the same user",
}


def _check_route(route: Any) -> int:
    n = 0
    for answers in (True, False):
        for stalled in (False, True):
            for spool_empty in (True, False):
                got = route(answers=answers, stalled=stalled, spool_empty=spool_empty)
                want = _route_reference(answers, stalled, spool_empty)
                if got != want:
                    case = f"answers={answers}, stalled={stalled}, spool_empty={spool_empty}"
                    raise CaseFailed(case, f"you said {got!r}, expected {want!r}: {_WHY[want]}")
                n += 1
    return n


def _solution_q2(answers, stalled, spool_empty):
    if not answers or stalled:  # down, or answering without acking (paused, stuck client)
        return "spool"
    if not spool_empty:  # older posts first: a user's posts must not overtake each other
        return "behind the replay"
    return "kafka"


def _wrong_q2_straight_back(answers, stalled, spool_empty):
    return "kafka" if answers and not stalled else "spool"


def _wrong_q2_trusts_the_probe(answers, stalled, spool_empty):
    if not answers:
        return "spool"
    return "kafka" if spool_empty else "behind the replay"


q2 = Exercise(
    name="05.q2 where does a new post go",
    task="route(answers, stalled, spool_empty) returns 'kafka', 'spool' or 'behind the "
         "replay' for a new post, from: does the broker answer the probe, have acks stalled, "
         "is the spool empty",
    checker=_check_route,
    hint_text="a broker that answers the probe but acks nothing (paused, or a stuck client) is "
              "as good as down; and while anything is still on disk, new posts queue behind "
              "it",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_straight_back, _wrong_q2_trusts_the_probe))


recap = Quiz("05 recap", [
    Question("In this lab, a post is 'lost' when ...",
             {"a": "the producer counted it as failed",
              "b": "it was accepted and never read back from the topic (posts still in a spool "
                   "are reported as such, not as lost)",
              "c": "Kafka did not acknowledge it within a second"}, "b",
             "Lost is decided by reading the topic back, never by the producer's counters."),
    Question("How can a post be delivered twice across a broker outage?",
             {"a": "Kafka copies every record once per replica",
              "b": "the broker wrote it but the ack never arrived; it was sent again by a new "
                   "client (a new producer id), which idempotence does not recognise",
              "c": "the checker reads each partition twice"}, "b",
             "At-least-once: a post whose fate is unknown is sent again, never dropped."),
    Question("The spool commits with SQLite WAL and synchronous=NORMAL. A committed row ...",
             {"a": "survives a kill -9 of the producer, but may roll back after a power loss",
              "b": "survives a power loss too", "c": "is lost on any crash"}, "a",
             "The commit is in the OS page cache; SQLite fsyncs the WAL at a checkpoint."),
    Question("A kill -9 of the only broker, acks=all, lost 0. What did that show?",
             {"a": "acked posts survive a crash of the broker's process (the OS kept its "
                   "page cache)",
              "b": "acked posts survive a power loss",
              "c": "a replicated cluster fails over without loss"}, "a",
             "One node, one copy in the page cache: power loss and failover are other drills."),
    Question("Why do new posts queue behind the spool while it is replayed?",
             {"a": "to go faster", "b": "so no post overtakes an older post of the same user",
              "c": "Kafka refuses posts during a replay"}, "b",
             "Per-user order: the key sends a user's posts to one partition, in send order."),
])

EXERCISES = [q1, q2]
