"""The sequence every pipeline run shares, as named steps a caller configures.

:meth:`PipelineRun.execute` runs: a stamp (fresh topic names) -> a
:class:`~lab_kit.harness.pipeline.Pipeline` (topics, backend) -> :meth:`~PipelineRun.set_up`
(the service, the producer, a stamped submit, the sampler, the drain probes) ->
:meth:`~PipelineRun.measure` (warm-up, the clock, :meth:`~PipelineRun.load`, flush, drain;
CPU before and after) -> sampler and producer stopped -> :meth:`~PipelineRun.stop_service` ->
:meth:`~PipelineRun.read_back` (results topic, posts audit, topics deleted) ->
:meth:`~PipelineRun.verdicts` (first verdicts, duplicates, missing, lost). Everything a
report needs is left on the run. A caller subclasses it: :meth:`~PipelineRun.load` is the
load it offers; the class attributes and the other steps say what else differs.
``bench pipeline`` (open loop and backlog) and ``drill moderation-overload`` are its callers.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab_kit.harness.pipeline import Pipeline, StampedSubmit, make_producer, warm_up
from lab_kit.harness.readback import AuditReport, audit
from lab_kit.harness.results import first_verdicts
from lab_kit.harness.sampler import GroupLag, Sampler
from lab_kit.machine import run_stamp
from lab_kit.moderation import moderation_results


class PipelineRun:
    """One run of the pipeline; subclass it and fill in :meth:`load`.

    ``max_rows`` bounds the sampler, ``drain_timeout_s`` the wait for the drain,
    ``producer_options`` go to :func:`~lab_kit.harness.pipeline.make_producer` and the other
    keyword arguments to :class:`~lab_kit.harness.pipeline.Pipeline` (processes, client,
    service_args, backend_settings, max_seconds). Without ``workdir`` the run works in a
    temporary directory it removes at the end.
    """

    #: the run's topics are ``{topic_base}{stamp}.*``
    topic_base = "bench.pipeline."
    #: the temporary working directory's name starts with this
    tmp_prefix = "lab-pipeline-"
    #: delete the run's topics once they are read back
    delete_topics = True
    #: take CPU snapshots of every stage around the timed part
    measure_cpu = True

    def __init__(self, broker, *, max_rows: int, drain_timeout_s: float,
                 progress: bool = False, workdir: Path | str | None = None,
                 producer_options: dict[str, Any] | None = None, **pipeline_options: Any):
        self.broker = broker
        self.stamp = run_stamp()
        self.prefix = f"{self.topic_base}{self.stamp}."
        self.max_rows, self.drain_timeout_s = max_rows, drain_timeout_s
        self.progress, self.workdir = progress, workdir
        self.producer_options = dict(producer_options or {})
        self.pipeline_options = pipeline_options
        # filled in by the steps
        self.pipe: Pipeline | None = None
        self.producer: Any = None
        self.submit: StampedSubmit | None = None
        self.sampler: Sampler | None = None
        self.probes: list[GroupLag] = []
        self.ids: list[str] = []
        self.t0 = self.warm_s = self.load_s = self.drain_s = 0.0
        self.cpu0: dict[str, float | None] = {}
        self.cpu1: dict[str, float | None] = {}
        self.flushed = self.drained = False
        self.samples: list[dict[str, Any]] = []
        self.service_stop: dict[str, Any] = {}
        self.results: dict[str, list[dict]] = {}
        self.landed: AuditReport | None = None
        self.firsts: dict[str, dict] = {}
        self.duplicates = self.missing = self.lost = 0
        self.reader_cpu_s: float | None = None  # CPU of reading the results back (e2e reader)

    # -- the sequence ------------------------------------------------------------------------
    def execute(self) -> PipelineRun:
        """The whole run; returns ``self`` with the outcome on it."""
        with self._workdir() as workdir, Pipeline(self.broker, prefix=self.prefix,
                                                  workdir=workdir,
                                                  **self.pipeline_options) as pipe:
            self.pipe = pipe
            self.set_up()
            try:
                self.measure()
            finally:
                self.samples = self.sampler.stop()
                if self.producer is not None:
                    self.producer.close(timeout=30)
            self.service_stop = self.stop_service()
            pipe.backend.stop()
            self.read_back()
        self.verdicts()
        return self

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        if self.workdir is not None:
            yield Path(self.workdir)
            return
        with tempfile.TemporaryDirectory(prefix=self.tmp_prefix) as tmp:
            yield Path(tmp)

    # -- the steps ---------------------------------------------------------------------------
    def set_up(self) -> None:
        """The service, the producer and its stamped submit, the sampler, the drain probes."""
        self.pipe.start_service()
        self.producer = make_producer(self.pipe, **self.producer_options)
        self.submit = StampedSubmit(self.producer)
        self.ids = self.submit.ids
        self.sampler = Sampler(0.0, self.submit.count, self.lag_probes(),
                               max_rows=self.max_rows)
        self.probes = self.drain_probes()

    def measure(self) -> None:
        """Warm-up, then the timed part: the load, the flush, the drain."""
        self.say(self.warm_up_note())
        self.warm_s = warm_up(self.pipe, self.producer, self.stamp)
        self.after_warm_up()
        self.cpu0 = self.cpu_snapshot()
        self.start_clock()
        self.sampler.start()
        self.load()
        self.load_s = time.time() - self.t0
        self.flushed = self.producer.flush(timeout=60)
        self.say(self.drain_note())
        self.drained = self.pipe.wait_drained(self.probes, timeout_s=self.drain_timeout_s)
        self.drain_s = time.time() - self.t0 - self.load_s
        self.cpu1 = self.cpu_snapshot()

    def load(self) -> None:
        """The load the run offers, through ``self.submit`` (the caller's part)."""
        raise NotImplementedError

    def stop_service(self) -> dict[str, Any]:
        return self.pipe.stop_service()

    def read_back(self) -> None:
        """The results topic and the posts topic read back; then the topics go."""
        n = len(self.ids)
        cfg, names = self.pipe.cfg, self.pipe.names
        t_cpu = time.process_time()
        self.results = moderation_results(cfg, names["results"], timeout_s=max(60.0, n / 2000))
        self.reader_cpu_s = time.process_time() - t_cpu
        self.landed = audit(cfg, names["posts"], self.ids, dlq_topic=names["dlq"],
                            timeout_s=self.audit_timeout_s())
        if self.delete_topics:
            self.pipe.delete_topics()

    def verdicts(self) -> None:
        """First verdicts. ``lost`` keeps the guide's meaning: accepted, and not on the posts
        topic. A post that is on the topic but got no result before the run stopped waiting
        is ``missing`` (no result within the window), not lost: it is still there to moderate."""
        self.firsts, self.duplicates, self.missing = first_verdicts(self.results, self.ids)
        self.lost = self.landed.lost

    # -- small hooks -------------------------------------------------------------------------
    def lag_probes(self) -> dict[str, GroupLag]:
        """The sampler's probes, by timeline column."""
        return {"lag": self.pipe.lag_probe()}

    def drain_probes(self) -> list[GroupLag]:
        """Drained when every one of these is at lag 0."""
        return [self.pipe.lag_probe()]

    def warm_up_note(self) -> str:
        return "waiting for a warm-up post ..."

    def after_warm_up(self) -> None:
        """Between the warm-up and the clock."""

    def drain_note(self) -> str:
        return f"submitted {len(self.ids):,}; waiting for every result ..."

    def audit_timeout_s(self) -> float:
        return max(120.0, len(self.ids) / 2000)

    def start_clock(self) -> None:
        self.t0 = self.sampler.t0 = time.time()

    def cpu_snapshot(self) -> dict[str, float | None]:
        return self.pipe.cpu_snapshot() if self.measure_cpu else {}

    def say(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)
