"""Where a moderation member spends its CPU: thread CPU time per phase of the stage loop.

Each phase is timed with the CPU clock of the thread that runs it (``time.thread_time_ns``),
once per poll, chunk or call, never per post: waiting (a poll with nothing to fetch, a
backend call in flight) costs no CPU and is not counted. What no phase covers is the
client's own threads (librdkafka's, or kafka-python's sender and heartbeat threads), the
garbage collector and the loop's bookkeeping: ``other`` is the process's CPU time since
:meth:`StageProfile.start` minus the phases.

Phases (:data:`PHASES`):

* ``consume``: ``poll()`` (fetching and the client's decoding of records);
* ``decode``: each record's JSON to a validated :class:`~lab_kit.posts.Post`;
* ``dispatch``: chunks formed and handed to the backend pool (or, while shedding, nothing);
* ``backend_client``: a call to the backend on a pool thread (request encoded, HTTP,
  response decoded);
* ``results``: verdicts to outputs: each output encoded and handed to the producer;
* ``delivery_reports``: the producer's delivery reports served (confluent: ``poll(0)``);
* ``commit``: settled outputs counted, offsets committed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

PHASES = ("consume", "decode", "dispatch", "backend_client", "results", "delivery_reports",
          "commit")


class StageProfile:
    """Thread CPU nanoseconds per phase, added from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ns = dict.fromkeys(PHASES, 0)
        self._process0 = time.process_time_ns()

    def start(self) -> None:
        """Forget what was counted (the member's run starts now)."""
        with self._lock:
            self._ns = dict.fromkeys(PHASES, 0)
            self._process0 = time.process_time_ns()

    def add(self, phase: str, ns: int) -> None:
        with self._lock:
            self._ns[phase] += ns

    def snapshot(self) -> dict[str, Any]:
        """``{"process_cpu_s": ..., "phases_cpu_s": {phase: s, ..., "other": s}}``."""
        with self._lock:
            ns = dict(self._ns)
        process = time.process_time_ns() - self._process0
        phases = {k: v / 1e9 for k, v in ns.items()}
        phases["other"] = max(0, process - sum(ns.values())) / 1e9
        return {"process_cpu_s": process / 1e9, "phases_cpu_s": phases}


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The members' snapshots summed (None if none had one)."""
    snaps = [s for s in snapshots if s and s.get("phases_cpu_s")]
    if not snaps:
        return None
    phases: dict[str, float] = {}
    for s in snaps:
        for k, v in s["phases_cpu_s"].items():
            phases[k] = phases.get(k, 0.0) + v
    return {"process_cpu_s": sum(s.get("process_cpu_s") or 0.0 for s in snaps),
            "phases_cpu_s": phases}
