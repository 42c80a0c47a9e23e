"""The runner: picks a drill by name, gives it a broker and a work directory, and runs it.

:func:`run_drill` is what notebooks and tests call; :func:`add_parser`/:func:`main` are
``python -m lab_kit drill NAME [--posts N] [--rate R] [--outage S] [--lead S] [--json PATH]``
(it prints the report's ``summary()`` and writes its ``to_json()``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lab_kit import broker as lab_broker
from lab_kit import lab_env
from lab_kit.broker import local
from lab_kit.drills.api import main_from_drill
from lab_kit.drills.api_crash import main_from_drill as api_crash_main
from lab_kit.drills.full_spool import main_from_drill as full_spool_main
from lab_kit.drills.member_crash import main_from_drill as member_crash_main
from lab_kit.drills.moderation import moderation_drill, overload_drill, overload_main
from lab_kit.drills.producer_drills import PRODUCER_DRILLS, producer_drill
from lab_kit.drills.report import DrillReport, OverloadReport, print_and_save
from lab_kit.drills.workload import DrillSettings
from lab_kit.moderation.clients import CLIENTS
from lab_kit.moderation.settings import GUARANTEES
from lab_kit.output_paths import check_output_path

DRILLS = ("broker-outage", "broker-outage-long", "broker-pause", "leader-failover",
          "moderation-outage", "moderation-slow", "moderation-overload", "api-broker-outage",
          "api-full-spool", "api-crash", "member-crash")


def run_drill(name: str, settings: DrillSettings | None = None, broker=None,
              workdir: Path | None = None, progress: bool = False
              ) -> DrillReport | OverloadReport:
    """Run one drill on ``broker`` (default: the lab's broker; leader-failover: a 3-node
    cluster of its own, started and stopped here). ``api-broker-outage`` runs through HTTP:
    :func:`lab_kit.drills.api.run_api_drill`."""
    if name not in DRILLS:
        raise ValueError(f"unknown drill {name!r}: choose one of {', '.join(DRILLS)}")
    if name == "api-broker-outage":
        raise ValueError("api-broker-outage drives the HTTP API: use "
                         "lab_kit.drills.api.run_api_drill (or `python -m lab_kit drill "
                         "api-broker-outage`)")
    if name == "api-full-spool":
        raise ValueError("api-full-spool drives the HTTP API on a broker of its own: use "
                         "lab_kit.drills.full_spool.run_full_spool_drill (or `python -m "
                         "lab_kit drill api-full-spool`)")
    if name == "api-crash":
        raise ValueError("api-crash drives the HTTP API on a broker of its own: use "
                         "lab_kit.drills.api_crash.run_crash_drill (or `python -m lab_kit "
                         "drill api-crash`)")
    if name == "member-crash":
        raise ValueError("member-crash runs the moderation service as processes on a 3-node "
                         "cluster of its own: use lab_kit.drills.member_crash."
                         "run_member_crash_drill (or `python -m lab_kit drill member-crash`)")
    if name == "moderation-overload":  # its own shape: rates follow the backend's capacity
        return overload_drill(broker, workdir=workdir, progress=progress)
    settings = settings or DrillSettings.for_drill(name)
    settings.validate()
    own_cluster = None
    if broker is None:
        if name == "leader-failover":
            own_cluster = broker = local.up(nodes=3,
                                            state_dir=lab_env.state_dir() / "drill-cluster")
        else:
            broker = lab_broker.ensure()
    if name == "leader-failover" and len(broker.nodes()) < 3:
        raise ValueError("leader-failover needs a 3-node cluster (RF 3, min.insync.replicas=2)")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lab-drill-")
        workdir = Path(tmp.name)
    try:
        if name.startswith("moderation"):
            return moderation_drill(name, broker, settings, workdir=workdir, progress=progress)
        return producer_drill(name, broker, settings, workdir=workdir, progress=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
        if own_cluster is not None:
            own_cluster.down(purge=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drill", help="failover drills: workload + nemesis + checker")
    p.add_argument("name", choices=DRILLS)
    p.add_argument("--posts", type=int, default=None, help="default 20000 (moderation: 1500)")
    p.add_argument("--rate", type=float, default=None,
                   help="posts per second, default 2000 (moderation: 150)")
    p.add_argument("--outage", type=float, default=None, help="seconds, default 4")
    p.add_argument("--lead", type=float, default=None,
                   help="seconds of load before the fault, default 2")
    p.add_argument("--guarantee", choices=GUARANTEES, default=None,
                   help="member-crash: the moderation members' guarantee (default "
                   "exactly-once)")
    p.add_argument("--client", choices=CLIENTS, default=None,
                   help="broker-outage, broker-outage-long, broker-pause, leader-failover: "
                   "the producer's Kafka client (default kafka-python); member-crash: the "
                   "moderation members'")
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")
    if args.name == "api-broker-outage":
        return main_from_drill(args)
    if args.name == "api-full-spool":
        return full_spool_main(args)
    if args.name == "api-crash":
        return api_crash_main(args)
    if args.name == "member-crash":
        return member_crash_main(args)
    if args.name == "moderation-overload":
        return overload_main(args)
    if args.client is not None and args.name not in PRODUCER_DRILLS:
        raise ValueError(f"--client: drill {args.name} has no client choice (the producer "
                         f"drills and member-crash do)")
    settings = DrillSettings.for_drill(args.name, posts=args.posts, rate=args.rate,
                                       outage_s=args.outage, lead_s=args.lead,
                                       client=args.client)
    report = run_drill(args.name, settings, progress=True)
    return print_and_save(report, args.json_path)
