"""The drills' checkers: what landed, read back, never what the producer believes.

* :func:`lab_kit.harness.readback.audit` (re-exported here) reads the posts topic and its
  DLQ back and counts every submitted post by id: delivered once, duplicated, dead-lettered,
  lost;
* :func:`check_results` reads the moderation results back: every post has a verdict, every
  degraded verdict was re-checked (:class:`ResultsCheck`);
* :class:`KafkaCallWatch` counts the Kafka client calls made on the workload's thread: a post
  that ``submit()`` spooled must not have cost the caller one (the user never waits on Kafka,
  checked by what happened rather than by a stopwatch).
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from lab_kit.harness.readback import AuditReport, audit
from lab_kit.harness.results import first_verdicts
from lab_kit.producer.librdkafka import LibrdkafkaClient

__all__ = ["WATCHED_METHODS", "AuditReport", "KafkaCallWatch", "ResultsCheck", "audit",
           "check_results"]


@dataclass
class ResultsCheck:
    """The moderation checker's verdict, from the results topic read back, by post_id.

    A post's *first verdict* is its earliest result that is not a recheck
    (:func:`lab_kit.harness.results.first_verdicts`): a post with only a recheck result has no
    verdict of its own and counts as missing. ``results_duplicates`` are extra first-verdict
    results (at-least-once re-processing); ``degraded`` posts had a fallback verdict and each
    needs a recheck result (``rechecked_missing`` lists those without one).
    """

    results_missing: int
    results_duplicates: int
    degraded: int
    rechecked: int
    rechecked_missing: int
    missing_ids: list[str]
    duplicate_ids: list[str]
    unrechecked_ids: list[str]

    @property
    def ok(self) -> bool:
        return self.results_missing == 0 and self.rechecked_missing == 0

    def to_dict(self, max_ids: int = 20) -> dict[str, Any]:
        return {"results_missing": self.results_missing,
                "results_duplicates": self.results_duplicates,
                "degraded": self.degraded, "rechecked": self.rechecked,
                "rechecked_missing": self.rechecked_missing,
                "results_missing_ids": self.missing_ids[:max_ids],
                "results_duplicate_ids": self.duplicate_ids[:max_ids],
                "unrechecked_ids": self.unrechecked_ids[:max_ids]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResultsCheck:
        """The inverse of :meth:`to_dict` (the id lists as saved: at most ``max_ids``)."""
        return cls(results_missing=d["results_missing"],
                   results_duplicates=d["results_duplicates"], degraded=d["degraded"],
                   rechecked=d["rechecked"], rechecked_missing=d["rechecked_missing"],
                   missing_ids=list(d.get("results_missing_ids", [])),
                   duplicate_ids=list(d.get("results_duplicate_ids", [])),
                   unrechecked_ids=list(d.get("unrechecked_ids", [])))


def check_results(results: dict[str, list[dict]], submitted_ids: list[str] | set[str]
                  ) -> ResultsCheck:
    """Check ``results`` (:func:`lab_kit.moderation.moderation_results` of the results topic)
    against the submitted post ids; ids not submitted are ignored."""
    ids = list(dict.fromkeys(submitted_ids))
    firsts, duplicates, missing = first_verdicts(results, ids)
    degraded = {pid for pid, r in firsts.items() if r.get("degraded")}
    rechecked = {pid for pid in degraded
                 if any(r.get("source") == "recheck" for r in results.get(pid, ()))}
    dup_ids = sorted(pid for pid in firsts
                     if sum(r.get("source") != "recheck" for r in results[pid]) > 1)
    return ResultsCheck(
        results_missing=missing, results_duplicates=duplicates, degraded=len(degraded),
        rechecked=len(rechecked), rechecked_missing=len(degraded - rechecked),
        missing_ids=sorted(pid for pid in ids if pid not in firsts), duplicate_ids=dup_ids,
        unrechecked_ids=sorted(degraded - rechecked))


#: KafkaProducer methods a caller could block in (send waits for metadata, flush for acks,
#: the constructor for a bootstrap connection, close for the sender thread)
WATCHED_METHODS = ("__init__", "send", "flush", "partitions_for", "close", "metrics",
                   "bootstrap_connected")
#: ... and those of the lab's librdkafka client (``AsyncPostProducer(client="confluent")``)
WATCHED_LIBRDKAFKA_METHODS = ("__init__", "send", "produce_for", "flush", "partitions_for",
                              "close", "force_close", "metrics")


def _watched() -> list[tuple[type, str]]:
    return ([(KafkaProducer, name) for name in WATCHED_METHODS]
            + [(LibrdkafkaClient, name) for name in WATCHED_LIBRDKAFKA_METHODS])


class KafkaCallWatch:
    """Counts calls into a Kafka client (kafka-python's ``KafkaProducer``, or the lab's
    :class:`~lab_kit.producer.librdkafka.LibrdkafkaClient`) made on one thread.

    Used as ``with KafkaCallWatch() as watch:`` on the thread that calls ``submit()``; while
    any watch is active, the :data:`WATCHED_METHODS` of ``KafkaProducer`` (and
    :data:`WATCHED_LIBRDKAFKA_METHODS`) are wrapped (once, for every watch) and restored when
    the last watch ends. ``calls`` is the running total for the watched thread,
    ``by_method`` the same per method name. A spooled post whose
    ``submit()`` moved ``calls`` reached the Kafka client: it may have waited on Kafka.
    """

    _lock = threading.Lock()
    _active: tuple[KafkaCallWatch, ...] = ()
    _originals: dict[tuple[type, str], Any] = {}

    def __init__(self, thread: threading.Thread | None = None):
        self.thread_id = (thread or threading.current_thread()).ident
        self.calls = 0
        self.by_method: Counter[str] = Counter()

    def _seen(self, name: str) -> None:
        self.calls += 1
        self.by_method[name] += 1

    @classmethod
    def _install(cls) -> None:
        for owner, name in _watched():
            original = owner.__dict__[name]
            cls._originals[owner, name] = original

            def wrapper(*args: Any, _name: str = name, _original: Any = original,
                        _kp: bool = owner is KafkaProducer, **kwargs: Any) -> Any:
                ident = threading.get_ident()
                if _kp and _name == "close" and args and getattr(args[0], "_closed", True):
                    # a no-op: kafka-python's __del__ closes a client closed long ago (or
                    # one whose __init__ failed), on whatever thread the garbage collector
                    # runs (measured: the caller's, inside a spool append); it returns at
                    # once, it cannot wait on Kafka
                    return _original(*args, **kwargs)
                for watch in KafkaCallWatch._active:
                    if watch.thread_id == ident:
                        watch._seen(_name)
                return _original(*args, **kwargs)

            setattr(owner, name, functools.wraps(original)(wrapper))

    @classmethod
    def _uninstall(cls) -> None:
        for (owner, name), original in cls._originals.items():
            setattr(owner, name, original)
        cls._originals = {}

    def __enter__(self) -> KafkaCallWatch:
        with KafkaCallWatch._lock:
            if not KafkaCallWatch._active:
                self._install()
            KafkaCallWatch._active = (*KafkaCallWatch._active, self)
        return self

    def __exit__(self, *exc: object) -> None:
        with KafkaCallWatch._lock:
            KafkaCallWatch._active = tuple(w for w in KafkaCallWatch._active if w is not self)
            if not KafkaCallWatch._active:
                self._uninstall()
