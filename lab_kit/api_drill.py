"""``drill api-broker-outage``: users keep posting through HTTP while the broker is killed.

Jepsen's shape, with the workload on the user's side of the API:

* **workload**: open-loop ``POST /posts`` at a fixed rate through ``python -m lab_kit.api``
  (its producer has a spool), each request timed from its intended send time;
* **nemesis**: ``kill -9`` of the broker ``lead_s`` into the load, restarted ``outage_s`` later
  (:class:`lab_kit.drills.Nemesis`);
* **checker**: after the spool has drained and the API was stopped with SIGTERM, the topic is
  read back (:func:`lab_kit.audit.audit`): every post answered ``202`` is counted by id —
  delivered once, duplicated, lost. ``ok`` means lost 0 and every request accepted.

``python -m lab_kit.api_drill [--posts N] [--rate R] [--outage S] [--lead S] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAME = "api-broker-outage"


def run_api_drill(posts: int = 20_000, rate: float = 2_000, outage_s: float = 10.0,
                  lead_s: float = 3.0, workers: int = 1, broker=None,
                  own_broker: bool = False) -> dict[str, Any]:
    """Run the drill; returns its report (the LoadRun of the workload under ``load``).

    ``own_broker=True`` starts a one-node broker for the drill alone (and purges it after):
    on a machine where others use the lab's broker, their restarts cannot race the nemesis.
    """
    from .api_bench import own_broker as start_own_broker
    from .api_bench import run_condition

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
    load = r.pop("load")
    report = {"drill": NAME, "settings": {"posts": posts, "rate": rate, "outage_s": outage_s,
                                          "lead_s": lead_s, "workers": workers}, **r}
    report["ok"] = (r.get("lost") == 0 and r["accepted"] == r["sent"]
                    and (r.get("outage") or {}).get("error") is None)
    report["load"] = load
    return report


def summary(r: dict) -> str:
    s = r.get("server", {})
    return "\n".join([
        f"drill {r['drill']}: {'OK' if r['ok'] else 'FAILED'}",
        f"  sent {r['sent']}, accepted {r['accepted']}, delivered_unique "
        f"{r.get('delivered_unique')}, duplicates {r.get('duplicates')}, lost {r.get('lost')}",
        f"  HTTP p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms; during "
        f"the outage p99 {r.get('p99_during_outage_ms')} ms (n={r.get('sent_during_outage')})",
        f"  server: spooled {s.get('posts_spooled_total')}, replayed "
        f"{s.get('spool_replayed')}, acked {s.get('posts_acked_total')}, failed "
        f"{s.get('posts_failed_total')}",
    ])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--posts", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=2_000)
    p.add_argument("--outage", type=float, default=10.0, help="seconds the broker is down")
    p.add_argument("--lead", type=float, default=3.0, help="seconds of load before the kill")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--own-broker", action="store_true",
                   help="a one-node broker of the drill's own (purged after)")
    p.add_argument("--json", dest="json_path", default=None)


def main(args: argparse.Namespace) -> int:
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).touch()
    r = run_api_drill(args.posts, args.rate, args.outage, args.lead, args.workers,
                      own_broker=getattr(args, "own_broker", False))
    r.pop("load")
    print(summary(r))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(r, indent=2))
        print(f"wrote {args.json_path}")
    return 0 if r["ok"] else 1


def main_from_drill(args: argparse.Namespace) -> int:
    """``python -m lab_kit drill api-broker-outage ...`` (the shared ``drill`` parser)."""
    ns = argparse.Namespace(posts=args.posts or 20_000, rate=args.rate or 2_000,
                            outage=args.outage or 10.0,
                            lead=args.lead if args.lead is not None else 3.0,
                            workers=getattr(args, "workers", None) or 1,
                            json_path=args.json_path)
    return main(ns)


def cli(argv: list[str] | None = None) -> int:
    from .api_bench import run_cli

    return run_cli("python -m lab_kit.api_drill", __doc__, add_arguments, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
