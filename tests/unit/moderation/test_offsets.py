"""The commit rule of the asynchronous moderation stage, without a broker."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from lab_kit.moderation.offsets import Chunk, OffsetTracker

TP0, TP1 = ("posts", 0), ("posts", 1)


def recs(first: int, n: int) -> list:
    return [SimpleNamespace(offset=o) for o in range(first, first + n)]


def done_chunk(tp, first, n, outputs=2) -> Chunk:
    c = Chunk(tp, recs(first, n))
    c.expect(outputs)
    c.seal()
    return c


def test_chunk_is_acked_only_when_sealed_and_every_output_succeeded() -> None:
    c = Chunk(TP0, recs(10, 3))
    assert (c.first, c.end) == (10, 13)
    c.expect(2)
    c.output_done()
    c.output_done()
    assert not c.acked and not c.settled  # not sealed: more outputs may come
    c.seal()
    assert c.acked and c.settled and c.outputs == 2
    failed = Chunk(TP0, recs(13, 1))
    failed.expect(2)
    failed.seal()
    failed.output_done(RuntimeError("boom"))
    assert not failed.settled
    failed.output_done()
    assert failed.settled and failed.failed and not failed.acked


def test_commit_point_is_the_end_of_the_contiguous_acked_prefix() -> None:
    t = OffsetTracker()
    a, b, c = (t.add(Chunk(TP0, recs(f, 5))) for f in (0, 5, 10))
    for ch in (a, b, c):
        ch.expect(1)
        ch.seal()
    c.output_done()  # the last chunk is acked first
    assert t.committable() == {}  # 0..9 still in flight: committing 15 would lose them
    a.output_done()
    assert t.committable() == {TP0: 5}
    assert t.committable() == {}  # each point once
    b.output_done()
    assert t.committable() == {TP0: 15}
    assert t.chunks(TP0) == [] and t.in_flight() == 0


def test_partitions_are_independent_and_restart_points_name_the_first_unacked() -> None:
    t = OffsetTracker()
    t.add(done_chunk(TP0, 0, 4))
    slow = t.add(Chunk(TP1, recs(100, 4)))
    slow.expect(1)
    slow.seal()
    t.add(Chunk(TP1, recs(104, 2)))
    for ch in t.chunks(TP0):
        ch.output_done()
        ch.output_done()
    assert t.committable() == {TP0: 4}
    assert t.restart_points() == {TP1: 100}
    assert t.in_flight() == 6
    t.forget([TP1])
    assert t.restart_points() == {} and t.in_flight() == 0


def test_a_failed_chunk_blocks_the_commit_point() -> None:
    t = OffsetTracker()
    a = t.add(Chunk(TP0, recs(0, 2)))
    b = t.add(done_chunk(TP0, 2, 2, outputs=0))
    a.expect(1)
    a.seal()
    a.output_done(TimeoutError("no ack"))
    assert b.acked and a.failed
    assert t.committable() == {}
    assert t.restart_points() == {TP0: 0}


def test_chunks_must_come_in_offset_order() -> None:
    t = OffsetTracker()
    t.add(Chunk(TP0, recs(10, 5)))
    with pytest.raises(ValueError, match="overlaps"):
        t.add(Chunk(TP0, recs(12, 5)))
    with pytest.raises(ValueError, match="at least one record"):
        Chunk(TP0, [])


def test_concurrent_acks_from_many_threads_settle_exactly_once() -> None:
    c = Chunk(TP0, recs(0, 1))
    n = 4000
    c.expect(n)
    c.seal()
    threads = [threading.Thread(target=lambda: [c.output_done() for _ in range(n // 8)])
               for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert c.acked and c.outputs == n
