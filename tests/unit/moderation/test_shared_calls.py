"""The chunks one dispatch round starts share backend calls (fuller requests), and each chunk
still gets exactly its own posts' verdicts, in order, or its share of a failed call's
fallback. The backend is a stand-in function here; against the real backend and broker the
moderation tests in tests/broker/moderation run the same code."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lab_kit.moderation.backend import ModerationResult
from lab_kit.moderation.clients import Rec
from lab_kit.moderation.offsets import Chunk
from lab_kit.moderation.service import ModerationService
from lab_kit.posts import Workload


def _service(batch_size: int, fail_calls: set[int] = frozenset()):
    svc = ModerationService("127.0.0.1:1", "http://127.0.0.1:1", batch_size=batch_size,
                            shed_after_ms=None)
    calls: list[list[str]] = []

    def call(posts):  # what _call returns, without HTTP: the post's number as its score
        calls.append([p.post_id for p in posts])
        if len(calls) - 1 in fail_calls:
            return "fail", "BackendTimeout"
        return "ok", [ModerationResult(label="approve", score=_number(p), reasons=(),
                                       latency_ms=1.0, post_id=p.post_id) for p in posts]

    svc._call = call  # type: ignore[method-assign]
    svc._pool = ThreadPoolExecutor(2)  # what run() starts
    return svc, calls


def _number(post) -> float:
    return int(post.post_id.rsplit("-", 1)[1]) / 1000  # a score must be in [0, 1]


def _chunks(svc: ModerationService, sizes: list[int]) -> list[Chunk]:
    posts = iter(Workload(seed=4).posts(sum(sizes)))
    chunks = []
    for partition, n in enumerate(sizes):
        records = [Rec("posts", partition, off, 0, b"u", b"{}", []) for off in range(n)]
        chunk = Chunk(("posts", partition), records)
        chunk.items = [next(posts) for _ in range(n)]
        svc._begin(chunk)
        chunks.append(chunk)
    svc._end_dispatch()
    svc._pool.shutdown(wait=True)
    return chunks


def test_a_round_of_chunks_shares_calls_and_each_gets_its_own_verdicts():
    svc, calls = _service(batch_size=100)
    chunks = _chunks(svc, [46, 40, 30, 50, 1, 45])  # 212 posts from six partitions
    assert [len(c) for c in calls] == [100, 100, 12]  # not six calls of 1..50
    for chunk in chunks:
        verdicts = svc._verdicts(chunk)
        assert [v.score for v, _cause in verdicts] == [_number(p) for p in chunk.items]
        assert all(cause is None for _v, cause in verdicts)
    # the third and the last chunk cross a call boundary (at post 100 and 200): two shares
    assert [len(c.calls) for c in chunks] == [1, 1, 2, 1, 1, 2]


def test_a_failed_call_falls_back_for_its_posts_only():
    svc, calls = _service(batch_size=50, fail_calls={1})
    chunks = _chunks(svc, [30, 40, 20])  # calls: 0..49, 50..89 (fails)
    causes = [cause for chunk in chunks for _v, cause in svc._verdicts(chunk)]
    assert causes == [None] * 50 + ["BackendTimeout"] * 40
    assert [v.score for v, _ in svc._verdicts(chunks[0])] == [_number(p) for p in chunks[0].items]
