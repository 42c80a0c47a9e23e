"""``python -m lab_kit bench pipeline``: the whole pipeline at a fixed rate, end to end.

Producer → Kafka ``posts`` → the moderation service (``python -m lab_kit.moderation``, N
processes of one consumer group) → moderation backend (HTTP) → ``moderation.results``. Every
part is a real process on this machine, on fresh topics (``bench.pipeline.<stamp>.*``):

* the **load**: posts offered open-loop at ``rate``/s for ``seconds`` through
  :class:`~lab_kit.producer.AsyncPostProducer`; each post's ``created_at`` is stamped when it
  is submitted, so ``moderated_at - created_at`` of its first verdict is the end-to-end
  latency a user would see (queueing included: no coordinated omission);
* a **sampler** (once per second): posts offered that second and the service group's lag on
  the posts topic (end offsets minus committed offsets);
* the **checker**: the results topic read back by ``post_id`` (missing, duplicated,
  degraded), and the posts topic audited (:func:`lab_kit.audit.audit`);
* the **CPU profile**: CPU time of each stage's processes over the timed part (``psutil``),
  per submitted post. When a target is missed, ``ceiling`` names the costliest stage and the
  cores 10,000 and 100,000 posts/s would need at the measured cost.

``--backlog N`` measures something else: N posts are written first, then the service starts
and drains them (``backlog_rate``, posts per second from its first result to its last).

The same pieces (:class:`Pipeline`, :class:`Sampler`) run ``drill moderation-overload``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lab_kit.machine import cpu_count, run_stamp
from lab_kit.metrics import percentiles_ms
from lab_kit.moderation.clients import CLIENTS as CLIENT_CHOICES
from lab_kit.output_paths import check_output_path
from lab_kit.posts import Post, Workload, run_open_loop
from lab_kit.producer import BackpressureError

FULL = {"rate": 10_000.0, "seconds": 30.0}
QUICK = {"rate": 2_000.0, "seconds": 5.0}
MAX_POSTS = 1_000_000  # the workload is built before the clock starts: bound its memory
WARMUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
STEADY_TRIM = 0.10  # achieved_rate leaves out the first and last 10 % of the results' span

#: (field, op, limit): what the full run (10,000 posts/s for 30 s or more) must reach.
TARGETS = (("achieved_rate", ">=", 9800.0), ("e2e_p99_ms", "<=", 2000.0),
           ("degraded_fraction", "<=", 0.01), ("lost", "<=", 0))
STAGES = ("producer", "moderation", "backend", "broker")


# =========================================================================================
# Settings: every value checked before anything starts
# =========================================================================================


@dataclass
class PipelineSettings:
    rate: float = FULL["rate"]
    seconds: float = FULL["seconds"]
    processes: int = 1
    client: str = "kafka-python"
    backlog: int | None = None
    shed_after_ms: float | None = None  # None: the service's default
    json_path: str | None = None
    quick: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PipelineSettings:
        for flag, value in (("--rounds", getattr(args, "rounds", None)),
                            ("--duration", getattr(args, "duration", None))):
            if value is not None:
                raise ValueError(f"{flag} belongs to the producer suite; `bench pipeline` "
                                 f"takes --rate, --seconds, --processes, --client, --backlog")
        base = QUICK if args.quick else FULL
        return cls(rate=base["rate"] if args.rate is None else args.rate,
                   seconds=base["seconds"] if args.seconds is None else args.seconds,
                   processes=1 if args.processes is None else args.processes,
                   client=args.client or "kafka-python", backlog=args.backlog,
                   shed_after_ms=args.shed_after_ms, json_path=args.json_path,
                   quick=args.quick)

    def validate(self) -> None:
        def bad(v: Any) -> bool:
            return isinstance(v, float) and not math.isfinite(v)

        if bad(self.rate) or not 0 < self.rate <= 100_000:
            raise ValueError(f"--rate must be in (0, 100000] posts/s, got {self.rate:g}")
        if bad(self.seconds) or not 0 < self.seconds <= 600:
            raise ValueError(f"--seconds must be in (0, 600], got {self.seconds:g}")
        if self.backlog is None and self.rate * self.seconds > MAX_POSTS:
            raise ValueError(f"--rate x --seconds must be at most {MAX_POSTS} posts (the "
                             f"workload is built in memory first), got "
                             f"{self.rate * self.seconds:.0f}")
        if not 1 <= self.processes <= 32:
            raise ValueError(f"--processes must be between 1 and 32, got {self.processes}")
        if self.client not in CLIENT_CHOICES:
            raise ValueError(f"--client must be one of {', '.join(CLIENT_CHOICES)}, "
                             f"got {self.client!r}")
        if self.client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError("--client confluent needs confluent-kafka "
                             "(pip install '.[confluent]')")
        if self.backlog is not None and not 1 <= self.backlog <= MAX_POSTS:
            raise ValueError(f"--backlog must be between 1 and {MAX_POSTS} posts, "
                             f"got {self.backlog}")
        if self.shed_after_ms is not None and (bad(self.shed_after_ms)
                                               or not 0 <= self.shed_after_ms <= 3_600_000):
            raise ValueError(f"--shed-after-ms must be in [0, 3600000] (0: never shed), "
                             f"got {self.shed_after_ms:g}")
        check_output_path(self.json_path, "--json")


# =========================================================================================
# The moderation service as its own processes
# =========================================================================================


def _cpu_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class ServiceProcess:
    """``python -m lab_kit.moderation ... --processes N`` in a session of its own.

    With N > 1 the started process is a supervisor that forwards SIGTERM to its members;
    with N = 1 it is the member itself. ``stop()`` sends SIGTERM and, after ``timeout_s``,
    SIGKILL to the session's process group (only the processes started here).
    """

    def __init__(self, bootstrap: str, backend_url: str, *, prefix: str, group: str,
                 processes: int = 1, client: str = "kafka-python",
                 extra_args: tuple[str, ...] = (), log_path: Path):
        self.cmd = [sys.executable, "-m", "lab_kit.moderation", "--bootstrap", bootstrap,
                    "--backend-url", backend_url, "--processes", str(processes),
                    "--client", client, "--group", group, "--topic-prefix", prefix,
                    *extra_args]
        self.group, self.processes, self.client = group, processes, client
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._procs: dict[int, psutil.Process] = {}

    def start(self) -> ServiceProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes_now(self) -> list[psutil.Process]:
        """The started process and all its children (cached: CPU deltas need the same
        objects, and a cached ``psutil.Process`` is safe against pid reuse)."""
        if self.proc is None:
            return []
        try:
            root = self._procs.setdefault(self.proc.pid, psutil.Process(self.proc.pid))
            for child in root.children(recursive=True):
                self._procs.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        return list(self._procs.values())

    def cpu_seconds(self) -> float | None:
        vals = [c for c in (_cpu_s(p) for p in self.processes_now()) if c is not None]
        return sum(vals) if vals else None

    def log_tail(self, n_bytes: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the process group."""
        out: dict[str, Any] = {"exit_code": None, "killed": False}
        if self.proc is None:
            return out
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                out["killed"] = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # our own session's group
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        out["exit_code"] = self.proc.returncode
        marker = "moderation service stopped:"
        stopped = [line.split(marker, 1)[1] for line in self.log_tail(1 << 20).splitlines()
                   if marker in line]
        out["members_stopped_cleanly"] = len(stopped)
        out["members"] = [_member_summary(text) for text in stopped]
        return out


