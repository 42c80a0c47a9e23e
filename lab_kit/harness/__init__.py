"""The harness: the run machinery that benches, drills and notebooks share (Jepsen's workload +
nemesis + checker, and the clocks and samplers around them). Nothing here is a benchmark.

Open :mod:`.runner` first: ``PipelineRun`` is the one run sequence (stamp, pipeline, producer,
stamped submit, sampler, warm-up, load, flush, drain, read back) that ``bench pipeline``, the
backlog bench and the moderation-overload drill configure. Then, by what they do:

* load: :mod:`.open_loop` (posts at a fixed rate through a producer, ``run_open_loop``),
  :mod:`.http_load` (the same over HTTP with asyncio, ``run_load``), :mod:`.hey_load`
  (Debian's ``hey`` on the same server, a second opinion), :mod:`.load_generator` (the
  dashboard's adjustable load, no UI);
* the system under test: :mod:`.pipeline` (fresh topics, backend, service, producer,
  ``StampedSubmit``, ``warm_up``), :mod:`.service_process` (the moderation service as its own
  processes), :mod:`.api_condition` (the post API served, loaded, its broker killed);
* faults: :mod:`.nemesis` (kill -9, SIGSTOP, slow or kill the backend, on a schedule, healed);
* measuring and checking: :mod:`.sampler` (group lag once a second), :mod:`.results`
  (first verdicts, steady rate, CPU per post), :mod:`.readback` (read a topic back and count
  every post by id: lost, duplicates), :mod:`.checker` (moderation results checked, and the
  watch on Kafka calls in the caller's thread).

Imports run down: benches and drills import this package; it imports the domains
(``producer``, ``moderation``, ``api``, ``broker``) and never a benchmark.
"""

from lab_kit.harness.api_condition import CONDITIONS, heal, own_broker, run_condition
from lab_kit.harness.checker import WATCHED_METHODS, KafkaCallWatch, ResultsCheck, check_results
from lab_kit.harness.http_load import LoadRun, make_bodies, run_load
from lab_kit.harness.load_generator import LoadGenerator
from lab_kit.harness.nemesis import Nemesis
from lab_kit.harness.open_loop import OpenLoopRun, run_open_loop
from lab_kit.harness.pipeline import Pipeline, StampedSubmit, make_producer, warm_up
from lab_kit.harness.readback import AuditReport, audit, end_offsets, post_ids_in, read_topic
from lab_kit.harness.results import cpu_per_post, first_verdicts, steady_rate
from lab_kit.harness.runner import PipelineRun
from lab_kit.harness.sampler import GroupLag, Sampler
from lab_kit.harness.service_process import ServiceProcess

__all__ = [
    "CONDITIONS", "WATCHED_METHODS", "AuditReport", "GroupLag", "KafkaCallWatch", "LoadGenerator",
    "LoadRun", "Nemesis", "OpenLoopRun", "Pipeline", "PipelineRun", "ResultsCheck", "Sampler",
    "ServiceProcess", "StampedSubmit", "audit", "check_results", "cpu_per_post", "end_offsets",
    "first_verdicts", "heal", "make_bodies", "make_producer", "own_broker", "post_ids_in",
    "read_topic", "run_condition", "run_load", "run_open_loop", "steady_rate", "warm_up",
]
