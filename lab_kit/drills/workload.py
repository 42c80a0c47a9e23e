"""The drills' workload: posts submitted open-loop at a fixed rate, and what it records.

:class:`DrillSettings` says how many posts, how fast, and when the nemesis strikes;
:class:`TimedSubmit` is the submit the open loop (:func:`lab_kit.harness.open_loop.
run_open_loop`) calls for every post: it remembers the accepted ids (for the checker) and how
long ``submit()`` took while the fault was on; :class:`RssSampler` samples this process's
memory meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from lab_kit.harness.checker import KafkaCallWatch
    from lab_kit.harness.nemesis import Nemesis


@dataclass
class DrillSettings:
    posts: int = 20_000
    rate: float = 2_000.0
    outage_s: float = 4.0
    lead_s: float = 2.0  # load runs this long before the nemesis strikes
    client: str = "kafka-python"  # the producer's Kafka client (AsyncPostProducer(client=))

    def validate(self) -> None:
        # a lazy import: the producer package is heavy, and settings are built without it
        from lab_kit.producer.async_producer import CLIENTS

        if self.client not in CLIENTS:
            raise ValueError(f"--client must be one of {CLIENTS}, got {self.client!r}")
        if not 1 <= self.posts <= 1_000_000:
            raise ValueError(f"--posts must be between 1 and 1000000, got {self.posts}")
        if not 1 <= self.rate <= 50_000:
            raise ValueError(f"--rate must be between 1 and 50000 posts/s, got {self.rate}")
        if not 0.5 <= self.outage_s <= 300:
            raise ValueError(f"--outage must be between 0.5 and 300 s, got {self.outage_s}")

    @property
    def duration_s(self) -> float:
        return self.posts / self.rate

    def to_dict(self) -> dict[str, Any]:
        return {"posts": self.posts, "rate": self.rate, "outage_s": self.outage_s,
                "lead_s": self.lead_s, "client": self.client}

    @classmethod
    def for_drill(cls, name: str, **overrides: Any) -> DrillSettings:
        """Defaults per drill: moderation calls an HTTP service per post, so its drills run
        at a rate one consumer can moderate (~150 posts/s) instead of 2,000 posts/s."""
        if name.startswith("moderation"):
            base = cls(posts=1_500, rate=150.0)
        elif name == "broker-outage-long":  # down 12 s: past the drill's 5 s delivery timeout
            base = cls(posts=24_000, rate=1_000.0, outage_s=12.0, lead_s=3.0)
        else:
            base = cls()
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base


class RssSampler:
    """Samples this process's resident memory every ``interval_s`` (peak and baseline)."""

    def __init__(self, interval_s: float = 0.2):
        self.proc = psutil.Process()
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self.interval_s = interval_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak = max(self.peak, self.proc.memory_info().rss)


class TimedSubmit:
    """The workload's submit: remembers every accepted post id, how long each ``submit``
    took while the nemesis was active (the user-facing latency during the fault, for the
    report), and — with a :class:`~lab_kit.harness.checker.KafkaCallWatch` on the caller's
    thread — how many posts ``submit()`` spooled and how many of those made a Kafka client
    call on the way (the check: none; ``kafka_calls_while_spooling`` is None without a
    watch)."""

    def __init__(self, producer, nemesis: Nemesis, watch: KafkaCallWatch | None = None):
        self.producer, self.nemesis, self.watch = producer, nemesis, watch
        self.submitted: list[str] = []
        self.during: list[float] = []
        self.spooled_by_caller = 0
        self._kafka_calls_while_spooling = 0

    @property
    def kafka_calls_while_spooling(self) -> int | None:
        return self._kafka_calls_while_spooling if self.watch is not None else None

    def __call__(self, post, intended_at: float) -> None:
        calls = self.watch.calls if self.watch is not None else 0
        t0 = time.perf_counter()
        future = self.producer.submit(post, intended_at=intended_at)
        settled = future.done()  # at once: later, the worker may have re-spooled a sent post
        took = time.perf_counter() - t0
        self.submitted.append(post.post_id)
        if self.nemesis.active:
            self.during.append(took)
        if settled and future.exception(0) is None and future.result(0).outcome == "spooled":
            self.spooled_by_caller += 1
            if self.watch is not None and self.watch.calls != calls:
                self._kafka_calls_while_spooling += 1