def _member_summary(text: str) -> dict[str, Any]:
    """The few numbers of a member's stop summary a reader needs (state at the end)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    svc, rc = doc.get("service") or {}, doc.get("recheck") or {}
    return {"consumed": svc.get("consumed"), "results": svc.get("results"),
            "degraded": svc.get("degraded"), "breaker_state": svc.get("breaker_state"),
            "breaker_opens": svc.get("breaker_opens"), "shedding": svc.get("shedding"),
            "shed": svc.get("shed"), "overloaded": svc.get("overloaded"),
            "recheck_results": rc.get("results"), "recheck_gated": rc.get("gated")}


# =========================================================================================
# Consumer-group lag and the once-per-second sampler
# =========================================================================================


class GroupLag:
    """Lag of ``group`` on ``topic``: end offsets minus committed offsets (kafka-python's
    admin client; two small requests). Thread-safe."""

    def __init__(self, cfg: dict, group: str, topic: str, partitions: int):
        from kafka import KafkaAdminClient, TopicPartition

        self.group = group
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._admin = KafkaAdminClient(**cfg, request_timeout_ms=5000)
        self._lock = threading.Lock()

    def lag(self) -> int | None:
        from kafka.admin import OffsetSpec

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


# =========================================================================================
# One pipeline: topics, backend, service, producer
# =========================================================================================


def _cpu_of_pids(pids: list[int]) -> float | None:
    vals = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            c = _cpu_s(psutil.Process(pid))
            if c is not None:
                vals.append(c)
    return sum(vals) if vals else None


class Pipeline:
    """Fresh topics under ``prefix``, a backend process, the moderation service processes.

    Use as a context manager: leaving it stops the service (SIGTERM, then SIGKILL after
    20 s) and the backend, whatever happened.
    """

    def __init__(self, broker, *, prefix: str, workdir: Path, processes: int = 1,
                 client: str = "kafka-python", service_args: tuple[str, ...] = (),
                 backend_settings: dict[str, float] | None = None,
                 max_seconds: float | None = None):
        from lab_kit.moderation.stage import topic_names

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
        from lab_kit.topics import ensure_topics

        ensure_topics(self.cfg, names=tuple(self.names.values()),
                      partitions={self.names[k]: n for k, n in self.partitions.items()})

    def start_backend(self):
        from lab_kit.moderation.backend.server import ModerationBackend

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

    def broker_pids(self) -> list[int]:
        try:
            return [n.pid for n in self.broker.nodes() if n.pid]
        except Exception:  # noqa: BLE001 - e.g. an external broker: not measured
            return []

    def cpu_snapshot(self) -> dict[str, float | None]:
        return {"producer": _cpu_s(psutil.Process()),
                "moderation": self.service.cpu_seconds() if self.service else None,
                "backend": _cpu_of_pids([self.backend.pid] if self.backend.pid else []),
                "broker": _cpu_of_pids(self.broker_pids())}

    def _check_service(self) -> None:
        if self.service is not None and not self.service.alive():
            raise RuntimeError(f"the moderation service exited with code "
                               f"{self.service.proc.returncode}:\n{self.service.log_tail()}")

    def wait_for_result(self, post_id: str, timeout_s: float = WARMUP_TIMEOUT_S) -> float:
        """Wait until ``post_id`` has a result (the service is up and moderating); then,
        bounded by the same deadline, until every member of the group has partitions.
        Returns the seconds waited."""
        from kafka import KafkaConsumer, TopicPartition

        t0 = time.monotonic()
        deadline = t0 + timeout_s
        topic = self.names["results"]
        consumer = KafkaConsumer(**self.cfg, enable_auto_commit=False, group_id=None)
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
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout_s
        admin = KafkaAdminClient(**self.cfg, request_timeout_ms=5000)
        try:
            while time.monotonic() < deadline:
                self._check_service()
                with contextlib.suppress(Exception):
                    desc = admin.describe_groups([self.group])[self.group]
                    if desc.get("group_state") == "Stable" and len(
                            desc.get("members") or []) >= self.processes:
                        return True
                time.sleep(poll_s)
            return False
        finally:
            admin.close()

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
        from kafka import KafkaAdminClient

        with contextlib.suppress(Exception):
            admin = KafkaAdminClient(**self.cfg, request_timeout_ms=10000)
            try:
                admin.delete_topics(list(self.names.values()), timeout_ms=10000)
            finally:
                admin.close()


#: The pipeline bench's producer lingers 20 ms instead of the lab's 5: at 10,000 posts/s that
#: fills batches 4x fuller, which saves CPU in the producer and the broker on a machine
#: where every stage shares two cores (notebook 06 shows the trade-off). Reported in the JSON.
PRODUCER_LINGER_MS = 20


def make_producer(pipeline: Pipeline, **overrides: Any):
    """kafka-python ``AsyncPostProducer`` on the pipeline's posts topic, the lab's defaults."""
    from lab_kit.producer import AsyncPostProducer

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
        post = dataclasses.replace(post, created_at=time.time())
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


# =========================================================================================
# Reading the results
# =========================================================================================


def first_verdicts(results: dict[str, list[dict]], ids: list[str]
                   ) -> tuple[dict[str, dict], int, int]:
    """({post_id: its first non-recheck result}, duplicates, missing) for ``ids``."""
    firsts: dict[str, dict] = {}
    duplicates = missing = 0
    for pid in ids:
        own = [r for r in results.get(pid, ()) if r.get("source") != "recheck"]
        if not own:
            missing += 1
            continue
        duplicates += len(own) - 1
        firsts[pid] = min(own, key=lambda r: r.get("moderated_at") or 0.0)
    return firsts, duplicates, missing


def steady_rate(times: list[float], trim: float = STEADY_TRIM) -> float | None:
    """Events per second between the first and last ``trim`` of their span."""
    if len(times) < 2:
        return None
    times = sorted(times)
    lo, hi = times[0], times[-1]
    if hi <= lo:
        return None
    a, b = lo + trim * (hi - lo), hi - trim * (hi - lo)
    n = sum(1 for t in times if a <= t <= b)
    return n / (b - a)


def build_timeline(samples: list[dict], firsts: dict[str, dict], t0: float,
                   lag_keys: tuple[str, ...] = ("lag",),
                   events: dict[str, list[float]] | None = None) -> list[dict]:
    """Per-second rows ``{t_s, offered, moderated, lag, degraded}`` (+ other lag keys, and a
    count per second for each list of epoch times in ``events``)."""
    moderated: Counter[int] = Counter()
    degraded: Counter[int] = Counter()
    for r in firsts.values():
        k = max(0, int((r.get("moderated_at") or t0) - t0))
        moderated[k] += 1
        degraded[k] += bool(r.get("degraded"))
    extra = {name: Counter(max(0, int(t - t0)) for t in times)
             for name, times in (events or {}).items()}
    by_t = {s["t_s"]: s for s in samples}
    last = max([*by_t, *moderated, *(k for c in extra.values() for k in c), 0])
    rows = []
    for k in range(last + 1):
        s = by_t.get(k, {})
        row = {"t_s": k, "offered": s.get("offered", 0), "moderated": moderated[k],
               **{key: s.get(key) for key in lag_keys}, "degraded": degraded[k],
               **{name: c[k] for name, c in extra.items()}}
        rows.append(row)
    return rows


def cpu_per_post(before: dict, after: dict, posts: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for stage in STAGES:
        a, b = before.get(stage), after.get(stage)
        out[stage] = None if a is None or b is None or posts <= 0 else round(
            (b - a) / posts * 1e6, 2)
    return out


def evaluate_targets(report: dict) -> dict[str, dict]:
    out = {}
    for key, op, limit in TARGETS:
        value = report.get(key)
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out[key] = {"value": value, "target": limit, "op": op, "met": bool(met)}
    return out


def ceiling(cpu: dict[str, float | None]) -> dict[str, Any] | None:
    known = {k: v for k, v in cpu.items() if v is not None}
    if not known:
        return None
    stage = max(known, key=known.get)
    total = sum(known.values())
    return {"stage": stage, "stage_cpu_us_per_post": known[stage],
            "total_cpu_us_per_post": round(total, 2),
            "cores_at_10000_per_s": round(total * 10_000 / 1e6, 2),
            "cores_at_100000_per_s": round(total * 100_000 / 1e6, 2),
            "cores_here": cpu_count(),
            "not_measured": [k for k, v in cpu.items() if v is None]}


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


# =========================================================================================
# The runs
# =========================================================================================


def run_pipeline_bench(settings: PipelineSettings, broker=None, progress: bool = True
                       ) -> dict[str, Any]:
    """The open-loop run (or, with ``settings.backlog``, the backlog run)."""
    settings.validate()
    if broker is None:
        from lab_kit import broker as lab_broker

        broker = lab_broker.ensure()
    if settings.backlog is not None:
        return run_backlog(settings, broker, progress=progress)
    stamp = run_stamp()
    prefix = f"bench.pipeline.{stamp}."
    n_posts = int(math.ceil(settings.rate * settings.seconds - 1e-9))
    posts = Workload(seed=11).posts(n_posts)  # built before the clock; frozen by the loop
    service_args = _service_args(settings)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    # the service ends itself after this long, should this process be killed (-9)
    max_s = WARMUP_TIMEOUT_S + 2 * settings.seconds + 60 + 120
    with tempfile.TemporaryDirectory(prefix="lab-pipeline-") as tmp, \
            Pipeline(broker, prefix=prefix, workdir=Path(tmp), processes=settings.processes,
                     client=settings.client, service_args=service_args,
                     max_seconds=max_s) as pipe:
        pipe.start_service()
        producer = make_producer(pipe, linger_ms=PRODUCER_LINGER_MS)
        submit = StampedSubmit(producer)
        sampler = Sampler(0.0, submit.count, {"lag": pipe.lag_probe()},
                          max_rows=int(2 * settings.seconds) + 200)
        drain_probe = pipe.lag_probe()
        try:
            say(f"pipeline: {settings.processes} moderation process(es), {settings.client}; "
                f"waiting for a warm-up post ...")
            warm_s = warm_up(pipe, producer, stamp)
            producer.metrics.reset()
            say(f"open loop: {settings.rate:,.0f} posts/s for {settings.seconds:g} s ...")
            cpu0 = pipe.cpu_snapshot()
            t0 = sampler.t0 = time.time()
            sampler.start()
            run = run_open_loop(submit, iter(posts), settings.rate, settings.seconds)
            load_s = time.time() - t0
            flushed = producer.flush(timeout=60)
            say(f"submitted {len(submit.ids):,}; waiting for every result ...")
            drained = pipe.wait_drained([drain_probe], timeout_s=60 + settings.seconds)
            drain_s = time.time() - t0 - load_s
            cpu1 = pipe.cpu_snapshot()
        finally:
            samples = sampler.stop()
            producer.close(timeout=30)
        service_stop = pipe.stop_service()
        pipe.backend.stop()
        from lab_kit.harness.readback import audit
        from lab_kit.moderation.stage import moderation_results

        ids = submit.ids
        results = moderation_results(pipe.cfg, pipe.names["results"],
                                     timeout_s=max(60.0, len(ids) / 2000))
        report = audit(pipe.cfg, pipe.names["posts"], ids, dlq_topic=pipe.names["dlq"],
                       timeout_s=max(120.0, len(ids) / 2000))
        pipe.delete_topics()

    firsts, duplicates, missing = first_verdicts(results, ids)
    no_result = {pid for pid in ids if pid not in firsts}
    lost = len(no_result | set(report.lost_ids))
    e2e = [r["moderated_at"] - r["created_at"] for r in firsts.values()
           if r.get("moderated_at") and r.get("created_at")]
    p = percentiles_ms(e2e)
    degraded = sum(1 for r in firsts.values() if r.get("degraded"))
    causes = Counter(r.get("fallback_cause") for r in firsts.values() if r.get("degraded"))
    cpu = cpu_per_post(cpu0, cpu1, len(ids))
    out: dict[str, Any] = {
        "suite": "pipeline",
        "quick": settings.quick,
        "offered_rate": settings.rate,
        "seconds": settings.seconds,
        "producer_linger_ms": PRODUCER_LINGER_MS,
        "submit_rate": round(run.achieved_rate, 1),
        "achieved_rate": _round(steady_rate([r["moderated_at"] for r in firsts.values()])),
        "e2e_p50_ms": _round(p["p50_ms"]), "e2e_p99_ms": _round(p["p99_ms"]),
        "e2e_p999_ms": _round(p["p999_ms"]), "e2e_max_ms": _round(p["max_ms"]),
        "degraded_fraction": round(degraded / len(ids), 5) if ids else None,
        "degraded": degraded,
        "fallback_causes": {str(k): v for k, v in causes.most_common()},
        "lost": lost,
        "results_missing": missing,
        "posts_lost": report.lost,
        "duplicates": duplicates,
        "posts_duplicates": report.duplicates,
        "processes": settings.processes,
        "client": settings.client,
        "submitted": len(ids),
        "rejected": submit.rejected,
        "skipped": run.skipped,
        "max_submit_lag_ms": round(run.max_lag_s * 1000, 1),
        "producer_flushed": bool(flushed),
        "drained": drained,
        "warm_up_s": round(warm_s, 2),
        "load_s": round(load_s, 2),
        "drain_s": round(drain_s, 2),
        "cpu_us_per_post": cpu,
        "cpu_cores_busy": {k: None if v is None else round(v * len(ids) / 1e6 / (
            load_s + drain_s), 2) for k, v in cpu.items()},
        "timeline": build_timeline(samples, firsts, t0),
        "service_stop": service_stop,
        "topic_prefix": prefix,
        "kafka_version": broker.kafka_version,
        "machine": {"cpus": cpu_count()},
    }
    out["targets_apply"] = settings.rate >= FULL["rate"] and settings.seconds >= FULL["seconds"]
    out["targets"] = evaluate_targets(out)
    if not all(t["met"] for t in out["targets"].values()):
        out["ceiling"] = ceiling(cpu)
    return out


def _service_args(settings: PipelineSettings) -> tuple[str, ...]:
    if settings.shed_after_ms is None:
        return ()
    return ("--shed-after-ms", f"{settings.shed_after_ms:g}")


def run_backlog(settings: PipelineSettings, broker, progress: bool = True) -> dict[str, Any]:
    """Fill the posts topic with ``backlog`` posts, then start the service and time the
    drain: ``backlog_rate`` = posts / (last first-verdict - first first-verdict)."""
    from lab_kit.harness.readback import audit
    from lab_kit.moderation.stage import moderation_results

    stamp = run_stamp()
    prefix = f"bench.pipeline.{stamp}."
    n = settings.backlog
    posts = Workload(seed=13).posts(n)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lab-pipeline-") as tmp, \
            Pipeline(broker, prefix=prefix, workdir=Path(tmp), processes=settings.processes,
                     client=settings.client, service_args=_service_args(settings),
                     max_seconds=WARMUP_TIMEOUT_S + 60 + n / 200 + 120) as pipe:
        producer = make_producer(pipe)
        ids: list[str] = []
        try:
            say(f"backlog: writing {n:,} posts ...")
            t_fill = time.perf_counter()
            fill_deadline = time.monotonic() + 60 + n / 1000
            for post in posts:
                post = dataclasses.replace(post, created_at=time.time())
                while True:
                    try:
                        producer.submit(post)
                        break
                    except BackpressureError:
                        if time.monotonic() > fill_deadline:
                            raise TimeoutError("backlog: the producer could not hand over "
                                               "the posts in time") from None
                ids.append(post.post_id)
            flushed = producer.flush(timeout=120)
            fill_s = time.perf_counter() - t_fill
        finally:
            producer.close(timeout=30)
        say(f"backlog written ({n / fill_s:,.0f} posts/s); starting the service ...")
        probe = pipe.lag_probe()
        sampler = Sampler(0.0, lambda: 0, {"lag": pipe.lag_probe()},
                          max_rows=int(60 + n / 100) + 60)
        t0 = sampler.t0 = time.time()
        try:
            pipe.start_service()
            sampler.start()
            # CPU from the moment the group has formed: the service's start-up (interpreter,
            # imports, group join) is not part of the cost of a post
            joined = pipe.wait_for_members(WARMUP_TIMEOUT_S, poll_s=0.05)
            cpu0 = pipe.cpu_snapshot()
            drained = pipe.wait_drained([probe], timeout_s=60 + n / 200)
            drain_s = time.time() - t0
            cpu1 = pipe.cpu_snapshot()
        finally:
            samples = sampler.stop()
        service_stop = pipe.stop_service()
        pipe.backend.stop()
        results = moderation_results(pipe.cfg, pipe.names["results"],
                                     timeout_s=max(60.0, n / 2000))
        report = audit(pipe.cfg, pipe.names["posts"], ids, dlq_topic=pipe.names["dlq"],
                       timeout_s=max(120.0, n / 2000))
        pipe.delete_topics()

    firsts, duplicates, missing = first_verdicts(results, ids)
    lost = len({pid for pid in ids if pid not in firsts} | set(report.lost_ids))
    times = sorted(r["moderated_at"] for r in firsts.values() if r.get("moderated_at"))
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    degraded = sum(1 for r in firsts.values() if r.get("degraded"))
    causes = Counter(r.get("fallback_cause") for r in firsts.values() if r.get("degraded"))
    return {
        "suite": "pipeline", "mode": "backlog",
        "backlog_posts": n,
        "backlog_rate": round(len(times) / span, 1) if span > 0 else None,
        "first_result_after_s": round(times[0] - t0, 2) if times else None,
        "fill_rate": round(n / fill_s, 1),
        "lost": lost, "results_missing": missing, "posts_lost": report.lost,
        "duplicates": duplicates, "posts_duplicates": report.duplicates,
        "degraded_fraction": round(degraded / n, 5),
        "fallback_causes": {str(k): v for k, v in causes.most_common()},
        "processes": settings.processes, "client": settings.client,
        "submitted": len(ids), "producer_flushed": bool(flushed), "drained": drained,
        "drain_s": round(drain_s, 2),
        "group_joined": joined,
        "cpu_us_per_post": cpu_per_post(cpu0, cpu1, n),
        "timeline": build_timeline(samples, firsts, t0),
        "service_stop": service_stop,
        "topic_prefix": prefix,
        "kafka_version": broker.kafka_version,
        "machine": {"cpus": cpu_count()},
    }


# =========================================================================================
# Output and CLI
# =========================================================================================


def _f(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def format_report(r: dict) -> str:
    cpu = r["cpu_us_per_post"]
    known = [v for v in cpu.values() if v is not None]
    cpu_line = ("CPU µs per post: " + ", ".join(f"{k} {_f(v, '.1f')}" for k, v in cpu.items())
                + f" = {sum(known):.1f} total")
    if r.get("mode") == "backlog":
        lines = [f"pipeline backlog: {r['backlog_posts']:,} posts written first, then "
                 f"{r['processes']} moderation process(es) ({r['client']})",
                 f"  backlog_rate {_f(r['backlog_rate'])} posts/s (drain {r['drain_s']} s), "
                 f"degraded {r['degraded_fraction']:.1%}, lost {r['lost']}, "
                 f"duplicates {r['duplicates']}", "  " + cpu_line]
        return "\n".join(lines)
    lines = [f"pipeline: {r['offered_rate']:,.0f} posts/s offered for {r['seconds']:g} s, "
             f"{r['processes']} moderation process(es) ({r['client']})",
             f"  submitted {r['submitted']:,}; achieved {_f(r['achieved_rate'])} results/s; "
             f"e2e p50/p99/p99.9 {_f(r['e2e_p50_ms'])} / {_f(r['e2e_p99_ms'])} / "
             f"{_f(r['e2e_p999_ms'])} ms",
             f"  degraded {_f(r['degraded_fraction'], '.2%')}, lost {r['lost']}, duplicates "
             f"{r['duplicates']}, drained {r['drained']} ({r['drain_s']} s after the load)",
             "  " + cpu_line,
             f"  {'t_s':>4} {'offered':>8} {'moderated':>10} {'lag':>8} {'degraded':>9}"]
    rows = r["timeline"]
    shown = rows if len(rows) <= 24 else rows[:12] + [None] + rows[-11:]
    for row in shown:
        if row is None:
            lines.append("   ...")
            continue
        lines.append(f"  {row['t_s']:>4} {row['offered']:>8} {row['moderated']:>10} "
                     f"{_f(row['lag'], 'd'):>8} {row['degraded']:>9}")
    scope = "" if r["targets_apply"] else " (targets are for --rate 10000 --seconds 30)"
    for key, t in r["targets"].items():
        lines.append(f"  target {key} {t['op']} {t['target']:g}: {_f(t['value'], ',.2f')} "
                     f"{'met' if t['met'] else 'NOT met'}{scope}")
    c = r.get("ceiling")
    if c:
        lines.append(f"  ceiling: {c['stage']} costs most ({c['stage_cpu_us_per_post']} µs/post); "
                     f"{c['total_cpu_us_per_post']} µs/post in all -> "
                     f"{c['cores_at_10000_per_s']} cores at 10,000/s, "
                     f"{c['cores_at_100000_per_s']} at 100,000/s (this machine: "
                     f"{c['cores_here']})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``bench pipeline``: settings checked first (ValueError → exit 2 in the CLI)."""
    settings = PipelineSettings.from_args(args)
    settings.validate()
    try:
        report = run_pipeline_bench(settings)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: bench pipeline: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if settings.json_path:
        Path(settings.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {settings.json_path}")
    return 0
