"""Which offsets a consumer may commit when many records are in flight at once.

The moderation stage (:mod:`lab_kit.moderation`) works on *chunks*: consecutive records of
one partition that are moderated together and whose outputs are produced together. Chunks of
different partitions are in flight at the same time, and a chunk's outputs can be acked after
those of the chunk behind it. Committing the end of an acked chunk while an earlier chunk of
the same partition is still in flight would lose that earlier chunk if the process died.

The rule (the Confluent Parallel Consumer's, and Jaeger's ingester's): per partition, commit
the end of the **longest contiguous prefix of acked chunks**. A killed member then loses
nothing and re-processes at most what was in flight.

:class:`Chunk` counts its outputs: ``expect()`` for every output handed to the producer,
``output_done(error)`` from the delivery callback (any thread), ``sealed()`` once the last
output was handed over. It is acked when it is sealed and every output succeeded.
:class:`OffsetTracker` keeps the chunks of every partition in offset order. Pure logic, no
Kafka: ``tests/unit/test_offsets.py`` checks it without a broker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["TP", "Chunk", "OffsetTracker"]

TP = tuple[str, int]  # (topic, partition)


class Chunk:
    """Consecutive records of one partition, moderated and produced together.

    ``first`` is the first record's offset, ``end`` the offset after the last one.
    """

    __slots__ = ("tp", "first", "end", "records", "items", "calls", "note", "outputs",
                 "_lock", "_pending", "_sealed", "_done_at", "error", "created_at",
                 "sealed_at")

    def __init__(self, tp: TP, records: list[Any]) -> None:
        if not records:
            raise ValueError("a chunk needs at least one record")
        self.tp = tp
        self.records = records
        self.first = records[0].offset
        self.end = records[-1].offset + 1
        self.items: list[Any] = []  # what the stage made of each record (parsed post, ...)
        self.calls: list[Any] = []  # backend calls under way (futures)
        self.note: Any = None  # the stage's own mark (e.g. "shed")
        self.outputs = 0  # outputs handed to the producer
        self._lock = threading.Lock()
        self._pending = 0
        self._sealed = False
        self._done_at: float | None = None
        self.error: BaseException | str | None = None
        self.created_at = time.monotonic()
        self.sealed_at: float | None = None

    def __repr__(self) -> str:
        return (f"<Chunk {self.tp[0]}[{self.tp[1]}] {self.first}..{self.end - 1} "
                f"pending={self._pending} sealed={self._sealed} error={self.error!r}>")

    def expect(self, n: int = 1) -> None:
        """``n`` more outputs were handed to the producer."""
        with self._lock:
            self._pending += n
            self.outputs += n

    def output_done(self, error: BaseException | None = None) -> None:
        """One output settled (called from the producer's delivery callback)."""
        with self._lock:
            self._pending -= 1
            if error is not None and self.error is None:
                self.error = error
            if self._sealed and self._pending == 0 and self._done_at is None:
                self._done_at = time.monotonic()

    def seal(self) -> None:
        """Every output of the chunk was handed to the producer."""
        with self._lock:
            self._sealed = True
            self.sealed_at = time.monotonic()
            if self._pending == 0 and self._done_at is None:
                self._done_at = time.monotonic()

    @property
    def sealed(self) -> bool:
        return self._sealed

    @property
    def settled(self) -> bool:
        """Sealed and every output acked or failed."""
        return self._done_at is not None

    @property
    def acked(self) -> bool:
        """Sealed, every output settled and none failed: its offsets may be committed."""
        return self._done_at is not None and self.error is None

    @property
    def failed(self) -> bool:
        return self.error is not None


class OffsetTracker:
    """Chunks in flight per partition, and the offsets that are safe to commit."""

    def __init__(self) -> None:
        self._chunks: dict[TP, deque[Chunk]] = {}
        self._committed: dict[TP, int] = {}  # the last offset handed out by committable()

    def add(self, chunk: Chunk) -> Chunk:
        """Track ``chunk``; chunks of a partition must come in offset order."""
        q = self._chunks.setdefault(chunk.tp, deque())
        if q and chunk.first < q[-1].end:
            raise ValueError(f"{chunk!r} overlaps or precedes {q[-1]!r}")
        q.append(chunk)
        return chunk

    def chunks(self, tp: TP | None = None) -> list[Chunk]:
        if tp is not None:
            return list(self._chunks.get(tp, ()))
        return [c for q in self._chunks.values() for c in q]

    def in_flight(self) -> int:
        """Records in chunks that are not yet acked."""
        return sum(c.end - c.first for q in self._chunks.values() for c in q)

    def committable(self) -> dict[TP, int]:
        """Per partition whose commit point moved: the end of the contiguous acked prefix.

        Acked chunks of that prefix are forgotten; the returned offsets are remembered, so
        each is returned once.
        """
        out: dict[TP, int] = {}
        for tp, q in self._chunks.items():
            end = None
            while q and q[0].acked:
                end = q.popleft().end
            if end is not None and end > self._committed.get(tp, -1):
                out[tp] = end
                self._committed[tp] = end
        return out

    def restart_points(self) -> dict[TP, int]:
        """Per partition with chunks still tracked: where to resume (first unacked offset)."""
        out: dict[TP, int] = {}
        for tp, q in self._chunks.items():
            for c in q:
                if not c.acked:
                    out[tp] = c.first
                    break
        return out

    def forget(self, tps: Iterable[TP] | None = None) -> None:
        """Drop the chunks (and commit memory) of ``tps`` (all when None): after a rebalance
        or a rewind, whatever is re-read starts afresh."""
        for tp in list(self._chunks) if tps is None else list(tps):
            self._chunks.pop(tp, None)
            self._committed.pop(tp, None)
