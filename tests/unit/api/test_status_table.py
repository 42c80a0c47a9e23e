"""The post API's status lookup (lab_kit.api.StatusTable): bounded, oldest forgotten first."""

from __future__ import annotations

from lab_kit.api import StatusTable


def test_the_table_keeps_the_newest_posts_and_forgets_the_oldest() -> None:
    t = StatusTable(max_tracked=1000)
    for i in range(5000):
        t.add(f"p{i}", ("pending", None, None))
        if i % 7 == 0:
            t.verdict(f"p{i}", {"action": "allow"})
    assert len(t) == 1000
    assert t.get("p3999") == (None, None)  # forgotten, verdict too
    assert t.get("p4000") == (("pending", None, None), None)
    assert t.get("p4004") == (("pending", None, None), {"action": "allow"})
    t.add("p3997", ("pending", None, None))  # had a verdict before it was forgotten
    assert t.get("p3997") == (("pending", None, None), None)


def test_an_update_keeps_the_place_and_a_re_add_moves_to_the_newest_end() -> None:
    t = StatusTable(max_tracked=3)
    for pid in ("a", "b", "c"):
        t.add(pid, ("pending", None, None))
    t.update("a", ("acked", 0, 1))  # still the oldest
    t.update("zz", ("acked", 0, 2))  # unknown ids are not added by an update
    t.add("d", ("pending", None, None))
    assert t.get("a") == (None, None) and t.get("zz") == (None, None)
    t.add("b", ("pending", None, None))  # b becomes the newest: c is the oldest now
    t.add("e", ("pending", None, None))
    assert t.get("c") == (None, None)
    assert t.get("b")[0] == ("pending", None, None) and len(t) == 3
