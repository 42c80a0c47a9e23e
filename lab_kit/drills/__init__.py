"""Failover drills: workload + nemesis + checker, composed by a runner (Jepsen's shape).

Open next, in this order:

* :mod:`lab_kit.drills.workload` — posts submitted open-loop (:func:`lab_kit.harness.open_loop.
  run_open_loop`) through ``AsyncPostProducer`` (durable spool); :class:`TimedSubmit` records
  each ``submit()`` and the accepted ids;
* the nemesis and the checker live in :mod:`lab_kit.harness` (the benches use them too):
  :class:`~lab_kit.harness.nemesis.Nemesis` breaks a real process on a schedule (kill -9 or
  SIGSTOP a broker node, kill the partition leader, kill or slow the moderation backend) and
  heals it after ``outage_s``; :mod:`lab_kit.harness.checker` reads the topics back and counts
  every post by id (:func:`lab_kit.harness.readback.audit`), checks the moderation results
  (:func:`check_results`), and :class:`KafkaCallWatch` checks that no spooled post cost the
  caller a Kafka client call (all three re-exported here);
* :mod:`lab_kit.drills.report` — the typed results (:class:`DrillReport`,
  :class:`OverloadReport`, :class:`ApiDrillReport`): ``ok``, ``summary()``, ``to_json()``;
* the drills themselves: :mod:`lab_kit.drills.producer_drills` (broker-outage,
  broker-outage-long, broker-pause, leader-failover), :mod:`lab_kit.drills.moderation`
  (moderation-outage, moderation-slow, moderation-overload), :mod:`lab_kit.drills.api`
  (api-broker-outage, through HTTP, on :mod:`lab_kit.harness.api_condition`),
  :mod:`lab_kit.drills.full_spool` (api-full-spool: the API's capped spool fills while the
  broker is down; 202 or 503 + Retry-After, never a 500, every 202 delivered; its
  :class:`~lab_kit.drills.full_spool.FullSpoolReport`), :mod:`lab_kit.drills.api_crash`
  (api-crash: kill -9 of every API worker during a broker outage; a 202 held in memory
  against a ``?wait=ack`` answer (acknowledged, or fsynced in the spool), read back),
  :mod:`lab_kit.drills.member_crash` (member-crash: kill -9 of one of two moderation
  members mid-batch, then of a partition leader of a 3-node cluster; the results read back
  ``read_committed``: lost, duplicates, order per user, under ``--guarantee exactly-once``
  or ``at-least-once``);
* :mod:`lab_kit.drills.runner` — ``run_drill(name)`` and ``python -m lab_kit drill NAME``
  (imported from there, not from this package: the runner loads the HTTP drill, and
  ``python -m lab_kit.drills.api`` must not find its own module imported by this package first).

``python -m lab_kit drill broker-outage --json out.json`` prints a summary and writes the
JSON (audit counts, outage windows, submit p99 during the outage, a per-second timeline).
"""

from lab_kit.drills.moderation import OverloadSettings, moderation_drill, overload_drill
from lab_kit.drills.producer_drills import leader_of, producer_drill
from lab_kit.drills.report import (
    ApiDrillReport,
    DrillReport,
    OverloadReport,
    load_report,
    report_from_dict,
)
from lab_kit.drills.workload import DrillSettings, RssSampler, TimedSubmit
from lab_kit.harness.checker import WATCHED_METHODS, KafkaCallWatch, ResultsCheck, check_results
from lab_kit.harness.nemesis import Nemesis

__all__ = [
    "WATCHED_METHODS", "ApiDrillReport", "DrillReport", "DrillSettings",
    "KafkaCallWatch", "Nemesis", "OverloadReport", "OverloadSettings", "ResultsCheck",
    "RssSampler", "TimedSubmit", "check_results", "leader_of", "load_report",
    "moderation_drill", "overload_drill", "producer_drill", "report_from_dict",
]
