"""``python -m lab_kit bench [producer|pipeline|api|json]``: one ``bench`` parser, four suites.

:func:`add_parser` adds the ``bench`` subcommand to ``python -m lab_kit``; :func:`main` checks
``--json`` before any work and hands the arguments to the suite: :func:`lab_kit.bench.producers.
main` (the default), :func:`lab_kit.bench.pipeline.main`, :func:`lab_kit.bench.api.
main_from_bench`, :func:`lab_kit.bench.json_codecs.main`.
"""

from __future__ import annotations

import argparse

from lab_kit.bench import json_codecs, producers
from lab_kit.bench.pipeline import main as pipeline_main
from lab_kit.output_paths import check_output_path

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the producers (default) or the whole pipeline")
    p.add_argument("suite", nargs="?", choices=("producer", "pipeline", "api", "json"),
                   default="producer",
                   help="producer: sync / raw / lab_kit / confluent / open loop (default); "
                        "pipeline: producer -> Kafka -> moderation service -> results; "
                        "api: open-loop HTTP load on the post API (async vs blocking); "
                        "json: the standard library's json against msgspec on the "
                        "lab's posts (no broker)")
    p.add_argument("--quick", action="store_true",
                   help="producer: fewer posts and a 5 s open loop; pipeline: 2000/s for 5 s")
    p.add_argument("--json", dest="json_path", default=None, help="write the report here")
    p.add_argument("--rounds", type=int, default=None, help="closed-loop rounds (median)")
    p.add_argument("--rate", type=float, default=None,
                   help="open-loop posts per second (default 10000; pipeline --quick: 2000)")
    p.add_argument("--duration", type=float, default=None, help="open-loop seconds (producer)")
    g = p.add_argument_group("pipeline suite")
    g.add_argument("--seconds", type=float, default=None,
                   help="seconds of load (default 30; --quick: 5)")
    g.add_argument("--processes", type=int, default=None,
                   help="moderation member processes of one consumer group (1-32, default 2, "
                        "or 1 on a one-core machine)")
    g.add_argument("--client", choices=("kafka-python", "confluent"), default=None,
                   help="pipeline: the moderation service's Kafka client (default confluent: "
                        "librdkafka); api --cross-check: the API producer's (default: each, "
                        "side by side)")
    g.add_argument("--load-client", dest="load_client", choices=("kafka-python", "confluent"),
                   default=None, help="pipeline: the open loop's load producer "
                   "(AsyncPostProducer(client=...)); default confluent")
    g.add_argument("--guarantee", choices=("at-least-once", "exactly-once", "both"),
                   default=None, help="the moderation members' guarantee (default "
                   "at-least-once); both: one run of each, and their throughput ratio")
    g.add_argument("--backlog", type=int, default=None,
                   help="write N posts first, then time the service draining them")
    g.add_argument("--profile", action="store_true",
                   help="print the CPU µs per post of each part of each stage (always in "
                        "the JSON)")
    g.add_argument("--broker-warmup", dest="broker_warmup", type=float, default=None,
                   help="pipeline: seconds of unmeasured load at --rate first, so that the "
                        "broker's JVM has compiled its hot paths (default 10; --quick and "
                        "--backlog: 0); its figures are in the report")
    g.add_argument("--shed-after-ms", type=float, default=None,
                   help="passed to the service (0: never shed; default: the service's)")
    a = p.add_argument_group("api suite")
    a.add_argument("--outage", type=float, default=None,
                   help="seconds the broker is killed in the broker_killed condition")
    a.add_argument("--no-max-rate", action="store_true",
                   help="skip the search for the highest rate with p99 <= 100 ms")
    a.add_argument("--cross-check", action="store_true",
                   help="only the lab's driver against Debian's hey, side by side: 5,000/s "
                        "on 1 worker and 10,000/s on 2 (p99 <= 100 ms)")
    a.add_argument("--variants", default=None,
                   help="comma-separated of async, wait-ack (?wait=ack: 201 once Kafka acked or "
                        "the spool fsynced; 'durable' is its older name), blocking; default all "
                        "three")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")  # every suite: before any work
    if args.suite == "api":
        # imported here: `python -m lab_kit.bench.api` imports this package (and so this
        # module) first; a top-level import would have runpy warn that it ran a module twice
        from lab_kit.bench.api import main_from_bench

        return main_from_bench(args)
    if args.suite == "pipeline":
        return pipeline_main(args)
    if args.suite == "json":
        return json_codecs.main(args)
    return producers.main(args)
