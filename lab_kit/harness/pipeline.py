"""One pipeline on fresh topics: the moderation backend, the moderation service, a producer.

:class:`Pipeline` (a context manager) creates the topics under a prefix, starts the backend
process and, on request, the service (:class:`~lab_kit.harness.service_process.ServiceProcess`);
it gives lag probes (:class:`~lab_kit.harness.sampler.GroupLag`), CPU snapshots of every
stage, and waits (a warm-up result, the group's members, the drain). :func:`make_producer`,
:class:`StampedSubmit` and :func:`warm_up` are the load side. The sequence a run makes of them
is :class:`lab_kit.harness.runner.PipelineRun`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from lab_kit.harness.sampler import GroupLag
from lab_kit.harness.service_process import (
    ServiceProcess,
    broker_pids,
    pids_cpu_s,
    process_cpu_s,
    thread_cpu_s,
)
from lab_kit.moderation import topic_names
from lab_kit.moderation.backend import ModerationBackend
from lab_kit.moderation.clients import DEFAULT_CLIENT
from lab_kit.posts import Post
from lab_kit.producer import AsyncPostProducer, BackpressureError
from lab_kit.topics import ensure_topics

WARMUP_TIMEOUT_S = 90.0



def wait_for_group(cfg: dict, group: str, members: int, timeout_s: float, *,
                   check: Callable[[], object] | None = None, poll_s: float = 0.5) -> bool:
    """Until consumer group ``group`` is Stable with at least ``members`` members (False
    after ``timeout_s``). ``check`` runs every round (it raises if the service died)."""
    deadline = time.monotonic() + timeout_s
    admin = KafkaAdminClient(**cfg, request_timeout_ms=5000)
    try:
        while time.monotonic() < deadline:
            if check is not None:
                check()
            with contextlib.suppress(Exception):
                desc = admin.describe_groups([group])[group]
                if desc.get("group_state") == "Stable" and len(
                        desc.get("members") or []) >= members:
                    return True
            time.sleep(poll_s)
        return False
    finally:
        admin.close()

class Pipeline:
    """Fresh topics under ``prefix``, a backend process, the moderation service processes.

    Use as a context manager: leaving it stops the service (SIGTERM, then SIGKILL after
    20 s) and the backend, whatever happened.
    """

    def __init__(self, broker, *, prefix: str, workdir: Path, processes: int = 1,
                 client: str = DEFAULT_CLIENT, service_args: tuple[str, ...] = (),
                 backend_settings: dict[str, float] | None = None,
                 max_seconds: float | None = None):
        self.broker, self.prefix, self.workdir = broker, prefix, Path(workdir)
        self.cfg = broker.client_config()
        self.names = topic_names(prefix)
        self.processes, self.client = processes, client
        self.service_args = tuple(service_args)
        if max_seconds is not None:  # a safety net: a service orphaned by a killed run ends
            self.service_args += ("--max-seconds", f"{max_seconds:.0f}")
        self.backend_settings = dict(backend_settings or {})
        self.group = f"{prefix}moderation"
        self.partitions = {key: 3 for key in self.names}
        self.partitions.update(posts=max(6, 2 * processes), results=6, dlq=1)
        self.backend = None
        self.service: ServiceProcess | None = None
        self.service_stop: dict[str, Any] | None = None
        self._probes: list[GroupLag] = []

    # -- set-up ------------------------------------------------------------------------------
    def create_topics(self) -> None:
        ensure_topics(self.cfg, names=tuple(self.names.values()),
                      partitions={self.names[k]: n for k, n in self.partitions.items()})

    def start_backend(self):
        state_dir = self.workdir / "backend"
        try:  # settings (capacity_per_s, ...) as start values: reset_faults keeps them
            backend = ModerationBackend(state_dir=state_dir, **self.backend_settings)
            late = {}
        except TypeError:  # an older backend: set them at run time instead
            backend, late = ModerationBackend(state_dir=state_dir), self.backend_settings
        self.backend = backend.start()
        if late:
            try:
                self.backend.set_faults(**late)
            except Exception as exc:
                raise RuntimeError(f"the moderation backend refused {late}: {exc}") from exc
        return self.backend

    def start_service(self) -> ServiceProcess:
        self.service = ServiceProcess(
            self.cfg["bootstrap_servers"], self.backend.url, prefix=self.prefix,
            group=self.group, processes=self.processes, client=self.client,
            extra_args=self.service_args, log_path=self.workdir / "moderation.log").start()
        return self.service

    def __enter__(self) -> Pipeline:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.create_topics()
            self.start_backend()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for probe in self._probes:
            probe.close()
        self._probes.clear()
        if self.service is not None and self.service_stop is None:
            self.service_stop = self.service.stop()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.stop()

    # -- probes ------------------------------------------------------------------------------
    def lag_probe(self, key: str = "posts", group: str | None = None) -> GroupLag:
        probe = GroupLag(self.cfg, group or self.group, self.names[key], self.partitions[key])
        self._probes.append(probe)
        return probe

    def cpu_snapshot(self) -> dict[str, float | None]:
        return {"producer": process_cpu_s(psutil.Process()),
                "moderation": self.service.cpu_seconds() if self.service else None,
                "backend": pids_cpu_s([self.backend.pid] if self.backend.pid else []),
                "broker": pids_cpu_s(broker_pids(self.broker)),
                "load_threads": thread_cpu_s()}

    def _check_service(self) -> None:
        if self.service is not None and not self.service.alive():
            raise RuntimeError(f"the moderation service exited with code "
                               f"{self.service.proc.returncode}:\n{self.service.log_tail()}")

    def wait_for_result(self, post_id: str, timeout_s: float = WARMUP_TIMEOUT_S) -> float:
        """Wait until ``post_id`` has a result (the service is up and moderating); then,
        bounded by the same deadline, until every member of the group has partitions.
        Returns the seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        topic = self.names["results"]
        consumer = KafkaConsumer(**self.cfg, enable_auto_commit=False, group_id=None,
                                 isolation_level="read_committed")
        try:
            parts = [TopicPartition(topic, p) for p in range(self.partitions["results"])]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            found = False
            while not found:
                self._check_service()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the moderation service did not moderate a warm-up "
                                       f"post within {timeout_s:g} s:\n"
                                       f"{self.service.log_tail() if self.service else ''}")
                for recs in consumer.poll(timeout_ms=300).values():
                    found = found or any(post_id.encode() in (r.value or b"") for r in recs)
        finally:
            consumer.close()
        if self.processes > 1:
            self.wait_for_members(max(1.0, deadline - time.monotonic()))
        return time.monotonic() - t0

    def wait_for_members(self, timeout_s: float, poll_s: float = 0.5) -> bool:
        """Until the service's group is Stable with every member process in it."""
        return wait_for_group(self.cfg, self.group, self.processes, timeout_s,
                              check=self._check_service, poll_s=poll_s)

    def wait_drained(self, probes: list[GroupLag], timeout_s: float) -> bool:
        """Until every probe's lag is 0 (all posts consumed and their outputs acked and
        committed), the service died, or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.service is not None and not self.service.alive():
                return False
            if all(p.lag() == 0 for p in probes):
                return True
            time.sleep(0.5)
        return False

    def stop_service(self) -> dict[str, Any]:
        if self.service is not None and self.service_stop is None:
            self.service_stop = self.service.stop()
        return self.service_stop or {}

    def delete_topics(self) -> None:
        with contextlib.suppress(Exception):
            admin = KafkaAdminClient(**self.cfg, request_timeout_ms=10000)
            try:
                admin.delete_topics(list(self.names.values()), timeout_ms=10000)
            finally:
                admin.close()


def make_producer(pipeline: Pipeline, **overrides: Any):
    """kafka-python ``AsyncPostProducer`` on the pipeline's posts topic, the lab's defaults."""
    return AsyncPostProducer(pipeline.cfg["bootstrap_servers"], pipeline.names["posts"],
                             dlq_topic=pipeline.names["dlq"], **pipeline.broker.extra_config(),
                             **overrides)


class StampedSubmit:
    """The open loop's submit: stamps ``created_at`` at submission, remembers the ids."""

    def __init__(self, producer):
        self.producer = producer
        self.ids: list[str] = []
        self.rejected = 0

    def __call__(self, post: Post, intended_at: float) -> None:
        # the constructor, not dataclasses.replace: less than half its cost, once per post
        post = Post(post.user_id, post.text, post.post_id, time.time(), post.media_urls,
                    post.lang, post.reply_to)
        try:
            self.producer.submit(post, intended_at=intended_at)
        except BackpressureError:  # not accepted: not a submitted post
            self.rejected += 1
            return
        self.ids.append(post.post_id)

    def count(self) -> int:
        return len(self.ids)


def warm_up(pipeline: Pipeline, producer, stamp: str) -> float:
    post = Post(user_id="warmup", text="warm-up post, not measured",
                post_id=f"warmup-{stamp}")
    producer.submit(post).result(timeout=30)
    return pipeline.wait_for_result(post.post_id)
