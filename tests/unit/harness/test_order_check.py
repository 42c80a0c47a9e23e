"""The per-user order check of the read-back checker, on seeded histories (no broker needed:
the check is a pure function of what a consumer read and of the submit order)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from lab_kit.harness.readback import order_violations


def test_an_inversion_is_seen_and_named() -> None:
    submitted = ["a1", "b1", "a2", "a3"]  # user a: a1 < a2 < a3
    landed = [(b"a", "a1"), (b"b", "b1"), (b"a", "a3"), (b"a", "a2")]
    late, users = order_violations(landed, submitted)
    assert late == ["a2"] and users == {b"a"}


def test_posts_in_submit_order_have_no_violation() -> None:
    submitted = ["a1", "b1", "a2", "b2"]
    landed = [(b"b", "b1"), (b"a", "a1"), (b"b", "b2"), (b"a", "a2")]  # users interleave freely
    assert order_violations(landed, submitted) == ([], set())


def test_a_duplicate_copy_is_not_a_reordering() -> None:
    submitted = ["a1", "a2"]
    landed = [(b"a", "a1"), (b"a", "a2"), (b"a", "a1")]  # a1 again, after a2: a duplicate
    assert order_violations(landed, submitted) == ([], set())


def test_a_post_that_never_landed_breaks_nothing() -> None:
    assert order_violations([(b"a", "a1"), (b"a", "a3")], ["a1", "a2", "a3"]) == ([], set())


@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=60), st.randoms())
def test_a_history_is_in_order_exactly_when_each_users_subsequence_is(users, rnd) -> None:
    """Seeded histories: shuffle the landing order, and the check agrees with a direct
    comparison of each user's landed sequence against its submitted one."""
    submitted = [f"{u}{i}" for i, u in enumerate(users)]
    landed = [(pid[0].encode(), pid) for pid in submitted]
    random.Random(rnd.random()).shuffle(landed)
    late, bad_users = order_violations(landed, submitted)
    rank = {pid: i for i, pid in enumerate(submitted)}
    expect_bad = set()
    for u in set(users):
        seq = [rank[pid] for key, pid in landed if key == u.encode()]
        if seq != sorted(seq):
            expect_bad.add(u.encode())
    assert bad_users == expect_bad
    assert (late == []) == (expect_bad == set())
