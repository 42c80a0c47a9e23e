"""Consumer-group lag and the once-per-second sampler of a pipeline run.

:class:`GroupLag` is one group's lag on one topic (end offsets minus committed offsets);
:class:`Sampler` records, once per second from the run's clock, the posts offered that second
and the lag of each probe: the rows a run's timeline is built from
(:func:`lab_kit.harness.results.build_timeline`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec


class GroupLag:
    """Lag of ``group`` on ``topic``: end offsets minus committed offsets (kafka-python's
    admin client; two small requests). Thread-safe."""

    def __init__(self, cfg: dict, group: str, topic: str, partitions: int):
        self.group = group
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._admin = KafkaAdminClient(**cfg, request_timeout_ms=5000)
        self._lock = threading.Lock()

    def lag(self) -> int | None:
        with self._lock:
            try:
                end = self._admin.list_partition_offsets({tp: OffsetSpec.LATEST
                                                          for tp in self.tps})
                committed = self._admin.list_group_offsets({self.group: self.tps}).get(
                    self.group, {})
            except Exception:  # noqa: BLE001 - a missed sample is reported as None
                return None
        total = 0
        for tp in self.tps:
            c = committed.get(tp)
            done = c.offset if c is not None and c.offset is not None and c.offset >= 0 else 0
            total += max(0, end[tp].offset - done)
        return total

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._admin.close()


class Sampler:
    """Once per second from ``t0`` (epoch): posts offered that second (difference of
    ``offered()``) and the lag of each :class:`GroupLag`. Row ``t_s = k`` covers
    ``[t0 + k, t0 + k + 1)``; ``stop()`` adds a last row with what is left, so the rows'
    ``offered`` always sum to ``offered()``."""

    def __init__(self, t0: float, offered, lags: dict[str, GroupLag], max_rows: int):
        self.t0, self.offered, self.lags, self.max_rows = t0, offered, lags, max_rows
        self.rows: list[dict[str, Any]] = []
        self._prev = 0
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pipeline-sampler")

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _sample(self) -> None:
        n = self.offered()
        row: dict[str, Any] = {"t_s": self._next, "offered": n - self._prev}
        self._prev = n
        for name, probe in self.lags.items():
            row[name] = probe.lag()
        self.rows.append(row)
        self._next += 1

    def _run(self) -> None:
        while self._next < self.max_rows:
            if self._stop.wait(max(0.0, self.t0 + self._next + 1 - time.time())):
                return
            self._sample()

    def stop(self) -> list[dict[str, Any]]:
        if self._stop.is_set():
            return self.rows
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        if self.offered() != self._prev or not self.rows:
            self._sample()
        return self.rows
