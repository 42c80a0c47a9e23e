"""``drill api-broker-outage``: users keep posting through HTTP while the broker is killed.

Jepsen's shape, with the workload on the user's side of the API:

* **workload**: open-loop ``POST /posts`` at a fixed rate through ``python -m lab_kit.api``
  (its producer has a spool), each request timed from its intended send time;
* **nemesis**: ``kill -9`` of the broker ``lead_s`` into the load, restarted ``outage_s`` later
  (:class:`lab_kit.harness.nemesis.Nemesis`, run by
  :func:`lab_kit.harness.api_condition.run_condition`);
* **checker**: after the spool has drained and the API was stopped with SIGTERM, the topic is
  read back (:func:`lab_kit.harness.readback.audit`): every post answered ``202`` is counted
  by id — delivered once, duplicated, lost. ``ok`` means lost 0 and every request accepted.

The result is an :class:`~lab_kit.drills.report.ApiDrillReport`.
``python -m lab_kit.drills.api [--posts N] [--rate R] [--outage S] [--lead S] [--json PATH]``
"""

from __future__ import annotations

import argparse
import sys

from lab_kit.cli_support import run_cli
from lab_kit.drills.report import API_DRILL, ApiDrillReport, ApiDrillSettings, print_and_save
from lab_kit.harness.api_condition import own_broker as start_own_broker
from lab_kit.harness.api_condition import run_condition
from lab_kit.output_paths import check_output_path

NAME = API_DRILL
#: The defaults, for the function and both command lines: 15 s of load at 2,000/s, room for
#: 3 s of lead and a 10 s outage.
POSTS, RATE, OUTAGE_S, LEAD_S = 30_000, 2_000.0, 10.0, 3.0


def run_api_drill(posts: int = POSTS, rate: float = RATE, outage_s: float = OUTAGE_S,
                  lead_s: float = LEAD_S, workers: int = 1, broker=None,
                  own_broker: bool = False) -> ApiDrillReport:
    """Run the drill; returns its report (the LoadRun of the workload as ``report.load``).

    ``own_broker=True`` starts a one-node broker for the drill alone (and purges it after):
    on a machine where others use the lab's broker, their restarts cannot race the nemesis.
    """
    if own_broker:
        b = start_own_broker()
        try:
            return run_api_drill(posts, rate, outage_s, lead_s, workers, broker=b)
        finally:
            b.down(purge=True)

    if not 1 <= posts <= 1_000_000:
        raise ValueError(f"--posts must be between 1 and 1000000, got {posts}")
    if not 1 <= rate <= 20_000:
        raise ValueError(f"--rate must be between 1 and 20000, got {rate}")
    if not 0.5 <= outage_s <= 120:
        raise ValueError(f"--outage must be between 0.5 and 120 s, got {outage_s}")
    seconds = posts / rate
    if lead_s + outage_s > seconds:
        raise ValueError(f"--lead + --outage ({lead_s + outage_s} s) must fit in the load "
                         f"({posts} posts at {rate}/s = {seconds:.1f} s)")
    r = run_condition("async", "broker_killed", rate, seconds, workers=workers, lead_s=lead_s,
                      outage_s=outage_s, broker=broker, topic_prefix="drill.api",
                      keep_topic=True, warmup_s=0)
    settings = ApiDrillSettings(posts=posts, rate=rate, outage_s=outage_s, lead_s=lead_s,
                                workers=workers)
    return ApiDrillReport.from_dict({"settings": vars(settings), **r})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--posts", type=int, default=POSTS,
                   help=f"default {POSTS}: room for --lead {LEAD_S:g} + --outage {OUTAGE_S:g}")
    p.add_argument("--rate", type=float, default=RATE)
    p.add_argument("--outage", type=float, default=OUTAGE_S, help="seconds the broker is down")
    p.add_argument("--lead", type=float, default=LEAD_S, help="seconds of load before the kill")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--own-broker", action="store_true",
                   help="a one-node broker of the drill's own (purged after)")
    p.add_argument("--json", dest="json_path", default=None)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")
    report = run_api_drill(args.posts, args.rate, args.outage, args.lead, args.workers,
                           own_broker=getattr(args, "own_broker", False))
    return print_and_save(report, args.json_path)


def main_from_drill(args: argparse.Namespace) -> int:
    """``python -m lab_kit drill api-broker-outage ...`` (the shared ``drill`` parser)."""
    ns = argparse.Namespace(posts=args.posts or POSTS, rate=args.rate or RATE,
                            outage=args.outage or OUTAGE_S,
                            lead=args.lead if args.lead is not None else LEAD_S,
                            workers=getattr(args, "workers", None) or 1,
                            json_path=args.json_path)
    return main(ns)


def cli(argv: list[str] | None = None) -> int:
    return run_cli("python -m lab_kit.drills.api", __doc__, add_arguments, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
