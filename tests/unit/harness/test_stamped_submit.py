"""The open loop's submit stamps ``created_at`` when the post is submitted and keeps every
other field of the post as it was built."""

from __future__ import annotations

import dataclasses
import time

from lab_kit.harness.pipeline import StampedSubmit
from lab_kit.posts import Post, Workload
from lab_kit.producer.errors import BackpressureError


class _Producer:
    def __init__(self, refuse: set[str] = frozenset()):
        self.got: list[tuple[Post, float]] = []
        self.refuse = refuse

    def submit(self, post: Post, *, intended_at: float) -> None:
        if post.post_id in self.refuse:
            raise BackpressureError(1, 0.0)
        self.got.append((post, intended_at))


def test_created_at_is_the_submit_time_and_nothing_else_changes():
    posts = Workload(seed=3).posts(50)
    assert any(p.media_urls for p in posts) and any(p.reply_to for p in posts)
    producer = _Producer(refuse={posts[7].post_id})
    submit = StampedSubmit(producer)
    before = time.time()
    for i, post in enumerate(posts):
        submit(post, intended_at=float(i))
    after = time.time()
    assert submit.rejected == 1 and submit.count() == 49
    assert submit.ids == [p.post_id for p in posts if p is not posts[7]]
    sent = {p.post_id: (p, t) for p, t in producer.got}
    for i, post in enumerate(posts):
        if i == 7:
            continue
        stamped, intended = sent[post.post_id]
        assert before <= stamped.created_at <= after and intended == float(i)
        assert dataclasses.replace(stamped, created_at=post.created_at) == post
